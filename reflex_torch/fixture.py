"""Build a small random Reflex checkpoint for tests and offline trials.

    python -m reflex_torch.fixture OUT_DIR

writes OUT_DIR/reflex.pt (the released keys, dtypes and config of DESIGN.md §2)
and OUT_DIR/backbone/ (a random Qwen2 as a transformers directory with a
ChatML byte-level BPE tokenizer). The weights are scaled so that the decoded
word really depends on both the state and the prompt, which is what makes
parity on it meaningful.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reflex_core import rv32i
from reflex_core.spec import HALT_WORD, adapter_layers

from .model import Reflex
from .tokenizer import train_tokenizer

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


def build_fixture(
    out: Path, seed: int = 0, hidden: int = 64, layers: int = 8, heads: int = 4,
    kv_heads: int = 2, intermediate: int = 128, embed_dim: int = 32, vocab_size: int = 400,
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    tokenizer = train_tokenizer(TOKENIZER_TEXTS, vocab_size)
    qwen_config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    qwen = Qwen2ForCausalLM(qwen_config)
    with torch.no_grad():  # a livelier residual stream than the 0.02 default init
        qwen.model.embed_tokens.weight.normal_(0.0, 1.0)
    qwen.save_pretrained(out / "backbone")
    tokenizer.save_pretrained(out / "backbone")

    words = fixture_codebook()
    config = {
        "backbone_id": "Qwen/Qwen2.5-Coder-7B-Instruct",  # the released value; tests pass --backbone
        "hidden": hidden, "inject_every": 4, "adapter_mlp_ratio": 4, "max_instr_tokens": 96,
        "embed_dim": embed_dim, "num_instrs": len(words), "chat_template": True,
        "context_prefix": False,
    }
    reflex = Reflex(config, len(adapter_layers(layers, config["inject_every"])))
    with torch.no_grad():
        for adapter in reflex.adapters:
            adapter.attn_gate.fill_(0.9)
            adapter.mlp_gate.fill_(0.6)
            # Sharper attention: scale the query and key rows of the packed in_proj.
            adapter.attn.in_proj_weight[: 2 * hidden].mul_(4.0)
        reflex.instr_words.copy_(torch.tensor(words, dtype=torch.int64))
    state = {k: v.detach().clone().contiguous() for k, v in reflex.state_dict().items()}
    torch.save({"state": state, "config": config}, out / "reflex.pt")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_fixture(args.out, seed=args.seed))


if __name__ == "__main__":
    main()
