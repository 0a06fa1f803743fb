"""`reflex-mlx info MODEL`: what a converted model is, read from its folder without loading it."""

from __future__ import annotations

import click

from reflex_core import hub

from .common import checked_path


@click.command(
    name="info", help="What a converted model is: its sources, recipe, memory and fidelity report."
)
@click.argument("model")
@click.option("--tasks", is_flag=True, help="Also print the fidelity report task by task.")
@click.option(
    "--check",
    is_flag=True,
    help="Also re-hash every file against manifest.json and scan every weight for NaN and infinity.",
)
def command(model: str, tasks: bool, check: bool) -> None:
    from reflex_core.folder import MANIFEST_FILE, FolderError, read_config, validate_folder
    from reflex_core.smol import smol_mlx_dir
    from reflex_core.spec import MODEL_CONFIG_FILE
    from reflex_mlx import BUNDLED_MODEL

    where, config_only = {"tiny": BUNDLED_MODEL, "smol": smol_mlx_dir()}.get(model), False
    if where is None and (path := checked_path(model, "model")).is_dir():
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
