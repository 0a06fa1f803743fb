"""Reflex on MLX: the model, its fast path, loading, quantization and training in MLX.

The Python API, in mlx-lm's shape:

    from reflex_mlx import load, run, stream
    model = load("tiny")  # a bundled name, a converted model folder, or a hub id
    result = run(model, "compute 5 factorial", max_cycles=200)
    print(result.outcome, result.memory()["0x5000"][0])

Importing the package imports no framework: mlx loads with the first model. The same
functions over either backend are the application's (`from reflex_app import load`).
"""

from __future__ import annotations

import os
from pathlib import Path

from reflex_core import runs
from reflex_core.backends import Loaded
from reflex_core.errors import ReflexError
from reflex_core.loop import Cycle, RunResult
from reflex_core.runs import run, run_batch, stream

# reflex-tiny, converted, shipped inside this package: the offline default.
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "reflex-tiny"

__all__ = [
    "BUNDLED_MODEL",
    "Cycle",
    "Loaded",
    "ReflexError",
    "RunResult",
    "load",
    "named_model",
    "run",
    "run_batch",
    "stream",
]


def load(model: str | os.PathLike | None = None, fast: bool = True) -> Loaded:
    """A model on MLX, ready to `run`: a bundled name (tiny; smol once `make smol` built it),
    a converted model folder or a hub id (OWNER/NAME); None: $REFLEX_MLX_MODEL, else the
    converted release, else reflex-tiny. fast=False: the plain reference forward.
    ReflexError in one line when it cannot be loaded."""
    return runs.load(model, backend="mlx", fast=fast)


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
