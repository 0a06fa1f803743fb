"""Build the MLX model straight from an in-memory PyTorch ReflexModel.

The parity suite generates its random released-shape model in torch on the
GPU; writing 20 GB to disk and converting would dominate the run. This copies
the tensors across instead, with the same name mapping the converter uses
(`Reflex.sanitize`) and the same quantization (`nn.quantize`, group 64), so
the candidate is what `python -m convert` would have produced.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from reflex_core.spec import ADAPTER_HEADS, QUANT_GROUP_SIZE, adapter_layers

from .model import Reflex, ReflexArgs, ReflexModel


def to_mlx(t) -> mx.array:
    """A torch tensor as an MLX array of the same dtype (bf16 via its bit pattern)."""
    import torch

    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: move the 16-bit patterns
        return mx.array(t.view(torch.uint16).numpy()).view(mx.bfloat16)
    return mx.array(t.numpy())


def _backbone_args(qwen_config) -> dict:
    rope = getattr(qwen_config, "rope_parameters", None) or {}
    return dict(
        model_type="qwen2", hidden_size=qwen_config.hidden_size,
        num_hidden_layers=qwen_config.num_hidden_layers,
        intermediate_size=qwen_config.intermediate_size,
        num_attention_heads=qwen_config.num_attention_heads,
        num_key_value_heads=qwen_config.num_key_value_heads,
        rms_norm_eps=qwen_config.rms_norm_eps, vocab_size=qwen_config.vocab_size,
        max_position_embeddings=qwen_config.max_position_embeddings,
        rope_theta=rope.get("rope_theta", getattr(qwen_config, "rope_theta", None)),
        tie_word_embeddings=True,  # no lm_head: Reflex never reads logits
    )


def mlx_backbone_from_torch(qwen, dtype: str = "bfloat16", bits: int | None = None):
    """mlx-lm's Qwen2 `Model` holding the weights of a transformers `Qwen2Model`."""
    from mlx_lm.models.qwen2 import Model, ModelArgs

    args = ModelArgs(**_backbone_args(qwen.config))
    if args.rope_theta is None:
        raise ValueError("the backbone config has no rope_theta")
    model = Model(args)  # its random init is lazy and never evaluated: update() replaces it
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
        raise ValueError(f"weights missing {sorted(wanted - loaded)[:3]}, "
                         f"unexpected {sorted(loaded - wanted)[:3]}")
    if bits is not None:
        nn.quantize(model, group_size=QUANT_GROUP_SIZE, bits=bits)
    model.eval()
    mx.eval(model.parameters())
    return model


def mlx_model_from_torch(torch_model, config: dict, backbone_dtype: str = "bfloat16",
                         bits: int | None = None, adapter_dtype: str = "float32") -> ReflexModel:
    """The MLX ReflexModel equal (up to precision) to a torch `ReflexModel`."""
    qwen = torch_model.backbone
    backbone = mlx_backbone_from_torch(qwen, backbone_dtype, bits)
    num_layers = qwen.config.num_hidden_layers
    args = ReflexArgs.from_config({
        **config, "num_layers": num_layers, "adapter_heads": ADAPTER_HEADS,
        "adapter_layers": adapter_layers(num_layers, config["inject_every"]),
    })
    reflex = Reflex(args)
    target = getattr(mx, adapter_dtype)
    weights = Reflex.sanitize({k: to_mlx(v) for k, v in torch_model.reflex.state_dict().items()})
    weights = {k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v
               for k, v in weights.items()}
    reflex.load_weights(list(weights.items()), strict=True)
    model = ReflexModel(backbone, reflex)
    model.eval()
    mx.eval(model.parameters())
    return model


def release_torch_memory() -> None:
    """Hand torch's cached device memory back, so that MLX can use it (after `del model`)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
