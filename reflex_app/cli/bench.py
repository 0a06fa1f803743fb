"""`reflex-mlx bench`: MLX against the PyTorch reference on the same states, or the whole eval on each."""

from __future__ import annotations

import click

from reflex_app import api

from .common import load, model_option, peak_line
from .eval import evaluate

BENCH_PROMPT = "compute 5 factorial and store it"


@click.command(
    name="bench",
    help="Time MLX against the PyTorch reference on the same states "
    "(or, with --eval, the whole evaluation on each backend).",
)
@model_option
@click.option(
    "--torch",
    "torch_dir",
    type=str,
    default=None,
    help="The reference's directory (reflex.pt + backbone/); default: the model's source.",
)
@click.option(
    "--cycles",
    type=click.IntRange(min=2),
    default=30,
    show_default=True,
    help="Timed cycles per backend (median).",
)
@click.option("--prompt", default=BENCH_PROMPT, show_default=True)
@click.option(
    "--eval",
    "whole_eval",
    is_flag=True,
    help="Time the 41-task evaluation with each backend's fast path instead.",
)
def command(model: str | None, torch_dir: str | None, cycles: int, prompt: str, whole_eval: bool) -> None:
    from reflex_core.loop import ProgramRun
    from reflex_core.predict import Predictor
    from reflex_core.timing import median_ms
    from reflex_core.timing import seconds as timed_run

    api.check_prompt(prompt)
    given = torch_dir if torch_dir is not None else model
    if given is None:  # the candidate's default model, on torch (None: the bundled one, torch's own)
        from reflex_torch import BUNDLED_MODEL

        given = api.default_model()[0] or BUNDLED_MODEL
    reference = load("torch", given, fast=whole_eval)
    candidate = load("mlx", model)
    click.echo(f"model: {candidate.source}; reference: {reference.source}")
    if whole_eval:
        seconds = {}
        for loaded in (reference, candidate):
            report, seconds[loaded.device] = timed_run(lambda loaded=loaded: evaluate(loaded, progress=False))
            click.echo(
                f"{loaded.device} (fast path): eval {report['passed']}/{report['total']} "
                f"in {seconds[loaded.device]:.1f} s"
            )
        click.echo(f"mlx/torch eval time ratio: {seconds[candidate.device] / seconds[reference.device]:.3f}")
        peak_line(reference, candidate)
        return

    ref = Predictor(reference.runner, reference.tokenizer, prompt, reference.config)
    cand = Predictor(candidate.runner, candidate.tokenizer, prompt, candidate.config)
    # The states the reference meets driving the program; repeated if it ends early.
    program, states = ProgramRun(cycles), []
    while not program.finished:
        states.append(program.state())
        program.feed(ref(states[-1]))
    states = (states * cycles)[:cycles]

    torch_ms = median_ms(ref, states)
    mlx_ms = median_ms(cand, states)
    agree = sum(ref(s) == cand(s) for s in states)
    click.echo(f"{len(cand.tokens.ids)} prompt tokens, {len(states)} cycles")
    click.echo(
        f"{reference.device} reference (padded to {reference.config['max_instr_tokens']}, eager): "
        f"{torch_ms:.2f} ms/cycle"
    )
    click.echo(f"{candidate.device} (cached prefix, compiled step): {mlx_ms:.2f} ms/cycle")
    click.echo(f"same word on {agree}/{len(states)} cycles")
    click.echo(f"mlx/torch per-cycle time ratio: {mlx_ms / torch_ms:.3f}")
    peak_line(reference, candidate)
