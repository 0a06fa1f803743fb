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
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


@dataclass(frozen=True)
class Recipe:
    """backbone: a float dtype, or "q" (bits, group_size) or a mixed recipe name;
    adapters: a float dtype, optionally with their linear layers quantized."""

    backbone_dtype: str = "float16"
    bits: int | None = None
    group_size: int = 64
    mixed: str | None = None  # e.g. "mixed_4_6" (mlx-lm's recipes)
    adapter_dtype: str = "float32"
    adapter_bits: int | None = None

    @property
    def backbone_name(self) -> str:
        if self.mixed:
            return f"{self.mixed} g{self.group_size}"
        if self.bits:
            return f"{self.bits}-bit g{self.group_size}"
        return self.backbone_dtype

    @property
    def adapter_name(self) -> str:
        return f"{self.adapter_bits}-bit" if self.adapter_bits else self.adapter_dtype


def quantize_backbone(model: nn.Module, recipe: Recipe) -> dict:
    """Cast the mlx-lm model (the whole `Model`, lm_head and all) to the recipe's
    float dtype, then quantize it as mlx-lm does; returns the per-layer
    quantization entries mlx-lm would record in its config ({} when unquantized)."""
    from mlx_lm.convert import mixed_quant_predicate_builder
    from mlx_lm.utils import quantize_model

    dtype = getattr(mx, recipe.backbone_dtype)
    model.apply(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p)
    if not (recipe.bits or recipe.mixed):
        return {}
    predicate = (
        mixed_quant_predicate_builder(recipe.mixed, model, recipe.group_size) if recipe.mixed else None
    )
    with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints its bits per weight
        _, quantized = quantize_model(model, {}, recipe.group_size, recipe.bits, quant_predicate=predicate)
    return quantized["quantization"]


def _adapter_linear(path: str, module: nn.Module) -> bool:
    """The adapter side's matrices: attention, MLPs, value projection and head; not
    the codebook (instr_table), the byte and role embeddings, or the norms."""
    return isinstance(module, nn.Linear)


def quantize_adapters(reflex: nn.Module, recipe: Recipe, group_size: int = 64) -> None:
    """The Reflex modules in the recipe's dtype, their linear layers quantized if asked."""
    dtype = getattr(mx, recipe.adapter_dtype)
    reflex.apply(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p)
    if recipe.adapter_bits:
        nn.quantize(reflex, group_size=group_size, bits=recipe.adapter_bits, class_predicate=_adapter_linear)


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


def bits_per_weight(module: nn.Module) -> float:
    """Stored bits per weight of the module's matrices and vectors, scales and biases included."""
    from mlx_lm.utils import compute_bits_per_weight

    return compute_bits_per_weight(module)
