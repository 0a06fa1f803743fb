"""The one module that imports both frameworks: torch weights copied into MLX.

The parity suite and the speed bench draw their random released-shape model in
torch on the GPU; writing 20 GB to disk and converting would dominate the run.
This copies the tensors across instead, with the converter's name mapping
(`Reflex.sanitize`) and mlx-lm's quantization (`nn.quantize`, group 64), so
the candidate is what `python -m convert` would have produced.
"""

from __future__ import annotations

import gc

import mlx.core as mx
import mlx.nn as nn
import torch
from mlx.utils import tree_flatten

from reflex_core.shapes import decoder_config, shape_of_decoder
from reflex_core.spec import QUANT_GROUP_SIZE
from reflex_mlx.model import Reflex, ReflexModel


def to_mlx(t: torch.Tensor) -> mx.array:
    """A torch tensor as an MLX array of the same dtype (bf16 via its bit pattern)."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: move the 16-bit patterns
        return mx.array(t.view(torch.uint16).numpy()).view(mx.bfloat16)
    return mx.array(t.numpy())


def mlx_backbone_from_torch(qwen, dtype: str = "bfloat16", bits: int | None = None):
    """mlx-lm's `Model` of the same family (Qwen2, Llama, ...) holding the weights
    of a transformers base model."""
    from mlx_lm.utils import _get_classes

    shape = shape_of_decoder(qwen.config.to_dict())
    # no lm_head (tied): Reflex never reads logits
    config = decoder_config(shape, tie_word_embeddings=True)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    target = getattr(mx, dtype)
    wanted = {name for name, _ in tree_flatten(model.parameters())}
    loaded = set()
    # One tensor at a time, evaluated at once, so host memory holds one copy at most.
    for name, tensor in qwen.state_dict().items():
        if "rotary_emb" in name:
            continue
        value = to_mlx(tensor).astype(target)
        mx.eval(value)
        model.load_weights([(f"model.{name}", value)], strict=False)
        loaded.add(f"model.{name}")
    if loaded != wanted:
        raise ValueError(
            f"weights missing {sorted(wanted - loaded)[:3]}, unexpected {sorted(loaded - wanted)[:3]}"
        )
    if bits is not None:
        nn.quantize(model, group_size=QUANT_GROUP_SIZE, bits=bits)
    model.eval()
    mx.eval(model.parameters())
    return model


def mlx_model_from_torch(
    torch_model, backbone_dtype: str = "bfloat16", bits: int | None = None, adapter_dtype: str = "float32"
) -> ReflexModel:
    """The MLX ReflexModel equal (up to precision) to a torch `ReflexModel`."""
    backbone = mlx_backbone_from_torch(torch_model.backbone, backbone_dtype, bits)
    model = ReflexModel(backbone, mlx_reflex_from_torch(torch_model.reflex, adapter_dtype))
    model.eval()
    mx.eval(model.parameters())
    return model


def mlx_reflex_from_torch(torch_reflex, dtype: str = "float32") -> Reflex:
    """The MLX Reflex modules holding a torch `Reflex`'s weights (converter's names), in `dtype`."""
    reflex = Reflex(torch_reflex.args)
    target = getattr(mx, dtype)
    weights = Reflex.sanitize({k: to_mlx(v) for k, v in torch_reflex.state_dict().items()})
    reflex.load_weights(
        [(k, v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in weights.items()],
        strict=True,
    )
    return reflex


def release_torch_memory(model=None) -> None:
    """Hand torch's device memory back so that MLX can use it (the model moves to meta)."""
    if model is not None:
        model.to("meta")  # frees its tensors even where a caller still holds the model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
