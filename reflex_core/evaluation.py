"""The 41-task evaluation of docs/design.md §6, for any backend.

A backend supplies `make_predictor(prompt) -> predict_many(states) -> words`;
this module runs every task under the eval's cycle limit, applies the checks
of §5 and lays out the report beside the published scores of the release.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from .loop import RunResult, check, run_many
from .spec import DATA_ADDR, DEST_ADDR, DISPLAY_ADDR, EVAL_MAX_CYCLES

BatchPredictor = Callable[[list[list[int]]], Sequence[int]]


@dataclass(frozen=True)
class Task:
    section: str
    tag: str
    prompt: str
    check: str  # mem | seq | dst | disp
    expected: object
    repeat: int = 1


def load_eval() -> dict:
    """The task table and the published scores, as stored in reflex_core/data."""
    text = resources.files("reflex_core").joinpath("data/eval_tasks.json").read_text()
    return json.loads(text)


def load_tasks() -> list[Task]:
    return [Task(**row) for row in load_eval()["tasks"]]


def observed(result: RunResult, task: Task):
    """What memory holds where the task's check looks, in the check's own terms."""
    if task.check == "mem":
        return result.words(DATA_ADDR, 1)[0]
    if task.check == "disp":
        words = result.words(DISPLAY_ADDR, len(task.expected))
        return "".join(chr(w) if 32 <= w < 127 else "?" for w in words)
    base = DATA_ADDR if task.check == "seq" else DEST_ADDR
    return result.words(base, len(task.expected))


def _group_by_prompt(prompts: list[str], indices: Sequence[int]) -> dict[str, list[int]]:
    """Positions in `indices` of each prompt's programs."""
    groups: dict[str, list[int]] = {}
    for pos, i in enumerate(indices):
        groups.setdefault(prompts[i], []).append(pos)
    return groups


def per_prompt(make_predictor: Callable[[str], BatchPredictor], prompts: list[str]):
    """Adapt a one-prompt predictor factory to the lockstep (indices, states) form."""
    predictors = {p: make_predictor(p) for p in dict.fromkeys(prompts)}

    def predict(indices, states):
        words = [0] * len(indices)
        for prompt, positions in _group_by_prompt(prompts, indices).items():
            for pos, word in zip(positions, predictors[prompt]([states[k] for k in positions])):
                words[pos] = word
        return words

    return predict


def evaluate(
    make_predictor: Callable[[str], BatchPredictor] | None = None,
    *,
    make_batch_predictor: Callable[[list[str]], Callable] | None = None,
    max_cycles: int = EVAL_MAX_CYCLES,
    progress: bool = False,
    on_states: Callable[[str, list[list[int]], Sequence[int]], None] | None = None,
    tasks: Sequence[Task] | None = None,
) -> dict:
    """Run all 41 programs in lockstep; returns {"passed", "total", "sections"}.

    Give either `make_predictor(prompt) -> predict_many(states)` or
    `make_batch_predictor(prompts) -> predict(indices, states)` (one model call
    per cycle for every program still running). `on_states(prompt, states,
    words)` sees every state and the word chosen for it, so a second backend
    can be scored on exactly the same states. `tasks`: a subset of the table
    (default: all of it); each task runs `repeat` times.
    """
    runs = [task for task in (load_tasks() if tasks is None else tasks) for _ in range(task.repeat)]
    prompts = [task.prompt for task in runs]
    if make_batch_predictor is not None:
        predict = make_batch_predictor(prompts)
    else:
        predict = per_prompt(make_predictor, prompts)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_cycles, desc="eval", unit="cycle", leave=False)

    def observed_predict(indices, states):
        words = predict(indices, states)
        if on_states is not None:
            for prompt, positions in _group_by_prompt(prompts, indices).items():
                on_states(prompt, [states[k] for k in positions], [words[k] for k in positions])
        if bar is not None:
            bar.set_postfix(running=len(indices))
            bar.update(1)
        return words

    results = run_many(observed_predict, len(runs), max_cycles=max_cycles, with_indices=True)
    if bar is not None:
        bar.close()
    return build_report(runs, results)


def evaluate_text(
    stream, max_cycles: int = EVAL_MAX_CYCLES, progress: bool = False, tasks: Sequence[Task] | None = None
) -> dict:
    """The 41 tasks with the text side (reflex_core.textmode): the backbone writes each
    task's program as text (greedy, so once per distinct prompt), it is assembled and
    run, and the same checks score it. The report has evaluate()'s shape; each row
    also holds the text and, where it did not assemble, why."""
    from .loop import RunResult
    from .textmode import judge, write

    runs = [task for task in (load_tasks() if tasks is None else tasks) for _ in range(task.repeat)]
    prompts = list(dict.fromkeys(task.prompt for task in runs))
    if progress:
        from tqdm import tqdm

        prompts = tqdm(prompts, desc="text mode", unit="task", leave=False)
    outcomes = {prompt: judge("".join(write(stream, prompt)), max_cycles) for prompt in prompts}
    results = []
    for task in runs:
        outcome = outcomes[task.prompt]
        if outcome.result is None:
            error = f"does not assemble: {outcome.error}"
            results.append(RunResult("error", error, None, [], [], b""))
        else:
            results.append(outcome.result)
    report = build_report(runs, results)
    for section in report["sections"].values():
        for row in section["rows"]:
            row["text"] = outcomes[row["prompt"]].text
    return report


def build_report(runs: Sequence[Task], results: Sequence[RunResult]) -> dict:
    """{"passed", "total", "sections"} from each run's task and result (§5's checks)."""
    sections: dict[str, dict] = {}
    for task, result in zip(runs, results):
        passed = check(result, task.check, task.expected)
        section = sections.setdefault(task.section, {"passed": 0, "total": 0, "rows": []})
        section["rows"].append(
            {
                "tag": task.tag,
                "prompt": task.prompt,
                "ops": len(result.cycles),
                "halted": result.halted,
                "outcome": result.outcome,
                "error": result.error,
                "result": observed(result, task),
                "expected": task.expected,
                "pass": passed,
            }
        )
        section["passed"] += passed
        section["total"] += 1
    return {
        "passed": sum(s["passed"] for s in sections.values()),
        "total": sum(s["total"] for s in sections.values()),
        "sections": sections,
    }


def _cell(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_report(report: dict, model_name: str) -> str:
    """Tables shaped like the published one, with the release's scores beside ours."""
    published = load_eval()["published"]
    lines = []
    header = ("tag", "ops", "halted", "result", "expected", "pass")
    for name, section in report["sections"].items():
        rows = [header] + [
            (
                r["tag"],
                str(r["ops"]),
                _cell(r["halted"]),
                _cell(r["result"]),
                _cell(r["expected"]),
                "PASS" if r["pass"] else "fail",
            )
            for r in section["rows"]
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines.append(
            f"## {name}: {section['passed']}/{section['total']}"
            f"   (released 7B: {published['sections'][name]}/{section['total']})"
        )
        for row in rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        lines.append("")
    # The summary: every section and the total, ours beside the release's.
    summary = [("section", model_name, published["model"])]
    summary += [
        (name, f"{s['passed']}/{s['total']}", f"{published['sections'][name]}/{s['total']}")
        for name, s in report["sections"].items()
    ]
    summary.append(
        ("total", f"{report['passed']}/{report['total']}", f"{published['total']}/{report['total']}")
    )
    widths = [max(len(row[i]) for row in summary) for i in range(3)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in summary]
    return "\n".join(lines)


# ------------------------------------------------- prompts near the eval's own
def normalise(prompt: str) -> str:
    """Case and spacing ignored."""
    return " ".join(prompt.lower().split())


def bare(prompt: str) -> str:
    """Letters and digits only: punctuation and quotes ignored too."""
    import re

    return " ".join(re.sub(r"[^a-z0-9]+", " ", prompt.lower()).split())


# Which training prompts count as an evaluation prompt (and are never trained on).
EVAL_FILTERS = {"exact": normalise, "punctuation": bare}


def eval_prompts(key=normalise) -> set[str]:
    """The evaluation prompts, as `key` sees them."""
    return {key(task.prompt) for task in load_tasks()}


def near_copy_tags(corpus_prompts) -> list[str]:
    """Tags of the eval tasks whose prompt the corpus holds up to case, spacing,
    punctuation and quotes (`say "hi"` for `say hi`): a model trained on the
    corpus before the punctuation filter may have seen them."""
    seen = {bare(p) for p in corpus_prompts}
    return sorted({task.tag for task in load_tasks() if bare(task.prompt) in seen})


def corpus_near_copy_tags(root) -> list[str]:
    """near_copy_tags over every prompt of every program in a corpus folder."""
    from .corpus import load_programs

    return near_copy_tags(p for program in load_programs(root) for p in program.variants)


def score_without(report: dict, tags) -> tuple[int, int]:
    """(passed, total) of an eval report leaving out the runs of the given task tags."""
    left_out = set(tags)
    rows = [r for s in report["sections"].values() for r in s["rows"] if r["tag"] not in left_out]
    return sum(r["pass"] for r in rows), len(rows)
