"""Load a converted model directory: config -> args -> modules -> sanitize -> weights (strict)."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from reflex_core.errors import first_line
from reflex_core.spec import (
    ADAPTERS_FILE,
    BACKBONE_DIR,
    MODEL_CONFIG_FILE,
    MODEL_FORMAT,
    ReflexArgs,
    reflex_config,
)

from .model import Reflex, ReflexModel

# reflex-tiny, converted, shipped inside this package: the offline default.
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "reflex-tiny"


class ModelError(Exception):
    """A one-line reason a model directory cannot be used."""


def read_model_config(model_dir: str | Path) -> dict:
    """The checked config.json of a directory written by `python -m convert`."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise ModelError(f"no model directory at {model_dir}")
    config_path = model_dir / MODEL_CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{model_dir} is not a converted Reflex model (no {MODEL_CONFIG_FILE})") from None
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read {config_path}: {first_line(err)}") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise ModelError(f"{config_path} is not a {MODEL_FORMAT} model config")
    try:
        return reflex_config(config)
    except ValueError as err:
        raise ModelError(f"{config_path}: {err}") from None


def load_model(model_dir: str | Path) -> tuple[ReflexModel, object, dict]:
    """(model, tokenizer, config) from a directory written by `python -m convert`."""
    from mlx_lm.utils import load as load_backbone

    model_dir = Path(model_dir).expanduser()
    config = read_model_config(model_dir)
    try:
        backbone, tokenizer = load_backbone(str(model_dir / config.get("backbone", BACKBONE_DIR)))
    except Exception as err:  # mlx-lm raises many kinds; the user needs one line
        raise ModelError(f"cannot load the backbone in {model_dir}: {first_line(err)}") from None
    try:
        reflex = Reflex(ReflexArgs.from_config(config))
        weights = Reflex.sanitize(mx.load(str(model_dir / ADAPTERS_FILE)))
        reflex.load_weights(list(weights.items()), strict=True)
        model = ReflexModel(backbone, reflex)
    except Exception as err:
        raise ModelError(f"cannot load the adapters in {model_dir}: {first_line(err)}") from None
    model.eval()
    mx.eval(model.parameters())
    return model, tokenizer, config
