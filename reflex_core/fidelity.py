"""How a conversion's fidelity report reads (convert/verify.py makes it): one
summary line for the converter and `reflex-mlx info`, a task table for the
model card. Plain Python: the command line imports no framework to print it."""

from __future__ import annotations

from .timing import human_bytes


def summary_line(report: dict) -> str:
    """One line of a fidelity report."""
    share = 100 * report["same_word"] / max(report["cycles"], 1)
    if report["same_pass_set"] is None:
        passes = (
            f"converted passes {report['converted_passed']}/{report['runs']}, source unknown on diverged runs"
        )
    else:
        runs = report["runs"]
        passes = (
            f"same pass set: {'yes' if report['same_pass_set'] else 'no'} (converted "
            f"{report['converted_passed']}/{runs}, source {report['source_passed']}/{runs})"
        )
    return (
        f"fidelity: same word on {report['same_word']}/{report['cycles']} cycles ({share:.2f} %), "
        f"{report['runs_identical']}/{report['runs']} runs identical, {passes}; "
        f"verify peak {human_bytes(report['peak_memory_bytes'])}"
    )


def task_table(report: dict) -> list[str]:
    """The per-task fidelity table, as markdown lines."""
    mark = lambda v: "?" if v is None else ("pass" if v else "fail")
    lines = ["| task | same word | converted | source |", "|---|---|---|---|"]
    for row in report["per_task"]:
        lines.append(
            f"| {row['tag']} | {row['same_word']}/{row['cycles']} | {mark(row['converted_pass'])} "
            f"| {mark(row['source_pass'])} |"
        )
    return lines
