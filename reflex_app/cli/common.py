"""What every command shares: the error policy, the model and backend options, the model's loading."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from reflex_app import api
from reflex_app.api import MODEL_ENV
from reflex_core import backends
from reflex_core.errors import MESSAGE_LIMIT, ReflexError, first_line, one_line, user_path
from reflex_core.loop import Cycle

DEBUG_ENV = "REFLEX_MLX_DEBUG"
ISSUES_HINT = "please report it with the command that failed (run it with --debug for the traceback)"
BACKEND_CHOICE = click.Choice(["mlx", "torch"])

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


class OneLineErrors(click.Group):
    """Every error ends in one line and a non-zero exit: user errors (the API's ReflexError
    among them) as click's "Error: ...", output that cannot be written (a full device, a
    closed pipe), and unexpected internal errors with a hint; --debug (or
    $REFLEX_MLX_DEBUG=1) shows the traceback of the last kind instead."""

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug") or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            try:
                result = super().invoke(ctx)
            except ReflexError as err:
                raise click.ClickException(str(err)) from None
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


def say(line: str) -> None:
    """A note for the user on stderr: stdout stays the result."""
    click.echo(line, err=True)


def checked_path(name, what: str) -> Path:
    """A path the user named, or click's one-line error saying why it names none."""
    try:
        return user_path(name, what)
    except ValueError as err:
        raise click.ClickException(str(err)) from None


def load(backend: str | None, model: str | None, fast: bool = True) -> backends.Loaded:
    """api.load, saying on stderr which model and backend it chose where the user named none."""
    return api.load(model, backend=backend, fast=fast, note=say)


def format_cycle(index: int, cycle: Cycle) -> str:
    """One line of a trace: cycle number, address, word, assembly."""
    return f"{index:4d}  pc 0x{cycle.pc:04x}  0x{cycle.word:08x}  {cycle.asm}"


def memory_lines(memory: dict[str, list[int]], label: str = "") -> list[str]:
    """The reported windows, one line each: "0x5000: 120 0 ..." (after a label, if given)."""
    return [f"{label}{addr}: {' '.join(str(w) for w in words)}" for addr, words in memory.items()]


def peak_line(*loaded: backends.Loaded) -> None:
    """One line on stderr: each backend's peak memory so far (stdout stays the result)."""
    from reflex_core.timing import human_bytes

    parts = [f"{one.device} {human_bytes(one.peak_memory())}" for one in loaded if one.peak_memory]
    if parts:
        say(f"peak memory: {', '.join(parts)}")
