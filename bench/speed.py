"""Per-cycle speed of every way to run Reflex, on one random model, in one run (docs/performance.md).

    python -m bench.speed --shape release --out DIR [--cycles 30] [--corpus PATH]
        [--seed 0] [--batches 1,8,41] [--agree-states 256] [--no-mlx] [--torch-compile [MODE]]

One random model of that shape (reflex_torch.random) on CUDA if present, timed
path by path: the released-style forward (hooks, prompt padded to 96, float32
adapters), the unpadded reference, the fast torch path (reflex_torch.fast) at
each batch with float32 and bf16 adapters, fused and compiled, and the MLX fast
path (reflex_mlx.fast, bf16 and 4-bit backbones copied from the same torch
weights by bench.bridge). Each time is the median over --cycles calls of state
list -> decoded words (host to host: it includes the upload of the states and
the read-back of the words). Word agreement with the released-style path is
measured on corpus (or random) states at the same time.

Writes DIR/speed.json and DIR/speed.md and prints the table.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import numpy as np

from reflex_core.timing import median_ms

from .common import (
    PAD_ID,
    PAD_TO,
    PROMPT_LEN,
    add_torch_compile_option,
    bench_states,
    prompt_set,
    torch_sync,
    write_report,
)

FLOOR_MS = 3.55  # docs/design.md §8: the H200 reads the release's weights once in bf16


# ------------------------------------------------------------------ torch paths
def reference_words(model, prompt, states: np.ndarray, pad_to: int | None, batch: int = 32) -> np.ndarray:
    """Words decoded by ReflexModel (hooks) for one prompt, padded to pad_to (None: unpadded)."""
    from reflex_torch.model import Reference

    pad_id = min(PAD_ID, model.backbone.config.vocab_size - 1)
    ref = Reference(model, pad_id, pad_to)
    prompt_batch = ref.prefix([list(prompt)])
    words = []
    for s in range(0, len(states), batch):
        words += ref.words(prompt_batch, states[s : s + batch])
    return np.array(words, dtype=np.uint32)


def torch_rows(
    model,
    prompts,
    states: np.ndarray,
    batches: list[int],
    cycles: int,
    agree_states: np.ndarray,
    ref_words: np.ndarray,
    note,
    torch_compile: str | None = None,
) -> list[dict]:
    """Time the released-style path, the reference and the fast path; measure agreement."""
    import torch

    from reflex_torch.fast import FastReflex
    from reflex_torch.model import Reference

    sync = torch_sync()
    pad_id = min(PAD_ID, model.backbone.config.vocab_size - 1)
    one = [states[i : i + 1] for i in range(cycles)]
    rows = []
    for label, pad_to in (
        ("released-style (hooks, padded 96, fp32 adapters, eager)", PAD_TO),
        ("reference (hooks, unpadded, fp32 adapters, eager)", None),
    ):
        ref = Reference(model, pad_id, pad_to)
        prompt_batch = ref.prefix([list(prompts[0])])
        words = reference_words(model, prompts[0], agree_states, pad_to)
        rows.append(
            {
                "path": label,
                "batch": 1,
                "agreement": float((words == ref_words).mean()),
                "ms_cycle": median_ms(
                    lambda s, r=ref, b=prompt_batch: r.words(b, s), one, warmup=3, sync=sync
                ),
            }
        )

    graphs = model.reflex.instr_words.device.type == "cuda"
    if not graphs:
        note("no CUDA: the fast rows run eagerly (no CUDA graphs)")
    # (label, adapter dtype, fused projections, torch.compile mode or None)
    variants = [
        ("fp32 adapters", None, False, None),
        ("bf16 adapters", torch.bfloat16, False, None),
        ("bf16 adapters, fused q/k/v + gate/up", torch.bfloat16, True, None),
    ]
    if torch_compile:  # "default" is torch.compile's own default mode
        mode = "" if torch_compile == "default" else f" mode {torch_compile}"
        variants.append((f"bf16 adapters, fused, torch.compile{mode} +", torch.bfloat16, True, torch_compile))
    for label, dtype, fuse, compile_mode in variants:
        fast = FastReflex(model, adapter_dtype=dtype, fuse=fuse, compile=compile_mode or False)
        for batch in batches:
            t0 = time.time()
            group = fast.prefix([list(p) for p in prompts[:batch]])
            inputs = [states[(i * batch + np.arange(batch)) % len(states)] for i in range(cycles)]
            fast.words(group, inputs[0])  # capture (and compile) outside the timing
            if compile_mode:
                note(f"{label} batch {batch}: compiled and captured in {time.time() - t0:.0f} s")
            row = {
                "path": f"fast torch ({label} {'CUDA graph' if graphs else 'eager'})",
                "batch": batch,
                "ms_cycle": median_ms(lambda s, f=fast, g=group: f.words(g, s), inputs, warmup=3, sync=sync),
            }
            row["agreement"] = agreement(model, fast, group, prompts[:batch], agree_states, ref_words)
            rows.append(row)
        del fast
        if graphs:
            torch.cuda.empty_cache()
    return rows


def agreement(model, fast, group, prompts, agree_states, ref_words, rounds: int = 4) -> float:
    """A fast runner's words vs the released-style reference: batch 1 on every
    agreement state, a batch of B prompts on `rounds` rounds of B states each."""
    if len(prompts) == 1:
        got = []
        for s in range(0, len(agree_states), 32):
            got += fast.words(group, agree_states[s : s + 32])
        return float((np.array(got, dtype=np.uint32) == ref_words).mean())
    batch = len(prompts)
    picks = [(np.arange(batch) + r * batch) % len(agree_states) for r in range(rounds)]
    got = np.stack([fast.words(group, agree_states[p]) for p in picks], axis=1)  # [batch, rounds]
    same = 0
    for j, prompt in enumerate(prompts):
        ref = reference_words(model, prompt, agree_states[[p[j] for p in picks]], PAD_TO)
        same += int((ref == got[j]).sum())
    return same / (batch * rounds)


# -------------------------------------------------------------------- MLX paths
def mlx_rows(torch_model, prompts, states, batches, cycles, agree_states, ref_words, note) -> list[dict]:
    """Copy the torch weights into MLX (bf16 and 4-bit backbones), free torch, time each runner."""
    import mlx.core as mx

    from reflex_mlx.fast import FastReflex

    from .bridge import mlx_model_from_torch, release_torch_memory

    device = "gpu" if mx.default_device() == mx.gpu else "cpu"
    t0 = time.time()
    runners = {}  # (backbone, adapters, how) -> runner, batches
    for name, bits in (("bf16", None), ("4-bit", 4)):
        model = mlx_model_from_torch(torch_model, "bfloat16", bits, "float32")
        runners[(name, "fp32", "compiled")] = FastReflex(model, fuse=True, compile=True), [1]
        runners[(name, "bf16", "compiled")] = (
            FastReflex(model, adapter_dtype=mx.bfloat16, fuse=True, compile=True),
            batches,
        )
        if bits is None:
            runners[(name, "fp32", "not compiled")] = FastReflex(model, fuse=True), [1]
            runners[(name, "bf16", "compiled, q/k/v and gate/up not fused")] = (
                FastReflex(model, adapter_dtype=mx.bfloat16, compile=True),
                [1],
            )
    note(f"MLX on {device}: copied the weights in {time.time() - t0:.0f} s")
    release_torch_memory(torch_model)

    rows = []
    for (name, adapters, how), (fast, sizes) in runners.items():
        for batch in sizes:
            group = fast.prefix([list(p) for p in prompts[:batch]])
            inputs = [states[(i * batch + np.arange(batch)) % len(states)] for i in range(cycles)]
            row = {
                "path": f"MLX {device} ({name} backbone, {adapters} adapters, {how})",
                "batch": batch,
                "ms_cycle": median_ms(lambda s, f=fast, g=group: f.words(g, s), inputs, warmup=3),
            }
            if batch == 1 and how.startswith("compiled"):
                got = [
                    w
                    for s in range(0, len(agree_states), 32)
                    for w in fast.words(group, agree_states[s : s + 32])
                ]
                row["agreement"] = float((np.array(got, dtype=np.uint32) == ref_words).mean())
            rows.append(row)
    if hasattr(mx, "get_peak_memory"):
        note(f"MLX peak memory {mx.get_peak_memory() / 2**30:.1f} GiB")
    return rows


# ------------------------------------------------------------------- the table
def finish(rows: list[dict], shape: str) -> list[dict]:
    released = rows[0]["ms_cycle"]
    for r in rows:
        if "ms_cycle" not in r:
            continue
        r["ms_program_cycle"] = r["ms_cycle"] / r["batch"]
        r["speedup_vs_released"] = released / r["ms_program_cycle"]
        r["x_floor"] = r["ms_cycle"] / FLOOR_MS if shape == "release" else None
    return rows


def markdown(rows: list[dict], header: str, notes: list[str]) -> str:
    lines = [
        header,
        "",
        "| path | batch | ms/cycle | ms/program-cycle | speed-up vs released (per program-cycle) "
        "| ms/cycle ÷ floor 3.55 | word agreement vs released |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | {r['batch']} | error: {r['error']} | | | | |")
            continue
        floor = f"{r['x_floor']:.2f}" if r.get("x_floor") is not None else "-"
        agree = f"{r['agreement']:.4f}" if r.get("agreement") is not None else "-"
        lines.append(
            f"| {r['path']} | {r['batch']} | {r['ms_cycle']:.2f} | {r['ms_program_cycle']:.3f} "
            f"| {r['speedup_vs_released']:.2f} | {floor} | {agree} |"
        )
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def run_speed(args) -> dict:
    import torch

    from reflex_core.shapes import SHAPES
    from reflex_torch.random import build_random_reflex

    notes: list[str] = []
    note = lambda text: (notes.append(text), print(f"# {text}", flush=True))
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shape = SHAPES[args.shape]
    t0 = time.time()
    model, _ = build_random_reflex(shape, args.seed, device, torch.bfloat16 if cuda else torch.float32)
    note(
        f"built the random {args.shape} model on {device} in {time.time() - t0:.0f} s "
        f"(backbone {'bf16' if cuda else 'float32'}, adapters float32)"
    )
    prompts = prompt_set(shape.vocab, args.seed, max(args.batches))
    # Timing cycles and batches take states round-robin from these.
    states = bench_states(max(args.cycles, args.agree_states), args.corpus, args.seed)
    agree_states = states[: args.agree_states]
    ref_words = reference_words(model, prompts[0], agree_states, PAD_TO)
    note(f"{len(np.unique(ref_words))} distinct reference words over {len(agree_states)} agreement states")
    if not cuda:
        note("no CUDA here: the times are CPU times, not the H200's; the floor column is left out")

    rows = torch_rows(
        model, prompts, states, args.batches, args.cycles, agree_states, ref_words, note, args.torch_compile
    )
    if cuda:
        note(f"torch peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if not args.no_mlx:
        try:
            rows += mlx_rows(model, prompts, states, args.batches, args.cycles, agree_states, ref_words, note)
        except Exception as err:  # keep the torch rows: report why MLX did not run
            traceback.print_exc()
            rows.append({"path": "MLX", "batch": 1, "error": str(err).splitlines()[0][:120]})
    rows = finish(rows, args.shape)
    report = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "cycles": args.cycles,
        "seed": args.seed,
        "prompt_tokens": [len(p) for p in prompts],
        "floor_ms": FLOOR_MS,
        "rows": rows,
        "notes": notes,
    }
    header = (
        f"## Speed, {args.shape} shape, random weights, {report['device']} "
        f"(median of {args.cycles} cycles; batch 1 prompt {PROMPT_LEN} tokens)"
    )
    write_report(args.out, "speed", report, markdown(rows, header, notes))
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["release", "tiny-test"], default="release")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cycles", type=int, default=30, help="timed calls per row (median)")
    p.add_argument("--corpus", default=None, help="folder holding programs/ (default: find_corpus())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", default="1,8,41", help="fast-path batch sizes, comma separated")
    p.add_argument(
        "--agree-states", type=int, default=256, help="states for the word-agreement column (multiple of 32)"
    )
    p.add_argument("--no-mlx", action="store_true", help="leave out the MLX rows")
    add_torch_compile_option(p, "add rows for the fast path (inside the CUDA graph)")
    args = p.parse_args(argv)
    args.batches = sorted({int(b) for b in args.batches.split(",")} | {1})
    return args


def main(argv=None) -> None:
    run_speed(parse_args(argv))


if __name__ == "__main__":
    main()
