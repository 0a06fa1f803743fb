"""`reflex-mlx`: run Reflex on a prompt, evaluate it, time it; with MLX or PyTorch.

The commands are written once over reflex_core.predict and the backends of
reflex_core.backends; this module imports neither framework.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from reflex_core import backends, hub, rv32i
from reflex_core.errors import MESSAGE_LIMIT, first_line, one_line, user_path
from reflex_core.files import OutputError, writable_file, write_report
from reflex_core.loop import Cycle, RunResult, run
from reflex_core.prompt import truncation_notice
from reflex_core.smol import MODEL_NAMES
from reflex_core.spec import DEFAULT_MAX_CYCLES, DEFAULT_RELEASE_DIR

MODEL_ENV = "REFLEX_MLX_MODEL"
DEBUG_ENV = "REFLEX_MLX_DEBUG"
ISSUES_HINT = "please report it with the command that failed (run it with --debug for the traceback)"
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "reflex-tiny"
BACKEND_CHOICE = click.Choice(["mlx", "torch"])


def default_model_dir() -> tuple[Path, str]:
    """(directory, why): $REFLEX_MLX_MODEL, else the converted release if present."""
    if os.environ.get(MODEL_ENV):
        return _user_path(os.environ[MODEL_ENV], f"model in ${MODEL_ENV}"), f"${MODEL_ENV}"
    release = Path(DEFAULT_RELEASE_DIR).expanduser()
    if release.is_dir():
        return release, "the converted release"
    return BUNDLED_MODEL, "the bundled reflex-tiny"


def _user_path(name, what: str) -> Path:
    """A path the user named, or click's one-line error saying why it names none."""
    try:
        return user_path(name, what)
    except ValueError as err:
        raise click.ClickException(str(err)) from None


def _backend(name: str | None) -> backends.Backend:
    try:
        if name is None:
            name, why = backends.choose()
            click.echo(f"backend: {name} ({why}; --backend to choose)", err=True)
        return backends.get(name)
    except backends.BackendError as err:
        raise click.ClickException(str(err)) from None


def _load(backend: str | None, model: str | Path | None, fast: bool = True) -> backends.Loaded:
    """The model, on the backend named (None: the default, said in one line)."""
    if model is None:
        path, why = default_model_dir()
        shown = f"'{one_line(path)}' ({why})"
        click.echo(f"model: {one_line(path)} ({why})", err=True)
    else:
        name = os.fspath(model)
        shown = f"'{one_line(name)}'"
        path = _user_path(name, "model name")
        if name in MODEL_NAMES and not path.is_dir():
            chosen = _backend(backend)  # each backend keeps its own copy of a named model
            try:
                return chosen.load(chosen.named(name), fast=fast)
            except backends.BackendError as err:
                raise click.ClickException(str(err)) from None
        if hub.is_hub_id(name):
            if backend == "torch":
                raise click.ClickException(f"{name} is a hub model converted for MLX: use --backend mlx")
            try:
                path, backend = hub.fetch_model(name), "mlx"
            except (FileNotFoundError, ValueError) as err:
                raise click.ClickException(str(err)) from None
    if not path.is_dir():
        raise click.ClickException(f"no model directory at {shown}")
    backend = _backend(backend)
    # Each backend ships its own reflex-tiny: None asks for it.
    bundled = path.resolve() == BUNDLED_MODEL
    try:
        return backend.load(None if bundled else path, fast=fast)
    except backends.BackendError as err:
        raise click.ClickException(str(err)) from None


def _format_cycle(index: int, cycle: Cycle) -> str:
    return f"{index:4d}  pc 0x{cycle.pc:04x}  0x{cycle.word:08x}  {cycle.asm}"


def _outcome_line(result: RunResult) -> str:
    if result.outcome == "error":
        return f"outcome: error ({result.error})"
    if result.outcome == "limit":
        return f"outcome: limit (stopped after {len(result.cycles)} cycles)"
    return f"outcome: halted after {len(result.cycles)} cycles"


model_option = click.option(
    "--model",
    type=str,
    default=None,
    help="A converted model directory (torch also reads a reflex.pt directory), or a name: "
    "tiny (bundled) or smol (reflex-smol, after `make smol`); default: "
    f"${MODEL_ENV}, else the converted release if present, else the bundled reflex-tiny.",
)
backend_option = click.option(
    "--backend",
    type=BACKEND_CHOICE,
    default=None,
    help="mlx or torch (default: MLX where it has a GPU, else torch when installed).",
)


class _OneLineErrors(click.Group):
    """Every error ends in one line and a non-zero exit: user errors as click's
    "Error: ...", output that cannot be written (a full device, a closed pipe), and
    unexpected internal errors with a hint; --debug (or $REFLEX_MLX_DEBUG=1) shows
    the traceback of the last kind instead."""

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug") or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a full device or a closed pipe shows here, not at exit
            return result
        except click.ClickException as err:
            err.message = one_line(err.message, MESSAGE_LIMIT)  # whatever it echoes, one line
            raise
        except (click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:
            _silence_stdout()
            ctx.exit(1)
        except OSError as err:
            if debug:
                raise
            if err.filename is not None:  # a file named by the user or the model, not the output
                raise click.ClickException(
                    f"{one_line(err.filename)}: {err.strerror or first_line(err)}"
                ) from None
            _silence_stdout()
            raise click.ClickException(
                f"cannot write the output: {err.strerror or first_line(err)}"
            ) from None
        except Exception as err:
            if debug:
                raise
            raise click.ClickException(
                f"internal error: {type(err).__name__}: {one_line(first_line(err), 200)}; {ISSUES_HINT}"
            ) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@click.group(
    cls=_OneLineErrors, help="Run Reflex, a frozen code LLM that drives a RISC-V CPU, with MLX or PyTorch."
)
@click.option("--debug", is_flag=True, help=f"Show tracebacks of internal errors (also ${DEBUG_ENV}=1).")
def main(debug: bool) -> None:
    pass


def _check_prompt(prompt: str) -> None:
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise click.ClickException("the prompt is not valid UTF-8 text") from None
    if not prompt.strip():
        raise click.ClickException("the prompt is empty")


@main.command(name="run", help="Let the model drive the CPU for PROMPT, one instruction per cycle.")
@click.argument("prompt")
@model_option
@backend_option
@click.option("--max-cycles", type=click.IntRange(min=1), default=DEFAULT_MAX_CYCLES, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the trace.")
def run_command(prompt: str, model: Path | None, backend: str | None, max_cycles: int, as_json: bool) -> None:
    from reflex_core.predict import Predictor

    _check_prompt(prompt)
    loaded = _load(backend, model)
    predictor = Predictor(loaded.runner, loaded.tokenizer, prompt, loaded.config)
    if predictor.tokens.truncated:
        notice = truncation_notice(predictor.tokens, loaded.config["max_instr_tokens"])
        click.echo(f"warning: {notice}", err=True)

    count = iter(range(1, max_cycles + 1))
    show = None if as_json else (lambda cycle: click.echo(_format_cycle(next(count), cycle)))
    result = run(predictor, max_cycles=max_cycles, on_cycle=show)
    memory = result.memory()
    if as_json:
        report = {
            "outcome": result.outcome,
            "error": result.error,
            "cycles": [
                {"pc": c.pc, "word": c.word, "asm": c.asm, "op": rv32i.decode(c.word)} for c in result.cycles
            ],
            "memory": memory,
            "prompt_tokens": len(predictor.tokens.ids),
            "truncated": predictor.tokens.truncated,
        }
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
        _peak_line(loaded)
        return
    click.echo(_outcome_line(result))
    for addr, words in memory.items():
        click.echo(f"{addr}: {' '.join(str(w) for w in words)}")
    _peak_line(loaded)


def _peak_line(*loaded: backends.Loaded) -> None:
    """One line on stderr: each backend's peak memory so far (stdout stays the result)."""
    from reflex_core.timing import human_bytes

    parts = [f"{one.device} {human_bytes(one.peak_memory())}" for one in loaded if one.peak_memory]
    if parts:
        click.echo(f"peak memory: {', '.join(parts)}", err=True)


def _evaluate(loaded: backends.Loaded, progress: bool = True) -> dict:
    from reflex_core.evaluation import evaluate
    from reflex_core.predict import BatchPredictor

    return evaluate(
        make_batch_predictor=lambda prompts: BatchPredictor(
            loaded.runner, loaded.tokenizer, prompts, loaded.config
        ),
        progress=progress,
    )


@main.command(name="eval", help="Run the 41-task evaluation of the released model (docs/design.md §6).")
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
def eval_command(model: Path | None, backend: str | None, json_out: str | None, text_mode: bool) -> None:
    from reflex_core.evaluation import evaluate_text, format_report

    if json_out is not None:
        _user_path(json_out, "report path")
    if json_out is not None and (why := writable_file(json_out)):  # before minutes of work
        raise click.ClickException(why)
    loaded = _load(backend, model)
    if text_mode and loaded.text_writer is None:
        raise click.ClickException(f"no text mode with {loaded.source}: {loaded.text_note}")
    report = _evaluate(loaded)
    name = Path(model).name if model else default_model_dir()[0].name
    click.echo(format_report(report, name))
    _near_copy_line(report)
    saved = report
    if text_mode:
        text = evaluate_text(loaded.text_writer, progress=True)
        click.echo("\n# text mode: the same backbone writes each program as assembly text\n")
        click.echo(format_report(text, f"{name} (text)"))
        _near_copy_line(text)
        click.echo(
            f"reflex (driving the CPU): {report['passed']}/{report['total']}; "
            f"text mode (same backbone, assembly text): {text['passed']}/{text['total']}"
        )
        saved = {"reflex": report, "text_mode": text}
    _peak_line(loaded)
    if json_out is not None:
        try:
            write_report(json_out, json.dumps(saved, indent=1) + "\n")
        except OutputError as err:
            raise click.ClickException(str(err)) from None


def _near_copy_line(report: dict) -> None:
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


# ------------------------------------------------------------------------- bench
BENCH_PROMPT = "compute 5 factorial and store it"


@main.command(
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
def bench_command(
    model: str | None, torch_dir: str | None, cycles: int, prompt: str, whole_eval: bool
) -> None:
    from reflex_core.loop import ProgramRun
    from reflex_core.predict import Predictor
    from reflex_core.timing import median_ms
    from reflex_core.timing import seconds as timed_run

    given = torch_dir if torch_dir is not None else model
    reference = _load("torch", given if given is not None else default_model_dir()[0], fast=whole_eval)
    candidate = _load("mlx", model)
    click.echo(f"model: {candidate.source}; reference: {reference.source}")
    if whole_eval:
        seconds = {}
        for loaded in (reference, candidate):
            report, seconds[loaded.device] = timed_run(
                lambda loaded=loaded: _evaluate(loaded, progress=False)
            )
            click.echo(
                f"{loaded.device} (fast path): eval {report['passed']}/{report['total']} "
                f"in {seconds[loaded.device]:.1f} s"
            )
        click.echo(f"mlx/torch eval time ratio: {seconds[candidate.device] / seconds[reference.device]:.3f}")
        _peak_line(reference, candidate)
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
    _peak_line(reference, candidate)


# -------------------------------------------------------------------------- demo
@main.command(
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
def demo_command(tasks, model, backend, passes: int, max_cycles: int) -> None:
    from reflex_core.demo import Demo, Screen, interactive

    for task in tasks:
        _check_prompt(task)
    loaded = _load(backend, model)
    name = Path(loaded.source).name
    if sys.stdin.isatty() and sys.stdout.isatty():
        from rich.console import Console

        interactive(Demo(loaded, Screen(model=name), passes, max_cycles), Console(), list(tasks))
        return
    show = lambda n, cycle, pass_no: click.echo(
        (f"[pass {pass_no}] " if passes > 1 else "") + _format_cycle(n, cycle)
    )
    demo = Demo(loaded, Screen(model=name), passes, max_cycles, on_cycle=show)
    for task in tasks or [line.strip() for line in sys.stdin if line.strip()]:
        _check_prompt(task)
        click.echo(f"task: {task}")
        demo.run_task(task, None, lambda: None)
        for line in _plain_sides(demo.screen):
            click.echo(line)
    _peak_line(loaded)


def _plain_sides(screen) -> list[str]:
    """The end of one demo task as lines: Reflex's outcome and memory, then the text side's."""
    from reflex_core.demo import display_text, outcome_line

    lines = [f"reflex: {screen.reflex.outcome}"]
    for addr, words in screen.reflex.memory.items():
        lines.append(f"reflex {addr}: {' '.join(str(w) for w in words)}")
    text = screen.text
    if text.note:
        return [*lines, f"text mode: {text.note}"]
    lines += ["text:", *("  " + line for line in text.text.splitlines())]
    if text.outcome is None:
        return [*lines, "text mode: stopped"]
    if text.outcome.error:
        return [*lines, f"text mode: does not assemble: {text.outcome.error}"]
    result = text.outcome.result
    lines.append(f"text mode: {len(text.outcome.words)} words; {outcome_line(result)}")
    for addr, words in result.memory().items():
        lines.append(f"text {addr}: {' '.join(str(w) for w in words)}")
    lines.append(f"text display: {display_text(result.memory().get('0x6000', []))!r}")
    return lines


# ------------------------------------------------------------------------- train
@main.command(
    name="train",
    help="Teach a model new programs: InfoNCE training of the Reflex side in MLX over its frozen "
    "(possibly quantized) backbone. OUT becomes a model directory that run, eval and demo load.",
)
@click.option("--out", type=str, required=True, help="Output model directory.")
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint.")
@click.option("--model", default=None, help="The model to start from: a directory, tiny, smol or a hub id.")
@click.option(
    "--data",
    multiple=True,
    help="New data: a corpus folder (released format) or a JSONL of {prompt, program, expected_result}; "
    "repeatable.",
)
@click.option("--rehearse", multiple=True, help="Old data replayed beside the new, so the model keeps it.")
@click.option(
    "--rehearse-fraction",
    type=float,
    default=0.5,
    show_default=True,
    help="Share of each batch drawn from --rehearse.",
)
@click.option("--families", default="", help="Only these families of corpus folders (comma-separated).")
@click.option("--exclude-families", default="", help="Leave these families of corpus folders out.")
@click.option("--skip-failing", is_flag=True, help="Leave out JSONL programs that fail verification.")
@click.option("--heldout-fraction", type=float, default=0.05, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--eval-filter", type=click.Choice(["exact", "punctuation"]), default="punctuation")
@click.option("--max-programs", type=click.IntRange(min=1), default=None)
@click.option("--mode", type=click.Choice(["full", "lora"]), default="full", show_default=True)
@click.option("--lora-rank", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lora-alpha", type=float, default=32.0, show_default=True, help="Scale alpha / rank.")
@click.option(
    "--lora-targets",
    default="all",
    show_default=True,
    help="Linear layers: all, or some of value_proj, q_proj, k_proj, v_proj, out_proj, mlp.fc1, "
    "mlp.fc2, head_mlp.fc1, head_mlp.fc2, embed_head.",
)
@click.option(
    "--lora-output",
    type=click.Choice(["keep", "fuse"]),
    default="keep",
    show_default=True,
    help="Keep the LoRA beside the model (lora.safetensors) or merge it into the layers.",
)
@click.option("--steps", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--min-lr", type=float, default=None, help="Default: lr / 100.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True)
@click.option(
    "--backbone-dtype",
    type=click.Choice(["auto", "as-stored", "float32", "float16", "bfloat16"]),
    default="auto",
    show_default=True,
    help="What an unquantized backbone computes in (auto: float32 for a half-precision one on a CPU).",
)
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--eval-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--eval-samples", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--save-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--time-limit", type=float, default=None, help="Stop cleanly (saving) after this many seconds.")
@click.option("--stop-at", type=int, default=None, help="Stop cleanly (saving) after this step.")
def train_command(out: str, resume: bool, **options) -> None:
    from click.core import ParameterSource

    from reflex_mlx.train import NOT_RESUMED, RESUME_OVERRIDES, TrainError, TrainOptions, train

    ctx = click.get_current_context()
    given = {n for n in options if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE}
    split = lambda text: tuple(t for t in text.split(",") if t)
    options["families"], options["exclude_families"] = (
        split(options["families"]),
        split(options["exclude_families"]),
    )
    options["data"], options["rehearse"] = tuple(options["data"]), tuple(options["rehearse"])
    if resume and given - {*RESUME_OVERRIDES, *NOT_RESUMED}:
        names = ", ".join("--" + n.replace("_", "-") for n in sorted(given))
        raise click.ClickException(
            f"--resume takes its settings from the saved run; only --steps, --time-limit, --stop-at "
            f"and the --*-every options may be given again (got {names})"
        )
    for path in (*options["data"], *options["rehearse"]):  # the names, before the model loads
        _user_path(path, "training data path")
    opts = TrainOptions(out=_user_path(out, "output directory"), extra={"resume": resume}, **options)
    try:
        train(opts, given)
    except TrainError as err:
        raise click.ClickException(str(err)) from None
    _peak_line_mlx()


def _peak_line_mlx() -> None:
    import mlx.core as mx

    from reflex_core.timing import human_bytes

    click.echo(f"peak memory: {human_bytes(mx.get_peak_memory())} (mlx)", err=True)


# -------------------------------------------------------------------------- info
@main.command(name="info", help="What a converted model is: its sources, recipe, memory and fidelity report.")
@click.argument("model")
@click.option("--tasks", is_flag=True, help="Also print the fidelity report task by task.")
@click.option(
    "--check",
    is_flag=True,
    help="Also re-hash every file against manifest.json and scan every weight for NaN and infinity.",
)
def info_command(model: str, tasks: bool, check: bool) -> None:
    from reflex_core.folder import MANIFEST_FILE, FolderError, read_config, validate_folder
    from reflex_core.smol import smol_mlx_dir
    from reflex_core.spec import MODEL_CONFIG_FILE

    where, config_only = {"tiny": BUNDLED_MODEL, "smol": smol_mlx_dir()}.get(model), False
    if where is None and (path := _user_path(model, "model")).is_dir():
        where = path
    if where is None and hub.is_hub_id(model):
        config_only = not check  # --check needs the weights; otherwise the config alone is fetched
        try:
            where = hub.fetch_model(model, config_only=config_only)
        except (FileNotFoundError, ValueError) as err:
            raise click.ClickException(str(err)) from None
    if where is None:
        raise click.ClickException(f"no model directory at {model}, and it is not a hub id (OWNER/NAME)")
    try:  # the same validator every loader runs: a broken folder is reported as broken
        if config_only:
            config, manifest = read_config(where / MODEL_CONFIG_FILE), None
        else:
            folder = validate_folder(where, check=check)
            config, manifest = folder.config, folder.manifest
    except FolderError as err:
        raise click.ClickException(f"{model} is broken: {err}") from None
    for line in describe_model(config):
        click.echo(line)
    fidelity = config.get("fidelity")
    if tasks and isinstance(fidelity, dict) and isinstance(fidelity.get("per_task"), list):
        from reflex_core.fidelity import task_table

        for line in task_table(fidelity):
            click.echo(line)
    if config_only:
        click.echo("files: not fetched (the config alone was checked; --check fetches and checks them)")
    elif manifest is None:
        click.echo(f"files: checked; no {MANIFEST_FILE} (an older conversion): every weight scanned, finite")
    elif check:
        click.echo(f"files: {len(manifest)} match {MANIFEST_FILE} byte for byte; every weight finite")
    else:
        click.echo(f"files: {len(manifest)} checked against {MANIFEST_FILE} (sizes; --check re-hashes)")


def describe_model(config: dict) -> list[str]:
    """What `info` prints: one fact a line, from the converted model's config.json."""
    from reflex_core.fidelity import summary_line
    from reflex_core.timing import human_bytes

    recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
    memory = config.get("memory") if isinstance(config.get("memory"), dict) else {}
    quantized = config.get("adapter_quantization")
    adapters = f"{quantized.get('bits')}-bit" if isinstance(quantized, dict) else config.get("adapter_dtype")
    lines = [
        f"checkpoint: {config.get('source_checkpoint')}",
        f"backbone: {config.get('source_backbone') or config.get('backbone_id')} "
        f"({config.get('backbone_layout', 'transformers')} layout, {config.get('num_layers')} layers)",
        f"precision: {recipe.get('backbone', config.get('quantization'))} backbone, {adapters} adapters",
        f"codebook: {config.get('num_instrs')} words; adapters after layers {config.get('adapter_layers')}",
    ]
    if memory:
        lines.append(
            f"memory: ≈ {human_bytes(memory['resident_bytes'])} resident, "
            f"{human_bytes(memory['bytes_per_cycle'])} read per cycle, "
            f"{memory['bits_per_weight']} bits per backbone weight"
        )
    if config.get("command"):
        lines.append(f"converted with: {config['command']}")
    fidelity = config.get("fidelity")
    try:
        lines.append(summary_line(fidelity) if fidelity else "fidelity: not verified at conversion")
    except (KeyError, TypeError, ZeroDivisionError):
        lines.append("fidelity: the report in config.json is damaged")
    return lines
