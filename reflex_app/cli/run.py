"""`reflex-mlx run PROMPT`: the trace, one line a cycle, then the outcome and the memory windows."""

from __future__ import annotations

import json
import sys

import click

from reflex_app import api
from reflex_core.spec import DEFAULT_MAX_CYCLES

from .common import backend_option, format_cycle, load, memory_lines, model_option, peak_line, say


@click.command(name="run", help="Let the model drive the CPU for PROMPT, one instruction per cycle.")
@click.argument("prompt")
@model_option
@backend_option
@click.option("--max-cycles", type=click.IntRange(min=1), default=DEFAULT_MAX_CYCLES, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the trace.")
def command(prompt: str, model: str | None, backend: str | None, max_cycles: int, as_json: bool) -> None:
    api.check_prompt(prompt)  # before the model loads
    loaded = load(backend, model)
    count = iter(range(1, max_cycles + 1))
    show = None if as_json else (lambda cycle: click.echo(format_cycle(next(count), cycle)))
    result = api.run(loaded, prompt, max_cycles, on_cycle=show)
    if result.truncation:
        say(f"warning: {result.truncation}")
    if as_json:
        report = {
            "outcome": result.outcome,
            "error": result.error,
            "cycles": [{"pc": c.pc, "word": c.word, "asm": c.asm, "op": c.op} for c in result.cycles],
            "memory": result.memory(),
            "prompt_tokens": result.prompt_tokens,
            "truncated": result.truncated,
        }
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        click.echo(f"outcome: {result.summary}")
        for line in memory_lines(result.memory()):
            click.echo(line)
    peak_line(loaded)
