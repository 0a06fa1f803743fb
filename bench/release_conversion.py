"""The converter at full size: every backbone layout and the recipes, on a random
model of the released shape (no download), against the torch bf16 reference.

    python -m bench.release_conversion build   --work W [--shape release] [--corpus C]
    python -m bench.release_conversion mlx4    --work W
    python -m bench.release_conversion convert --work W --name N --backbone {causal,base,mlx4} [-- ARGS]
    python -m bench.release_conversion report  --work W --out DIR

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
    from reflex_mlx.load import load_model

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
    p.add_argument("phase", choices=["build", "mlx4", "convert", "report"])
    p.add_argument("--work", required=True)
    p.add_argument("--shape", default="release", choices=sorted(SHAPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--backbone", choices=["causal", "base", "mlx4"], default="causal")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    {"build": build, "mlx4": mlx4, "report": report}.get(args.phase, lambda a: convert(a, rest))(args)


if __name__ == "__main__":
    main()
