"""Reflex on MLX: the model, its fast path, loading, quantization and training in MLX.

The Python API over both backends is the application layer's (`from reflex_app import load, run`).
"""

from __future__ import annotations

from pathlib import Path

# reflex-tiny, converted, shipped inside this package: the offline default.
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "reflex-tiny"

__all__ = ["BUNDLED_MODEL", "named_model"]


def named_model(name: str) -> Path | None:
    """The folder a bundled model name stands for here: None for tiny (BUNDLED_MODEL),
    reflex-smol's conversion once `make smol` made it (BackendError before)."""
    from reflex_core.backends import BackendError
    from reflex_core.smol import smol_mlx_dir

    if name == "tiny":
        return None
    if not smol_mlx_dir().is_dir():
        raise BackendError(f"reflex-smol is not converted on this machine ({smol_mlx_dir()}): run make smol")
    return smol_mlx_dir()
