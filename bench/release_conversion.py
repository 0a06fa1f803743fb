"""The converter at full size: every backbone layout and the recipes, on a random
model of the released shape (no download), against the torch bf16 reference.

    python -m bench.release_conversion build   --work W [--shape release] [--corpus C]
    python -m bench.release_conversion mlx4    --work W
    python -m bench.release_conversion convert --work W --name N --backbone {causal,base,mlx4} [-- ARGS]
    python -m bench.release_conversion report  --work W --out DIR
    python -m bench.release_conversion build   --work W --shape release --no-reference
    python -m bench.release_conversion compare --work W --out DIR [--stem S] [-- ARGS]

build draws the model on the GPU (reflex_torch.random) and writes W/reflex.pt
(float32 adapters, as released), W/base (the backbone as `Qwen2Model.save_pretrained`
writes it: no `model.` prefix, no lm_head) and W/causal (as `Qwen2ForCausalLM`:
an lm_head drawn too), both bf16, with a small byte-level tokenizer; then the
torch reference's predictions on 256 corpus states (bench.parity's captures).
mlx4 converts W/causal with mlx-lm itself (4-bit, group 64): the layout of an
mlx-community repo. convert runs `convert_checkpoint` in a fresh process and
records its time, peak MLX and process memory and output size; then loads the
result and records resident memory after load, ms per cycle (compiled fast
path, one state per call) and, against the reference, the relative error of
the final embedding and same-word agreement; then deletes the output (disk).
report gathers W/rows.jsonl into DIR/release_conversion.{json,md}.

build --no-reference writes only W/reflex.pt and W/causal, on the CPU a shard at
a time (the released shape fits a 16 GB machine), without the reference captures.
compare converts W/causal with `python -m convert ARGS` (default --no-verify) and
with `python -m mlx_lm convert -q` at the same bits and group size, each in its own
process, and writes both peaks (process peak RSS), times and their ratios to
DIR/S.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from reflex_core.shapes import SHAPES

from .common import corpus_states, prompt_ids, write_report

STATES = 256
TIMED_CYCLES = 30


def build(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from reflex_core.spec import IDENTITY_KEY, backbone_identity
    from reflex_torch.random import TOKENIZER_TEXTS, build_random_reflex
    from reflex_torch.tokenizer import train_tokenizer

    from .parity import reference_captures

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[args.shape]
    started = time.time()
    model, config = build_random_reflex(shape, args.seed, "cuda" if torch.cuda.is_available() else "cpu")
    base = model.backbone
    identity = backbone_identity(base.config.to_dict())
    state = {k: v.detach().cpu().contiguous() for k, v in model.reflex.state_dict().items()}
    torch.save({"state": state, "config": config, IDENTITY_KEY: identity}, work / "reflex.pt")
    del state
    tokenizer = train_tokenizer(TOKENIZER_TEXTS, 1000)
    base.save_pretrained(work / "base")
    tokenizer.save_pretrained(work / "base")
    with torch.device("meta"):
        causal = AutoModelForCausalLM.from_config(base.config, dtype=torch.bfloat16)
    causal.lm_head.to_empty(device=base.embed_tokens.weight.device)
    gen = torch.Generator(device=base.embed_tokens.weight.device).manual_seed(args.seed + 7)
    with torch.no_grad():
        causal.lm_head.weight.normal_(0.0, shape.hidden**-0.5, generator=gen)
    causal.model = base
    causal.config.tie_word_embeddings = False
    causal.save_pretrained(work / "causal")
    tokenizer.save_pretrained(work / "causal")
    written = time.time() - started
    states, _ = corpus_states(STATES, args.corpus)
    ids = prompt_ids(shape.vocab, args.seed)
    ref = reference_captures(model, ids, states, batch=64)
    np.savez(work / "reference.npz", ids=ids, states=states, **{f"ref_{k}": v for k, v in ref.items()})
    (work / "build.json").write_text(
        json.dumps({"shape": args.shape, "seed": args.seed, "build_and_write_s": round(written, 1)})
    )
    print(f"built and wrote {work} in {written:.0f} s; reference on {len(states)} states")


# A Qwen2.5-1.5B-sized shape with the release's Reflex around it: a quick stand-in
# for the released one when measuring where conversion memory goes.
BENCH_SHAPES = {
    **SHAPES,
    "mid": SHAPES["release"].with_(
        hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vocab=151936
    ),
}
BUILD_SHARD_BYTES = 2 << 30


def build_streamed(work: Path, shape, seed: int = 0, shard_bytes: int = BUILD_SHARD_BYTES) -> float:
    """W/reflex.pt and W/causal on the CPU, a shard at a time (the released shape's
    15 GB backbone is never whole in memory), without the torch reference captures;
    returns the seconds it took."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from reflex_core.shapes import checkpoint_config, decoder_config
    from reflex_core.spec import IDENTITY_KEY, ReflexArgs, backbone_identity
    from reflex_torch.model import Reflex
    from reflex_torch.random import TOKENIZER_TEXTS, _fill, codebook_words
    from reflex_torch.tokenizer import train_tokenizer

    causal_dir = Path(work) / "causal"
    causal_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    config = checkpoint_config(shape)
    bconfig = AutoConfig.for_model(**decoder_config(shape))
    with torch.device("meta"):
        causal = AutoModelForCausalLM.from_config(bconfig, dtype=torch.bfloat16)
        reflex = Reflex(ReflexArgs.from_config(config, shape.layers))
    gen = torch.Generator().manual_seed(seed)

    params = list(causal.named_parameters())
    groups, size = [[]], 0
    for name, p in params:  # shard boundaries from shapes alone
        if groups[-1] and size + p.numel() * 2 > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, p))
        size += p.numel() * 2
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for name, p in group:
            t = torch.empty(p.shape, dtype=torch.bfloat16)
            _fill(name, t, gen, shape.layers)
            shard[name] = t
            weight_map[name] = file
            total += t.numel() * 2
        save_file(shard, str(causal_dir / file), metadata={"format": "pt"})
        del shard
        print(f"wrote {file}", file=sys.stderr)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (causal_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    bconfig.tie_word_embeddings = shape.tie_embeddings
    bconfig.save_pretrained(causal_dir)
    train_tokenizer(TOKENIZER_TEXTS, 1000).save_pretrained(causal_dir)

    reflex.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in reflex.named_parameters():
            _fill(name, p, gen, shape.layers)
        reflex.instr_words.copy_(torch.tensor(codebook_words(shape.num_instrs), dtype=torch.int64))
    state = {k: v.detach().contiguous() for k, v in reflex.state_dict().items()}
    identity = backbone_identity(bconfig.to_dict())
    torch.save({"state": state, "config": config, IDENTITY_KEY: identity}, Path(work) / "reflex.pt")
    return time.time() - started


def mlx4(args) -> None:
    from mlx_lm import convert as mlx_lm_convert

    work = Path(args.work)
    started = time.time()
    mlx_lm_convert(str(work / "causal"), str(work / "mlx4"), quantize=True, q_bits=4, q_group_size=64)
    (work / "mlx4.json").write_text(json.dumps({"seconds": round(time.time() - started, 1)}))


CONVERT_CHILD = """
import json, sys, time
import mlx.core as mx
from convert.convert import _recipe, convert_checkpoint
from reflex_core.timing import peak_rss
a = json.loads(sys.argv[1])
started = time.time()
convert_checkpoint(a["checkpoint"], a["backbone"], a["out"], recipe=_recipe(**a["recipe"]),
                   verify=a["verify"], verify_tasks=a["verify_tasks"], command=a["command"],
                   sets_backbone=any(a["recipe"][k] for k in ("bits", "group_size", "mixed", "no_quantize",
                                                               "backbone_dtype")))
print(json.dumps({"seconds": time.time() - started, "mlx_peak_bytes": mx.get_peak_memory(),
                  "process_peak_rss_bytes": peak_rss()}))
"""


def _recipe_options(rest: list[str]) -> dict:
    """--bits 4 --adapter-bits 4 ... -> the keyword arguments of convert.convert._recipe."""
    opts = {"bits": None, "group_size": None, "mixed": None, "no_quantize": False, "dtype": None,
            "backbone_dtype": None, "adapter_bits": None}  # fmt: skip
    names = {"--bits": "bits", "--group-size": "group_size", "--recipe": "mixed", "--dtype": "dtype",
             "--backbone-dtype": "backbone_dtype", "--adapter-bits": "adapter_bits"}  # fmt: skip
    it = iter(rest)
    for token in it:
        if token == "--no-quantize":
            opts["no_quantize"] = True
        else:
            opts[names[token]] = next(it)
    return opts


def convert(args, rest: list[str]) -> None:
    import mlx.core as mx

    from reflex_core.timing import median_ms
    from reflex_mlx.fast import FastReflex
    from reflex_mlx.loader import load_model

    from .metrics import compare
    from .parity import candidate_captures

    work = Path(args.work)
    out = work / f"out-{args.name}"
    shutil.rmtree(out, ignore_errors=True)
    verify = "--verify" in rest
    verify_tasks = int(rest[rest.index("--verify-tasks") + 1]) if "--verify-tasks" in rest else None
    if verify_tasks:
        rest = rest[: rest.index("--verify-tasks")] + rest[rest.index("--verify-tasks") + 2 :]
    rest = [r for r in rest if r not in ("--verify", "--no-verify")]
    child = {
        "checkpoint": str(work / "reflex.pt"),
        "backbone": str(work / args.backbone),
        "out": str(out),
        "recipe": _recipe_options(rest),
        "verify": verify,
        "verify_tasks": verify_tasks,
        "command": f"python -m convert --backbone {args.backbone} {' '.join(rest)}".strip(),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CONVERT_CHILD, json.dumps(child)], capture_output=True, text=True
    )
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode != 0:
        raise SystemExit(f"conversion {args.name} failed")
    row = {"name": args.name, "backbone_layout": args.backbone, "options": " ".join(rest) or "(defaults)"}
    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    row["output_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    config = json.loads((out / "config.json").read_text())
    row["memory_line"] = config["memory"]
    row["recipe"] = config["recipe"]
    row["fidelity"] = {k: v for k, v in (config.get("fidelity") or {}).items() if k != "per_task"} or None

    mx.reset_peak_memory()
    before = mx.get_active_memory()
    started = time.time()
    model, tokenizer, _ = load_model(out)
    row["load_s"] = time.time() - started
    row["resident_after_load_bytes"] = mx.get_active_memory() - before
    data = np.load(work / "reference.npz")
    ref = {k[4:]: data[k] for k in data.files if k.startswith("ref_")}
    fast = FastReflex(model, fuse=True, compile=True)
    cand = candidate_captures(fast, data["ids"], data["states"], batch=64)
    metrics = compare(ref, cand, list(model.adapter_layers), model.reflex.args.embed_dim)
    row["final_embedding_rel_error"] = metrics["stages"]["final embedding"]
    row["same_word"] = metrics["top1_agreement"]
    prompt = fast.prefix([data["ids"].tolist()])
    states = data["states"][:TIMED_CYCLES]
    row["ms_per_cycle"] = median_ms(lambda s: fast.words(prompt, [s]), list(states))
    row["mlx_peak_after_load_bytes"] = mx.get_peak_memory()
    row["device"] = str(mx.default_device())
    with (work / "rows.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))
    shutil.rmtree(out, ignore_errors=True)


def _timed_child(argv: list[str]) -> dict:
    """Run one conversion in its own process: its wall time, CPU time (user + system:
    what a busy machine's other work does not inflate) and peak resident set (the
    kernel's own counts for that child, from wait4)."""
    import os

    started = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}")
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "command": argv,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_bytes": int(peak),
    }


def compare(args, rest: list[str]) -> None:
    """Our converter and mlx-lm's on the same backbone (W/causal) at the same bits and
    group size, one after the other, each in its own process: peaks, times, ratios."""
    import shlex

    work = Path(args.work)
    rest = rest or ["--no-verify"]
    bits = rest[rest.index("--bits") + 1] if "--bits" in rest else "8"
    group = rest[rest.index("--group-size") + 1] if "--group-size" in rest else "64"
    ours_out, theirs_out = work / "out-compare-reflex", work / "out-compare-mlx-lm"
    ours_cmd = [sys.executable, "-m", "convert", "--checkpoint", str(work / "reflex.pt"),
                "--backbone", str(work / "causal"), "--out", str(ours_out), *rest]  # fmt: skip
    theirs_cmd = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(work / "causal"), "-q",
                  "--q-bits", bits, "--q-group-size", group, "--mlx-path", str(theirs_out)]  # fmt: skip
    rows = {}
    for name, argv, out in (("reflex-mlx", ours_cmd, ours_out), ("mlx-lm", theirs_cmd, theirs_out)):
        shutil.rmtree(out, ignore_errors=True)
        print(f"converting with {name} ...", file=sys.stderr)
        rows[name] = _timed_child(argv)
        rows[name]["output_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        rows[name]["command"] = shlex.join(["python", *argv[1:]])
        shutil.rmtree(out, ignore_errors=True)
    ours, theirs = rows["reflex-mlx"], rows["mlx-lm"]
    source = sum(f.stat().st_size for f in (work / "causal").glob("*.safetensors"))
    result = {
        "build": json.loads((work / "build.json").read_text()),
        "source_backbone_bytes": source,
        "checkpoint_bytes": (work / "reflex.pt").stat().st_size,
        "rows": rows,
        "peak_ratio": round(ours["peak_rss_bytes"] / theirs["peak_rss_bytes"], 3),
        "peak_excess_gib": round((ours["peak_rss_bytes"] - theirs["peak_rss_bytes"]) / 2**30, 2),
        "time_ratio": round(ours["seconds"] / theirs["seconds"], 3),
        "cpu_time_ratio": round(ours["cpu_seconds"] / theirs["cpu_seconds"], 3),
        "machine": _machine(),
        "bench_command": "python -m bench.release_conversion " + shlex.join(sys.argv[1:]),
    }
    lines = [
        f"## Conversion memory and time: reflex-mlx against mlx-lm ({result['build']['shape']} shape)",
        "",
        f"Random weights (seed {result['build']['seed']}): a bf16 causal-LM backbone of "
        f"{_gib(source)} GiB and a float32 reflex.pt of {_gib(result['checkpoint_bytes'])} GiB. "
        "Each conversion ran in its own process, one after the other; peak is the process's "
        "peak resident set (wait4's ru_maxrss).",
        "",
        "| conversion | wall time s | CPU time s | peak process GiB | output GiB |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name}: `{r['command']}` | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} "
            f"| {_gib(r['peak_rss_bytes'])} "
            f"| {_gib(r['output_bytes'])} |"
        )
    lines += [
        "",
        f"Peak: reflex-mlx / mlx-lm = {result['peak_ratio']:.2f} "
        f"({result['peak_excess_gib']:+.2f} GiB); "
        f"wall time: reflex-mlx / mlx-lm = {result['time_ratio']:.2f}; "
        f"CPU time: {result['cpu_time_ratio']:.2f}.",
        "",
        f"Machine: {result['machine']}.",
        "",
        f"Command: `{result['bench_command']}`",
    ]
    write_report(Path(args.out), args.stem, result, "\n".join(lines) + "\n")


def _machine() -> str:
    import os
    import platform

    import mlx.core as mx

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    load = f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    cores, gib = os.cpu_count(), memory / 2**30
    return f"{platform.machine()}, {cores} cores, {gib:.0f} GiB, MLX on {mx.default_device()}{load}"


def _gib(n) -> str:
    return f"{n / 2**30:.2f}"


def report(args) -> None:
    work = Path(args.work)
    rows = [json.loads(line) for line in (work / "rows.jsonl").read_text().splitlines()]
    build_info = json.loads((work / "build.json").read_text())
    mlx4_info = json.loads((work / "mlx4.json").read_text()) if (work / "mlx4.json").exists() else None
    result = {"build": build_info, "mlx_lm_4bit_conversion": mlx4_info, "rows": rows}
    lines = [
        f"## The converter at the released shape (random weights, seed {build_info['seed']})",
        "",
        "Reference: torch, bf16 backbone and float32 adapters as released, on 256 corpus states "
        "and one 60-token prompt.",
        "",
        "| conversion | from | time s | peak MLX GiB | peak process GiB | output GiB "
        "| resident after load GiB | ms/cycle | final rel. error (median, p99) | same word |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rel = r["final_embedding_rel_error"]
        lines.append(
            f"| {r['name']} ({r['options']}) | {r['backbone_layout']} | {r['seconds']:.0f} "
            f"| {_gib(r['mlx_peak_bytes'])} | {_gib(r['process_peak_rss_bytes'])} "
            f"| {_gib(r['output_bytes'])} "
            f"| {_gib(r['resident_after_load_bytes'])} | {r['ms_per_cycle']:.2f} "
            f"| {rel['median']:.2e}, {rel['p99']:.2e} | {100 * r['same_word']:.1f} % |"
        )
    for r in rows:
        if r.get("fidelity"):
            f = r["fidelity"]
            lines += [
                "",
                f"--verify on {r['name']}: same word on {f['same_word']}/{f['cycles']} cycles, "
                f"{f['runs_identical']}/{f['runs']} runs identical; peak MLX memory while streaming the "
                f"source {_gib(f['peak_memory_bytes'])} GiB, "
                f"process peak {_gib(f['process_peak_rss_bytes'])} GiB, {f['seconds']:.0f} s",
            ]
    if mlx4_info:
        lines += [
            "",
            f"mlx-lm's own 4-bit conversion of the causal-LM directory took {mlx4_info['seconds']:.0f} s.",
        ]
    write_report(Path(args.out), "release_conversion", result, "\n".join(lines) + "\n")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = []
    if "--" in argv:
        rest = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["build", "mlx4", "convert", "compare", "report"])
    p.add_argument("--work", required=True)
    p.add_argument("--shape", default="release", choices=sorted(BENCH_SHAPES))
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="build: on the CPU a shard at a time, causal layout only, no torch reference captures",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--backbone", choices=["causal", "base", "mlx4"], default="causal")
    p.add_argument("--out", default=None)
    p.add_argument("--stem", default="conversion_memory", help="compare: the report's file name")
    args = p.parse_args(argv)
    if args.phase == "build" and args.no_reference:
        written = build_streamed(Path(args.work), BENCH_SHAPES[args.shape], args.seed)
        (Path(args.work) / "build.json").write_text(
            json.dumps({"shape": args.shape, "seed": args.seed, "build_and_write_s": round(written, 1),
                        "built": "on the CPU a shard at a time, causal layout only, no reference captures"})
        )  # fmt: skip
        return print(f"built and wrote {args.work} in {written:.0f} s (no reference captures)")
    if args.phase == "compare":
        return compare(args, rest)
    {"build": build, "mlx4": mlx4, "report": report}.get(args.phase, lambda a: convert(a, rest))(args)


if __name__ == "__main__":
    main()
