"""Parity of reflex_mlx against the PyTorch reference, stage by stage (docs/parity.md).

    python -m bench.parity --subject release --out DIR [--shape release|tiny-test]
        [--states 256] [--seed 0] [--candidates bf16,q4] [--sabotage none,skip-adapter,swap-rows]
        [--corpus PATH] [--backbone-dtype bfloat16|float32] [--isolate]
    python -m bench.parity --subject tiny --out DIR --tiny-torch DIR --tiny-mlx DIR[,DIR...]

release: a random model of the released shape, drawn from --seed on the device
(no download). The reference is the torch model as released (backbone in
--backbone-dtype, adapters float32, prompt right-padded to 96); candidates are
MLX models copied from it (bench.bridge) and run by reflex_mlx.fast. Both see
the same 60-token prompt and the same states, replayed from corpus programs.
Compared per state (bench.metrics): the encoded state, the hidden state after
each adapter layer at the last real prompt token, the final embedding, and the
decoded word. --isolate runs the torch and MLX halves in separate processes.

tiny: a trained model given as a torch checkpoint dir and converted MLX dirs;
per-cycle and free-running agreement on the eval (bench.agreement).

Writes DIR/parity_<subject>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from reflex_core.shapes import SHAPES
from reflex_core.spec import EVAL_MAX_CYCLES, MASK32

from .common import PAD_ID, PAD_TO, PROMPT_LEN, corpus_states, prompt_ids, write_report
from .metrics import TOLERANCES, check_parity, compare, margin_summary

SABOTAGES = ("none", "skip-adapter", "swap-rows")
CANDIDATES = {  # name -> (MLX backbone dtype, bits); "ref" means the reference's own dtype
    "float32": ("float32", None),
    "bf16": ("bfloat16", None),
    "q4": ("ref", 4),
    "q8": ("ref", 8),
}


# ------------------------------------------------------------------- reference
def reference_captures(model, ids: np.ndarray, states: np.ndarray, batch: int) -> dict:
    """The torch reference's kv, post-adapter-layer hiddens (last real token), pred,
    decoded words and top-1/top-2 cosine margin, as float32 numpy."""
    import torch

    device = model.reflex.instr_words.device
    n_real = len(ids)
    pad_id = min(PAD_ID, model.backbone.config.vocab_size - 1)
    input_ids = torch.tensor([list(ids) + [pad_id] * (PAD_TO - n_real)], device=device)
    mask = torch.tensor([[1] * n_real + [0] * (PAD_TO - n_real)], device=device)

    seen: dict = {}
    hooks = [model.reflex.kv_norm.register_forward_hook(lambda m, a, out: seen.__setitem__("kv", out))]
    for layer, adapter in zip(model.adapter_layers, model.reflex.adapters):  # the layer's output, adapted

        def grab(m, a, out, layer=layer):
            seen[layer] = out[:, n_real - 1]

        hooks.append(adapter.register_forward_hook(grab))
    parts: dict[str, list] = {}
    try:
        with torch.no_grad():
            for start in range(0, len(states), batch):
                words = torch.tensor(states[start : start + batch].astype(np.int64), device=device)
                b = len(words)
                pred = model(input_ids.expand(b, -1), mask.expand(b, -1), words)
                top = model.reflex.scores(pred).topk(2, dim=-1)
                out = {
                    "kv": seen["kv"],
                    "pred": pred,
                    **{f"layer{L}": seen[L] for L in model.adapter_layers},
                    "top1": top.indices[:, 0],
                    "margin": top.values[:, 0] - top.values[:, 1],
                    "words": model.reflex.instr_words[top.indices[:, 0]] & MASK32,
                }
                for key, value in out.items():
                    value = value.float() if value.is_floating_point() else value
                    parts.setdefault(key, []).append(value.cpu().numpy())
                seen.clear()
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in parts.items()}


# ------------------------------------------------------------------- candidate
def candidate_captures(
    fast,
    ids: np.ndarray,
    states: np.ndarray,
    batch: int,
    sabotage: str = "none",
    ref_top1: np.ndarray | None = None,
) -> dict:
    """The same captures from an MLX FastReflex runner. `sabotage` breaks the
    runner on purpose, to show the checks fail: skip the middle adapter, or swap
    the words of the two codebook rows the reference decodes most often (a swap
    of rows nobody decodes changes no output, so no test could or should see it)."""
    import mlx.core as mx

    layers = list(fast.model.adapter_layers)
    adapters, codebook = list(fast.reflex.adapters), list(fast.codebook)
    if sabotage == "skip-adapter":  # its gates shut: the adapter passes h through unchanged
        off = copy.copy(adapters[len(layers) // 2])
        off.attn_gate, off.mlp_gate = mx.zeros_like(off.attn_gate), mx.zeros_like(off.mlp_gate)
        fast.reflex.adapters[len(layers) // 2] = off
    elif sabotage == "swap-rows":
        a, b = np.argsort(-np.bincount(ref_top1, minlength=len(codebook)), kind="stable")[:2]
        fast.codebook[a], fast.codebook[b] = codebook[b], codebook[a]
    elif sabotage != "none":
        raise ValueError(f"unknown sabotage {sabotage!r}")
    parts: dict[str, list] = {}
    try:
        prompt = fast.prefix([ids.tolist()])
        for start in range(0, len(states), batch):
            chunk = states[start : start + batch]
            cap: dict = {}
            pred = fast.step(prompt.repeat(len(chunk)), mx.array(chunk), capture=cap)
            out = {"kv": cap["kv"], "pred": pred, **{f"layer{L}": cap[L] for L in layers}}
            mx.eval(out)
            out = {k: np.array(v.astype(mx.float32)) for k, v in out.items()}
            out["words"] = np.array(fast.decode(pred), dtype=np.uint32)
            for key, value in out.items():
                parts.setdefault(key, []).append(value)
    finally:
        fast.reflex.adapters[:], fast.codebook = adapters, codebook
    return {k: np.concatenate(v) for k, v in parts.items()}


# ------------------------------------------------------------------ the subject
def _torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def _device(arg: str | None) -> str:
    import torch

    return arg or ("cuda" if torch.cuda.is_available() else "cpu")


def build_reference(args):
    from reflex_torch.random import build_random_reflex

    t0 = time.time()
    model, config = build_random_reflex(
        SHAPES[args.shape], args.seed, _device(args.device), _torch_dtype(args.backbone_dtype)
    )
    return model, config, time.time() - t0


def run_reference_phase(args, model=None) -> dict:
    """Reference captures on the subject's states (the model is built if not given)."""
    import torch

    timings = {}
    if model is None:
        model, _, timings["build_s"] = build_reference(args)
    t0 = time.time()
    states, families = corpus_states(args.states, args.corpus)
    timings["replay_s"] = time.time() - t0
    ids = prompt_ids(SHAPES[args.shape].vocab, args.seed, args.prompt_len)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    ref = reference_captures(model, ids, states, args.batch)
    timings["reference_s"] = time.time() - t0
    if torch.cuda.is_available():
        timings["torch_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return {"ref": ref, "ids": ids, "states": states, "families": families, "timings": timings}


def run_candidate_phase(args, phase: dict, torch_model=None) -> dict:
    """Every candidate x sabotage against the reference captures in `phase`."""
    import mlx.core as mx

    from reflex_mlx.fast import FastReflex

    from .bridge import mlx_model_from_torch, release_torch_memory

    if args.mlx_device == "cpu":
        mx.set_default_device(mx.cpu)
    timings = phase["timings"]
    if torch_model is None:  # a separate process: draw the same weights again
        torch_model, _, timings["rebuild_s"] = build_reference(args)
    layers = list(torch_model.adapter_layers)

    # Copy every candidate's weights first, then let the torch model go.
    runners = {}
    for name in args.candidates:
        dtype, bits = CANDIDATES[name]
        t0 = time.time()
        model = mlx_model_from_torch(torch_model, args.backbone_dtype if dtype == "ref" else dtype, bits)
        runners[name] = FastReflex(model, fuse=True)
        timings[f"copy_{name}_s"] = time.time() - t0
    release_torch_memory(torch_model)
    del torch_model

    results = {}
    for n, (name, fast) in enumerate(runners.items()):
        # Sabotage proves the checks can fail; the first candidate is enough for that.
        for sabotage in args.sabotage if n == 0 else ["none"]:
            key = name if sabotage == "none" else f"{name}+{sabotage}"
            t0 = time.time()
            cand = candidate_captures(
                fast, phase["ids"], phase["states"], args.batch, sabotage, phase["ref"]["top1"]
            )
            timings[f"candidate_{key}_s"] = time.time() - t0
            tol = TOLERANCES.get(name)
            metrics = compare(phase["ref"], cand, layers, SHAPES[args.shape].embed_dim, tol)
            metrics["tolerance"] = asdict(tol) if tol else None
            metrics["failures"] = check_parity(metrics, tol) if tol else None
            results[key] = metrics
    if hasattr(mx, "get_peak_memory"):
        timings["mlx_peak_gib"] = mx.get_peak_memory() / 2**30
    return results


def save_phase(path: Path, phase: dict) -> None:
    np.savez(
        path,
        ids=phase["ids"],
        states=phase["states"],
        families=np.array(phase["families"]),
        timings=json.dumps(phase["timings"]),
        **{f"ref_{k}": v for k, v in phase["ref"].items()},
    )


def load_phase(path: Path) -> dict:
    data = np.load(path)
    return {
        "ids": data["ids"],
        "states": data["states"],
        "families": list(data["families"]),
        "timings": json.loads(str(data["timings"])),
        "ref": {k[4:]: data[k] for k in data.files if k.startswith("ref_")},
    }


def run_release(args, argv: list[str]) -> dict | None:
    """The release subject; with --isolate each half runs as this command in its own process."""
    if args.isolate:
        with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
            workdir = Path(args.workdir or tmp).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            rest = [a for a in argv if a != "--isolate"]
            for phase in ("reference", "candidates"):
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.parity",
                        *rest,
                        "--phase",
                        phase,
                        "--workdir",
                        str(workdir),
                    ],
                    check=True,
                    cwd=os.getcwd(),
                )
        return None
    if args.phase != "all" and not args.workdir:
        raise SystemExit("--phase reference/candidates needs --workdir (shared between the two)")
    npz = Path(args.workdir or ".") / "reference.npz"
    if args.phase == "reference":
        save_phase(npz, run_reference_phase(args))
        print(f"reference captures in {npz}")
        return None
    if args.phase == "candidates":
        phase = load_phase(npz)
        results = run_candidate_phase(args, phase)
    else:
        model, _, build_s = build_reference(args)
        phase = run_reference_phase(args, model)
        phase["timings"]["build_s"] = build_s
        results = run_candidate_phase(args, phase, model)
    report = {
        "subject": "release",
        "shape": args.shape,
        "shape_values": asdict(SHAPES[args.shape]),
        "seed": args.seed,
        "states": len(phase["states"]),
        "prompt_tokens": len(phase["ids"]),
        "families": len(set(phase["families"])),
        "reference": {
            "device": _device(args.device),
            "backbone_dtype": args.backbone_dtype,
            "adapter_dtype": "float32",
            "padded_to": PAD_TO,
            "margin": margin_summary(phase["ref"]["margin"], phase["ref"]["words"]),
        },
        "mlx_device": args.mlx_device,
        "mlx_enable_tf32": os.environ.get("MLX_ENABLE_TF32", "unset (MLX default: 1)"),
        "candidates": results,
        "timings": phase["timings"],
    }
    write_report(args.out, "parity_release", report, release_markdown(report))
    return report


def release_markdown(report: dict) -> str:
    cands = report["candidates"]
    names = list(cands)
    lines = [
        f"## Parity, release subject ({report['shape']} shape, seed {report['seed']}, "
        f"{report['states']} states from {report['families']} families, "
        f"{report['prompt_tokens']}-token prompt)",
        "",
        f"Reference: torch on {report['reference']['device']}, backbone "
        f"{report['reference']['backbone_dtype']}, adapters float32, prompt padded to "
        f"{report['reference']['padded_to']}. Candidates: MLX on {report['mlx_device']} "
        f"(MLX_ENABLE_TF32: {report['mlx_enable_tf32']}).",
        "",
        "Relative error ||ref - cand|| / ||ref|| per state, median / p99 / max:",
        "",
        "| stage | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for stage in cands[names[0]]["stages"]:
        cells = ["{median:.2e} / {p99:.2e} / {max:.2e}".format(**cands[n]["stages"][stage]) for n in names]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    rows = [
        ("top-1 agreement", lambda m: f"{m['top1_agreement']:.4f} ({m['disagreements']} differ)"),
        ("largest margin that flipped", lambda m: f"{m['largest_margin_flipped']:.2e}"),
        (
            "states with margin > tau",
            lambda m: f"{m['certified']['count']} (tau {m['certified']['tau']:.2e})",
        ),
        ("agreement where margin > tau", lambda m: f"{m['certified']['agreement']:.4f}"),
        (
            "check",
            lambda m: (
                "n/a (measured)"
                if m["failures"] is None
                else ("PASS" if not m["failures"] else "FAIL: " + "; ".join(m["failures"]))
            ),
        ),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(cands[n]) for n in names) + " |")
    margin = report["reference"]["margin"]
    lines += [
        "",
        "Reference top-1 minus top-2 cosine margin: "
        + ", ".join(f"{k} {v:.2e}" for k, v in margin.items() if k.startswith("p"))
        + f"; {margin['distinct_words']} distinct top-1 words.",
        "",
        "Timings: " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()),
    ]
    return "\n".join(lines) + "\n"


def run_tiny(args) -> dict:
    """A trained model: lock-step and free-running agreement on the 41-task eval."""
    from reflex_mlx.fast import FastReflex
    from reflex_mlx.loader import load_model as load_mlx
    from reflex_torch.loader import load_model as load_torch
    from reflex_torch.model import Reference

    from .agreement import batched, compare_backends, markdown, one_by_one

    if not args.tiny_torch or not args.tiny_mlx:
        raise SystemExit("--subject tiny needs --tiny-torch DIR and --tiny-mlx DIR[,DIR]")
    torch_dir = Path(args.tiny_torch)
    model, tokenizer, config = load_torch(
        torch_dir / "reflex.pt", backbone=str(torch_dir / "backbone"), device=_device(args.device)
    )
    reference = batched(
        Reference(model, tokenizer.pad_token_id, config["max_instr_tokens"]), tokenizer, config
    )
    candidates = {}
    for path in args.tiny_mlx.split(","):
        m, tok, cfg = load_mlx(path)
        q = cfg.get("quantization")
        name = f"{Path(path).name} ({str(q['bits']) + '-bit' if q else 'unquantized'})"
        candidates[name] = one_by_one(FastReflex(m, fuse=True, compile=True), tok, cfg)
    result = compare_backends(reference, candidates, max_cycles=args.max_cycles)
    report = {"subject": "tiny", "torch": str(torch_dir), **result}
    text = markdown(f"## Parity, tiny subject ({torch_dir})", result, f"torch, {_device(args.device)}")
    write_report(args.out, "parity_tiny", report, text)
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject", choices=["release", "tiny"], required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shape", choices=["release", "tiny-test"], default="release")
    p.add_argument("--states", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=PROMPT_LEN, help="prompt tokens (at most 96)")
    p.add_argument("--corpus", default=None, help="folder holding programs/ (default: find_corpus())")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--backbone-dtype",
        choices=["bfloat16", "float32", "float16"],
        default=None,
        help="reference backbone dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument(
        "--candidates",
        default=None,
        help=f"comma list of {','.join(CANDIDATES)} (default: the reference's precision + q4)",
    )
    p.add_argument("--sabotage", default="none", help=f"comma list of {','.join(SABOTAGES)}")
    p.add_argument(
        "--mlx-device",
        choices=["gpu", "cpu"],
        default=None,
        help="default: MLX's default device (gpu on the CUDA build)",
    )
    p.add_argument(
        "--mlx-tf32",
        choices=["default", "on", "off"],
        default="default",
        help="MLX_ENABLE_TF32 for MLX's CUDA float32 matmuls (MLX's default: on)",
    )
    p.add_argument(
        "--isolate",
        action="store_true",
        help="run the torch reference and the MLX candidates in separate processes",
    )
    p.add_argument("--phase", choices=["all", "reference", "candidates"], default="all")
    p.add_argument(
        "--workdir",
        default=None,
        help="where the reference captures go between phases (--isolate: a temp dir)",
    )
    p.add_argument("--tiny-torch", default=None, help="torch dir with reflex.pt and backbone/")
    p.add_argument("--tiny-mlx", default=None, help="converted MLX dir(s), comma separated")
    p.add_argument(
        "--max-cycles",
        type=int,
        default=EVAL_MAX_CYCLES,
        help="tiny: the eval's cycle limit (lower it for a quick smoke run)",
    )
    args = p.parse_args(argv)
    if args.backbone_dtype is None:
        args.backbone_dtype = "bfloat16" if _device(args.device).startswith("cuda") else "float32"
    if args.candidates is None:
        args.candidates = "float32,q4" if args.backbone_dtype == "float32" else "bf16,q4"
    args.candidates = args.candidates.split(",")
    args.sabotage = args.sabotage.split(",")
    for c in args.candidates:
        if c not in CANDIDATES:
            p.error(f"unknown candidate {c}")
    for s in args.sabotage:
        if s not in SABOTAGES:
            p.error(f"unknown sabotage {s}")
    if args.mlx_tf32 != "default":  # read by MLX at its first matmul: set before any
        os.environ["MLX_ENABLE_TF32"] = "1" if args.mlx_tf32 == "on" else "0"
    if args.mlx_device is None:
        import mlx.core as mx

        args.mlx_device = "gpu" if mx.default_device() == mx.gpu else "cpu"
    return args


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.subject == "tiny":
        run_tiny(args)
    else:
        run_release(args, argv)


if __name__ == "__main__":
    main()
