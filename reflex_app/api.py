"""The application's Python API over both backends: `load` a model on MLX or torch, then
`run`, `stream` or `run_batch` prompts.

    from reflex_app import load, run
    model = load("tiny", backend="mlx")  # or "torch"; None picks as the command line does
    result = run(model, "compute 5 factorial", max_cycles=200)

The functions are reflex_core.runs' (a backend package gives the same ones bound to itself:
`from reflex_mlx import load, run, stream`). Every `reflex-mlx` command is a layer over them.
"""

from __future__ import annotations

from reflex_core.runs import (
    MODEL_ENV,
    Cycle,
    Loaded,
    ReflexError,
    RunResult,
    check_prompt,
    default_model,
    load,
    locate,
    run,
    run_batch,
    stream,
)

__all__ = [
    "MODEL_ENV",
    "Cycle",
    "Loaded",
    "ReflexError",
    "RunResult",
    "check_prompt",
    "default_model",
    "load",
    "locate",
    "run",
    "run_batch",
    "stream",
]
