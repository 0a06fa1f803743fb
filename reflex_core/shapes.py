"""Model shapes and the configs built from them, defined once for every backend.

A `Shape` fixes a Qwen2 backbone and the Reflex modules around it. The config
builders turn it into the Reflex checkpoint config (docs/design.md §2) and the
Qwen2 config that transformers (`Qwen2Config(**qwen2_config(shape))`) and
mlx-lm (`ModelArgs.from_dict(...)`) both read, so no config is spelled twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .spec import DEFAULT_BACKBONE


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    embed_dim: int
    num_instrs: int
    mlp_ratio: int = 4
    inject_every: int = 4
    rope_theta: float = 1e6
    rms_eps: float = 1e-6
    max_positions: int = 32768
    tie_embeddings: bool = False

    def with_(self, **changes) -> Shape:
        return replace(self, **changes)


# Qwen2.5-Coder-7B-Instruct and the released Reflex around it (docs/design.md §2).
RELEASE = Shape(
    hidden=3584,
    layers=28,
    heads=28,
    kv_heads=4,
    intermediate=18944,
    vocab=152064,
    embed_dim=256,
    num_instrs=691,
)
# The release's structure (2 adapters) small enough for a CPU test in seconds.
TINY_TEST = Shape(
    hidden=256, layers=8, heads=8, kv_heads=2, intermediate=512, vocab=1000, embed_dim=64, num_instrs=128
)
# The random test checkpoint of reflex_torch.random (vocab and codebook set when built).
FIXTURE = Shape(
    hidden=64,
    layers=8,
    heads=4,
    kv_heads=2,
    intermediate=128,
    vocab=400,
    embed_dim=32,
    num_instrs=0,
    max_positions=512,
    tie_embeddings=True,
)
# reflex-tiny, trained from scratch by reflex_torch.train (its defaults).
TINY = Shape(
    hidden=192,
    layers=8,
    heads=4,
    kv_heads=2,
    intermediate=512,
    vocab=1024,
    embed_dim=128,
    num_instrs=0,
    max_positions=512,
    tie_embeddings=True,
)
SHAPES = {"release": RELEASE, "tiny-test": TINY_TEST, "fixture": FIXTURE, "tiny": TINY}


def checkpoint_config(shape: Shape, backbone_id: str = DEFAULT_BACKBONE, **overrides) -> dict:
    """The checkpoint config of a Reflex model of this shape (the released keys)."""
    return {
        "backbone_id": backbone_id,
        "hidden": shape.hidden,
        "inject_every": shape.inject_every,
        "adapter_mlp_ratio": shape.mlp_ratio,
        "max_instr_tokens": 96,
        "embed_dim": shape.embed_dim,
        "num_instrs": shape.num_instrs,
        "chat_template": True,
        "context_prefix": False,
        **overrides,
    }


def qwen2_config(shape: Shape, **overrides) -> dict:
    """Qwen2 config keys (transformers' names, which mlx-lm reads too; add model_type there)."""
    return {
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": shape.max_positions,
        "rope_theta": shape.rope_theta,
        "rms_norm_eps": shape.rms_eps,
        "tie_word_embeddings": shape.tie_embeddings,
        **overrides,
    }


def shape_of_qwen2(config: dict, **reflex) -> Shape:
    """The Shape of an existing Qwen2 config (transformers' or mlx-lm's keys)."""
    rope_theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta")
    if rope_theta is None:
        raise ValueError("the backbone config has no rope_theta")
    return Shape(
        hidden=config["hidden_size"],
        layers=config["num_hidden_layers"],
        heads=config["num_attention_heads"],
        kv_heads=config["num_key_value_heads"],
        intermediate=config["intermediate_size"],
        vocab=config["vocab_size"],
        rope_theta=rope_theta,
        rms_eps=config["rms_norm_eps"],
        max_positions=config.get("max_position_embeddings", 32768),
        tie_embeddings=config.get("tie_word_embeddings", False),
        **{"embed_dim": 0, "num_instrs": 0, **reflex},
    )
