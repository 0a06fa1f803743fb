"""`reflex-mlx`: run Reflex on a prompt, evaluate it, time it, demo it, train it, convert it;
with MLX or PyTorch.

One module per command, each a thin layer over the Python API (reflex_app.api), a
backend's trainer (reflex_core.training.fit) or the converter, imported only when its
command runs (or --help lists it); reflex_app/cli/common.py holds what they share: the
error policy, the model and backend options. A framework is imported by the backend a
command uses, and by `convert`, which works in MLX.
"""

from __future__ import annotations

import importlib

import click

from reflex_app.api import MODEL_ENV

from .common import DEBUG_ENV, OneLineErrors

__all__ = ["COMMANDS", "MODEL_ENV", "main"]

# command name -> the module under reflex_app/cli that defines `command`
COMMANDS = {
    "run": "run",
    "eval": "eval",
    "bench": "bench",
    "demo": "demo",
    "train": "train",
    "info": "info",
    "convert": "convert",
    "analyze": "analyze",
}


class _Commands(OneLineErrors):
    """The command group, each command loaded from its module when it is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return super().get_command(ctx, name)  # one added with @main.command
        return importlib.import_module(f"{__name__}.{module}").command


@click.group(
    cls=_Commands, help="Run Reflex, a frozen code LLM that drives a RISC-V CPU, with MLX or PyTorch."
)
@click.option("--debug", is_flag=True, help=f"Show tracebacks of internal errors (also ${DEBUG_ENV}=1).")
def main(debug: bool) -> None:
    pass
