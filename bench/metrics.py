"""Parity metrics: how far a candidate's stages are from the reference's, and whether
a top-1 disagreement is noise or a bug (docs/parity.md gives the reasoning)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """What a candidate must meet."""

    final_median: float  # final-embedding relative error, median over states
    final_p99: float  # ... and its 99th percentile
    certified_agreement: float  # top-1 agreement required where the margin exceeds tau
    min_certified_fraction: float = 0.2  # else the agreement check would be vacuous


TOLERANCES = {
    "float32": Tolerance(final_median=1e-5, final_p99=1e-4, certified_agreement=1.0),
    "bf16": Tolerance(final_median=3e-2, final_p99=6e-2, certified_agreement=0.99),
}


def margin_threshold(embed_dim: int, rel_error: float) -> float:
    """tau, the margin below which a top-1 flip is noise, not a bug: 4 sigma of the
    change in (cos top-1 - cos top-2) caused by a relative embedding error
    `rel_error` in a random direction. Such an error moves the unit embedding by
    ~rel_error; its component along u1 - u2 (length ~sqrt 2) is ~rel_error * sqrt(2 / E)."""
    return 4.0 * rel_error * math.sqrt(2.0 / embed_dim)


def relative_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / ||a|| per leading row."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)


def summary(x: np.ndarray) -> dict:
    return {"median": float(np.median(x)), "p99": float(np.percentile(x, 99)), "max": float(x.max())}


def stage_names(adapter_layers: list[int]) -> list[tuple[str, str]]:
    return (
        [("kv", "state encoder (kv)")]
        + [(f"layer{L}", f"adapter {i} (after layer {L})") for i, L in enumerate(adapter_layers)]
        + [("pred", "final embedding")]
    )


def compare(
    ref: dict, cand: dict, adapter_layers: list[int], embed_dim: int, tol: Tolerance | None = None
) -> dict:
    """Per-stage relative errors, top-1 agreement, and agreement where margin > tau.

    tau is set by the candidate's observed p99 final error, capped by the
    tolerance's: a broken candidate cannot widen it to hide flips (its error
    fails the tolerance anyway), an exact one (swapped rows) is checked on
    almost every state.
    """
    stages = {
        label: summary(relative_error(ref[key], cand[key])) for key, label in stage_names(adapter_layers)
    }
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
        "certified": {
            "tau": tau,
            "count": int(above.sum()),
            "fraction": float(above.mean()),
            "agreement": float(same[above].mean()) if above.any() else float("nan"),
        },
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
        failures.append(
            f"only {certified['fraction']:.0%} of states have a margin above "
            f"tau={certified['tau']:.3g}: the agreement check would be vacuous"
        )
    elif not certified["agreement"] >= tol.certified_agreement:
        failures.append(
            f"top-1 agreement {certified['agreement']:.4f} on the {certified['count']} "
            f"states with margin > tau={certified['tau']:.3g} < {tol.certified_agreement}"
        )
    return failures


def margin_summary(margin: np.ndarray, words: np.ndarray) -> dict:
    q = [1, 10, 25, 50, 75, 90]
    return {
        **{f"p{p}": float(np.percentile(margin, p)) for p in q},
        "distinct_words": int(len(np.unique(words))),
        "states": int(len(margin)),
    }
