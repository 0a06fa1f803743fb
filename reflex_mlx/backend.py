"""The MLX backend of the command line (registered in pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

from reflex_core.backends import BackendError, Loaded


class MLXBackend:
    name = "mlx"
    requires = ("mlx", "mlx_lm")
    install_hint = "pip install mlx mlx-lm (mlx[cpu] on Linux)"

    def accelerated(self) -> bool:
        import mlx.core as mx

        return mx.is_available(mx.gpu)

    def named(self, name: str) -> Path | None:
        from reflex_core.smol import smol_mlx_dir

        if name == "tiny":
            return None
        if not smol_mlx_dir().is_dir():
            raise BackendError(
                f"reflex-smol is not converted on this machine ({smol_mlx_dir()}): run make smol"
            )
        return smol_mlx_dir()

    def load(self, model: Path | None, fast: bool = True) -> Loaded:
        """A converted model directory (python -m convert); None: the bundled reflex-tiny."""
        import mlx.core as mx

        from .fast import FastReflex
        from .load import BUNDLED_MODEL, ModelError, load_model
        from .model import Reference

        try:
            reflex, tokenizer, config = load_model(model or BUNDLED_MODEL)
        except ModelError as err:
            raise BackendError(str(err)) from None
        if fast:
            runner = FastReflex(reflex, fuse=True, compile=True)
        else:
            runner = Reference(reflex, tokenizer.pad_token_id or 0, config["max_instr_tokens"])
        device = f"mlx {'gpu' if mx.default_device() == mx.gpu else 'cpu'}"
        return Loaded(runner, tokenizer, config, str(model or BUNDLED_MODEL), device)


BACKEND = MLXBackend()
