"""Load a converted model directory: config -> args -> modules -> sanitize -> weights (strict)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from reflex_core.errors import first_line
from reflex_core.folder import FolderError, read_config, validate_folder
from reflex_core.spec import ADAPTERS_FILE, MODEL_CONFIG_FILE, ReflexArgs

from . import BUNDLED_MODEL  # noqa: F401  (the bundled reflex-tiny, named here too for the loaders' callers)
from .model import Reflex, ReflexModel
from .quantize import quantize_like


class ModelError(Exception):
    """A one-line reason a model directory cannot be used."""


def read_model_config(model_dir: str | Path) -> dict:
    """The checked config.json of a directory written by `python -m convert` (bounded read, schema)."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise ModelError(f"no model directory at {model_dir}")
    if not (model_dir / MODEL_CONFIG_FILE).exists():
        raise ModelError(f"{model_dir} is not a converted Reflex model (no {MODEL_CONFIG_FILE})")
    try:
        return read_config(model_dir / MODEL_CONFIG_FILE)
    except FolderError as err:
        raise ModelError(str(err)) from None


def load_model(model_dir: str | Path) -> tuple[ReflexModel, object, dict]:
    """(model, tokenizer, config) from a directory written by `python -m convert`."""
    model, tokenizer, config, _ = load_with_language_model(model_dir)
    return model, tokenizer, config


def load_with_language_model(model_dir: str | Path) -> tuple[ReflexModel, object, dict, object]:
    """load_model's three, and mlx-lm's whole model (its decoder is the Reflex
    model's, the same arrays), for writing text (reflex_mlx/text.py).

    Only what Reflex reads is read into memory: the decoder and the Reflex
    modules. An untied text head (`lm_head`, 0.54 GiB of the released 7B at
    8 bits) stays a lazy array of its safetensors file, read the first time
    text is written (`TextWriter`)."""
    from mlx_lm.utils import load as load_backbone

    model_dir = Path(model_dir).expanduser()
    try:  # every file, header, codebook word and token id, before mlx reads a weight
        folder = validate_folder(model_dir)
    except FolderError as err:
        raise ModelError(str(err)) from None
    config, backbone_dir = folder.config, folder.backbone_dir
    try:
        backbone, tokenizer = load_backbone(str(backbone_dir), lazy=True)
    except Exception as err:  # mlx-lm raises many kinds; the user needs one line
        raise ModelError(f"cannot load the backbone in {model_dir}: {first_line(err)}") from None
    try:
        reflex = Reflex(ReflexArgs.from_config(config))
        weights = Reflex.sanitize(mx.load(str(model_dir / ADAPTERS_FILE)))
        quantize_like(reflex, config.get("adapter_quantization"), weights)
        expected = {name for name, _ in tree_flatten(reflex.parameters())}
        missing, unexpected = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
        if missing or unexpected:
            raise ModelError(
                f"{ADAPTERS_FILE} does not fit the config: missing {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                f"{' ...' if len(unexpected) > 3 else ''}"
            )
        reflex.load_weights(list(weights.items()), strict=True)
        if config.get("lora"):
            weights = {**weights, **_load_lora(reflex, model_dir, config["lora"])}
        model = ReflexModel(backbone, reflex)
    except ModelError as err:
        raise ModelError(f"cannot load the adapters in {model_dir}: {err}") from None
    except Exception as err:
        raise ModelError(f"cannot load the adapters in {model_dir}: {first_line(err)}") from None
    model.eval()
    mx.eval(model.parameters())
    _check_adapters(model_dir, weights)
    return model, tokenizer, config, backbone


def _load_lora(reflex: Reflex, model_dir: Path, lora: dict) -> dict:
    """A LoRA kept beside the adapters (reflex-mlx train --mode lora): the same layers
    wrapped again, then its matrices loaded, every one of them."""
    from .lora import LORA_FILE, apply_lora

    if not isinstance(lora, dict) or not isinstance(lora.get("rank"), int) or lora["rank"] < 1:
        raise ModelError(f"the config's lora entry is malformed: {lora!r:.80}")
    targets = lora.get("targets", "all")
    apply_lora(
        reflex,
        lora["rank"],
        float(lora.get("alpha", 2 * lora["rank"])),
        targets if targets == "all" else str(targets).split(","),
    )
    path = model_dir / LORA_FILE
    if not path.is_file():
        raise ModelError(f"the config names a LoRA but there is no {LORA_FILE}")
    weights = mx.load(str(path))
    expected = {n for n, _ in tree_flatten(reflex.parameters()) if n.endswith((".lora_a", ".lora_b"))}
    if set(weights) != expected:
        raise ModelError(f"{LORA_FILE} does not fit the config's LoRA layers")
    reflex.load_weights(list(weights.items()), strict=False)
    return weights


def _check_adapters(model_dir: Path, weights: dict) -> None:
    """Float weights finite, the codebook's words integers: a damaged file must not run."""
    for name, value in weights.items():
        if name == "instr_words":
            if not mx.issubdtype(value.dtype, mx.integer):
                raise ModelError(f"{model_dir}: the codebook words are {value.dtype}, not integers")
        elif name.endswith(".weight") and name[: -len("weight")] + "scales" in weights:
            if value.dtype != mx.uint32:  # a quantized layer's packed weight
                raise ModelError(f"{model_dir}: quantized adapter weight {name} is {value.dtype}, not uint32")
        elif not mx.issubdtype(value.dtype, mx.floating):
            raise ModelError(f"{model_dir}: adapter weight {name} is {value.dtype}, not a float type")
        elif not mx.all(mx.isfinite(value)).item():
            raise ModelError(f"{model_dir}: adapter weight {name} holds NaN or infinite values")
