"""Reflex on MLX: the model, its fast path, loading, quantization and training in MLX.

The Python API over both backends is the application layer's (`from reflex_app import load, run`).
"""

from __future__ import annotations

from pathlib import Path

# reflex-tiny, converted, shipped inside this package: the offline default.
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "reflex-tiny"

__all__ = ["BUNDLED_MODEL"]
