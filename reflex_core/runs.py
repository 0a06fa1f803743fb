"""Running prompts on a loaded model, over any backend: `load`, then `run`, `stream` or `run_batch`.

It lives in the core because all it does is drive reflex_core.loop with a backend's Loaded
model, and it reaches a backend through the registry (reflex_core.backends) alone: no
framework is imported until a model is loaded on it. The application (reflex_app.api) and
each backend package (`from reflex_mlx import load, run, stream`) give these functions to
the user. Bad input raises reflex_core.errors.ReflexError with a one-line message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

from reflex_core import backends, hub, loop, predict
from reflex_core.backends import Backend, Loaded
from reflex_core.errors import ReflexError, one_line, user_path
from reflex_core.loop import Cycle, RunResult
from reflex_core.machine import Machine
from reflex_core.prompt import truncation_notice
from reflex_core.smol import MODEL_NAMES
from reflex_core.spec import DEFAULT_MAX_CYCLES, DEFAULT_RELEASE_DIR

__all__ = [
    "MODEL_ENV",
    "Cycle",
    "Loaded",
    "ReflexError",
    "RunResult",
    "check_prompt",
    "default_model",
    "load",
    "locate",
    "run",
    "run_batch",
    "stream",
]

MODEL_ENV = "REFLEX_MLX_MODEL"
BUNDLED = "the bundled reflex-tiny"  # how the user is told a model is the one each backend ships

Note = Callable[[str], None]


def default_model() -> tuple[Path | None, str]:
    """(directory, why) of the model used when none is named: $REFLEX_MLX_MODEL, else the
    converted release if present, else None: the bundled reflex-tiny (each backend ships its own)."""
    if os.environ.get(MODEL_ENV):
        return _path(os.environ[MODEL_ENV], f"model in ${MODEL_ENV}"), f"${MODEL_ENV}"
    release = Path(DEFAULT_RELEASE_DIR).expanduser()
    if release.is_dir():
        return release, "the converted release"
    return None, BUNDLED


def _path(name, what: str) -> Path:
    try:
        return user_path(name, what)
    except ValueError as err:
        raise ReflexError(str(err)) from None


def _backend(name: str | None, note: Note | None) -> Backend:
    try:
        if name is None:
            name, why = backends.choose()
            if note is not None:
                note(f"backend: {name} ({why}; --backend to choose)")
        return backends.get(name)
    except backends.BackendError as err:
        raise ReflexError(str(err)) from None


def locate(
    model: str | os.PathLike | None = None, backend: str | None = "mlx", note: Note | None = None
) -> tuple[Backend, Path | None]:
    """(the backend, the folder it is to load) for what the user named, as `load` takes it;
    the folder is None for that backend's bundled reflex-tiny. Nothing is loaded; a hub
    model is fetched. ReflexError in one line when the name names no model here."""
    if backend is not None and backend not in ("mlx", "torch"):
        raise ReflexError(f"unknown backend {one_line(backend)!r}: mlx or torch")
    if model is None:
        path, why = default_model()
        if path is None:
            chosen = _backend(backend, note)
            if note is not None:
                note(f"model: {one_line(chosen.bundled)} ({why})")
            return chosen, None
        shown = f"'{one_line(path)}' ({why})"
        if note is not None:
            note(f"model: {one_line(path)} ({why})")
    else:
        name = os.fspath(model)
        shown = f"'{one_line(name)}'"
        path = _path(name, "model name")
        if name in MODEL_NAMES and not path.is_dir():
            chosen = _backend(backend, note)  # each backend keeps its own copy of a named model
            try:
                return chosen, chosen.named(name)
            except backends.BackendError as err:
                raise ReflexError(str(err)) from None
        if hub.is_hub_id(name):
            if backend == "torch":
                raise ReflexError(f"{name} is a hub model converted for MLX: use --backend mlx")
            try:
                path, backend = hub.fetch_model(name), "mlx"
            except (FileNotFoundError, ValueError) as err:
                raise ReflexError(str(err)) from None
    if not path.is_dir():
        raise ReflexError(f"no model directory at {shown}")
    chosen = _backend(backend, note)
    # each backend ships its own reflex-tiny: either's folder asks the chosen one for its own
    return chosen, None if backends.is_bundled(path) else path


def load(
    model: str | os.PathLike | None = None,
    backend: str | None = "mlx",
    fast: bool = True,
    note: Note | None = None,
) -> Loaded:
    """A model ready to run.

    model: a bundled name (tiny; smol once `make smol` built it), a converted model folder,
    or a hub id (OWNER/NAME, converted for MLX); None: $REFLEX_MLX_MODEL, else the converted
    release, else the bundled reflex-tiny. backend: "mlx" or "torch" (which needs
    reflex-mlx[torch]); None picks as the CLI does, MLX where it has a GPU, else torch when
    installed. fast: the cached, compiled runner (False: the plain reference forward).
    note(line) hears the choices made for the user, if given.
    """
    chosen, path = locate(model, backend, note)
    try:
        return chosen.load(path, fast=fast)
    except backends.BackendError as err:
        raise ReflexError(str(err)) from None


def check_prompt(prompt) -> str:
    """The prompt, or ReflexError when it is not text, not UTF-8, or empty."""
    if not isinstance(prompt, str):
        raise ReflexError(f"the prompt must be text, not {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ReflexError("the prompt is not valid UTF-8 text") from None
    if not prompt.strip():
        raise ReflexError("the prompt is empty")
    return prompt


def _check_cycles(max_cycles) -> int:
    if isinstance(max_cycles, bool) or not isinstance(max_cycles, int) or max_cycles < 1:
        raise ReflexError(f"max_cycles must be a whole number of at least 1, not {one_line(max_cycles)}")
    return max_cycles


def _described(result: RunResult, prompt: str, tokens, config: dict, seconds: float) -> RunResult:
    result.prompt, result.prompt_tokens, result.seconds = prompt, len(tokens.ids), seconds
    result.truncation = truncation_notice(tokens, config["max_instr_tokens"]) if tokens.truncated else ""
    return result


def stream(
    model: Loaded,
    prompt: str,
    max_cycles: int = DEFAULT_MAX_CYCLES,
    *,
    machine: Machine | None = None,
    refine: bool = False,
) -> Generator[Cycle, None, RunResult]:
    """Yield each cycle as it happens; the generator returns the RunResult
    (`result = yield from stream(...)`). The prompt is checked before the first cycle.

    machine: the CPU to drive, for a caller that reads its registers and memory between
    cycles (the demo); it is reset first, unless refine: a refinement pass, as the
    original's demo runs them, keeps the registers and data the last run left, clears the
    code region and starts again at CODE_START.
    """
    check_prompt(prompt)
    _check_cycles(max_cycles)
    if machine is not None and not isinstance(machine, Machine):
        raise ReflexError(f"machine must be a reflex_core.machine.Machine, not {type(machine).__name__}")
    if refine and machine is None:
        raise ReflexError("refine continues a machine: pass the machine the last run drove")
    return _stream(model, prompt, max_cycles, machine, refine)


def _stream(
    model: Loaded, prompt: str, max_cycles: int, machine: Machine | None, refine: bool
) -> Generator[Cycle, None, RunResult]:
    started = time.perf_counter()
    predictor = predict.Predictor(model.runner, model.tokenizer, prompt, model.config)
    if refine:
        machine.new_pass()
    program = loop.ProgramRun(max_cycles, machine=machine, keep_state=refine)
    result = yield from loop.steps(predictor, program=program)
    return _described(result, prompt, predictor.tokens, model.config, time.perf_counter() - started)


def run(
    model: Loaded,
    prompt: str,
    max_cycles: int = DEFAULT_MAX_CYCLES,
    on_cycle: Callable[[Cycle], None] | None = None,
) -> RunResult:
    """Let the model drive the CPU for `prompt`, one instruction a cycle, until it halts,
    fails or reaches max_cycles; on_cycle sees each cycle as it happens."""
    return loop.drain(stream(model, prompt, max_cycles), on_cycle)


def run_batch(model: Loaded, prompts: Sequence[str], max_cycles: int = DEFAULT_MAX_CYCLES) -> list[RunResult]:
    """Run several prompts together, one model call a cycle for all unfinished ones (the
    eval's batched path); one RunResult per prompt, in order, each as `run` gives it
    alone. Each result's seconds is the whole batch's wall time."""
    if isinstance(prompts, str):
        raise ReflexError("run_batch takes a list of prompts, not one prompt")
    prompts = [check_prompt(p) for p in prompts]
    if not prompts:
        raise ReflexError("run_batch needs at least one prompt")
    _check_cycles(max_cycles)
    started = time.perf_counter()
    predictor = predict.BatchPredictor(model.runner, model.tokenizer, prompts, model.config)
    results = loop.run_many(predictor, len(prompts), max_cycles=max_cycles, with_indices=True)
    seconds = time.perf_counter() - started
    return [
        _described(result, prompt, tokens, model.config, seconds)
        for result, prompt, tokens in zip(results, prompts, predictor.tokens)
    ]
