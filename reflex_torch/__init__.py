"""Reflex in PyTorch: the reference model, its fast path, loading and training.

The Python API, as reflex_mlx gives it, with the model on torch:

    from reflex_torch import load, run
    model = load("tiny")  # a bundled name or a folder (reflex.pt, or a converted model's sources)
    result = run(model, "compute 5 factorial", max_cycles=200)

Importing the package imports no framework: torch loads with the first model.
"""

from __future__ import annotations

import os
from pathlib import Path

from reflex_core import runs
from reflex_core.backends import Loaded
from reflex_core.errors import ReflexError
from reflex_core.loop import Cycle, RunResult
from reflex_core.runs import run, run_batch, stream

# reflex-tiny's checkpoint, shipped inside this package.
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "reflex-tiny"

__all__ = [
    "BUNDLED_MODEL",
    "Cycle",
    "Loaded",
    "ReflexError",
    "RunResult",
    "load",
    "run",
    "run_batch",
    "stream",
]


def load(model: str | os.PathLike | None = None, fast: bool = True) -> Loaded:
    """A model on torch, ready to `run`: a bundled name (tiny; smol once `make smol` built
    its backbone), a folder holding reflex.pt, or a converted MLX folder (its sources are
    loaded); None: $REFLEX_MLX_MODEL, else the converted release's sources, else
    reflex-tiny. A hub id is refused (hub models are converted for MLX). fast=False: the
    plain reference forward. ReflexError in one line when it cannot be loaded."""
    return runs.load(model, backend="torch", fast=fast)
