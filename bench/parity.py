"""Parity of reflex_mlx against the PyTorch reference, stage by stage (docs/parity.md).

    python -m bench.parity --subject release --out DIR [--shape release|tiny-test]
        [--states 256] [--seed 0] [--candidates bf16,q4] [--sabotage none,skip-adapter,swap-rows]
        [--corpus PATH] [--backbone-dtype bfloat16|float32] [--isolate]
    python -m bench.parity --subject tiny --out DIR --tiny-torch DIR --tiny-mlx DIR[,DIR...]

release: a random model of the released shape, drawn from --seed on the device
(no download). The reference is the torch model as released (backbone in
--backbone-dtype, adapters float32, prompt right-padded to 96); candidates are
MLX models copied from it. Both see the same 60-token prompt and the same
states, replayed from corpus programs. Compared, per state: the encoded state
(kv, all 65 tokens), the hidden state after each adapter layer at the last real
prompt token, and the final embedding; then the decoded word.

tiny: a trained model given as a torch checkpoint dir and converted MLX dirs;
per-cycle agreement on the reference's own eval states, and free-running
outcome agreement (bench.agreement).

Writes DIR/parity_<subject>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from reflex_core.spec import EVAL_MAX_CYCLES

REPO = Path(__file__).resolve().parent.parent
PROMPT_LEN = 60
PAD_TO = 96  # max_instr_tokens: the released reference pads to it
PAD_ID = 151643  # Qwen2.5's <|endoftext|> (clipped to the vocab of smaller shapes)
SABOTAGES = ("none", "skip-adapter", "swap-rows")


# ------------------------------------------------------------------ tolerances
@dataclass(frozen=True)
class Tolerance:
    """What a candidate must meet; the reasoning is in docs/parity.md."""

    final_median: float  # final-embedding relative error, median over states
    final_p99: float  # ... and its 99th percentile
    certified_agreement: float  # top-1 agreement required where the margin exceeds tau
    min_certified_fraction: float = 0.2  # else the agreement check would be vacuous


def margin_threshold(embed_dim: int, rel_error: float) -> float:
    """tau, the margin below which a top-1 flip is noise, not a bug: 4 sigma of the
    change in (cos top-1 - cos top-2) caused by a relative embedding error
    `rel_error` in a random direction. Such an error moves the unit embedding by
    ~rel_error; its component along u1 - u2 (length ~sqrt 2) is ~rel_error * sqrt(2 / E)."""
    return 4.0 * rel_error * math.sqrt(2.0 / embed_dim)


TOLERANCES = {
    "float32": Tolerance(final_median=1e-5, final_p99=1e-4, certified_agreement=1.0),
    "bf16": Tolerance(final_median=3e-2, final_p99=6e-2, certified_agreement=0.99),
}


def check_parity(metrics: dict, tol: Tolerance) -> list[str]:
    """The failures of one candidate's metrics against a tolerance (empty: it passes)."""
    final = metrics["stages"]["final embedding"]
    certified = metrics["certified"]
    failures = []
    if not final["median"] <= tol.final_median:
        failures.append(f"final-embedding median relative error {final['median']:.3g} > {tol.final_median:g}")
    if not final["p99"] <= tol.final_p99:
        failures.append(f"final-embedding p99 relative error {final['p99']:.3g} > {tol.final_p99:g}")
    if certified["fraction"] < tol.min_certified_fraction:
        failures.append(f"only {certified['fraction']:.0%} of states have a margin above "
                        f"tau={certified['tau']:.3g}: the agreement check would be vacuous")
    elif not certified["agreement"] >= tol.certified_agreement:
        failures.append(f"top-1 agreement {certified['agreement']:.4f} on the {certified['count']} "
                        f"states with margin > tau={certified['tau']:.3g} < {tol.certified_agreement}")
    return failures


# ---------------------------------------------------------------------- inputs
def corpus_states(n: int, corpus: str | None = None) -> tuple[np.ndarray, list[str]]:
    """n distinct machine states from replayed corpus programs, spread over every family.

    The longest program of each family is replayed; each contributes evenly
    spaced cycles, taken round-robin across families until n are chosen.
    """
    from reflex_core.corpus import find_corpus, load_programs, replay

    root = Path(corpus) if corpus else find_corpus() or REPO / ".corpus"
    if root is None or not (Path(root) / "programs").is_dir():
        raise SystemExit("corpus not found: pass --corpus PATH (the folder holding programs/)")
    by_family: dict[str, object] = {}
    for program in load_programs(root):
        best = by_family.get(program.family)
        if best is None or program.num_ops > best.num_ops:
            by_family[program.family] = program
    per_family = math.ceil(n / len(by_family))
    queues = []
    for family in sorted(by_family):
        states = [s for s, _ in replay(by_family[family])]
        picks = np.unique(np.linspace(0, len(states) - 1, min(per_family * 2, len(states))).astype(int))
        queues.append([(family, states[i]) for i in picks])
    chosen, seen = [], set()
    for rank in range(max(len(q) for q in queues)):
        for family, state in (q[rank] for q in queues if rank < len(q)):
            if tuple(state) not in seen:  # every program starts from the same state
                seen.add(tuple(state))
                chosen.append((family, state))
    chosen = chosen[:n]
    if len(chosen) < n:
        raise SystemExit(f"the corpus gave only {len(chosen)} states")
    return np.array([s for _, s in chosen], dtype=np.uint32), [f for f, _ in chosen]


def prompt_ids(vocab: int, seed: int, length: int = PROMPT_LEN) -> np.ndarray:
    return np.random.default_rng(seed + 1).integers(0, min(vocab, PAD_ID), length)


# ------------------------------------------------------------------- reference
def reference_captures(model, ids: np.ndarray, states: np.ndarray, batch: int) -> dict:
    """The torch reference's kv, post-adapter-layer hiddens (last real token), pred,
    decoded words and top-1/top-2 cosine margin, as float32 numpy."""
    import torch

    device = next(model.reflex.parameters()).device
    n_real = len(ids)
    pad_id = min(PAD_ID, model.backbone.config.vocab_size - 1)
    row = list(ids) + [pad_id] * (PAD_TO - n_real)
    input_ids = torch.tensor([row], device=device)
    mask = torch.tensor([[1] * n_real + [0] * (PAD_TO - n_real)], device=device)

    seen: dict = {}
    hooks = [model.reflex.kv_norm.register_forward_hook(lambda m, a, out: seen.__setitem__("kv", out))]
    for layer in model.adapter_layers:  # registered after the adapter hooks: sees their output
        def grab(m, a, out, layer=layer):
            h = out[0] if isinstance(out, tuple) else out
            seen[layer] = h[:, n_real - 1]
        hooks.append(model.backbone.layers[layer].register_forward_hook(grab))

    parts: dict[str, list] = {}
    try:
        with torch.no_grad():
            for start in range(0, len(states), batch):
                words = torch.tensor(states[start:start + batch].astype(np.int64), device=device)
                b = len(words)
                pred = model(input_ids.expand(b, -1), mask.expand(b, -1), words)
                scores = model.reflex.scores(pred)
                top = scores.topk(2, dim=-1)
                out = {"kv": seen["kv"], "pred": pred,
                       **{f"layer{L}": seen[L] for L in model.adapter_layers},
                       "top1": top.indices[:, 0], "margin": top.values[:, 0] - top.values[:, 1],
                       "words": model.reflex.instr_words[top.indices[:, 0]] & 0xFFFFFFFF}
                for key, value in out.items():
                    value = value.float() if value.is_floating_point() else value
                    parts.setdefault(key, []).append(value.cpu().numpy())
                seen.clear()
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in parts.items()}


# ------------------------------------------------------------------- candidate
def candidate_captures(model, ids: np.ndarray, states: np.ndarray, batch: int,
                       sabotage: str = "none", ref_top1: np.ndarray | None = None) -> dict:
    """The same captures from an MLX ReflexModel. `sabotage` breaks the candidate
    on purpose, to show the checks fail: skip the middle adapter, or swap the
    words of the two codebook rows the reference decodes most often (a swap of
    rows nobody decodes changes no output, so no test could or should see it)."""
    import mlx.core as mx

    layers = list(model.reflex.args.adapter_layers)
    saved_index, saved_words = model.adapter_index, model.reflex.instr_words
    if sabotage == "skip-adapter":
        skipped = layers[len(layers) // 2]
        model.adapter_index = {k: v for k, v in saved_index.items() if k != skipped}
    elif sabotage == "swap-rows":
        a, b = np.argsort(-np.bincount(ref_top1, minlength=len(saved_words)), kind="stable")[:2]
        words = np.array(saved_words)
        words[[a, b]] = words[[b, a]]
        model.reflex.instr_words = mx.array(words)
    elif sabotage != "none":
        raise ValueError(f"unknown sabotage {sabotage!r}")
    parts: dict[str, list] = {}
    try:
        prefix = model.prefix(mx.array(ids[None].astype(np.int32)))
        for start in range(0, len(states), batch):
            cap: dict = {}
            pred = model.step(prefix, mx.array(states[start:start + batch]), capture=cap)
            out = {"kv": cap["kv"], "pred": pred, **{f"layer{L}": cap[L] for L in layers},
                   "words": model.reflex.decode(pred)}
            mx.eval(out)
            for key, value in out.items():
                value = value.astype(mx.float32) if mx.issubdtype(value.dtype, mx.floating) else value
                parts.setdefault(key, []).append(np.array(value))
    finally:
        model.adapter_index, model.reflex.instr_words = saved_index, saved_words
    return {k: np.concatenate(v) for k, v in parts.items()}


# --------------------------------------------------------------------- metrics
def _relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)


def _summary(x: np.ndarray) -> dict:
    return {"median": float(np.median(x)), "p99": float(np.percentile(x, 99)), "max": float(x.max())}


def stage_names(adapter_layer_list: list[int]) -> list[tuple[str, str]]:
    return ([("kv", "state encoder (kv)")]
            + [(f"layer{L}", f"adapter {i} (after layer {L})") for i, L in enumerate(adapter_layer_list)]
            + [("pred", "final embedding")])


def compare(ref: dict, cand: dict, adapter_layer_list: list[int], embed_dim: int,
            tol: Tolerance | None = None) -> dict:
    """Per-stage relative errors, top-1 agreement, and agreement where margin > tau.

    tau is set by the candidate's observed p99 final error, capped by the
    tolerance's: a broken candidate cannot widen it to hide flips (its error
    fails the tolerance anyway), an exact one (swapped rows) is checked on
    almost every state.
    """
    stages = {label: _summary(_relative(ref[key], cand[key]))
              for key, label in stage_names(adapter_layer_list)}
    rel = stages["final embedding"]["p99"]
    tau = margin_threshold(embed_dim, min(rel, tol.final_p99) if tol else rel)
    same = ref["words"].astype(np.uint32) == cand["words"].astype(np.uint32)
    above = ref["margin"] > tau
    flipped = ref["margin"][~same]
    return {
        "stages": stages,
        "top1_agreement": float(same.mean()),
        "disagreements": int((~same).sum()),
        "largest_margin_flipped": float(flipped.max()) if len(flipped) else 0.0,
        "certified": {"tau": tau, "count": int(above.sum()), "fraction": float(above.mean()),
                      "agreement": float(same[above].mean()) if above.any() else float("nan")},
    }


def margin_summary(margin: np.ndarray, words: np.ndarray) -> dict:
    q = [1, 10, 25, 50, 75, 90]
    return {**{f"p{p}": float(np.percentile(margin, p)) for p in q},
            "distinct_words": int(len(np.unique(words))), "states": int(len(margin))}


# ------------------------------------------------------------------ the subject
CANDIDATES = {  # name -> (MLX backbone dtype, bits); "ref" means the reference's own dtype
    "float32": ("float32", None), "bf16": ("bfloat16", None),
    "q4": ("ref", 4), "q8": ("ref", 8),
}


def _torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def _device(arg: str | None) -> str:
    import torch

    return arg or ("cuda" if torch.cuda.is_available() else "cpu")


def build_reference(args):
    from reflex_torch.random_model import SHAPES, build_random_reflex

    device = _device(args.device)
    t0 = time.time()
    model, config = build_random_reflex(SHAPES[args.shape], args.seed, device,
                                        _torch_dtype(args.backbone_dtype))
    return model, config, time.time() - t0


def run_reference_phase(args, model=None) -> dict:
    """Reference captures on the subject's states (the model is built if not given)."""
    from reflex_torch.random_model import SHAPES

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


def run_candidate_phase(args, phase: dict, torch_model=None, config=None) -> dict:
    """Every candidate x sabotage against the reference captures in `phase`."""
    import mlx.core as mx

    from reflex_mlx.from_torch import mlx_model_from_torch, release_torch_memory
    from reflex_torch.random_model import SHAPES, reflex_config_for

    if args.mlx_device == "cpu":
        mx.set_default_device(mx.cpu)
    shape = SHAPES[args.shape]
    timings = phase["timings"]
    if torch_model is None:  # a separate process: draw the same weights again
        torch_model, config, timings["rebuild_s"] = build_reference(args)
    config = config or reflex_config_for(shape)
    layers = list(torch_model.adapter_layers)

    # Copy every candidate's weights first, then let the torch model go.
    models = {}
    for name in args.candidates:
        dtype, bits = CANDIDATES[name]
        t0 = time.time()
        models[name] = mlx_model_from_torch(
            torch_model, config, args.backbone_dtype if dtype == "ref" else dtype, bits)
        timings[f"copy_{name}_s"] = time.time() - t0
    torch_model.to("meta")  # frees its device memory even where the caller still holds it
    del torch_model
    release_torch_memory()

    ref = phase["ref"]
    results = {}
    for n, (name, model) in enumerate(models.items()):
        # Sabotage proves the checks can fail; the first candidate is enough for that.
        for sabotage in args.sabotage if n == 0 else ["none"]:
            key = name if sabotage == "none" else f"{name}+{sabotage}"
            t0 = time.time()
            cand = candidate_captures(model, phase["ids"], phase["states"], args.batch,
                                      sabotage, ref["top1"])
            timings[f"candidate_{key}_s"] = time.time() - t0
            tol = TOLERANCES.get(name)
            metrics = compare(ref, cand, layers, shape.embed_dim, tol)
            metrics["tolerance"] = asdict(tol) if tol else None
            metrics["failures"] = check_parity(metrics, tol) if tol else None
            results[key] = metrics
    if hasattr(mx, "get_peak_memory"):
        timings["mlx_peak_gib"] = mx.get_peak_memory() / 2**30
    return results


def save_phase(path: Path, phase: dict) -> None:
    np.savez(path, ids=phase["ids"], states=phase["states"], families=np.array(phase["families"]),
             timings=json.dumps(phase["timings"]), **{f"ref_{k}": v for k, v in phase["ref"].items()})


def load_phase(path: Path) -> dict:
    data = np.load(path)
    return {"ids": data["ids"], "states": data["states"], "families": list(data["families"]),
            "timings": json.loads(str(data["timings"])),
            "ref": {k[4:]: data[k] for k in data.files if k.startswith("ref_")}}


def _self_command(args, phase: str, workdir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "bench.parity", "--subject", "release",
           "--out", str(Path(args.out).resolve()),
           "--shape", args.shape, "--states", str(args.states), "--seed", str(args.seed),
           "--batch", str(args.batch), "--prompt-len", str(args.prompt_len),
           "--backbone-dtype", args.backbone_dtype,
           "--candidates", ",".join(args.candidates), "--sabotage", ",".join(args.sabotage),
           "--phase", phase, "--workdir", str(workdir), "--mlx-device", args.mlx_device,
           "--mlx-tf32", args.mlx_tf32]
    if args.corpus:
        cmd += ["--corpus", str(Path(args.corpus).resolve())]
    if args.device:
        cmd += ["--device", args.device]
    return cmd


def run_release(args) -> dict | None:
    """The release subject; with --isolate torch and MLX run in separate processes."""
    from reflex_torch.random_model import SHAPES

    if args.isolate:
        with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
            workdir = Path(args.workdir or tmp).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            for phase in ("reference", "candidates"):
                subprocess.run(_self_command(args, phase, workdir), check=True, cwd=REPO)
        return None
    if args.phase != "all" and not args.workdir:
        raise SystemExit("--phase reference/candidates needs --workdir (shared between the two)")
    npz = Path(args.workdir or ".") / "reference.npz"
    if args.phase == "reference":
        npz.parent.mkdir(parents=True, exist_ok=True)
        save_phase(npz, run_reference_phase(args))
        print(f"reference captures in {npz}")
        return None
    if args.phase == "candidates":
        phase = load_phase(npz)
        results = run_candidate_phase(args, phase)
    else:
        model, config, build_s = build_reference(args)
        phase = run_reference_phase(args, model)
        phase["timings"]["build_s"] = build_s
        results = run_candidate_phase(args, phase, model, config)
        del model
    shape = SHAPES[args.shape]
    report = {
        "subject": "release", "shape": args.shape, "shape_values": asdict(shape),
        "seed": args.seed, "states": len(phase["states"]), "prompt_tokens": len(phase["ids"]),
        "families": len(set(phase["families"])), "reference": {
            "device": _device(args.device), "backbone_dtype": args.backbone_dtype,
            "adapter_dtype": "float32", "padded_to": PAD_TO,
            "margin": margin_summary(phase["ref"]["margin"], phase["ref"]["words"])},
        "mlx_device": args.mlx_device,
        "mlx_enable_tf32": os.environ.get("MLX_ENABLE_TF32", "unset (MLX default: 1)"),
        "candidates": results, "timings": phase["timings"],
    }
    write_report(args.out, report, release_markdown(report))
    return report


# ---------------------------------------------------------------------- report
def release_markdown(report: dict) -> str:
    cands = report["candidates"]
    names = list(cands)
    first = cands[names[0]]["stages"]
    lines = [f"## Parity, release subject ({report['shape']} shape, seed {report['seed']}, "
             f"{report['states']} states from {report['families']} families, "
             f"{report['prompt_tokens']}-token prompt)", "",
             f"Reference: torch on {report['reference']['device']}, backbone "
             f"{report['reference']['backbone_dtype']}, adapters float32, prompt padded to "
             f"{report['reference']['padded_to']}. Candidates: MLX on {report['mlx_device']} "
             f"(MLX_ENABLE_TF32: {report['mlx_enable_tf32']}).", "",
             "Relative error ||ref - cand|| / ||ref|| per state, median / p99 / max:", "",
             "| stage | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for stage in first:
        cells = [("{median:.2e} / {p99:.2e} / {max:.2e}").format(**cands[n]["stages"][stage]) for n in names]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    rows = [
        ("top-1 agreement", lambda m: f"{m['top1_agreement']:.4f} ({m['disagreements']} differ)"),
        ("largest margin that flipped", lambda m: f"{m['largest_margin_flipped']:.2e}"),
        ("states with margin > tau", lambda m: f"{m['certified']['count']} (tau {m['certified']['tau']:.2e})"),
        ("agreement where margin > tau", lambda m: f"{m['certified']['agreement']:.4f}"),
        ("check", lambda m: "n/a (measured)" if m["failures"] is None
         else ("PASS" if not m["failures"] else "FAIL: " + "; ".join(m["failures"]))),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(cands[n]) for n in names) + " |")
    margin = report["reference"]["margin"]
    lines += ["", "Reference top-1 minus top-2 cosine margin: " + ", ".join(
        f"{k} {v:.2e}" for k, v in margin.items() if k.startswith("p"))
        + f"; {margin['distinct_words']} distinct top-1 words.", "",
        "Timings: " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items())]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict, markdown: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"parity_{report['subject']}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"parity_{report['subject']}.md").write_text(markdown)
    print(markdown)


def run_tiny(args) -> dict:
    """A trained model: lock-step and free-running agreement on the 41-task eval."""
    from reflex_mlx.load import MLXPredictor, load_model
    from reflex_torch.load import TorchPredictor, load_reflex

    from .agreement import compare_backends

    if not args.tiny_torch or not args.tiny_mlx:
        raise SystemExit("--subject tiny needs --tiny-torch DIR and --tiny-mlx DIR[,DIR]")
    torch_dir = Path(args.tiny_torch)
    model, tokenizer, config = load_reflex(torch_dir / "reflex.pt", backbone=str(torch_dir / "backbone"),
                                           device=_device(args.device))
    make_ref = lambda task: TorchPredictor(model, tokenizer, task, config).predict_many
    candidates = {}
    for path in args.tiny_mlx.split(","):
        m, tok, cfg = load_model(path)
        q = cfg.get("quantization")
        name = f"{Path(path).name} ({str(q['bits']) + '-bit' if q else 'unquantized'})"
        candidates[name] = lambda task, m=m, tok=tok, cfg=cfg: MLXPredictor(m, tok, task, cfg).predict_many
    result = compare_backends(make_ref, candidates, max_cycles=args.max_cycles)
    report = {"subject": "tiny", "torch": str(torch_dir), **result}
    lines = [f"## Parity, tiny subject ({torch_dir})", "",
             f"Reference (torch, {_device(args.device)}): {result['reference_passed']}/{result['total']} passed.", "",
             "| candidate | lock-step word agreement | runs identical | same pass | candidate passed |",
             "|---|---|---|---|---|"]
    for name, c in result["candidates"].items():
        ls, fr = c["lockstep"], c["free_running"]
        lines.append(f"| {name} | {ls['agree']}/{ls['cycles']} ({ls['rate']:.4f}) | "
                     f"{fr['identical']}/{fr['runs']} | {fr['same_pass']}/{fr['runs']} | "
                     f"{fr['candidate_passed']}/{fr['runs']} |")
    write_report(args.out, report, "\n".join(lines) + "\n")
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
    p.add_argument("--backbone-dtype", choices=["bfloat16", "float32", "float16"], default=None,
                   help="reference backbone dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--candidates", default=None,
                   help=f"comma list of {','.join(CANDIDATES)} (default: the reference's precision + q4)")
    p.add_argument("--sabotage", default="none", help=f"comma list of {','.join(SABOTAGES)}")
    p.add_argument("--mlx-device", choices=["gpu", "cpu"], default=None,
                   help="default: MLX's default device (gpu on the CUDA build)")
    p.add_argument("--mlx-tf32", choices=["default", "on", "off"], default="default",
                   help="MLX_ENABLE_TF32 for MLX's CUDA float32 matmuls (MLX's default: on)")
    p.add_argument("--isolate", action="store_true",
                   help="run the torch reference and the MLX candidates in separate processes")
    p.add_argument("--phase", choices=["all", "reference", "candidates"], default="all")
    p.add_argument("--workdir", default=None,
                   help="where the reference captures go between phases (--isolate: a temp dir)")
    p.add_argument("--tiny-torch", default=None, help="torch dir with reflex.pt and backbone/")
    p.add_argument("--tiny-mlx", default=None, help="converted MLX dir(s), comma separated")
    p.add_argument("--max-cycles", type=int, default=EVAL_MAX_CYCLES,
                   help="tiny: the eval's cycle limit (lower it for a quick smoke run)")
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
    args = parse_args(argv)
    if args.subject == "tiny":
        run_tiny(args)
    else:
        run_release(args)


if __name__ == "__main__":
    main()
