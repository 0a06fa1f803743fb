"""The precision table: which MLX recipe keeps a trained Reflex model working.

    python -m bench.precision --torch reflex_torch/models/reflex-smol --out docs/results \
        [--recipes all | SPEC,SPEC,...] [--max-cycles 400]

SPEC is BACKBONE/ADAPTERS: BACKBONE one of float32, float16, bfloat16, 8bit-g64,
6bit-g64, 4bit-g32, mixed_4_6-g64, ...; ADAPTERS one of float32, bfloat16,
float16, 8bit, 4bit (the adapter side's linear layers quantized, group 64).
A calibrated BACKBONE (convert/calibrate.py, on the corpus's training programs)
is METHOD<bits>-g<group>: awq4-g64, gptq4-g64, dwq4-g64 (mlx-lm's AWQ, GPTQ,
DWQ), distill4-g64 (convert/distill.py: scales and biases trained on the Reflex
objective), or sens4_6-g64 (4-bit with the most sensitive matrices at 6, by measured
sensitivity); its row records the calibration's seconds here and a projected
Mac time (convert.calibrate.projected_seconds: a FLOP count over a stated
throughput, not a measurement).

The reference is the torch model as released (ReflexModel, hooks, prompts
padded to 96) with a float32 backbone and float32 adapters. It runs the
41-task eval once, every call recorded; then each MLX candidate, built from
the same weights by reflex_mlx/quantize.py (mlx-lm's quantizer and recipes):

* lock-step: fed exactly the reference's calls, same word on N/M cycles;
* free-running: its own eval: runs identical to the reference's, same pass
  set, and its score (also without the tasks that have near-copies in the
  corpus, when the corpus is at hand);
* held-out per-step top-1, every cycle of the held-out programs under their
  first prompt (heldout.json beside reflex.pt);
* resident memory (`mx.get_active_memory` after the candidate is built), the
  bytes of weights the fast path reads per cycle, bits per backbone weight;
* the same bytes for the released 7B shape, counted from array shapes on a
  lazily built model (nothing allocated).

Writes OUT/precision_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import re
import time
from dataclasses import replace
from pathlib import Path

from reflex_core import training
from reflex_core.evaluation import corpus_near_copy_tags, evaluate, score_without
from reflex_core.spec import EVAL_MAX_CYCLES

from .agreement import batched, lockstep_agreement, outcome_agreement, recorded_eval
from .common import write_file, write_report

BACKBONES = ("float16", "bfloat16", "8bit-g64", "6bit-g64", "4bit-g64", "4bit-g32", "mixed_4_6-g64")
ADAPTERS = ("float32", "bfloat16", "float16", "8bit", "4bit")


def parse_recipe(spec: str):
    """BACKBONE/ADAPTERS -> a reflex_mlx.quantize.Recipe (quantized backbones on float16 scales)."""
    from reflex_mlx.quantize import parse_recipe

    return parse_recipe(spec)


CALIBRATED = re.compile(r"([a-z]+)(\d)(?:_(\d))?-g(\d+)")  # awq4-g64, sens4_6-g64, ...


def parse_spec(spec: str):
    """BACKBONE/ADAPTERS -> (Recipe, calibration method or None): a calibrated
    backbone (METHOD<bits>-g<group>) is that plain recipe, calibrated."""
    from convert.calibrate import METHODS, SENS_HIGH_BITS

    backbone, sep, adapters = spec.partition("/")
    m = CALIBRATED.fullmatch(backbone)
    if m is None:
        return parse_recipe(spec), None
    method, high = m[1], m[3]
    if method not in METHODS or (high is not None) != (method == "sens"):
        raise ValueError(f"unknown calibrated backbone {backbone!r}")
    if high is not None and int(high) != SENS_HIGH_BITS:
        raise ValueError(f"sens calibration raises layers to {SENS_HIGH_BITS} bits, not {high}")
    return parse_recipe(f"{m[2]}bit-g{m[4]}{sep}{adapters}"), method


def all_recipes() -> list[str]:
    return [f"{b}/{a}" for b in BACKBONES for a in ADAPTERS]


def build_candidate(
    torch_model, recipe, calibration: str | None = None, data=None, record: dict | None = None
):
    """The MLX ReflexModel of the torch model's weights under `recipe` (backbone via
    mlx-lm's own Model class and quantizer, or calibrated on `data` by
    convert.calibrate, what it did into `record`)."""
    import mlx.core as mx

    from reflex_mlx.model import ReflexModel
    from reflex_mlx.quantize import quantize_adapters, quantize_backbone

    from .bridge import mlx_backbone_from_torch, mlx_reflex_from_torch

    backbone = mlx_backbone_from_torch(torch_model.backbone, "float32")
    reflex = mlx_reflex_from_torch(torch_model.reflex, "float32")
    if calibration:
        from convert.calibrate import calibrate

        done = calibrate(calibration, backbone, reflex, recipe, data)
        if record is not None:
            record.update(done)
    else:
        quantize_backbone(backbone, recipe)
    quantize_adapters(reflex, recipe)
    model = ReflexModel(backbone, reflex)
    model.eval()
    mx.eval(model.parameters())
    return model


def _quantize_mapped(backbone, recipe, high: list[str], source_layers: int) -> None:
    """Quantize as a sensitivity-chosen recipe measured on a model of `source_layers`
    layers would: each layer takes the choice of the measured layer at the same
    relative depth (the embedding its own); the rest at the recipe's bits."""
    import mlx.core as mx
    from mlx_lm.utils import quantize_model

    from convert.calibrate import SENS_HIGH_BITS

    chosen = set(high)
    layers = len(backbone.model.layers)

    def predicate(path, module):
        parts = path.split(".")
        if parts[:2] == ["model", "layers"]:
            j = round(int(parts[2]) * (source_layers - 1) / max(layers - 1, 1))
            path = ".".join(["model", "layers", str(j), *parts[3:]])
        return {"bits": SENS_HIGH_BITS, "group_size": recipe.group_size} if path in chosen else True

    dtype = getattr(mx, recipe.backbone_dtype or "float16")
    backbone.apply(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p)
    with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints its bits per weight
        quantize_model(backbone, {}, recipe.group_size, recipe.bits, quant_predicate=predicate)


def release_counts(
    recipe, high: list[str] | None = None, source_layers: int | None = None, shape=None
) -> dict:
    """Stored bytes and bytes read per cycle of the released 7B shape (or `shape`)
    under `recipe`, counted on a lazily built model (its arrays are never
    evaluated). `high`: the matrices a sensitivity calibration raised, on a model
    of `source_layers` layers."""
    from mlx_lm.utils import _get_classes

    from reflex_core.shapes import RELEASE, checkpoint_config, decoder_config
    from reflex_core.spec import ReflexArgs
    from reflex_mlx.model import Reflex, ReflexModel
    from reflex_mlx.quantize import (
        bits_per_weight,
        bytes_per_cycle,
        nbytes,
        quantize_adapters,
        quantize_backbone,
    )

    shape = shape or RELEASE
    config = decoder_config(shape)
    model_class, args_class = _get_classes(config)
    backbone = model_class(args_class.from_dict(config))  # with lm_head: the converter keeps it
    if high is None:
        quantize_backbone(backbone, recipe)
    else:
        _quantize_mapped(backbone, recipe, high, source_layers)
    reflex = Reflex(ReflexArgs.from_config(checkpoint_config(shape), shape.layers))
    quantize_adapters(reflex, recipe)
    model = ReflexModel(backbone, reflex)
    return {
        "backbone_bytes": nbytes(backbone),
        "adapter_bytes": nbytes(reflex),
        "resident_bytes": nbytes(backbone) + nbytes(reflex),
        "bytes_per_cycle": bytes_per_cycle(model),
        "backbone_bits_per_weight": bits_per_weight(backbone),
    }


def heldout_top1(runner, tokenizer, config: dict, pairs) -> float:
    """Held-out teacher-forced top-1 through any runner (reflex_core.training.top1)."""
    return training.top1(runner, tokenizer, config, pairs)[0] / max(len(pairs), 1)


def run(args) -> dict:
    import mlx.core as mx
    import torch

    from reflex_core.corpus import find_corpus
    from reflex_core.training import HELDOUT_FILE, heldout_cycles, make_pairs, read_heldout
    from reflex_mlx.fast import FastReflex as MLXFast
    from reflex_mlx.quantize import bits_per_weight, bytes_per_cycle, weight_bytes
    from reflex_torch.loader import load_model
    from reflex_torch.model import Reference

    specs = all_recipes() if args.recipes == "all" else args.recipes.split(",")
    parsed = [parse_spec(spec) for spec in specs]  # every spec checked before the reference runs
    if args.scales_dtype:  # quantized backbones' scales, biases and norms (MLX's CPU emulates float16)
        parsed = [
            (replace(r, backbone_dtype=args.scales_dtype) if r.quantizes_backbone else r, c)
            for r, c in parsed
        ]
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true float32
    torch_dir = Path(args.torch)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    started = time.time()
    model, tokenizer, config = load_model(
        torch_dir / "reflex.pt", backbone=args.backbone, backbone_dtype=torch.float32
    )
    reference = Reference(model, tokenizer.pad_token_id, config["max_instr_tokens"])
    ref_report, recording = recorded_eval(batched(reference, tokenizer, config), args.max_cycles)
    corpus = find_corpus() if args.corpus is None else Path(args.corpus)
    near = corpus_near_copy_tags(corpus) if corpus else None
    pairs = []
    if (torch_dir / HELDOUT_FILE).is_file():
        entries = read_heldout(torch_dir)
        pairs = make_pairs(entries, heldout_cycles(entries), max_samples=args.heldout_samples)
    ref_top1 = heldout_top1(reference, tokenizer, config, pairs) if pairs else None
    print(
        f"reference: {ref_report['passed']}/{ref_report['total']} passed"
        + (f", held-out top-1 {ref_top1:.4f} ({len(pairs)} cycles)" if pairs else "")
        + f" ({time.time() - started:.0f} s)",
        flush=True,
    )

    rows = []
    calibration_sets: dict[int, object] = {}
    for spec, (recipe, calibration) in zip(specs, parsed):
        t0 = time.time()
        record: dict = {}
        data = None
        if calibration:
            data = _calibration_set(args, corpus, torch_dir, tokenizer, config, calibration, calibration_sets)
        gc.collect()
        mx.clear_cache()
        before = mx.get_active_memory()
        candidate = build_candidate(model, recipe, calibration, data, record)
        gc.collect()
        resident = mx.get_active_memory() - before
        runner = MLXFast(candidate, fuse=True, compile=args.compile)
        make = batched(runner, tokenizer, config)
        lockstep = lockstep_agreement(recording, make)
        own = evaluate(make_batch_predictor=make, max_cycles=args.max_cycles)
        free = outcome_agreement(ref_report, own)
        high = record.get("high_layers")
        row = {
            "recipe": spec,
            "backbone": f"{calibration} {recipe.backbone_name}" + (" (+6-bit)" if high is not None else "")
            if calibration
            else recipe.backbone_name,
            "adapters": recipe.adapter_name,
            "lockstep": lockstep,
            "free_running": free,
            "passed": own["passed"],
            "total": own["total"],
            "passed_without_near_copies": score_without(own, near) if near else None,
            "heldout_top1": heldout_top1(runner, tokenizer, config, pairs) if pairs else None,
            "resident_bytes": resident,
            "weight_bytes": weight_bytes(candidate),
            "bytes_per_cycle": bytes_per_cycle(candidate),
            "backbone_bits_per_weight": bits_per_weight(candidate.backbone),
            "release": release_counts(recipe, high, len(candidate.backbone.layers)),
            "calibration": _calibration_row(record, model, config, data) if calibration else None,
            "seconds": time.time() - t0,
        }
        rows.append(row)
        print(
            f"{spec}: same word {lockstep['agree']}/{lockstep['cycles']}, runs identical "
            f"{free['identical']}/{free['runs']}, same pass {free['same_pass']}/{free['runs']}, "
            f"passed {own['passed']}/{own['total']}, resident {resident / 2**20:.1f} MiB "
            f"({row['seconds']:.0f} s"
            + (f", calibration {record['seconds']:.0f} s" if calibration else "")
            + ")",
            flush=True,
        )
        del runner, candidate, make
        _write(args, torch_dir, reference, ref_report, near, ref_top1, pairs, rows, started, final=False)
    return _write(args, torch_dir, reference, ref_report, near, ref_top1, pairs, rows, started, final=True)


def _calibration_set(args, corpus, torch_dir, tokenizer, config, method, cache: dict):
    """The calibration cycles for `method` (--calibration-samples, else the method's
    default count), built once per count from the corpus's training programs."""
    from convert.calibrate import DEFAULT_SAMPLES, calibration_data
    from reflex_core.training import HELDOUT_FILE

    if corpus is None:
        raise SystemExit("error: a calibrated recipe needs the corpus: pass --corpus PATH")
    n = args.calibration_samples or DEFAULT_SAMPLES.get(method, 128)
    if n not in cache:
        cache[n] = calibration_data(corpus, tokenizer, config, n, heldout=torch_dir / HELDOUT_FILE)
    return cache[n]


def _calibration_row(record: dict, torch_model, config: dict, data) -> dict:
    """A calibrated row's cost: seconds here, and the projected Mac seconds for this
    model's shape and for the released 7B's (convert.calibrate.projected_seconds:
    a FLOP count over a stated Mac throughput, an estimate)."""
    import mlx.core as mx

    from convert.calibrate import MAC_FLOPS, projected_seconds
    from reflex_core.shapes import RELEASE, shape_of_decoder

    shape = shape_of_decoder(
        torch_model.backbone.config.to_dict(),
        inject_every=config["inject_every"],
        mlp_ratio=config["adapter_mlp_ratio"],
    )
    method, n, tokens = record["method"], len(data), data.tokens.shape[1]
    return {
        **{k: v for k, v in record.items() if k != "quantization"},
        "device": str(mx.default_device()),
        "mac_seconds_projected": projected_seconds(method, shape, n, tokens),
        "mac_seconds_projected_7b": projected_seconds(method, RELEASE, n, tokens),
        "mac_assumption": f"{MAC_FLOPS / 1e12:g} TFLOP/s effective (convert/calibrate.py MAC_FLOPS)",
    }


def _write(args, torch_dir, reference, ref_report, near, ref_top1, pairs, rows, started, final) -> dict:
    """The report so far (after every row, so a run cut short still leaves its rows)."""
    import mlx.core as mx

    report = {
        "torch": str(torch_dir),
        "device": f"torch {reference.device}, mlx {mx.default_device()}",
        "max_cycles": args.max_cycles,
        "reference": {
            "passed": ref_report["passed"],
            "total": ref_report["total"],
            "passed_without_near_copies": score_without(ref_report, near) if near else None,
            "near_copy_tags": near,
            "heldout_top1": ref_top1,
            "heldout_cycles": len(pairs),
            "sections": {k: [v["passed"], v["total"]] for k, v in ref_report["sections"].items()},
        },
        "rows": rows,
        "compile": args.compile,
        "scales_dtype": getattr(args, "scales_dtype", None) or "float16",
        "complete": final,
        "seconds": time.time() - started,
    }
    stem = f"precision_{args.name or torch_dir.name}"
    if final:
        write_report(args.out, stem, report, markdown(report))
    else:
        write_file(Path(args.out) / f"{stem}.json", json.dumps(report, indent=2, default=str) + "\n")
    return report


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def markdown(report: dict) -> str:
    ref = report["reference"]
    near = ref["passed_without_near_copies"]
    lines = [
        f"## Precision table: {Path(report['torch']).name}",
        "",
        f"Reference: torch as released (hooks, padded to 96), float32 backbone and adapters, "
        f"{report['device']}: {ref['passed']}/{ref['total']} passed"
        + (f" ({near[0]}/{near[1]} without the near-copy tasks)" if near else "")
        + (f", held-out top-1 {100 * ref['heldout_top1']:.2f} % on {ref['heldout_cycles']} cycles" if ref[
            "heldout_top1"] is not None else "")
        + ".",
        "",
        "| backbone | adapters | same word (lock-step) | runs identical | same pass | passed | "
        "w/o near-copies | held-out top-1 | resident MiB | read/cycle MiB | backbone bits/w | "
        "7B resident GiB | 7B read/cycle GiB | calibration s (Mac 7B est. min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in report["rows"]:
        ls, fr, rel = r["lockstep"], r["free_running"], r["release"]
        wo = r["passed_without_near_copies"]
        top = r["heldout_top1"]
        lines.append(
            f"| {r['backbone']} | {r['adapters']} | "
            f"{ls['agree']}/{ls['cycles']} ({100 * ls['rate']:.2f} %) | "
            f"{fr['identical']}/{fr['runs']} | {fr['same_pass']}/{fr['runs']} | {r['passed']}/{r['total']} | "
            f"{f'{wo[0]}/{wo[1]}' if wo else '-'} | {f'{100 * top:.2f} %' if top is not None else '-'} | "
            f"{_mib(r['resident_bytes'])} | {_mib(r['bytes_per_cycle'])} | "
            f"{r['backbone_bits_per_weight']:.2f} | {_gib(rel['resident_bytes'])} | "
            f"{_gib(rel['bytes_per_cycle'])} | {_calibration_cell(r.get('calibration'))} |"
        )
    lines += ["", f"{report['seconds']:.0f} s in all; MLX step compiled: {report['compile']}."]
    return "\n".join(lines) + "\n"


def _calibration_cell(cal: dict | None) -> str:
    if not cal:
        return "-"
    return f"{cal['seconds']:.0f} ({cal['mac_seconds_projected_7b'] / 60:.0f})"


def merge(paths: list[Path], out: Path, name: str) -> dict:
    """One report from several runs on the same model (rows in order, first of each recipe kept)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    rows, seen = [], set()
    for report in reports:
        for row in report["rows"]:
            if row["recipe"] not in seen:
                seen.add(row["recipe"])
                rows.append(row)
    merged = {
        **reports[0],
        "rows": rows,
        "merged_from": [str(p) for p in paths],
        "seconds": sum(r["seconds"] for r in reports),
    }
    write_report(out, f"precision_{name}", merged, markdown(merged))
    return merged


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--merge", nargs="+", type=Path, default=None, help="merge these reports (JSON) instead")
    p.add_argument("--torch", default=None, help="trained torch model dir (reflex.pt, heldout.json)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backbone", default=None, help="override the checkpoint's backbone_id")
    p.add_argument("--name", default=None, help="report name (default: the model folder's)")
    p.add_argument("--recipes", default="all", help="'all' or comma-separated BACKBONE/ADAPTERS specs")
    p.add_argument("--corpus", default=None, help="corpus folder, for the near-copy tasks (default: found)")
    p.add_argument("--compile", action="store_true", help="mx.compile the MLX step (recompiles per batch)")
    p.add_argument("--max-cycles", type=int, default=EVAL_MAX_CYCLES, help="the eval's cycle limit")
    p.add_argument(
        "--scales-dtype",
        default=None,
        choices=("float32", "bfloat16"),
        help="quantized backbones' float dtype instead of float16 (a CPU run: MLX emulates float16 there)",
    )
    p.add_argument(
        "--heldout-samples",
        type=int,
        default=None,
        help="a fixed subsample of the held-out cycles (default: all)",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=None,
        help="corpus cycles per calibration (default: the method's)",
    )
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out, args.name or "merged")
    elif args.torch:
        run(args)
    else:
        p.error("give --torch DIR (or --merge REPORT ...)")


if __name__ == "__main__":
    main()
