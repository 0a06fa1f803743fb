"""The MLX backend of the command line (registered in pyproject.toml)."""

from __future__ import annotations

import sys
from pathlib import Path

from reflex_core.backends import BackendError, Loaded

from . import BUNDLED_MODEL, named_model


class MLXBackend:
    name = "mlx"
    requires = ("mlx", "mlx_lm")
    install_hint = "pip install mlx mlx-lm (mlx[cpu] on Linux)"
    bundled = BUNDLED_MODEL

    def accelerated(self) -> bool:
        import mlx.core as mx

        return mx.is_available(mx.gpu)

    def named(self, name: str) -> Path | None:
        return named_model(name)

    def load(self, model: Path | None, fast: bool = True) -> Loaded:
        """A converted model directory (python -m convert); None: the bundled reflex-tiny."""
        import mlx.core as mx

        from .fast import FastReflex
        from .loader import ModelError, load_with_language_model
        from .model import Reference
        from .quantize import nbytes
        from .text import TextWriter

        try:
            reflex, tokenizer, config, language_model = load_with_language_model(model or BUNDLED_MODEL)
        except ModelError as err:
            raise BackendError(str(err)) from None
        if fast:
            runner = FastReflex(reflex, fuse=True, compile=True)
        else:
            runner = Reference(reflex, tokenizer.pad_token_id or 0, config["max_instr_tokens"])
        warning = wire_model(nbytes(reflex.backbone) + nbytes(reflex.reflex), mx.device_info())
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        device = f"mlx {'gpu' if mx.default_device() == mx.gpu else 'cpu'}"
        note = text_note(config)
        writer = None if note else TextWriter(language_model, tokenizer)
        return Loaded(
            runner, tokenizer, config, str(model or BUNDLED_MODEL), device, mx.get_peak_memory, writer, note
        )

    def train(self, out: Path, options: dict, given: set[str], resume: bool) -> dict:
        """reflex_mlx.train: a converted model taught new programs (OUT: a model directory)."""
        import mlx.core as mx

        from .train import TrainOptions, train

        summary = train(TrainOptions(out=out, extra={"resume": resume}, **options), given)
        return {**summary, "peak_memory": mx.get_peak_memory()}


def text_note(config: dict) -> str:
    """Why this model's backbone cannot write text ("" when it can)."""
    if config.get("text_mode") is False:
        return "this backbone was trained from scratch for Reflex alone: it cannot write text"
    if config.get("text_head") is False:
        return "this backbone has no text head (converted from a base model, or with --no-text-head)"
    return ""


WIRE_ABOVE = 1 << 30  # models larger than this are wired (kept resident) on a Mac, as mlx-lm does


def wire_model(size: int, device_info: dict) -> str | None:
    """On a Mac, wire memory up to the recommended working set when the model is
    large (mlx-lm's habit: no paging out between cycles); returns a one-line
    warning when the model is larger than that working set, else None."""
    import mlx.core as mx

    recommended = device_info.get("max_recommended_working_set_size")
    if not recommended:  # not Metal: nothing to wire
        return None
    if size > WIRE_ABOVE:
        mx.set_wired_limit(recommended)
    if size > recommended:
        from reflex_core.spec import MAC_MEMORY_GB

        memory = round(device_info.get("memory_size", 0) / (1 << 30))
        fit = f"{memory}GB" if memory in MAC_MEMORY_GB else "SIZE, this Mac's memory"
        return (
            f"the model holds {size / (1 << 30):.1f} GiB, more than this Mac's recommended working set "
            f"({recommended / (1 << 30):.1f} GiB): expect it to be slow; convert it for this Mac "
            f"(python -m convert --fit {fit})"
        )
    return None


BACKEND = MLXBackend()
