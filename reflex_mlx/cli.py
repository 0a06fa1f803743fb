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
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "reflex-tiny"
# Its torch checkpoint, in the repository beside it (the parity tests need it too).
BUNDLED_TORCH = Path(__file__).resolve().parent.parent / "reflex_torch" / "models" / "reflex-tiny"


def default_model_dir() -> tuple[Path, str]:
    """(directory, why): $REFLEX_MLX_MODEL, else the converted release if present."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV]).expanduser(), f"${MODEL_ENV}"
    release = Path(DEFAULT_RELEASE_DIR).expanduser()
    if release.is_dir():
        return release, "the converted release"
    return BUNDLED_MODEL, "the bundled reflex-tiny"


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


# ------------------------------------------------------------------------- bench
BENCH_PROMPT = "compute 5 factorial and store it"


def _torch_source(model_dir: Path, config: dict, torch_dir: Path | None) -> tuple[str | None, str | None]:
    """(checkpoint, backbone) of the torch reference for an MLX model directory.

    --torch wins; the bundled reflex-tiny has its torch checkpoint in the
    repository; a converted model names its sources in its config (None: the release).
    """
    if torch_dir is not None:
        return str(Path(torch_dir) / "reflex.pt"), str(Path(torch_dir) / "backbone")
    if model_dir.resolve() == BUNDLED_MODEL:
        return str(BUNDLED_TORCH / "reflex.pt"), str(BUNDLED_TORCH / "backbone")
    return config.get("source_checkpoint"), config.get("source_backbone")


def _median_ms(predict, states: list[list[int]]) -> float:
    import statistics
    import time

    predict(states[0])  # warm-up: first-call allocation, compilation
    times = []
    for state in states:
        start = time.perf_counter()
        predict(state)  # returns a host int: the work has finished
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@main.command(name="bench",
              help="Time one cycle of the MLX model against the PyTorch reference on the same states.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="A converted model directory (default as for `run`).")
@click.option("--torch", "torch_dir", type=click.Path(path_type=Path), default=None,
              help="The reference's directory (reflex.pt + backbone/); default: the model's source.")
@click.option("--cycles", type=click.IntRange(min=2), default=30, show_default=True,
              help="Timed cycles per backend (median).")
@click.option("--prompt", default=BENCH_PROMPT, show_default=True)
def bench_command(model: Path | None, torch_dir: Path | None, cycles: int, prompt: str) -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise click.ClickException("torch is not installed: `bench` needs the PyTorch reference "
                                   "(pip install 'reflex-mlx[torch]')")
    from reflex_core.loop import ProgramRun
    from reflex_torch.load import TorchPredictor, load_reflex

    from .load import MLXPredictor

    model_dir = model if model is not None else default_model_dir()[0]
    reflex, tokenizer, config = _load(model)
    checkpoint, backbone = _torch_source(Path(model_dir), config, torch_dir)
    ref_model, ref_tokenizer, ref_config = load_reflex(checkpoint, backbone=backbone)
    reference = TorchPredictor(ref_model, ref_tokenizer, prompt, ref_config)
    candidate = MLXPredictor(reflex, tokenizer, prompt, config)

    # The states the reference meets driving the program; repeated if it ends early.
    program, states = ProgramRun(cycles), []
    while not program.finished:
        states.append(program.state())
        program.feed(reference(states[-1]))
    states = (states * cycles)[:cycles]

    torch_ms = _median_ms(reference, states)
    mlx_ms = _median_ms(candidate, states)
    agree = sum(reference(s) == candidate(s) for s in states)
    import mlx.core as mx

    device = next(ref_model.reflex.parameters()).device
    click.echo(f"model: {model_dir} ({len(candidate.tokens.ids)} prompt tokens); "
               f"reference: {checkpoint or 'the release'} on torch {device}")
    click.echo(f"torch reference (padded to {ref_config['max_instr_tokens']}, eager): {torch_ms:.2f} ms/cycle")
    click.echo(f"mlx {mx.default_device()} (cached prefix, compiled step): {mlx_ms:.2f} ms/cycle")
    click.echo(f"same word on {agree}/{len(states)} cycles")
    click.echo(f"mlx/torch per-cycle time ratio: {mlx_ms / torch_ms:.3f}")
