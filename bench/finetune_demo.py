"""Issue 15's demonstration: `reflex-mlx train` teaches a model a program family
it has never seen, on the CPU, and the model keeps what it knew.

    python -m bench.finetune_demo --base models/tiny-base-mlx --out docs/training/finetune_gcd

The base is reflex-tiny's recipe trained without the gcd and bubble_sort_small
families (`python -m reflex_torch.train ... --exclude-families gcd,bubble_sort_small`,
then converted: docs/training.md has both commands). This script

1. writes the family as a user would give it: a JSONL of prompts, assembly
   text (the project's canonical spelling of each word) and expected results
   (--out/<family>.jsonl, made from the corpus);
2. runs `reflex-mlx train` on it, replaying the rest of the corpus beside it;
3. scores the base and the trained model on the same things: the held-out
   programs of the family, driven closed-loop on the machine (every prompt of
   each), and the 41-task eval; and counts the new codebook rows the trained
   model emits.

It writes report.json, report.md, train.log and curve.jsonl into --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from reflex_core.assembler import canonical
from reflex_core.corpus import find_corpus, load_programs
from reflex_core.evaluation import format_report
from reflex_core.training import read_heldout, run_heldout

from .common import write_file


def write_family(corpus: Path, family: str, path: Path) -> int:
    """The family's programs as JSONL: prompts, assembly text, expected result."""
    programs = [p for p in load_programs(corpus) if p.family == family]
    lines = [
        json.dumps(
            {
                "prompts": p.variants,
                "program": "\n".join(canonical(w) for w in p.words),
                "expected_result": p.expected_result,
                "family": family,
            }
        )
        for p in programs
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def score(model_dir: Path, entries: list[dict], new_words: set[int]) -> dict:
    """Held-out family runs and the 41-task eval of one model, on MLX's fast path."""
    from reflex_core.evaluation import evaluate
    from reflex_core.predict import BatchPredictor
    from reflex_mlx.backend import BACKEND

    loaded = BACKEND.load(model_dir, fast=True)
    runs = run_heldout(loaded.runner, loaded.tokenizer, loaded.config, entries)
    report = evaluate(
        make_batch_predictor=lambda prompts: BatchPredictor(
            loaded.runner, loaded.tokenizer, prompts, loaded.config
        )
    )
    used = sorted({w for run in runs for w in run["words"] if w in new_words})
    firsts = [run for run in runs if run["prompt"] == entries[run["program"]]["prompts"][0]]
    passing = {run["program"] for run in firsts if run["passed"]}
    return {
        "heldout_runs_passed": sum(run["passed"] for run in runs),
        "heldout_runs": len(runs),
        "heldout_programs_passed_first_prompt": len(passing),
        "heldout_programs": len(entries),
        "eval": report,
        "new_words_emitted": [f"{w:08x}" for w in used],
        "runs": [{k: v for k, v in run.items() if k != "words"} for run in runs],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the converted base model directory")
    parser.add_argument("--out", type=Path, required=True, help="where the report and logs go")
    parser.add_argument("--run", type=Path, default=Path("/tmp/finetune-run"), help="the trained model")
    parser.add_argument("--family", default="gcd")
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--exclude", default="gcd,bubble_sort_small", help="families the base never saw")
    parser.add_argument(
        "--train-args",
        default="--steps 100 --batch 16 --lr 1e-3 --warmup 5 --mode lora --rehearse-fraction 0.75",
        help="more training options",
    )
    args = parser.parse_args(argv)

    corpus = args.corpus or find_corpus()
    data = args.out / f"{args.family}.jsonl"
    count = write_family(corpus, args.family, data)
    print(f"{data}: {count} programs of {args.family}", flush=True)
    shutil.rmtree(args.run, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = [
        "reflex-mlx", "train", "--model", str(args.base), "--data", str(data),
        "--rehearse", str(corpus), "--exclude-families", args.exclude,
        "--heldout-fraction", "0.3", "--eval-every", "40", "--eval-samples", "200",
        "--save-every", "20", "--log-every", "5", "--out", str(args.run), *args.train_args.split(),
    ]  # fmt: skip
    print("$ " + " ".join(command), flush=True)
    started = time.time()
    with open(args.out / "train.log", "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        done = subprocess.run([sys.executable, "-m", "reflex_app", *command[1:]], stderr=log, stdout=log)
    train_seconds = time.time() - started
    if done.returncode:
        sys.exit(f"error: training failed (see {args.out / 'train.log'})")
    shutil.copy(args.run / "curve.jsonl", args.out / "curve.jsonl")

    entries = [e for e in read_heldout(args.run) if e["source"] == "data"]
    config = json.loads((args.run / "config.json").read_text())
    before_rows = config["training"]["codebook_rows_before"]
    from safetensors.numpy import load_file

    words = load_file(str(args.run / "adapters.safetensors"))["instr_words"]
    new_words = {int(w) for w in words[before_rows:]}
    before = score(args.base, entries, new_words)
    after = score(args.run, entries, new_words)
    report = {
        "family": args.family,
        "base": str(args.base),
        "command": " ".join(command),
        "train_seconds": round(train_seconds, 1),
        "new_codebook_rows": len(new_words),
        "heldout_prompts": [e["prompts"][0] for e in entries],
        "before": before,
        "after": after,
    }
    write_file(args.out / "report.json", json.dumps(report, indent=1) + "\n")
    lines = [
        f"# Fine-tuning on {args.family}: before and after",
        "",
        f"Base: `{args.base}`. Trained in {train_seconds:.0f} s on this machine's CPU with:",
        "",
        "    " + " ".join(command),
        "",
        f"New codebook rows: {len(new_words)} (the base's {before_rows} rows kept).",
        "",
        "| | base | trained |",
        "|---|---|---|",
        f"| held-out {args.family} runs passing (every prompt) | "
        f"{before['heldout_runs_passed']}/{before['heldout_runs']} | "
        f"{after['heldout_runs_passed']}/{after['heldout_runs']} |",
        f"| held-out {args.family} programs passing (first prompt) | "
        f"{before['heldout_programs_passed_first_prompt']}/{before['heldout_programs']} | "
        f"{after['heldout_programs_passed_first_prompt']}/{after['heldout_programs']} |",
        f"| 41-task eval | {before['eval']['passed']}/{before['eval']['total']} | "
        f"{after['eval']['passed']}/{after['eval']['total']} |",
        f"| new codebook words emitted in the held-out runs | {len(before['new_words_emitted'])} | "
        f"{len(after['new_words_emitted'])} |",
        "",
        "## 41-task eval, base",
        "",
        "```",
        format_report(before["eval"], "base"),
        "```",
        "",
        "## 41-task eval, trained",
        "",
        "```",
        format_report(after["eval"], "trained"),
        "```",
    ]
    write_file(args.out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines[:16]))
    return report


if __name__ == "__main__":
    main()
