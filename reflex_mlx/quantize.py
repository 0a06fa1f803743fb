"""Precision recipes for a Reflex model in MLX, through mlx-lm's own quantizer.

A recipe names the backbone's precision (a float dtype, uniform `bits` at a
group size, or one of mlx-lm's mixed recipes such as mixed_4_6) and the
adapter side's (a float dtype, or its linear layers quantized). The backbone
goes through `mlx_lm.utils.quantize_model` with mlx-lm's predicates
(`mixed_quant_predicate_builder` for the mixed recipes); the adapter side
through `nn.quantize` with a predicate that keeps the codebook, the byte
embeddings and every norm in float. The codebook similarity stays float32
whatever the recipe (reflex_mlx/model.py `Reflex.scores`).

`weight_bytes` and `bytes_per_cycle` count what a recipe stores and what the
fast path reads each cycle, from array shapes alone: on a lazily built model
nothing is allocated, so the released 7B shape can be counted on any machine.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from reflex_core.spec import FLOAT_DTYPES, QUANT_GROUP_SIZE


@dataclass(frozen=True)
class Recipe:
    """backbone: a float dtype, or "q" (bits, group_size) or a mixed recipe name;
    adapters: a float dtype, optionally with their linear layers quantized."""

    backbone_dtype: str | None = "float16"  # None: the source's own float dtype
    bits: int | None = None
    group_size: int = QUANT_GROUP_SIZE
    mixed: str | None = None  # e.g. "mixed_4_6" (mlx-lm's recipes)
    adapter_dtype: str = "float32"
    adapter_bits: int | None = None

    @property
    def backbone_name(self) -> str:
        if self.mixed:
            return f"{self.mixed} g{self.group_size}"
        if self.bits:
            return f"{self.bits}-bit g{self.group_size}"
        return self.backbone_dtype or "as stored"

    @property
    def adapter_name(self) -> str:
        return f"{self.adapter_bits}-bit" if self.adapter_bits else self.adapter_dtype

    @property
    def quantizes_backbone(self) -> bool:
        return bool(self.bits or self.mixed)

    def describe(self) -> dict:
        """The recipe as recorded in a converted model's config.json."""
        return {
            "backbone": self.backbone_name,
            "backbone_dtype": self.backbone_dtype,
            "bits": self.bits,
            "group_size": self.group_size if self.quantizes_backbone else None,
            "mixed": self.mixed,
            "adapter_dtype": self.adapter_dtype,
            "adapter_bits": self.adapter_bits,
        }


def parse_recipe(spec: str) -> Recipe:
    """A recipe by its name in the precision table, BACKBONE/ADAPTERS: BACKBONE a float
    dtype, NbitGROUP such as 8bit-g64, or mixed_4_6-g64; ADAPTERS a float dtype or Nbit
    (their linear layers quantized). Quantized backbones keep float16 scales."""
    backbone, _, adapters = spec.partition("/")
    adapters = adapters or "float32"
    kw: dict = {}
    if backbone in FLOAT_DTYPES:
        kw["backbone_dtype"] = backbone
    elif m := re.fullmatch(r"(\d)bit-g(\d+)", backbone):
        kw.update(bits=int(m[1]), group_size=int(m[2]))
    elif m := re.fullmatch(r"(mixed_\d_\d)-g(\d+)", backbone):
        kw.update(mixed=m[1], group_size=int(m[2]))
    else:
        raise ValueError(f"unknown backbone precision {backbone!r}")
    if adapters in FLOAT_DTYPES:
        kw["adapter_dtype"] = adapters
    elif m := re.fullmatch(r"(\d)bit", adapters):
        kw["adapter_bits"] = int(m[1])
    else:
        raise ValueError(f"unknown adapter precision {adapters!r}")
    return Recipe(**kw)


# The converter's defaults, chosen from reflex-smol's precision table
# (docs/precision.md, docs/results/precision_reflex-smol.json) by its rule: the
# smallest recipe whose same-word agreement is >= 99.5 % with the reference's
# pass set (convert.recipes.default_entry applies the rule; a test holds the two
# together). For the released 7B shape: 8.70 GiB resident, fits a 16 GB Mac.
DEFAULT_RECIPE = Recipe(bits=8, adapter_bits=8)


def quantize_backbone(model: nn.Module, recipe: Recipe) -> dict:
    """Cast the mlx-lm model (the whole `Model`, lm_head and all) to the recipe's
    float dtype, then quantize it as mlx-lm does; returns the per-layer
    quantization entries mlx-lm would record in its config ({} when unquantized)."""
    from mlx_lm.convert import mixed_quant_predicate_builder
    from mlx_lm.utils import quantize_model

    if recipe.backbone_dtype is not None:
        dtype = getattr(mx, recipe.backbone_dtype)
        model.apply(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p)
    if not recipe.quantizes_backbone:
        return {}
    predicate = (
        mixed_quant_predicate_builder(recipe.mixed, model, recipe.group_size) if recipe.mixed else None
    )
    with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints its bits per weight
        _, quantized = quantize_model(model, {}, recipe.group_size, recipe.bits, quant_predicate=predicate)
    if not any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()):
        raise ValueError(
            f"no backbone layer's input width is a multiple of the group size {recipe.group_size}"
        )
    return quantized["quantization"]


def unquantized_layers(model: nn.Module) -> list[str]:
    """Matrices a quantizer left in float: those whose width the group size does not divide."""
    return [path for path, m in model.named_modules() if type(m) in (nn.Linear, nn.Embedding)]


def _adapter_linear(group_size: int):
    """The adapter side's matrices: attention, MLPs, value projection and head; not
    the codebook (instr_table), the byte and role embeddings, or the norms. Only
    those whose input width the group size divides can be quantized."""
    return lambda path, module: isinstance(module, nn.Linear) and module.weight.shape[-1] % group_size == 0


def quantize_adapters(
    reflex: nn.Module, recipe: Recipe, group_size: int = QUANT_GROUP_SIZE, within=None
) -> dict | None:
    """The Reflex modules in the recipe's dtype, their linear layers quantized if
    asked; returns what the loader needs to rebuild them (None when float).
    within(path) -> bool limits it to a part of the modules (a converter streams
    them a part at a time); the refusal when no layer fits looks at them all."""
    within = within or (lambda path: True)
    dtype = getattr(mx, recipe.adapter_dtype)
    cast = [
        (name, p.astype(dtype))
        for name, p in tree_flatten(reflex.parameters())
        if within(name) and mx.issubdtype(p.dtype, mx.floating) and p.dtype != dtype
    ]
    if cast:
        reflex.load_weights(cast, strict=False)
    if not recipe.adapter_bits:
        return None
    fits = _adapter_linear(group_size)
    if not any(fits(path, m) or isinstance(m, nn.QuantizedLinear) for path, m in reflex.named_modules()):
        raise ValueError(f"no adapter layer's input width is a multiple of the group size {group_size}")
    predicate = lambda path, module: within(path) and fits(path, module)  # noqa: E731
    nn.quantize(reflex, group_size=group_size, bits=recipe.adapter_bits, class_predicate=predicate)
    return {"bits": recipe.adapter_bits, "group_size": group_size}


def quantize_like(reflex: nn.Module, quantization: dict | None, weights: dict) -> None:
    """Rebuild a saved model's quantized adapter layers before its weights load:
    exactly those whose scales were saved."""
    if quantization:
        nn.quantize(
            reflex,
            group_size=quantization["group_size"],
            bits=quantization["bits"],
            class_predicate=lambda path, module: f"{path}.scales" in weights,
        )


def nbytes(module: nn.Module) -> int:
    """Bytes of every array the module holds (shapes and dtypes only)."""
    return sum(a.size * a.itemsize for _, a in tree_flatten(module.parameters()))


def weight_bytes(model) -> dict:
    """Stored bytes of a ReflexModel: its backbone (inner model: embeddings, layers,
    norm) and its Reflex modules."""
    return {"backbone": nbytes(model.backbone), "adapters": nbytes(model.reflex)}


def bytes_per_cycle(model) -> int:
    """Weight bytes the fast path reads each cycle (reflex_mlx/fast.py): the decoder
    layers after the cached prefix (the first adapter's layer is in the prefix),
    the final norm, and every Reflex module (state encoder, adapters, head,
    codebook). The embeddings and the prefix layers are read once per prompt."""
    first = model.adapter_layers[0]
    layers = sum(nbytes(layer) for layer in model.backbone.layers[first + 1 :])
    return layers + nbytes(model.backbone.norm) + nbytes(model.reflex)


def resident_bytes(backbone: nn.Module, reflex: nn.Module) -> int:
    """Everything a loaded model holds: the whole mlx-lm model (embeddings, layers,
    norm, lm_head where untied) and the Reflex modules."""
    return nbytes(backbone) + nbytes(reflex)


def bits_per_weight(module: nn.Module) -> float:
    """Stored bits per weight of the module's matrices and vectors, scales and biases included."""
    from mlx_lm.utils import compute_bits_per_weight

    return compute_bits_per_weight(module)
