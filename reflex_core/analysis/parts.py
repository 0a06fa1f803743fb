"""The three parts of `analyze`, each from what a backend supplies (a batch predictor,
arrays, an eval run with one adapter off), as JSON-ready dicts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import codebook as cb
from . import length as ln
from .report import attention_groups


def length_part(
    make_batch_predictor: Callable[[list[str]], Callable],
    codebook_words: Sequence[int],
    multipliers: Sequence[int] = ln.MULTIPLIERS,
    per_family: int = ln.PER_FAMILY,
    families: Sequence[str] | None = None,
    max_cycles: int | None = None,
    progress: bool = False,
) -> dict:
    """Every task run in lock-step. max_cycles caps every run's limit; a task whose reference
    program needs more cycles than that is left out (listed under "skipped")."""
    tasks = ln.make_tasks(families, multipliers, per_family)
    kept = [t for t in tasks if max_cycles is None or t.reference_cycles <= max_cycles]
    skipped = [t for t in tasks if t not in kept]
    if max_cycles is not None:
        for task in kept:
            task.max_cycles = min(task.max_cycles, max_cycles)
    runs = ln.run_tasks(make_batch_predictor, kept, codebook_words, progress)
    return {
        "multipliers": list(multipliers),
        "per_family": per_family,
        "max_cycles": max_cycles,
        "training_ranges": {name: list(ln.CORPUS_RANGES[name]) for name in (families or ln.FAMILIES)},
        "limit_rule": f"max({ln.spec.EVAL_MAX_CYCLES}, {ln.LIMIT_FACTOR} x the reference program's cycles)",
        "published": ln.PUBLISHED,
        "tasks": len(kept),
        "skipped": len(skipped),
        "skipped_tasks": [{"family": t.family, "multiplier": t.multiplier, "size": t.size} for t in skipped],
        "summary": ln.summarise(runs, multipliers),
        "runs": [r.as_json() for r in runs],
    }


def codebook_part(
    rows: np.ndarray,
    words: Sequence[int],
    heldout: tuple[list[int], list[int]] | None,
    heldout_source: str,
    neighbours: int = cb.NEIGHBOURS,
) -> dict:
    """Neighbours, geometry, field algebra, a 2-D PCA, and the held-out confusions when
    (expected words, chosen words) are given; heldout_source says where they came from, or
    why there are none."""
    coords, variance = cb.pca_2d(rows)
    data = {
        "neighbours": cb.neighbour_stats(rows, words),
        "neighbours_listed": neighbours,
        "neighbour_table": cb.neighbour_table(rows, words, neighbours),
        "geometry": cb.geometry(rows),
        "pca": {"explained_variance": variance, "coords": np.round(coords, 5).tolist()},
        "field_algebra": cb.field_algebra(rows, words),
        "ops": [cb.op_class(w) for w in words],
        "words": [f"{int(w):08x}" for w in words],
    }
    if heldout is None:
        data["confusions"], data["confusions_skipped"] = None, heldout_source
    else:
        data["confusions"], data["heldout_source"] = cb.confusions(*heldout), heldout_source
    return data


def missed_rows(data: dict) -> list[int]:
    """Codebook rows that a held-out miss involved (expected or chosen)."""
    c = data.get("confusions")
    if not c:
        return []
    index = {w: i for i, w in enumerate(data["words"])}
    rows = {
        index[m[key]] for m in c["miss_words"] for key in ("expected_word", "chosen_word") if m[key] in index
    }
    return sorted(rows)


def adapters_part(
    gates: list[dict],
    evaluate: Callable[[int | None], dict],
    attention: Callable[[], tuple[np.ndarray, np.ndarray]],
    max_cycles: int | None,
) -> dict:
    """The gates; the eval with every adapter on (which also records the attention:
    `attention()` gives (mean [adapters, 65], cycles per adapter) after it), then with
    each adapter off in turn."""
    base = evaluate(None)
    mean, counts = attention()
    ablation = []
    for index, gate in enumerate(gates):
        report = evaluate(index)
        ablation.append(
            {
                "adapter": index,
                "layer": gate["layer"],
                "passed": report["passed"],
                "failed_tags": [
                    r["tag"] for s in report["sections"].values() for r in s["rows"] if not r["pass"]
                ],
            }
        )
    return {
        "gates": gates,
        "max_cycles": max_cycles,
        "eval": {
            "passed": base["passed"],
            "total": base["total"],
            "failed_tags": [r["tag"] for s in base["sections"].values() for r in s["rows"] if not r["pass"]],
        },
        "ablation": ablation,
        "attention": np.round(mean, 6).tolist(),
        "attention_cycles": int(counts.max()) if len(counts) else 0,
        "attention_groups": attention_groups(mean),
    }
