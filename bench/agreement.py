"""Backend agreement on the 41-task evaluation of a trained model (reflex-tiny).

    python -m bench.agreement --tiny-torch DIR --out OUT [--torch-compile [MODE]]
        [--no-mlx] [--no-torch-fast] [--max-cycles 400]

Two measures, for any candidate given as `make(prompts) -> predict(indices, states)`:

* lock-step: the reference runs the eval, every (indices, states) call is
  recorded, and each candidate is fed exactly those calls, so the two are
  compared on identical inputs at every cycle (one early disagreement cannot
  hide the rest of a run);
* free-running: each candidate runs the eval on its own, and the per-run
  outcome and pass/fail are compared, which is what a user would see.

The library half needs neither CUDA nor torch. The command compares every fast
path of both backends against the torch reference as released (hooks, padded
to 96) and writes OUT/agreement_tiny.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reflex_core.evaluation import evaluate, per_prompt
from reflex_core.predict import BatchPredictor, Predictor
from reflex_core.spec import EVAL_MAX_CYCLES, MASK32

from .common import add_torch_compile_option, write_report

MakeBatch = Callable[[list[str]], Callable[[Sequence[int], list[list[int]]], Sequence[int]]]


def batched(runner, tokenizer, config) -> MakeBatch:
    """A runner's lockstep path: every prompt in one batch."""
    return lambda prompts: BatchPredictor(runner, tokenizer, prompts, config)


def one_by_one(runner, tokenizer, config) -> MakeBatch:
    """A runner's one-prompt path, prompt by prompt."""
    return lambda prompts: per_prompt(lambda p: Predictor(runner, tokenizer, p, config).predict_many, prompts)


@dataclass
class Recording:
    """Every call the reference's eval made: the prompts, then (indices, states, words)."""

    prompts: list[str] = field(default_factory=list)
    calls: list[tuple[list[int], list[list[int]], list[int]]] = field(default_factory=list)


def recorded_eval(make_reference: MakeBatch, max_cycles: int = EVAL_MAX_CYCLES) -> tuple[dict, Recording]:
    """(report, recording) of the reference's eval."""
    recording = Recording()

    def make(prompts):
        recording.prompts = list(prompts)
        predict = make_reference(prompts)

        def record(indices, states):
            words = [int(w) & MASK32 for w in predict(indices, states)]
            recording.calls.append((list(indices), [list(s) for s in states], words))
            return words

        return record

    return evaluate(make_batch_predictor=make, max_cycles=max_cycles), recording


def lockstep_agreement(
    recording: Recording, make_candidate: MakeBatch, seen: Recording | None = None
) -> dict:
    """Per-cycle word agreement of a candidate fed exactly the reference's calls.

    seen: the candidate's own recorded eval of the same prompts (recorded_eval). A state
    it already answered there is not asked again: the input (prompt, state) is the same,
    and so is the call, where the free run never left the reference's path. Only the
    states after a divergence cost a forward ("asked" counts them).
    """
    answered: dict[tuple[int, tuple[int, ...]], int] = {}
    if seen is not None:
        if seen.prompts != recording.prompts:
            raise ValueError("the candidate's recording ran other prompts than the reference's")
        for indices, states, words in seen.calls:
            answered.update(((i, tuple(s)), w) for i, s, w in zip(indices, states, words))
    predict = None
    per_prompt_tally: dict[str, list[int]] = {}
    asked = 0
    for indices, states, ref_words in recording.calls:
        keys = [(i, tuple(s)) for i, s in zip(indices, states)]
        missing = [n for n, key in enumerate(keys) if key not in answered]
        if missing:
            predict = predict or make_candidate(recording.prompts)
            words = predict([indices[n] for n in missing], [states[n] for n in missing])
            answered.update((keys[n], int(w) & MASK32) for n, w in zip(missing, words))
            asked += len(missing)
        for key, want in zip(keys, ref_words):
            tally = per_prompt_tally.setdefault(recording.prompts[key[0]], [0, 0])
            tally[0] += want == answered[key]
            tally[1] += 1
    agree = sum(a for a, _ in per_prompt_tally.values())
    cycles = sum(n for _, n in per_prompt_tally.values())
    return {
        "cycles": cycles,
        "agree": agree,
        "asked": asked,
        "rate": agree / cycles if cycles else 1.0,
        "tasks_with_disagreement": sorted(p for p, (a, n) in per_prompt_tally.items() if a < n),
    }


def _rows(report: dict) -> list[dict]:
    return [row for section in report["sections"].values() for row in section["rows"]]


def outcome_agreement(reference: dict, candidate: dict) -> dict:
    """Compare two eval reports run by run: same outcome, same pass, same memory result."""
    ref_rows, cand_rows = _rows(reference), _rows(candidate)
    if len(ref_rows) != len(cand_rows):
        raise ValueError("the two reports ran different task lists")
    differ = [
        {"tag": a["tag"], "reference": (a["outcome"], a["pass"]), "candidate": (b["outcome"], b["pass"])}
        for a, b in zip(ref_rows, cand_rows)
        if (a["outcome"], a["pass"], a["result"]) != (b["outcome"], b["pass"], b["result"])
    ]
    same_pass = sum(a["pass"] == b["pass"] for a, b in zip(ref_rows, cand_rows))
    return {
        "runs": len(ref_rows),
        "same_pass": same_pass,
        "identical": len(ref_rows) - len(differ),
        "reference_passed": reference["passed"],
        "candidate_passed": candidate["passed"],
        "differences": differ,
    }


def compare_backends(
    make_reference: MakeBatch, candidates: dict[str, MakeBatch], max_cycles: int = EVAL_MAX_CYCLES
) -> dict:
    """Lock-step and free-running agreement of each candidate with the reference."""
    ref_report, recording = recorded_eval(make_reference, max_cycles)
    out = {"reference_passed": ref_report["passed"], "total": ref_report["total"], "candidates": {}}
    for name, make in candidates.items():
        own_report, own_recording = recorded_eval(make, max_cycles)
        out["candidates"][name] = {
            "lockstep": lockstep_agreement(recording, make, seen=own_recording),
            "free_running": outcome_agreement(ref_report, own_report),
        }
    return out


def markdown(title: str, result: dict, reference: str) -> str:
    lines = [
        title,
        "",
        f"Reference: {reference}, {result['reference_passed']}/{result['total']} passed.",
        "",
        "| path | lock-step word agreement | runs identical | same pass | passed |",
        "|---|---|---|---|---|",
    ]
    for name, c in result["candidates"].items():
        ls, fr = c["lockstep"], c["free_running"]
        lines.append(
            f"| {name} | {ls['agree']}/{ls['cycles']} ({ls['rate']:.4f}) | "
            f"{fr['identical']}/{fr['runs']} | {fr['same_pass']}/{fr['runs']} | "
            f"{fr['candidate_passed']}/{fr['runs']} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------- the command
def run_tiny(args) -> dict:
    """Every fast path of both backends against the torch reference on a trained model."""
    import torch

    from reflex_torch.fast import FastReflex
    from reflex_torch.loader import load_model
    from reflex_torch.model import Reference

    torch_dir = Path(args.tiny_torch)
    model, tokenizer, config = load_model(torch_dir / "reflex.pt", backbone=str(torch_dir / "backbone"))
    reference = Reference(model, tokenizer.pad_token_id, config["max_instr_tokens"])
    candidates: dict[str, MakeBatch] = {}
    if not args.no_torch_fast:
        fasts = {
            "fp32": FastReflex(model),
            "bf16": FastReflex(model, adapter_dtype=torch.bfloat16),
            "bf16 fused": FastReflex(model, adapter_dtype=torch.bfloat16, fuse=True),
        }
        if args.torch_compile:  # the fastest setting of the speed table
            fasts["bf16 fused torch.compile"] = FastReflex(
                model, adapter_dtype=torch.bfloat16, fuse=True, compile=args.torch_compile
            )
        for name, fast in fasts.items():
            candidates[f"fast torch {name} adapters, b1"] = one_by_one(fast, tokenizer, config)
            candidates[f"fast torch {name} adapters, run_batch"] = batched(fast, tokenizer, config)
    if not args.no_mlx:
        import mlx.core as mx

        from reflex_mlx.fast import FastReflex as MLXFast

        from .bridge import mlx_model_from_torch

        where = "gpu" if mx.default_device() == mx.gpu else "cpu"
        # (backbone, bits, adapters): as shipped for a Mac, the speed table's fastest, 4-bit
        for backbone, bits, adapters in (
            ("bf16", None, "float32"),
            ("bf16", None, "bfloat16"),
            ("4-bit", 4, "float32"),
        ):
            runner = MLXFast(mlx_model_from_torch(model, "bfloat16", bits, adapters), fuse=True, compile=True)
            name = f"MLX {where} {backbone} backbone, {'fp32' if adapters == 'float32' else 'bf16'} adapters"
            candidates[f"{name}, b1 (compiled)"] = one_by_one(runner, tokenizer, config)
            candidates[f"{name}, batch (compiled)"] = batched(runner, tokenizer, config)
    t0 = time.time()
    result = compare_backends(batched(reference, tokenizer, config), candidates, args.max_cycles)
    device = model.reflex.instr_words.device
    report = {"torch": str(torch_dir), "device": str(device), "max_cycles": args.max_cycles, **result}
    text = markdown(
        f"## Agreement with the reference on the 41-task eval of {torch_dir.name}",
        result,
        f"ReflexModel (hooks, padded to 96) on {device}; {time.time() - t0:.0f} s in all",
    )
    write_report(args.out, "agreement_tiny", report, text)
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny-torch", required=True, help="trained torch model dir (reflex.pt + backbone/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-mlx", action="store_true", help="leave out the MLX paths")
    p.add_argument("--no-torch-fast", action="store_true", help="leave out the fast torch paths")
    add_torch_compile_option(p, "add the fast torch path")
    p.add_argument("--max-cycles", type=int, default=EVAL_MAX_CYCLES, help="the eval's cycle limit")
    run_tiny(p.parse_args(argv))


if __name__ == "__main__":
    main()
