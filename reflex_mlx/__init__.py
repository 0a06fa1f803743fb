"""Reflex on MLX. The Python API (reflex_mlx.api) is exported lazily:

    from reflex_mlx import load, run, stream, run_batch

so that importing the model or the backend modules does not pull in the application layer.
"""

from __future__ import annotations

from pathlib import Path

# reflex-tiny, converted, shipped inside this package: the offline default.
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "reflex-tiny"

_API = ("load", "run", "stream", "run_batch", "RunResult", "Cycle", "ReflexError")
__all__ = ["BUNDLED_MODEL", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
