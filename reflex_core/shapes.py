"""Model shapes and the configs built from them, defined once for every backend.

A `Shape` fixes a decoder backbone (its family: Qwen2 as released, or Llama,
Mistral, Qwen3) and the Reflex modules around it. The config builders turn it
into the Reflex checkpoint config (docs/design.md §2) and the backbone config
that transformers (`AutoConfig.for_model(**decoder_config(shape))`) and mlx-lm
(`ModelArgs.from_dict(...)`) both read, so no config is spelled twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .spec import DEFAULT_BACKBONE, MAX_INSTR_TOKENS, backbone_family


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
    family: str = "qwen2"  # the backbone's model_type (spec.SUPPORTED_BACKBONES)
    head_dim: int | None = None  # None: hidden // heads

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
# The fixture over a Llama backbone: no q/k/v biases, 3:1 grouped-query heads and
# rope base 1e5 as in SmolLM2, and a head size of its own (6 x 64 != 192), so the
# parity tests cover a second family. Widths divide by 64, so 4-bit quantizes every layer.
FIXTURE_LLAMA = FIXTURE.with_(
    family="llama", hidden=192, heads=6, kv_heads=2, head_dim=64, rope_theta=1e5, rms_eps=1e-5
)
# SmolLM2-135M-Instruct (reflex-smol's backbone; reflex_core/smol.py) and the
# Reflex modules trained over it, sized so the adapter file stays under 16 MiB.
SMOL = Shape(
    hidden=576,
    layers=30,
    heads=9,
    kv_heads=3,
    intermediate=1536,
    vocab=49152,
    embed_dim=256,
    num_instrs=0,
    mlp_ratio=1,
    inject_every=8,
    rope_theta=1e5,
    rms_eps=1e-5,
    max_positions=8192,
    tie_embeddings=True,
    family="llama",
)
SHAPES = {
    "release": RELEASE,
    "tiny-test": TINY_TEST,
    "fixture": FIXTURE,
    "fixture-llama": FIXTURE_LLAMA,
    "tiny": TINY,
    "smol": SMOL,
}


def checkpoint_config(shape: Shape, backbone_id: str = DEFAULT_BACKBONE, **overrides) -> dict:
    """The checkpoint config of a Reflex model of this shape (the released keys)."""
    return {
        "backbone_id": backbone_id,
        "hidden": shape.hidden,
        "inject_every": shape.inject_every,
        "adapter_mlp_ratio": shape.mlp_ratio,
        "max_instr_tokens": MAX_INSTR_TOKENS,
        "embed_dim": shape.embed_dim,
        "num_instrs": shape.num_instrs,
        "chat_template": True,
        "context_prefix": False,
        **overrides,
    }


def decoder_config(shape: Shape, **overrides) -> dict:
    """The backbone's config keys: transformers' names, which mlx-lm reads too,
    model_type included (`AutoConfig.for_model(**config)` builds it)."""
    extra = {"head_dim": shape.head_dim} if shape.head_dim else {}
    return {
        "model_type": shape.family,
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
        **extra,
        **overrides,
    }


def shape_of_decoder(config: dict, **reflex) -> Shape:
    """The Shape of an existing backbone config (transformers' or mlx-lm's keys);
    ValueError for a family Reflex does not run over."""
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
        family=backbone_family(config),
        head_dim=_own_head_dim(config),
        **{"embed_dim": 0, "num_instrs": 0, **reflex},
    )


def _own_head_dim(config: dict) -> int | None:
    """head_dim where the config sets one other than hidden // heads."""
    head_dim = config.get("head_dim")
    default = config["hidden_size"] // config["num_attention_heads"]
    return head_dim if head_dim and head_dim != default else None


def spell_rope_theta(config_path: Path) -> dict:
    """Newer transformers nest rope_theta under rope_parameters, where mlx-lm's
    Qwen2 and Llama do not look (they would silently use their defaults, 1e6
    and 1e4); write it at the top level of a saved backbone config too."""
    config = json.loads(Path(config_path).read_text())
    nested = (config.get("rope_parameters") or {}).get("rope_theta")
    if "rope_theta" not in config and nested is not None:
        config["rope_theta"] = nested
        Path(config_path).write_text(json.dumps(config, indent=4) + "\n")
    return config
