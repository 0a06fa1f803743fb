"""The backends the command line can drive, found through entry points.

Each package registers itself (pyproject.toml, group `reflex_mlx.backends`):
`reflex_mlx.backend` and `reflex_torch.backend`. The command line imports
neither framework itself, so the MLX package works where torch is absent and
the torch side joins when it is installed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

GROUP = "reflex_mlx.backends"


@dataclass
class Loaded:
    """A model ready to drive the machine through reflex_core.predict."""

    runner: Any  # reflex_core.predict.Runner
    tokenizer: Any
    config: dict
    source: str  # what was loaded, for the user
    device: str
    peak_memory: Any = None  # () -> bytes at the peak so far on this backend's device, or None
    text_writer: Any = None  # messages -> text chunks (reflex_core.textmode), where the backbone writes text
    text_note: str = ""  # why it cannot, in one line, where it cannot


class Backend(Protocol):
    name: str
    requires: tuple[str, ...]  # importable modules it needs
    install_hint: str  # what to install when they are missing
    bundled: Path  # the folder of the reflex-tiny it ships, known without importing a framework

    def accelerated(self) -> bool:
        """Whether it computes on a GPU here (Metal or CUDA)."""

    def named(self, name: str) -> Path | None:
        """This backend's directory of a named model (reflex_core.smol.MODEL_NAMES);
        None for its bundled reflex-tiny; BackendError where it is not built here."""

    def load(self, model: Path | None, fast: bool = True) -> Loaded:
        """model: a directory this backend reads, or None for its bundled default."""

    def train(self, out: Path, options: dict, given: set[str], resume: bool) -> dict:
        """A training run into `out` with reflex_core.training's options (TrainDefaults'
        and this backend's own), `given` naming those the user set; a summary (with
        "peak_memory" where known). reflex_core.training.TrainError in one line."""


class BackendError(Exception):
    """A one-line reason a backend cannot be used."""


def registered() -> dict[str, str]:
    """name -> "module:object" of every installed backend."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails, or a module blocked in sys.modules
        return False


def installed(name: str) -> bool:
    """Registered and its frameworks importable (checked without importing them)."""
    spec = registered().get(name)
    if spec is None:
        return False
    backend = _import(spec)
    return all(_importable(module) for module in backend.requires)


def get(name: str) -> Backend:
    spec = registered().get(name)
    if spec is None:
        known = ", ".join(sorted(registered())) or "none"
        raise BackendError(f"no backend {name!r} is installed (installed: {known})")
    backend = _import(spec)
    missing = [m for m in backend.requires if not _importable(m)]
    if missing:
        raise BackendError(
            f"{missing[0]} is not installed: the {name} backend needs "
            f"{', '.join(backend.requires)} ({backend.install_hint})"
        )
    return backend


def is_bundled(path: Path) -> bool:
    """Whether `path` is the bundled reflex-tiny of a registered backend (each ships its own)."""
    where = Path(path).resolve()
    return any(Path(_import(spec).bundled).resolve() == where for spec in registered().values())


def choose() -> tuple[str, str]:
    """(name, why): MLX where it has a GPU, else torch when installed, else MLX on its CPU."""
    mlx_here = installed("mlx")
    if mlx_here and get("mlx").accelerated():
        return "mlx", "MLX has a GPU here"
    if installed("torch"):
        return "torch", "MLX has no GPU here and torch is installed" if mlx_here else "MLX is not installed"
    if mlx_here:
        return "mlx", "on its CPU: no GPU here and torch is not installed"
    raise BackendError("no backend is installed: pip install 'reflex-mlx' or 'reflex-mlx[torch]'")


def _import(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)
