"""Backend agreement on the 41-task evaluation, for trained models (the "tiny" subject).

Two measures, both backend-neutral (any `make_predictor(prompt) -> predict_many`):

* lock-step: the reference runs the eval and every state it met is replayed
  through the candidate, so the two are compared on identical inputs at every
  cycle (a single early disagreement cannot hide the rest of a run);
* free-running: each backend runs the eval on its own and the per-run outcome
  and pass/fail are compared, which is what a user would see.

Needs neither CUDA nor torch, so CPU tests use it as they are.
"""

from __future__ import annotations

from typing import Callable, Sequence

from reflex_core.evaluation import evaluate
from reflex_core.spec import EVAL_MAX_CYCLES

MakePredictor = Callable[[str], Callable[[list[list[int]]], Sequence[int]]]


def recorded_eval(make_predictor: MakePredictor, max_cycles: int = EVAL_MAX_CYCLES):
    """(report, batches): the eval report and every (prompt, states, words) it decided."""
    batches: list[tuple[str, list[list[int]], list[int]]] = []
    report = evaluate(
        make_predictor, max_cycles=max_cycles,
        on_states=lambda prompt, states, words: batches.append((prompt, states, list(words))),
    )
    return report, batches


def lockstep_agreement(batches, make_candidate: MakePredictor) -> dict:
    """Per-cycle word agreement of a candidate fed exactly the reference's states."""
    predictors: dict[str, Callable] = {}
    per_prompt: dict[str, list[int]] = {}
    for prompt, states, ref_words in batches:
        if prompt not in predictors:
            predictors[prompt] = make_candidate(prompt)
        got = [int(w) & 0xFFFFFFFF for w in predictors[prompt](states)]
        same = sum(int(a) & 0xFFFFFFFF == b for a, b in zip(ref_words, got))
        tally = per_prompt.setdefault(prompt, [0, 0])
        tally[0] += same
        tally[1] += len(states)
    agree = sum(a for a, _ in per_prompt.values())
    cycles = sum(n for _, n in per_prompt.values())
    return {
        "cycles": cycles, "agree": agree, "rate": agree / cycles if cycles else 1.0,
        "tasks_with_disagreement": sorted(p for p, (a, n) in per_prompt.items() if a < n),
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
        "runs": len(ref_rows), "same_pass": same_pass, "identical": len(ref_rows) - len(differ),
        "reference_passed": reference["passed"], "candidate_passed": candidate["passed"],
        "differences": differ,
    }


def compare_backends(make_reference: MakePredictor, candidates: dict[str, MakePredictor],
                     max_cycles: int = EVAL_MAX_CYCLES) -> dict:
    """Lock-step and free-running agreement of each candidate with the reference."""
    ref_report, batches = recorded_eval(make_reference, max_cycles)
    out = {"reference_passed": ref_report["passed"], "total": ref_report["total"], "candidates": {}}
    for name, make in candidates.items():
        own_report = evaluate(make, max_cycles=max_cycles)
        out["candidates"][name] = {
            "lockstep": lockstep_agreement(batches, make),
            "free_running": outcome_agreement(ref_report, own_report),
        }
    return out
