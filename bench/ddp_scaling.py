"""Data-parallel scaling of the torch trainer on one host's GPUs (torchrun over NCCL).

    python -m bench.ddp_scaling --corpus .corpus --out docs/results/ddp --gpus 2

For each shape it trains once in one process and once in `--gpus` processes
(`torchrun --nproc_per_node=N -m reflex_torch.train`) at the same global batch,
and prints training steps per second side by side with their ratio (the
trainer's own steps/s windows, evaluation and saving left out). A separate
short run of each logs every step's loss, and the two curves are compared
(the loss is the global batch's in both; bf16 autocast as the trainer uses it
on CUDA).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from .common import write_file

SHAPES = {  # name: (model options, global batch)
    "tiny": ("--hidden 192 --layers 8 --heads 4 --kv-heads 2 --intermediate 512", 1024),
    "wide": ("--hidden 768 --layers 12 --heads 12 --kv-heads 4 --intermediate 2048", 512),
}
COMMON = "--warmup 20 --eval-every 100000 --save-every 100000 --eval-samples 64 --seed 0"


def train(ranks: int, out: Path, options: str) -> list[dict]:
    shutil.rmtree(out, ignore_errors=True)
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_port=29571"]
        if ranks > 1
        else [sys.executable]
    )
    command = [*launcher, "-m", "reflex_torch.train", "--out", str(out), *options.split()]
    print("$ " + " ".join(command[1:]), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    print(done.stdout.splitlines()[-1], flush=True)
    return [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]


def steps_per_s(curve: list[dict]) -> float:
    rates = [r["steps_per_s"] for r in curve if "steps_per_s" in r][2:]  # past start-up
    return statistics.median(rates)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=".corpus")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ddp-bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (model, batch) in SHAPES.items():
        base = f"--corpus {args.corpus} {model} --batch {batch} {COMMON}"
        speed = f"{base} --steps {args.steps} --log-every 25"
        one = steps_per_s(train(1, args.work / f"{name}-1", speed))
        many = steps_per_s(train(args.gpus, args.work / f"{name}-{args.gpus}", speed))
        exact = f"{base} --steps 30 --log-every 1"
        loss_one = [r["loss"] for r in train(1, args.work / f"{name}-1-loss", exact) if "loss" in r]
        loss_many = [r["loss"] for r in train(args.gpus, args.work / f"{name}-n-loss", exact) if "loss" in r]
        diff = max(abs(a - b) / abs(a) for a, b in zip(loss_one, loss_many))
        rows.append(
            {
                "shape": name,
                "global_batch": batch,
                "steps_per_s_1": one,
                f"steps_per_s_{args.gpus}": many,
                "speedup": many / one,
                "samples_per_s_1": one * batch,
                f"samples_per_s_{args.gpus}": many * batch,
                "loss_1": loss_one,
                f"loss_{args.gpus}": loss_many,
                "max_relative_loss_difference": diff,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    n = args.gpus
    lines = [
        f"| shape | global batch | 1 GPU steps/s | {n} GPUs steps/s | ratio {n}/1 | "
        f"loss, largest relative difference over 30 steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['global_batch']} | {r['steps_per_s_1']:.2f} | "
            f"{r[f'steps_per_s_{n}']:.2f} | "
            f"{r['speedup']:.2f} | {r['max_relative_loss_difference']:.1e} |"
        )
    table = "\n".join(lines)
    print(table)
    write_file(args.out / "ddp_scaling.json", json.dumps(rows, indent=1) + "\n")
    write_file(args.out / "ddp_scaling.md", table + "\n")
    return {"rows": rows}


if __name__ == "__main__":
    main()
