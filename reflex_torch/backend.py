"""The PyTorch backend of the command line (registered in pyproject.toml)."""

from __future__ import annotations

import os
from pathlib import Path

from reflex_core.backends import BackendError, Loaded
from reflex_core.folder import FolderError, check_backbone_files, read_config
from reflex_core.spec import MODEL_CONFIG_FILE

from . import BUNDLED_MODEL


def _sources(model: Path | None) -> tuple[str | None, str | None, str]:
    """(checkpoint, backbone, description) for a model directory.

    A directory holding reflex.pt (and backbone/ or a backbone_id) is read as
    it is; a converted MLX directory names the sources it was made from
    (None: the release on the hub).
    """
    if model is None:
        return str(BUNDLED_MODEL / "reflex.pt"), None, str(BUNDLED_MODEL)
    model = Path(model).expanduser()
    try:
        if (model / "reflex.pt").is_file():
            backbone = model / "backbone"  # else the checkpoint's backbone_id
            if backbone.is_dir():
                check_backbone_files(backbone)
            return str(model / "reflex.pt"), str(backbone) if backbone.is_dir() else None, str(model)
        if not os.path.lexists(model / MODEL_CONFIG_FILE):
            raise BackendError(f"{model} holds no reflex.pt and no converted model config")
        config = read_config(model / MODEL_CONFIG_FILE)
    except FolderError as err:
        raise BackendError(str(err)) from None
    checkpoint = config.get("source_checkpoint")
    return checkpoint, config.get("source_backbone"), checkpoint or "the release"


class TorchBackend:
    name = "torch"
    requires = ("torch", "transformers")
    install_hint = "pip install 'reflex-mlx[torch]'"
    bundled = BUNDLED_MODEL

    def accelerated(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def named(self, name: str) -> Path | None:
        """tiny: the bundled one; smol: reflex_torch/models/reflex-smol (its backbone
        built by make smol)."""
        return None if name == "tiny" else BUNDLED_MODEL.parent / "reflex-smol"

    def load(self, model: Path | None, fast: bool = True) -> Loaded:
        """A torch model directory (reflex.pt + backbone) or a converted MLX
        directory's sources; None: the bundled reflex-tiny."""
        from transformers.utils import logging as hf_logging

        from .fast import FastReflex
        from .loader import load_model
        from .model import Reference

        hf_logging.disable_progress_bar()  # the command line says what it loads in one line
        checkpoint, backbone, source = _sources(model)
        try:
            reflex, tokenizer, config = load_model(checkpoint, backbone=backbone)
        except (OSError, ValueError, RuntimeError) as err:
            from reflex_core.errors import first_line

            raise BackendError(f"cannot load {source}: {first_line(err)}") from None
        if fast:
            runner = FastReflex(reflex, fuse=True)
        else:
            runner = Reference(reflex, tokenizer.pad_token_id or 0, config["max_instr_tokens"])
        note = "the text side runs on the MLX backend (--backend mlx)"
        return Loaded(runner, tokenizer, config, source, f"torch {runner.device}", _peak_memory, None, note)

    def train(self, out: Path, options: dict, given: set[str], resume: bool) -> dict:
        """reflex_torch.train in this process (torchrun runs python -m reflex_torch.train)."""
        from .train import run

        summary = run({**options, "out": out, "resume": resume}, {*given, "out"})
        return {**summary, "peak_memory": _peak_memory()}


def _peak_memory() -> int:
    """CUDA's peak allocation where torch runs on it, else this process's peak resident set."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    from reflex_core.timing import peak_rss

    return peak_rss()


BACKEND = TorchBackend()
