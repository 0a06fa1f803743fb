"""`reflex-mlx train --backend mlx|torch`: one command for both trainers, through the
backend registry (reflex_core.backends). Every option and its default come from
reflex_core.training's dataclasses (TrainDefaults: both backends; MLXOptions and
TorchOptions: one each), written once; an option of the other backend is one line.
No framework is imported before a run starts, so --help is cheap."""

from __future__ import annotations

import click

from reflex_core import training

from .common import checked_path

_COMMA_LISTS = ("families", "exclude_families")  # tuple fields the command line takes as "a,b"
_TYPES = {"int": int, "float": float, "str": str}


def _option(name: str, f, only: str | None = None):
    """The click option of one dataclass field, with its default and help."""
    kind, meta = f.type.removesuffix(" | None"), f.metadata
    help = meta.get("help", "") + (f" [--backend {only} only]" if only else "")
    flag = "--" + name.replace("_", "-")
    if kind == "bool":
        return click.option(flag, name, is_flag=True, default=f.default, help=help)
    if name in _COMMA_LISTS:
        return click.option(flag, name, default="", help=help)
    if kind == "tuple[str, ...]":
        return click.option(flag, name, multiple=True, help=help)
    if "choices" in meta:
        kind_type = click.Choice(meta["choices"])
    elif "at_least" in meta and kind == "int":
        kind_type = click.IntRange(min=meta["at_least"])
    else:
        kind_type = _TYPES[kind]
    shown = f.default is not None
    return click.option(flag, name, type=kind_type, default=f.default, show_default=shown, help=help)


def _options(command):
    """Every training option: both backends' first, then each backend's own."""
    fields = [(n, f, None) for n, f in training.options_of(training.TrainDefaults).items()]
    for backend, cls in training.BACKEND_OPTIONS.items():
        fields += [
            (n, f, backend) for n, f in training.options_of(cls).items() if f.metadata.get("cli", True)
        ]
    for name, f, only in reversed(fields):
        command = _option(name, f, only)(command)
    return command


@click.command(
    name="train",
    help="Train a Reflex model. --backend mlx (the default) teaches a converted model new programs: "
    "InfoNCE training of its Reflex side (full or LoRA) over its frozen, possibly quantized backbone; "
    "OUT becomes a model directory that run, eval and demo load. --backend torch trains a new "
    "model (a backbone from scratch, or --backbone frozen) in the released format; "
    "data-parallel runs use torchrun -m reflex_torch.train with the same options.",
)
@click.option("--out", type=str, required=True, help="Output directory.")
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint.")
@click.option(
    "--backend",
    type=click.Choice(sorted(training.BACKEND_OPTIONS)),
    default="mlx",
    show_default=True,
    help="The trainer.",
)
@_options
def command(out: str, resume: bool, backend: str, **options) -> None:
    from click.core import ParameterSource

    from reflex_core import backends
    from reflex_core.timing import human_bytes

    ctx = click.get_current_context()
    given = {n for n in options if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE}
    for name in _COMMA_LISTS:
        options[name] = tuple(t for t in options[name].split(",") if t)
    for path in (*options["data"], *options.get("rehearse", ())):  # the names, before the model loads
        checked_path(path, "training data path")
    own = {
        **training.options_of(training.TrainDefaults),
        **training.options_of(training.BACKEND_OPTIONS[backend]),
    }
    try:
        training.check_backend_options(backend, given)
        trainer = backends.get(backend)
        summary = trainer.train(
            checked_path(out, "output directory"), {n: options[n] for n in own if n in options}, given, resume
        )
    except (training.TrainError, backends.BackendError) as err:
        raise click.ClickException(str(err)) from None
    if summary.get("peak_memory") is not None:
        click.echo(f"peak memory: {human_bytes(summary['peak_memory'])} ({backend})", err=True)
