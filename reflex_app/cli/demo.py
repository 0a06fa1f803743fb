"""`reflex-mlx demo`: the full-screen UI (reflex_app.ui) in a terminal, plain lines without one."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reflex_app import api
from reflex_core.spec import DEFAULT_MAX_CYCLES

from .common import backend_option, format_cycle, load, memory_lines, model_option, peak_line


@click.command(
    name="demo",
    help="Reflex driving the CPU beside the same backbone writing assembly as text, full screen "
    "(keys: s stop, q quit; between tasks type one and press Enter, Esc quits). Without a terminal, "
    "the TASKS (or stdin's lines) are run with plain line output.",
)
@click.argument("tasks", nargs=-1)
@model_option
@backend_option
@click.option(
    "--passes",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Refinement passes: each keeps registers and data, restarts at 0x1000 on a cleared code region.",
)
@click.option("--max-cycles", type=click.IntRange(min=1), default=DEFAULT_MAX_CYCLES, show_default=True)
def command(tasks, model, backend, passes: int, max_cycles: int) -> None:
    from reflex_app.ui import Demo, Screen, interactive

    for task in tasks:
        api.check_prompt(task)
    loaded = load(backend, model)
    name = Path(loaded.source).name
    if sys.stdin.isatty() and sys.stdout.isatty():
        from rich.console import Console

        interactive(Demo(loaded, Screen(model=name), passes, max_cycles), Console(), list(tasks))
        return
    show = lambda n, cycle, pass_no: click.echo(
        (f"[pass {pass_no}] " if passes > 1 else "") + format_cycle(n, cycle)
    )
    demo = Demo(loaded, Screen(model=name), passes, max_cycles, on_cycle=show)
    for task in tasks or [line.strip() for line in sys.stdin if line.strip()]:
        api.check_prompt(task)
        click.echo(f"task: {task}")
        demo.run_task(task, None, lambda: None)
        for line in plain_sides(demo.screen):
            click.echo(line)
    peak_line(loaded)


def plain_sides(screen) -> list[str]:
    """The end of one demo task as lines: Reflex's outcome and memory, then the text side's."""
    from reflex_app.ui import display_text

    lines = [f"reflex: {screen.reflex.outcome}", *memory_lines(screen.reflex.memory, "reflex ")]
    text = screen.text
    if text.note:
        return [*lines, f"text mode: {text.note}"]
    lines += ["text:", *("  " + line for line in text.text.splitlines())]
    if text.outcome is None:
        return [*lines, "text mode: stopped"]
    if text.outcome.error:
        return [*lines, f"text mode: does not assemble: {text.outcome.error}"]
    result = text.outcome.result
    lines.append(f"text mode: {len(text.outcome.words)} words; {result.summary}")
    lines += memory_lines(result.memory(), "text ")
    lines.append(f"text display: {display_text(result.memory().get('0x6000', []))!r}")
    return lines
