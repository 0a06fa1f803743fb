"""`reflex-mlx`: run Reflex on a prompt with MLX."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from reflex_core.loop import Cycle, RunResult, run
from reflex_core.prompt import truncation_notice
from reflex_core.spec import DEFAULT_MAX_CYCLES, DEFAULT_RELEASE_DIR

MODEL_ENV = "REFLEX_MLX_MODEL"


def default_model_dir() -> tuple[Path, str]:
    """(directory, why): $REFLEX_MLX_MODEL, else the converted release if present."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV]).expanduser(), f"${MODEL_ENV}"
    release = Path(DEFAULT_RELEASE_DIR).expanduser()
    if release.is_dir():
        return release, "the converted release"
    packaged = Path(__file__).parent / "models" / "reflex-tiny"
    return packaged, "the bundled reflex-tiny"


def _load(model: Path | None):
    from .load import ModelError, load_model

    if model is None:
        model, why = default_model_dir()
        click.echo(f"model: {model} ({why})", err=True)
    try:
        return load_model(model)
    except ModelError as err:
        raise click.ClickException(str(err)) from None


def _format_cycle(index: int, cycle: Cycle) -> str:
    return f"{index:4d}  pc 0x{cycle.pc:04x}  0x{cycle.word:08x}  {cycle.asm}"


def _outcome_line(result: RunResult) -> str:
    if result.outcome == "error":
        return f"outcome: error ({result.error})"
    if result.outcome == "limit":
        return f"outcome: limit (stopped after {len(result.cycles)} cycles)"
    return f"outcome: halted after {len(result.cycles)} cycles"


@click.group(help="Run Reflex, a frozen code LLM that drives a RISC-V CPU, with MLX.")
def main() -> None:
    pass


@main.command(help="Let the model drive the CPU for PROMPT, one instruction per cycle.")
@click.argument("prompt")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="A converted model directory (default: the converted release if present, "
                   "else the bundled reflex-tiny).")
@click.option("--max-cycles", type=click.IntRange(min=1), default=DEFAULT_MAX_CYCLES,
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the trace.")
def run_command(prompt: str, model: Path | None, max_cycles: int, as_json: bool) -> None:
    from .load import MLXPredictor

    reflex, tokenizer, config = _load(model)
    predictor = MLXPredictor(reflex, tokenizer, prompt, config)
    if predictor.tokens.truncated:
        click.echo(f"warning: {truncation_notice(predictor.tokens, config['max_instr_tokens'])}",
                   err=True)

    count = iter(range(1, max_cycles + 1))
    show = None if as_json else (lambda cycle: click.echo(_format_cycle(next(count), cycle)))
    result = run(predictor, max_cycles=max_cycles, on_cycle=show)
    memory = result.memory()
    if as_json:
        report = {
            "outcome": result.outcome,
            "error": result.error,
            "cycles": [{"pc": c.pc, "word": c.word, "asm": c.asm} for c in result.cycles],
            "memory": memory,
            "prompt_tokens": len(predictor.tokens.ids),
            "truncated": predictor.tokens.truncated,
        }
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
        return
    click.echo(_outcome_line(result))
    for addr, words in memory.items():
        click.echo(f"{addr}: {' '.join(str(w) for w in words)}")


run_command.name = "run"


@main.command(name="eval", help="Run the 41-task evaluation of the released model (DESIGN.md §6).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="A converted model directory (default as for `run`).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write the report as JSON to this file.")
def eval_command(model: Path | None, json_out: Path | None) -> None:
    from reflex_core.evaluation import evaluate, format_report

    from .load import MLXBatchPredictor

    reflex, tokenizer, config = _load(model)
    report = evaluate(
        make_batch_predictor=lambda prompts: MLXBatchPredictor(reflex, tokenizer, prompts, config),
        progress=True,
    )
    name = Path(model).name if model else default_model_dir()[0].name
    click.echo(format_report(report, name))
    if json_out is not None:
        _write_atomically(json_out, json.dumps(report, indent=1) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    """Write beside the target and rename, so an old report is never half-overwritten."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise click.ClickException(f"cannot write {path}: {err.strerror or err}") from None
