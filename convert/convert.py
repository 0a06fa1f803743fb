"""Turn a released `reflex.pt` (+ its backbone: Qwen2 as released, or Llama,
Mistral, Qwen3) into an MLX model directory.

    python -m convert [--checkpoint PATH_OR_HUB_FILE] [--backbone PATH_OR_HUB_ID]
                      [--out DIR] [--bits {4,8}] [--no-quantize] [--dtype ...]

The directory holds `config.json`, `adapters.safetensors` (MLX names) and
`backbone/` (written by mlx-lm's converter, tokenizer included). It is built
in a temporary sibling directory and renamed into place only when complete,
so a failed run never leaves a half-written model behind. Neither torch nor
a GPU is needed: the checkpoint is read by `convert.checkpoint`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import click

from reflex_core.errors import first_line
from reflex_core.hub import backbone_config, resolve_backbone, resolve_checkpoint
from reflex_core.shapes import spell_rope_theta
from reflex_core.spec import (
    ADAPTER_HEADS,
    ADAPTERS_FILE,
    BACKBONE_DIR,
    DEFAULT_RELEASE_DIR,
    FLOAT_DTYPES,
    MODEL_CONFIG_FILE,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    QUANT_GROUP_SIZE,
    ReflexArgs,
    adapter_layers,
    backbone_family,
    reflex_config,
)

from .checkpoint import CheckpointError, read_checkpoint


class ConvertError(Exception):
    """A one-line reason the conversion cannot proceed."""


def convert_checkpoint(
    checkpoint: str | None,
    backbone: str | None,
    out: Path,
    bits: int = 4,
    quantize: bool = True,
    dtype: str = "float32",
    backbone_dtype: str | None = None,
    quiet: bool = False,
) -> Path:
    import mlx.core as mx
    from mlx_lm import convert as mlx_lm_convert

    from reflex_mlx.model import Reflex

    out = Path(out)
    if out.exists():
        raise ConvertError(f"{out} already exists; remove it or choose another --out")
    checkpoint_path = resolve_checkpoint(checkpoint)
    ckpt = read_checkpoint(checkpoint_path)
    ckpt.verify()  # every tensor's CRC-32, before minutes of backbone conversion
    config = reflex_config(ckpt.config)
    backbone_source = resolve_backbone(backbone or config["backbone_id"], near=checkpoint_path)
    num_layers = _check_fit(ckpt, config, backbone_config(backbone_source))
    _check_geometry(ckpt, ReflexArgs.from_config(config, num_layers))  # before mlx-lm's minutes

    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise ConvertError(f"cannot write into {out.parent}")
    remove_stale_partials(out)
    tmp = out.parent / (PARTIAL.format(name=out.name) + str(os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        log = io.StringIO() if quiet else sys.stderr
        with contextlib.redirect_stdout(log):
            try:
                mlx_lm_convert(
                    hf_path=backbone_source,
                    mlx_path=str(tmp / BACKBONE_DIR),
                    quantize=quantize,
                    q_bits=bits if quantize else None,
                    q_group_size=QUANT_GROUP_SIZE if quantize else None,
                    dtype=backbone_dtype,
                )
            except Exception as err:  # mlx-lm and the hub raise many kinds; one line for the user
                raise ConvertError(
                    f"mlx-lm could not convert the backbone {backbone_source}: {first_line(err)}"
                ) from None
        spell_rope_theta(tmp / BACKBONE_DIR / "config.json")

        layers = adapter_layers(num_layers, config["inject_every"])
        target = getattr(mx, dtype)
        weights = {}
        for name, value in Reflex.sanitize({n: mx.array(t.numpy()) for n, t in ckpt.state.items()}).items():
            weights[name] = value.astype(target) if mx.issubdtype(value.dtype, mx.floating) else value
        ckpt.close()
        try:  # every name and shape the MLX model will load, checked before anything is saved
            Reflex(ReflexArgs.from_config(config, num_layers)).load_weights(
                list(weights.items()), strict=True
            )
        except ValueError as err:
            raise ConvertError(f"the checkpoint does not fit the Reflex modules: {first_line(err)}") from None
        mx.save_safetensors(str(tmp / ADAPTERS_FILE), weights, metadata={"format": MODEL_FORMAT})

        model_config = {
            **config,
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "num_layers": num_layers,
            "adapter_layers": layers,
            "adapter_heads": ADAPTER_HEADS,
            "adapter_dtype": dtype,
            "backbone": BACKBONE_DIR,
            "quantization": {"bits": bits, "group_size": QUANT_GROUP_SIZE} if quantize else None,
            "source_checkpoint": _as_source(checkpoint),
            "source_backbone": _as_source(backbone_source),
        }
        (tmp / MODEL_CONFIG_FILE).write_text(json.dumps(model_config, indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _as_source(source: str | None) -> str | None:
    """A local path made absolute (a config must not depend on where convert ran), a hub id as is."""
    if source and Path(source).expanduser().exists():
        return str(Path(source).expanduser().resolve())
    return source


PARTIAL = ".{name}.partial-"


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the half-written folders that killed conversions to `out` left behind
    (those whose process is gone), saying so; a live run's folder is left alone."""
    removed = []
    prefix = PARTIAL.format(name=out.name)
    for folder in out.parent.glob(prefix + "*"):
        pid = folder.name[len(prefix) :]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        print(f"removed {folder}, left by an interrupted conversion", file=sys.stderr)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _check_geometry(ckpt, args: ReflexArgs) -> None:
    """Every tensor's name, shape and kind against the Reflex modules, from shapes
    alone (MLX arrays are lazy: nothing is allocated), so a misshapen checkpoint is
    refused in seconds, before the backbone is converted."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from reflex_mlx.model import Reflex

    try:
        expected = {name: value.shape for name, value in tree_flatten(Reflex(args).parameters())}
        shaped = Reflex.sanitize({n: mx.zeros(t.shape, dtype=mx.float32) for n, t in ckpt.state.items()})
        got = {name: value.shape for name, value in shaped.items()}
    except (ValueError, OverflowError, RuntimeError, MemoryError) as err:
        raise ConvertError(f"the checkpoint's tensors cannot be laid out: {first_line(err)[:200]}") from None
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    if missing or unexpected:
        raise ConvertError(
            f"the checkpoint does not fit the Reflex modules: {len(missing)} tensors missing "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
        )
    for name, shape in expected.items():
        if tuple(got[name]) != tuple(shape):
            have, want = tuple(got[name]), tuple(shape)
            raise ConvertError(f"the checkpoint does not fit the Reflex modules: {name}: {have}, not {want}")
    for name, tensor in ckpt.state.items():
        floating = tensor.dtype in ("float32", "float64", "float16", "bfloat16")
        if floating == (name == "instr_words"):
            raise ConvertError(f"checkpoint tensor {name} is {tensor.dtype}, which does not fit it")


def _check_fit(ckpt, config: dict, qwen: dict) -> int:
    """The backbone's layer count, once the checkpoint is known to fit it: same
    hidden size, one adapter per injected layer. Checked before any conversion."""
    try:
        backbone_family(qwen)
    except ValueError as err:
        raise ConvertError(str(err)) from None
    if qwen.get("hidden_size") != config["hidden"]:
        raise ConvertError(
            f"backbone hidden size {qwen.get('hidden_size')} does not match the "
            f"checkpoint's {config['hidden']}"
        )
    num_layers = qwen.get("num_hidden_layers")
    if not isinstance(num_layers, int) or num_layers <= 0:
        raise ConvertError("the backbone config has no num_hidden_layers")
    wanted = len(adapter_layers(num_layers, config["inject_every"]))
    stored = len({name.split(".")[1] for name in ckpt.state if name.startswith("adapters.")})
    if stored != wanted:
        raise ConvertError(
            f"the checkpoint has {stored} adapters; a {num_layers}-layer backbone with "
            f"inject_every={config['inject_every']} takes {wanted}"
        )
    return num_layers


@click.command(help="Convert reflex.pt and its backbone into an MLX model directory.")
@click.option(
    "--checkpoint",
    default=None,
    help="reflex.pt path, or owner/repo[/file] on the hub (default: the release).",
)
@click.option(
    "--backbone",
    default=None,
    help="Backbone: a transformers directory or hub id (default: the checkpoint's backbone_id).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path(DEFAULT_RELEASE_DIR).expanduser(),
    show_default=True,
)
@click.option(
    "--bits",
    type=click.Choice(["4", "8"]),
    default=None,
    help="Backbone quantization bits, group size 64.  [default: 4]",
)
@click.option("--no-quantize", is_flag=True, help="Keep the backbone unquantized.")
@click.option(
    "--dtype",
    type=click.Choice(FLOAT_DTYPES),
    default="float32",
    show_default=True,
    help="dtype of the adapter-side weights (float32 as released).",
)
@click.option(
    "--backbone-dtype",
    type=click.Choice(FLOAT_DTYPES),
    default=None,
    help="dtype of the backbone's unquantized weights (default: the backbone's own).",
)
def main(checkpoint, backbone, out, bits, no_quantize, dtype, backbone_dtype):
    import signal

    # SIGTERM cleans up like Ctrl-C: the half-written folder is removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if bits is not None and no_quantize:
        raise click.UsageError("--bits and --no-quantize contradict each other; give one")
    try:
        path = convert_checkpoint(
            checkpoint,
            backbone,
            out,
            bits=int(bits or 4),
            quantize=not no_quantize,
            dtype=dtype,
            backbone_dtype=backbone_dtype,
        )
    except (ConvertError, CheckpointError, FileNotFoundError, OSError, ValueError) as err:
        raise click.ClickException(first_line(err)) from None
    click.echo(f"wrote {path}")
