"""Reflex models with random weights: the small test checkpoint, and any shape on the device.

    python -m reflex_torch.random OUT_DIR [--seed 0]

writes the test fixture: OUT_DIR/reflex.pt (the released keys, dtypes and
config of docs/design.md §2) and OUT_DIR/backbone/ (a random Qwen2, or with
--family llama a random Llama, as a transformers directory with its own ChatML
byte-level BPE tokenizer).

`build_random_reflex(shape, seed, device)` draws a model of any shape
(reflex_core.shapes; the released one has 7.6 B parameters) straight on the
device, so parity at the released shape needs no download. Modules are built
on the meta device and every tensor is filled from one `torch.Generator` in a
fixed order: the same seed on the same kind of device gives the same weights.

Scales keep the activations sane at any width and make both the state and
the adapters matter: linears std 1/sqrt(fan_in), the backbone's residual
outputs (o_proj, down_proj) further by 1/sqrt(2 * layers), random q/k/v
biases, embeddings std 1 (the state's role embedding 0.3, so that the state's
values dominate kv), norms at identity, adapter query/key rows x4 (sharp
attention over the state tokens), tanh gates at 0.5, a standard-normal
codebook. With these the decoded word varies with the state (14 distinct
words over 256 corpus states at the tiny-test shape; with Qwen's 0.02 linears
every state decoded the same word).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from reflex_core import rv32i
from reflex_core.shapes import FIXTURE, FIXTURE_LLAMA, Shape, checkpoint_config, decoder_config
from reflex_core.spec import HALT_WORD, IDENTITY_KEY, MASK32, ReflexArgs, backbone_identity

from .model import Reflex, ReflexModel
from .tokenizer import train_tokenizer

EMBED_STD = 1.0
ROLE_STD = 0.3
BIAS_STD = 0.02
QK_SCALE = 4.0  # adapter attention logits of std ~16: each query picks a few state tokens
GATE = math.atanh(0.5)  # tanh(gate) = 0.5: each adapter adds half its update

TOKENIZER_TEXTS = [
    "add 7 and 8 and store the result",
    "compute 5 factorial and store it",
    "store the first 6 Fibonacci numbers",
    "count down from 5 to 1 and store each value",
    "copy 4 words from source to destination",
    "find the max of 7 and 12 and store it",
    "say hi, display OK, print hello, show 42",
    "multiply subtract double sum power minimum absolute value count bits",
    "0 1 2 3 4 5 6 7 8 9 10 100 200 255",
]


# ------------------------------------------------------------------ codebooks
def fixture_codebook() -> list[int]:
    """A codebook of real RV32I words (plus HALT), so runs exercise the machine."""
    words = [HALT_WORD]
    for rd in range(5, 12):
        words += [rv32i.addi(rd, 0, imm) for imm in (0, 1, 2, 5, 8)]
        words.append(rv32i.addi(rd, rd, 1))
        words.append(rv32i.add(rd, rd, 5))
    words += [rv32i.lui(6, 0x5), rv32i.sw(5, 6, 0), rv32i.sw(7, 6, 4), rv32i.lw(8, 6, 0)]
    words += [rv32i.bne(5, 0, -8), rv32i.beq(5, 6, 8), rv32i.jal(0, 8)]
    return sorted(set(words))


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
    unique = list(dict.fromkeys(w & MASK32 for w in words))
    if n > len(unique):
        raise ValueError(f"only {len(unique)} distinct codebook words available")
    # Evenly spaced picks, so that any size mixes the instruction kinds.
    rest, step = unique[1:], (len(unique) - 1) / max(1, n - 1)
    return [unique[0]] + [rest[int(i * step)] for i in range(n - 1)]


# ------------------------------------------------------------ the test fixture
def build_fixture(out: Path, seed: int = 0, shape: Shape = FIXTURE) -> Path:
    """The small random checkpoint the tests convert and compare (see module doc)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    tokenizer = train_tokenizer(TOKENIZER_TEXTS, shape.vocab)
    qwen = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(
            **decoder_config(
                shape,
                vocab_size=len(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=None,
            )
        )
    )
    with torch.no_grad():  # a livelier residual stream than the 0.02 default init
        qwen.model.embed_tokens.weight.normal_(0.0, 1.0)
    qwen.save_pretrained(out / "backbone")
    tokenizer.save_pretrained(out / "backbone")

    words = fixture_codebook()
    # backbone_id keeps the released value: tests pass --backbone
    config = checkpoint_config(shape.with_(num_instrs=len(words)))
    reflex = Reflex(ReflexArgs.from_config(config, shape.layers))
    with torch.no_grad():
        for adapter in reflex.adapters:
            adapter.attn_gate.fill_(0.9)
            adapter.mlp_gate.fill_(0.6)
            # Sharper attention: scale the query and key rows of the packed in_proj.
            adapter.attn.in_proj_weight[: 2 * shape.hidden].mul_(4.0)
        reflex.instr_words.copy_(torch.tensor(words, dtype=torch.int64))
    state = {k: v.detach().clone().contiguous() for k, v in reflex.state_dict().items()}
    identity = backbone_identity(qwen.config.to_dict())
    torch.save({"state": state, "config": config, IDENTITY_KEY: identity}, out / "reflex.pt")
    return out


# ------------------------------------------------------- any shape, on device
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
    shape: Shape,
    seed: int = 0,
    device: str | torch.device = "cpu",
    backbone_dtype: torch.dtype = torch.bfloat16,
    adapter_dtype: torch.dtype = torch.float32,
) -> tuple[ReflexModel, dict]:
    """(ReflexModel in eval mode, config) with deterministic random weights on `device`."""
    device = torch.device(device)
    config = checkpoint_config(shape)
    with torch.device("meta"):
        qwen = AutoModel.from_config(AutoConfig.for_model(**decoder_config(shape)), dtype=backbone_dtype)
        reflex = Reflex(ReflexArgs.from_config(config, shape.layers)).to(adapter_dtype)
    qwen.to_empty(device=device)
    reflex.to_empty(device=device)
    with torch.device(device):  # the rotary buffers are computed, not drawn: rebuild them
        qwen.rotary_emb = type(qwen.rotary_emb)(config=qwen.config)

    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in [*qwen.named_parameters(), *reflex.named_parameters()]:
        _fill(name, p, gen, shape.layers)
    reflex.instr_words.copy_(torch.tensor(codebook_words(shape.num_instrs), dtype=torch.int64))

    model = ReflexModel(qwen.eval(), reflex.eval()).eval()
    model.requires_grad_(False)
    return model, config


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the small random test checkpoint.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=("qwen2", "llama"), default="qwen2", help="the backbone's family")
    args = parser.parse_args()
    shape = FIXTURE_LLAMA if args.family == "llama" else FIXTURE
    print(build_fixture(args.out, seed=args.seed, shape=shape))


if __name__ == "__main__":
    main()
