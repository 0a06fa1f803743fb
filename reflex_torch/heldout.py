"""Per-step top-1 of a trained Reflex model on the programs its training held out.

    python -m reflex_torch.heldout OUT [--all-prompts] [--max-samples N]

`reflex_torch.train` writes OUT/heldout.json (the held-out programs' words and
prompts) next to OUT/reflex.pt. This module replays those programs on the
shared machine to rebuild every held-out cycle, loads the model the way
inference does (`load_model`), and scores teacher-forced next-word top-1.
The training loop calls the same `top1` on the same pairs, so its eval numbers
and this module's agree (exactly on CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from reflex_core import training
from reflex_core.training import HELDOUT_FILE, Pair, heldout_cycles, make_pairs, read_heldout

from .model import Reference


def predict(model, tokenizer, config: dict, pairs: list[Pair], batch: int = 64) -> list[int]:
    """The decoded word for each pair through the Reference runner, each batch
    right-padded to its longest prompt (reflex_core.training.predict_pairs)."""
    return training.predict_pairs(Reference(model, tokenizer.pad_token_id), tokenizer, config, pairs, batch)


def top1(model, tokenizer, config: dict, pairs: list[Pair], batch: int = 64) -> tuple[int, list[int]]:
    """(number of pairs whose predicted word is the program's word, the predictions)."""
    return training.top1(Reference(model, tokenizer.pad_token_id), tokenizer, config, pairs, batch)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="training output folder (reflex.pt, heldout.json)")
    parser.add_argument(
        "--all-prompts", action="store_true", help="every prompt of each program, not just the first"
    )
    parser.add_argument(
        "--max-samples", type=int, default=None, help="cap on (cycle, prompt) pairs (fixed subsample)"
    )
    parser.add_argument("--backbone", default=None, help="override the checkpoint's backbone_id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)

    from .loader import load_model

    if not (args.out / HELDOUT_FILE).exists():
        sys.exit(f"error: no {HELDOUT_FILE} in {args.out} (written by python -m reflex_torch.train)")
    started = time.time()
    model, tokenizer, config = load_model(
        args.out / "reflex.pt",
        backbone=args.backbone,
        device=args.device,
        backbone_dtype=torch.float32 if args.device == "cpu" else None,
    )
    entries = read_heldout(args.out)
    cycles = heldout_cycles(entries)
    pairs = make_pairs(entries, cycles, args.all_prompts, args.max_samples)
    correct, predicted = top1(model, tokenizer, config, pairs, args.batch)

    # A program counts as fully right when every one of its cycles (first prompt) was right.
    wrong = {pair.program for pair, word in zip(pairs, predicted) if word != pair.word}
    seen = {pair.program for pair in pairs}
    accuracy = correct / max(len(pairs), 1)
    print(f"held-out per-step top-1: {100 * accuracy:.2f}% ({len(pairs)} cycles)")
    print(
        f"held-out programs with every scored cycle right: {len(seen - wrong)}/{len(seen)} "
        f"({time.time() - started:.0f}s)"
    )
    return accuracy


if __name__ == "__main__":
    main()
