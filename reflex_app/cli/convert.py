"""`reflex-mlx convert`: the converter's own command (convert/convert.py, also `python -m convert`),
its options and checks as they are, under the one CLI."""

from __future__ import annotations

from convert.convert import main as command

__all__ = ["command"]
