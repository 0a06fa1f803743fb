"""The application layer over both backends and the converter: the Python API, the
`reflex-mlx` command line (reflex_app.cli) and the demo's terminal UI (reflex_app.ui).

    from reflex_app import load, run, stream, run_batch

Importing it imports neither framework: a backend's is imported when a model is loaded on it.
"""

from __future__ import annotations

from .api import Cycle, ReflexError, RunResult, load, run, run_batch, stream

__all__ = ["Cycle", "ReflexError", "RunResult", "load", "run", "run_batch", "stream"]
