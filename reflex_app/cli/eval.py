"""`reflex-mlx eval`: the 41-task evaluation, batched, with the report and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from reflex_app import api
from reflex_core import backends
from reflex_core.errors import MESSAGE_LIMIT, one_line
from reflex_core.files import OutputError, writable_file, write_report

from .common import backend_option, checked_path, load, model_option, peak_line


def evaluate(loaded: backends.Loaded, progress: bool = True) -> dict:
    """The 41 tasks on a loaded model, in lockstep batches (api.run_batch's path)."""
    from reflex_core.evaluation import evaluate
    from reflex_core.predict import BatchPredictor

    return evaluate(
        make_batch_predictor=lambda prompts: BatchPredictor(
            loaded.runner, loaded.tokenizer, prompts, loaded.config
        ),
        progress=progress,
    )


@click.command(name="eval", help="Run the 41-task evaluation of the released model (docs/design.md §6).")
@model_option
@backend_option
@click.option(
    "--json",
    "json_out",
    type=str,
    default=None,
    help="Also write the report as JSON to this file (- for stdout; a device such as /dev/null "
    "is written through; a read-only file is refused).",
)
@click.option(
    "--text-mode",
    is_flag=True,
    help="Also let the same backbone write each task's program as assembly text, assemble and run "
    "it, and score that with the same checks (MLX backend, a backbone that writes text).",
)
def command(model: str | None, backend: str | None, json_out: str | None, text_mode: bool) -> None:
    from reflex_core.evaluation import evaluate_text, format_report

    if json_out is not None:
        checked_path(json_out, "report path")
    if json_out is not None and (why := writable_file(json_out)):  # before minutes of work
        raise click.ClickException(why)
    loaded = load(backend, model)
    if text_mode and loaded.text_writer is None:
        raise click.ClickException(f"no text mode with {loaded.source}: {loaded.text_note}")
    report = evaluate(loaded)
    name = Path(model).name if model else (api.default_model()[0] or Path(loaded.source)).name
    click.echo(format_report(report, name))
    near_copy_line(report)
    saved = report
    if text_mode:
        text = evaluate_text(loaded.text_writer, progress=True)
        click.echo("\n# text mode: the same backbone writes each program as assembly text\n")
        click.echo(format_report(text, f"{name} (text)"))
        near_copy_line(text)
        click.echo(
            f"reflex (driving the CPU): {report['passed']}/{report['total']}; "
            f"text mode (same backbone, assembly text): {text['passed']}/{text['total']}"
        )
        saved = {"reflex": report, "text_mode": text}
    peak_line(loaded)
    if json_out is not None:
        try:
            write_report(json_out, json.dumps(saved, indent=1) + "\n")
        except OutputError as err:
            raise click.ClickException(str(err)) from None


def near_copy_line(report: dict) -> None:
    """Where the training corpus is at hand: the score without the tasks it holds near-copies of."""
    from reflex_core.corpus import find_corpus
    from reflex_core.evaluation import corpus_near_copy_tags, score_without

    corpus = find_corpus()
    if corpus is None:
        return
    try:
        tags = corpus_near_copy_tags(corpus)
    except ValueError as err:  # a damaged corpus costs this line, not the report
        click.echo(f"warning: no score without near-copies: {one_line(err, MESSAGE_LIMIT)}", err=True)
        return
    passed, total = score_without(report, tags)
    click.echo(
        f"without the {len(tags)} tasks whose prompt the corpus holds up to case and punctuation "
        f"({', '.join(tags)}): {passed}/{total}"
    )
