"""`reflex-mlx train`: InfoNCE training in MLX (reflex_mlx.train); each option's default is the
TrainOptions field it sets, so every default is written once, in the dataclass."""

from __future__ import annotations

import dataclasses

import click

from reflex_mlx.train import NOT_RESUMED, RESUME_OVERRIDES, TrainError, TrainOptions, train

from .common import checked_path

DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainOptions)}


def option(name: str, **kw):
    """--NAME for the TrainOptions field of that name, with its default."""
    return click.option("--" + name.replace("_", "-"), name, default=DEFAULTS[name], **kw)


def shown(name: str, **kw):
    return option(name, show_default=True, **kw)


@click.command(
    name="train",
    help="Teach a model new programs: InfoNCE training of the Reflex side in MLX over its frozen "
    "(possibly quantized) backbone. OUT becomes a model directory that run, eval and demo load.",
)
@click.option("--out", type=str, required=True, help="Output model directory.")
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint.")
@option("model", help="The model to start from: a directory, tiny, smol or a hub id.")
@click.option(
    "--data",
    multiple=True,
    help="New data: a corpus folder (released format) or a JSONL of {prompt, program, expected_result}; "
    "repeatable.",
)
@click.option("--rehearse", multiple=True, help="Old data replayed beside the new, so the model keeps it.")
@shown("rehearse_fraction", type=float, help="Share of each batch drawn from --rehearse.")
@click.option("--families", default="", help="Only these families of corpus folders (comma-separated).")
@click.option("--exclude-families", default="", help="Leave these families of corpus folders out.")
@option("skip_failing", is_flag=True, help="Leave out JSONL programs that fail verification.")
@shown("heldout_fraction", type=float)
@shown("seed", type=click.IntRange(min=0))
@option("eval_filter", type=click.Choice(["exact", "punctuation"]))
@option("max_programs", type=click.IntRange(min=1))
@shown("mode", type=click.Choice(["full", "lora"]))
@shown("lora_rank", type=click.IntRange(min=1))
@shown("lora_alpha", type=float, help="Scale alpha / rank.")
@shown(
    "lora_targets",
    help="Linear layers: all, or some of value_proj, q_proj, k_proj, v_proj, out_proj, mlp.fc1, "
    "mlp.fc2, head_mlp.fc1, head_mlp.fc2, embed_head.",
)
@shown(
    "lora_output",
    type=click.Choice(["keep", "fuse"]),
    help="Keep the LoRA beside the model (lora.safetensors) or merge it into the layers.",
)
@shown("steps", type=click.IntRange(min=1))
@shown("batch", type=click.IntRange(min=1))
@shown("lr", type=float)
@option("min_lr", type=float, help="Default: lr / 100.")
@shown("warmup", type=click.IntRange(min=0))
@shown("weight_decay", type=float)
@shown("grad_clip", type=float)
@shown(
    "backbone_dtype",
    type=click.Choice(["auto", "as-stored", "float32", "float16", "bfloat16"]),
    help="What an unquantized backbone computes in (auto: float32 for a half-precision one on a CPU).",
)
@shown("log_every", type=click.IntRange(min=1))
@shown("eval_every", type=click.IntRange(min=1))
@shown("eval_samples", type=click.IntRange(min=1))
@shown("save_every", type=click.IntRange(min=1))
@option("time_limit", type=float, help="Stop cleanly (saving) after this many seconds.")
@option("stop_at", type=int, help="Stop cleanly (saving) after this step.")
def command(out: str, resume: bool, **options) -> None:
    from click.core import ParameterSource

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
        checked_path(path, "training data path")
    opts = TrainOptions(out=checked_path(out, "output directory"), extra={"resume": resume}, **options)
    try:
        train(opts, given)
    except TrainError as err:
        raise click.ClickException(str(err)) from None
    _peak_line_mlx()


def _peak_line_mlx() -> None:
    import mlx.core as mx

    from reflex_core.timing import human_bytes

    click.echo(f"peak memory: {human_bytes(mx.get_peak_memory())} (mlx)", err=True)
