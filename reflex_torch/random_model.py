"""A Reflex model of any shape with random weights, generated from a seed on the device.

Parity at the released shape needs a 7.6 B-parameter model without a download,
so the weights are drawn here: modules are built on the meta device (no memory,
no default init) and materialised once, then every tensor is filled from one
`torch.Generator` on the target device in a fixed order. The same seed on the
same kind of device gives the same weights; CPU and CUDA draw different numbers.

Scales keep the activations sane at any width, so the small test shape behaves
like the released one, and make both the state and the adapters matter:
linears std 1/sqrt(fan_in) (unit gain; Qwen's fixed 0.02 would be a gain of
1.2 at width 3584 but 0.3 at 256), the backbone's residual-branch outputs
(o_proj, down_proj) further by 1/sqrt(2 * layers) so that the stream stays
O(1) over depth, random q/k/v biases, embeddings std 1 (the state encoder's
role embedding 0.3, so that the state's values, not its positions, dominate
kv), norms at identity, adapter query/key rows x4 (sharp attention over the
state tokens), tanh gates at 0.5, a standard-normal codebook. With these the
decoded word varies with the state (14 distinct words over 256 corpus states
at the test shape; with 0.02 linears every state decoded the same word).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import Qwen2Config, Qwen2Model

from reflex_core import rv32i
from reflex_core.spec import DEFAULT_BACKBONE, HALT_WORD, adapter_layers

from .model import Reflex, ReflexModel

EMBED_STD = 1.0
ROLE_STD = 0.3
BIAS_STD = 0.02
QK_SCALE = 4.0  # adapter attention logits of std ~16: each query picks a few state tokens
GATE = math.atanh(0.5)  # tanh(gate) = 0.5: each adapter adds half its update


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    rope_theta: float
    rms_eps: float
    mlp_ratio: int
    embed_dim: int
    num_instrs: int
    inject_every: int = 4


# Qwen2.5-Coder-7B-Instruct + the released Reflex (DESIGN.md §2).
RELEASE = Shape(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064,
                rope_theta=1e6, rms_eps=1e-6, mlp_ratio=4, embed_dim=256, num_instrs=691)
# Small enough for a CPU test in seconds, same structure (2 adapters).
TINY_TEST = Shape(hidden=256, layers=8, heads=8, kv_heads=2, intermediate=512, vocab=1000,
                  rope_theta=1e6, rms_eps=1e-6, mlp_ratio=4, embed_dim=64, num_instrs=128)
SHAPES = {"release": RELEASE, "tiny-test": TINY_TEST}


def codebook_words(n: int) -> list[int]:
    """n distinct real RV32I words, HALT first; no randomness needed."""
    words = [HALT_WORD]
    for imm in range(-64, 64):
        for rd in range(5, 16):
            words += [rv32i.addi(rd, 0, imm), rv32i.addi(rd, rd, imm)]
            words += [rv32i.lw(rd, 6, 4 * imm), rv32i.sw(rd, 6, 4 * imm)]
    for rd in range(5, 16):
        for rs in range(0, 16):
            words += [rv32i.add(rd, rd, rs), rv32i.sub(rd, rd, rs)]
    unique = list(dict.fromkeys(w & 0xFFFFFFFF for w in words))
    if n > len(unique):
        raise ValueError(f"only {len(unique)} distinct codebook words available")
    # Evenly spaced picks, so that any size mixes the instruction kinds.
    rest, step = unique[1:], (len(unique) - 1) / max(1, n - 1)
    return [unique[0]] + [rest[int(i * step)] for i in range(n - 1)]


def qwen_config(shape: Shape) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, max_position_embeddings=32768,
        rope_theta=shape.rope_theta, rms_norm_eps=shape.rms_eps, tie_word_embeddings=False,
    )


def reflex_config_for(shape: Shape) -> dict:
    """The checkpoint config (DESIGN.md §2 keys) of a random model of this shape."""
    return {
        "backbone_id": DEFAULT_BACKBONE, "hidden": shape.hidden,
        "inject_every": shape.inject_every, "adapter_mlp_ratio": shape.mlp_ratio,
        "max_instr_tokens": 96, "embed_dim": shape.embed_dim, "num_instrs": shape.num_instrs,
        "chat_template": True, "context_prefix": False,
    }


def _fill(name: str, p: torch.Tensor, gen: torch.Generator, layers: int) -> None:
    """Initialise one parameter in place according to its role (see module doc)."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("_gate"):
        p.fill_(GATE)
    elif "norm" in name:  # RMSNorm / LayerNorm weights and biases
        p.fill_(1.0 if leaf == "weight" else 0.0)
    elif "role_embed" in name:
        p.normal_(0.0, ROLE_STD, generator=gen)
    elif ("embed" in name and "embed_head" not in name) or name.startswith("instr_table"):
        p.normal_(0.0, EMBED_STD, generator=gen)
    elif leaf.endswith("bias"):
        if ".self_attn." in name:
            p.normal_(0.0, BIAS_STD, generator=gen)  # Qwen's q/k/v biases
        else:
            p.zero_()
    else:
        std = p.shape[-1] ** -0.5
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            std /= math.sqrt(2 * layers)
        p.normal_(0.0, std, generator=gen)
        if leaf == "in_proj_weight":  # packed Wq; Wk; Wv
            p[: 2 * p.shape[1]].mul_(QK_SCALE)


@torch.no_grad()
def build_random_reflex(
    shape: Shape, seed: int = 0, device: str | torch.device = "cpu",
    backbone_dtype: torch.dtype = torch.bfloat16, adapter_dtype: torch.dtype = torch.float32,
) -> tuple[ReflexModel, dict]:
    """(ReflexModel in eval mode, config) with deterministic random weights on `device`."""
    device = torch.device(device)
    config = reflex_config_for(shape)
    qcfg = qwen_config(shape)
    num_adapters = len(adapter_layers(shape.layers, shape.inject_every))
    with torch.device("meta"):
        qwen = Qwen2Model._from_config(qcfg, dtype=backbone_dtype)
        reflex = Reflex(config, num_adapters).to(adapter_dtype)
    qwen.to_empty(device=device)
    reflex.to_empty(device=device)
    with torch.device(device):  # the rotary buffers are computed, not drawn: rebuild them
        qwen.rotary_emb = type(qwen.rotary_emb)(config=qwen.config)

    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in [*qwen.named_parameters(), *reflex.named_parameters()]:
        _fill(name, p, gen, shape.layers)
    words = codebook_words(shape.num_instrs)
    reflex.instr_words.copy_(torch.tensor(words, dtype=torch.int64))

    model = ReflexModel(qwen.eval(), reflex.eval()).eval()
    model.requires_grad_(False)
    return model, config
