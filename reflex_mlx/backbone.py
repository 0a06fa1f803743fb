"""Backbones in every layout the original accepts, read into mlx-lm's own models.

The released code loads its backbone with transformers' `AutoModel`, so any of
these is a valid backbone, and each becomes the same mlx-lm model here:

* a causal-LM directory (`Qwen2ForCausalLM.save_pretrained`: `model.` names,
  an `lm_head`), single or sharded safetensors;
* a base-model directory (`Qwen2Model.save_pretrained`: no `model.` prefix,
  no `lm_head`); `sanitize_names` adds the prefix, and the model is built
  with tied embeddings so that mlx-lm's strict load holds;
* an mlx-lm directory (from `mlx_lm.convert` or an mlx-community repo),
  quantized or not: loaded as it is, never quantized a second time.

A hub id is fetched with huggingface_hub (its progress bars and cache):
config first, so a backbone that does not fit is refused before gigabytes
are downloaded.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from reflex_core.folder import read_json

CAUSAL_LM = "causal-lm"
BASE_MODEL = "base-model"
MLX_QUANTIZED = "mlx-quantized"

# What a backbone directory needs: config, weights, tokenizer. No code files:
# nothing from a downloaded repository ever runs.
BACKBONE_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
)


class BackboneError(Exception):
    """A one-line reason a backbone cannot be read."""


def weight_files(path: Path) -> list[Path]:
    """The safetensors files mlx-lm reads (model*.safetensors), sorted."""
    return sorted(Path(path).glob("model*.safetensors"))


def weight_names(path: Path) -> set[str]:
    """Every tensor name, from the headers alone (MLX loads safetensors lazily)."""
    names: set[str] = set()
    for file in weight_files(path):
        names.update(mx.load(str(file)).keys())
    return names


def layout(path: Path, config: dict | None = None, names: set[str] | None = None) -> str:
    """CAUSAL_LM, BASE_MODEL or MLX_QUANTIZED, from the config and the weight names."""
    path = Path(path)
    config = config if config is not None else read_config(path)
    if config.get("quantization") or config.get("quantization_config"):
        if "quantization" not in config:  # GPTQ, AWQ, bitsandbytes...: transformers' own schemes
            method = config["quantization_config"].get("quant_method", "unknown")
            raise BackboneError(
                f"the backbone in {path} is quantized with {method}; give its unquantized "
                "transformers directory or an mlx-lm quantized one"
            )
        return MLX_QUANTIZED
    names = weight_names(path) if names is None else names
    if not names:
        raise BackboneError(f"no model*.safetensors weights in {path}")
    if any(name.startswith("model.") for name in names):
        return CAUSAL_LM
    if any(name.startswith(("layers.", "embed_tokens.")) for name in names):
        return BASE_MODEL
    raise BackboneError(f"the weights in {path} are not a decoder's (no layers.* or model.layers.* names)")


def read_config(path: Path) -> dict:
    try:
        config = read_json(Path(path) / "config.json")
    except ValueError as err:
        raise BackboneError(f"cannot read the backbone config in {path}: {err}") from None
    if not isinstance(config, dict):
        raise BackboneError(f"the backbone config in {path} is not a mapping")
    return config


def sanitize_names(weights: dict) -> dict:
    """Base-model names (`layers.0...`, `embed_tokens`, `norm`) under mlx-lm's `model.`;
    names already there pass through, so it is idempotent."""
    return {
        name if name.startswith(("model.", "lm_head.")) else f"model.{name}": value
        for name, value in weights.items()
    }


def _classes_for_base_names(config: dict):
    """mlx-lm's model class for the config, reading base-model weight names."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)

    class BaseNamed(model_class):
        def sanitize(self, weights):
            return super().sanitize(sanitize_names(weights))

    return BaseNamed, args_class


def load_backbone(path: str | Path, lazy: bool = True):
    """(mlx-lm model, its config, layout, has_lm_head) from a local backbone directory.

    Lazy by default: weights are read from disk when first evaluated, so a
    7B backbone can be quantized or streamed a layer at a time.
    """
    from mlx_lm.utils import _get_classes, load_model

    path = Path(path)
    config = read_config(path)
    names = weight_names(path)  # every shard's header, read once
    kind = layout(path, config, names)
    has_lm_head = bool(config.get("tie_word_embeddings")) or "lm_head.weight" in names
    overrides, classes = {}, _get_classes
    if kind == BASE_MODEL:
        classes = _classes_for_base_names
        if "lm_head.weight" not in names:
            overrides["tie_word_embeddings"] = True  # no head to load; Reflex never reads one
    try:
        model, config = load_model(path, lazy=lazy, model_config=overrides, get_model_classes=classes)
    except Exception as err:  # mlx-lm raises many kinds; the user needs one line
        from reflex_core.errors import first_line

        raise BackboneError(f"mlx-lm cannot build the backbone in {path}: {first_line(err)}") from None
    return model, config, kind, has_lm_head


def fetch_backbone(source: str) -> Path:
    """A local directory as is; a hub id downloaded (config, weights, tokenizer only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    from reflex_core.hub import hub_error, offline_if_unreachable

    offline_if_unreachable()
    try:
        return Path(snapshot_download(repo_id=source, allow_patterns=list(BACKBONE_FILES)))
    except Exception as err:  # the hub's many error kinds: one line for the user
        raise BackboneError(f"cannot fetch the backbone {source} from the hub: {hub_error(err)}") from None


# mlx-lm's own shard limit is 5 GB (mlx_lm.utils.MAX_FILE_SIZE_GB), and its
# save_model evaluates a whole shard at once: the shard's outputs and the sources
# still being read are resident together. Smaller shards bound that.
SHARD_BYTES = 1 << 30


def save_backbone(path: str | Path, model, shard_bytes: int | None = None) -> None:
    """mlx-lm's layout (model-0000i-of-0000N.safetensors, or model.safetensors, and
    the index mlx-lm writes) from a lazily loaded, cast or quantized model, one
    tensor evaluated at a time and each shard written and freed before the next
    is read: what is resident is one shard's outputs and one tensor's sources.
    The model's parameters are emptied as they are taken (it is not usable after)."""
    import json

    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.utils import get_total_parameters

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shard_bytes = shard_bytes or SHARD_BYTES
    weights = dict(tree_flatten(model.parameters()))
    total_parameters = get_total_parameters(model)
    model.update(tree_map(lambda _: mx.array([]), model.parameters()))  # only `weights` holds them
    shards: list[list[str]] = [[]]
    size = 0
    for name, value in weights.items():  # boundaries from shapes alone
        if shards[-1] and size + value.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += value.nbytes
    pattern = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
    index = {
        "metadata": {
            "total_size": sum(v.nbytes for v in weights.values()),
            "total_parameters": total_parameters,
        },
        "weight_map": {},
    }
    for i, names in enumerate(shards):
        file = pattern.format(i + 1, len(shards))
        shard = {}
        for name in names:
            shard[name] = weights.pop(name)
            mx.eval(shard[name])  # its sources are freed once read; a quantized layer's scales come too
            mx.clear_cache()
        mx.save_safetensors(str(path / file), shard, metadata={"format": "mlx"})
        index["weight_map"].update(dict.fromkeys(names, file))
        del shard
        mx.clear_cache()
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
