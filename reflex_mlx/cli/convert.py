"""`reflex-mlx convert`: the converter (`python -m convert`, convert/convert.py) under the one CLI."""

from __future__ import annotations

from convert.convert import main as command

__all__ = ["command"]
