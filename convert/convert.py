"""Turn a released `reflex.pt` (+ its backbone: Qwen2 as released, or Llama,
Mistral, Qwen3) into an MLX model directory.

    python -m convert [--checkpoint PATH_OR_HUB_FILE] [--backbone PATH_OR_HUB_ID]
                      [--out DIR] [recipe options] [--verify/--no-verify]
                      [--upload-repo OWNER/NAME]

The backbone may be any layout the original accepts (reflex_mlx/backbone.py):
a causal-LM or base-model transformers directory, single or sharded, a hub
id, or an mlx-lm directory or repo already quantized (used as it is). The
precision recipe (reflex_mlx/quantize.py) goes through mlx-lm's quantizer;
its defaults come from reflex-smol's precision table (docs/precision.md).

The directory holds `config.json`, `adapters.safetensors` (MLX names),
`backbone/` (mlx-lm's layout, tokenizer included) and a model card
(`README.md`). It is built in a temporary sibling directory and renamed into
place only when complete, so a failed run never leaves a half-written model
behind. Neither torch nor a GPU is needed: the checkpoint is read by
`convert.checkpoint`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import click

from reflex_core.errors import first_line, user_path
from reflex_core.files import OutputError, locks_output
from reflex_core.folder import FolderError, check_finite, write_manifest
from reflex_core.hub import backbone_config, resolve_backbone, resolve_checkpoint
from reflex_core.shapes import spell_rope_theta
from reflex_core.spec import (
    ADAPTER_BITS,
    ADAPTER_HEADS,
    ADAPTERS_FILE,
    BACKBONE_BITS,
    BACKBONE_DIR,
    DEFAULT_RELEASE_DIR,
    FLOAT_DTYPES,
    IDENTITY_KEY,
    MIXED_RECIPES,
    MLX_COMMUNITY_BACKBONE,
    MODEL_CONFIG_FILE,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    QUANT_GROUP_SIZE,
    QUANT_GROUP_SIZES,
    ReflexArgs,
    adapter_layers,
    backbone_family,
    identity_mismatch,
    reflex_config,
)
from reflex_core.timing import human_bytes
from reflex_core.training import HELDOUT_FILE

from .checkpoint import CheckpointError, read_checkpoint


class ConvertError(Exception):
    """A one-line reason the conversion cannot proceed."""


@locks_output("out", "convert")  # one conversion per --out at a time
def convert_checkpoint(
    checkpoint: str | None,
    backbone: str | None,
    out: Path,
    recipe=None,
    verify: bool | None = None,
    max_resident_gb: float | None = None,
    text_head: bool = True,
    upload_repo: str | None = None,
    quiet: bool = False,
    verify_tasks: int | None = None,
    command: str | None = None,
    sets_backbone: bool = True,
    fit: int | None = None,
    calibration_data: Path | None = None,
) -> Path:
    """Convert, optionally verify against the unquantized source, and write `out`.

    recipe: a reflex_mlx.quantize.Recipe (None: DEFAULT_RECIPE; an mlx-lm
    quantized backbone keeps its own precision). verify: None verifies when
    the unquantized source is at hand. text_head False drops an untied lm_head
    (Reflex never reads it; the demo's text mode needs it). sets_backbone: the
    recipe names the backbone's precision (refused for an mlx-lm quantized one);
    False when only its adapter side was asked for. fit: a Mac's memory in GB: the
    best measured recipe that fits it is chosen (convert/recipes.py), calibrated on
    `calibration_data` (default: the corpus find_corpus finds) when it needs to be.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_tokenizer, save_config

    from reflex_mlx.backbone import MLX_QUANTIZED, BackboneError, fetch_backbone, load_backbone, save_backbone
    from reflex_mlx.model import Reflex
    from reflex_mlx.quantize import (
        DEFAULT_RECIPE,
        bits_per_weight,
        bytes_per_cycle,
        quantize_adapters,
        quantize_backbone,
        resident_bytes,
        unquantized_layers,
    )

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    out = Path(out)
    if out.exists():
        raise ConvertError(f"{out} already exists; remove it or choose another --out")
    checkpoint_path = resolve_checkpoint(checkpoint)
    ckpt = read_checkpoint(checkpoint_path)
    ckpt.verify()  # every tensor's CRC-32, before minutes of backbone conversion
    config = reflex_config(ckpt.config)
    source = resolve_backbone(backbone or config["backbone_id"], near=checkpoint_path)
    num_layers = _check_fit(ckpt, config, backbone_config(source))
    args = ReflexArgs.from_config(config, num_layers)
    _check_geometry(ckpt, args)  # before mlx-lm's minutes
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise ConvertError(f"cannot write into {out.parent}")

    try:
        source_dir = fetch_backbone(source)
        model, bconfig, kind, has_lm_head = load_backbone(source_dir, lazy=True)
    except BackboneError as err:
        raise ConvertError(str(err)) from None
    fitted, calibration = None, None
    if kind == MLX_QUANTIZED:
        if fit is not None:
            raise ConvertError(
                "--fit chooses the backbone's precision, and this backbone is already quantized "
                "by mlx-lm: drop --fit, or give its unquantized source"
            )
        if recipe is not None and sets_backbone:
            q = bconfig["quantization"]
            raise ConvertError(
                f"the backbone is already quantized by mlx-lm ({q.get('bits')}-bit, group "
                f"{q.get('group_size')}) and is used as it is: drop --bits, --group-size, --recipe, "
                "--no-quantize and --backbone-dtype"
            )
        recipe = recipe or DEFAULT_RECIPE
        say(f"backbone: {source} is already mlx-lm quantized; used as it is")
    else:
        if fit is not None:
            fitted = _fit(fit, bconfig, args, text_head, calibration_data)
            recipe, text_head, calibration = fitted.entry.recipe, fitted.text_head, fitted.entry.calibration
            say(fitted.line())
        recipe = recipe or DEFAULT_RECIPE
        try:  # a calibrated recipe is quantized by its method, once the Reflex modules are loaded
            quantization = quantize_backbone(model, recipe) if calibration is None else {}
        except ValueError as err:
            raise ConvertError(f"the recipe does not fit the backbone: {first_line(err)}") from None
        bconfig.pop("quantization_config", None)
        if quantization:
            bconfig["quantization"] = quantization
            if left := unquantized_layers(model):
                more = ", ..." if len(left) > 1 else ""
                say(
                    f"warning: {len(left)} backbone layers stay {recipe.backbone_dtype}: the group size "
                    f"{recipe.group_size} does not divide their input width ({left[0]}{more})"
                )
    if not text_head and "lm_head" in model:
        del model["lm_head"]
        bconfig["tie_word_embeddings"] = True  # so mlx-lm loads it; see "text_head" in config.json
        has_lm_head = False
    tokenizer = load_tokenizer(source_dir)
    if len(tokenizer) > bconfig.get("vocab_size", 0):
        raise ConvertError(
            f"the tokenizer in {source_dir} has {len(tokenizer)} tokens, more than the "
            f"backbone's {bconfig.get('vocab_size')} embedding rows: not this backbone's tokenizer"
        )

    # The Reflex modules' shapes under the recipe, counted before any weight is read
    # (an MLX module's initial arrays are lazy: nothing is allocated); the weights
    # themselves are streamed into the output below (_stream_reflex).
    shaped = Reflex(args)
    try:
        adapter_quantization = quantize_adapters(shaped, recipe)
    except ValueError as err:
        raise ConvertError(f"the recipe does not fit the adapters: {first_line(err)}") from None
    calibrated = None  # a calibration needs the float Reflex modules whole, beside the backbone
    if calibration is not None:
        from .recipes import RecipeError, calibrate

        calibrated = _stream_reflex(ckpt, args, None)
        try:
            quantization, adapter_quantization, calibration_record = calibrate(
                calibration,
                model,
                calibrated,
                recipe,
                fitted.corpus,
                progress=not quiet,
                tokenizer=tokenizer,
                config=config,
                heldout=checkpoint_path.parent / HELDOUT_FILE,
            )
        except RecipeError as err:
            raise ConvertError(str(err)) from None
        if quantization:
            bconfig["quantization"] = quantization

    resident = resident_bytes(model, shaped)
    from reflex_mlx.model import ReflexModel

    per_cycle = bytes_per_cycle(ReflexModel(model, shaped))
    del shaped
    bits = bits_per_weight(model)
    backbone_name = recipe.backbone_name if kind != MLX_QUANTIZED else "mlx-lm's own"
    memory_line = (
        f"resident ≈ {human_bytes(resident)}, reads {human_bytes(per_cycle)} per cycle, "
        f"{bits:.2f} bits per backbone weight ({backbone_name} backbone, {recipe.adapter_name} adapters)"
    )
    if fitted is not None and resident > fitted.working_set:  # a calibration that grew the model
        raise ConvertError(
            f"the chosen recipe came to ≈ {resident / 1e9:.2f} GB resident, more than the "
            f"{fitted.working_set / 1e9:.2f} GB working set of a {fit} GB Mac"
        )
    if max_resident_gb is not None and resident > max_resident_gb * 1e9:
        raise ConvertError(
            f"this recipe needs ≈ {resident / 1e9:.2f} GB resident, more than --max-resident-gb "
            f"{max_resident_gb:g}: choose fewer bits (e.g. --bits 4 --adapter-bits 4)"
        )
    if verify is None:  # on where the source is at hand and MLX has a GPU to run both sides at speed
        verify = kind != MLX_QUANTIZED and mx.is_available(mx.gpu)
        if kind != MLX_QUANTIZED and not verify:
            say(
                "verify skipped: MLX has no GPU here, and on the CPU the 41-task check takes many "
                "minutes even for reflex-tiny (--verify to run it, --verify-tasks N for a quicker one)"
            )
    if verify and kind == MLX_QUANTIZED:
        raise ConvertError("--verify needs the unquantized source; this backbone is already quantized")

    remove_stale_partials(out)
    tmp = out.parent / (PARTIAL.format(name=out.name) + str(os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # The adapter side first, a part at a time, written and freed; then the
        # backbone a tensor at a time, a shard written and freed at a time.
        reflex = calibrated if calibrated is not None else _stream_reflex(ckpt, args, recipe)
        calibrated = None
        ckpt.close()
        mx.save_safetensors(
            str(tmp / ADAPTERS_FILE),
            dict(tree_flatten(reflex.parameters())),
            metadata={"format": MODEL_FORMAT},
        )
        del reflex
        mx.clear_cache()
        save_backbone(tmp / BACKBONE_DIR, model)
        del model
        with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints as it saves
            save_config(dict(bconfig), config_path=tmp / BACKBONE_DIR / "config.json")
            tokenizer.save_pretrained(str(tmp / BACKBONE_DIR))
        if (source_dir / "generation_config.json").is_file():
            shutil.copy(source_dir / "generation_config.json", tmp / BACKBONE_DIR)
        spell_rope_theta(tmp / BACKBONE_DIR / "config.json")
        model_config = {
            **config,
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "num_layers": num_layers,
            "adapter_layers": list(args.adapter_layers),
            "adapter_heads": ADAPTER_HEADS,
            "adapter_dtype": recipe.adapter_dtype,
            "adapter_quantization": adapter_quantization,
            "backbone": BACKBONE_DIR,
            "backbone_layout": kind,
            "quantization": _quantization_summary(bconfig),
            "recipe": recipe.describe()
            if kind != MLX_QUANTIZED
            else {
                "backbone": "as converted by mlx-lm",
                "adapter_dtype": recipe.adapter_dtype,
                "adapter_bits": recipe.adapter_bits,
            },
            **({"fit": fitted.record()} if fitted else {}),
            "text_head": has_lm_head,
            "memory": {
                "resident_bytes": resident,
                "bytes_per_cycle": per_cycle,
                "bits_per_weight": round(bits, 3),
            },
            "source_checkpoint": _as_source(checkpoint or str(checkpoint_path)),
            "source_backbone": _as_source(source),
            "command": command,
        }
        if calibration is not None:
            model_config["recipe"]["calibration"] = {"method": calibration, **calibration_record}
        _write_config(tmp, model_config)
        _seal(tmp)  # before verify loads it: the folder it checks is the one written
        if verify:
            from .verify import VerifyError, verify_conversion

            try:
                model_config["fidelity"] = verify_conversion(
                    tmp, source_dir, checkpoint_path, progress=not quiet, tasks=verify_tasks
                )
            except VerifyError as err:
                raise ConvertError(f"verify: {err}") from None
            _write_config(tmp, model_config)
        from .card import write_card

        write_card(tmp, model_config, out.name, repo=upload_repo)
        write_manifest(tmp)  # again: verify rewrote config.json (the weights are not hashed twice)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(memory_line)
    if "fidelity" in model_config:
        from reflex_core.fidelity import summary_line

        say(summary_line(model_config["fidelity"]))
    if upload_repo:
        from .card import upload

        upload(out, upload_repo)
    return out


def _stream_reflex(ckpt, args: ReflexArgs, recipe):
    """The Reflex modules read from the checkpoint a part at a time (each adapter,
    then the state encoder, head and codebook), each part cast, quantized and
    evaluated before the next is read: resident are one part's float weights and
    the finished parts (names and shapes were checked by _check_geometry)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from reflex_mlx.model import Reflex
    from reflex_mlx.quantize import quantize_adapters

    reflex = Reflex(args)
    parts: dict[str, list[str]] = {}
    for name in ckpt.state:
        part = ".".join(name.split(".")[:2]) if name.startswith("adapters.") else ""
        parts.setdefault(part, []).append(name)
    for part, names in sorted(parts.items(), key=lambda item: item[0] == ""):  # the rest last

        def within(path: str, part=part) -> bool:
            return path.startswith(part + ".") if part else not path.startswith("adapters.")

        weights = Reflex.sanitize({n: mx.array(ckpt.state[n].numpy()) for n in names})
        reflex.load_weights(list(weights.items()), strict=False)
        del weights
        if recipe is not None:  # None: left float, as stored (a calibration quantizes later)
            quantize_adapters(reflex, recipe, within=within)
        mx.eval([value for path, value in tree_flatten(reflex.parameters()) if within(path)])
        ckpt.release_pages()
        mx.clear_cache()
    return reflex


def _fit(mac_gb: int, bconfig: dict, args: ReflexArgs, text_head: bool, calibration_data: Path | None):
    """The measured recipe for a `mac_gb` Mac at this checkpoint's shape (convert/recipes.py)."""
    from reflex_core.corpus import find_corpus

    from .recipes import RecipeError, choose

    corpus = calibration_data if calibration_data is not None else find_corpus()
    try:
        return choose(mac_gb, bconfig, args, text_head=text_head, corpus=corpus)
    except RecipeError as err:
        raise ConvertError(str(err)) from None


def _seal(folder: Path) -> None:
    """Every tensor written (backbone and adapters) finite, then the manifest that
    lets a loader trust the weights' sizes and digests without reading them again."""
    try:
        for path in sorted(folder.rglob("*.safetensors")):
            check_finite(path)
    except FolderError as err:
        raise ConvertError(f"the converted weights are not usable: {err}") from None
    write_manifest(folder)


def _write_config(folder: Path, config: dict) -> None:
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _quantization_summary(bconfig: dict) -> dict | None:
    """The backbone's uniform bits and group size (per-layer exceptions left in its own config)."""
    q = bconfig.get("quantization")
    if not q:
        return None
    return {"bits": q.get("bits"), "group_size": q.get("group_size")}


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


def _check_fit(ckpt, config: dict, backbone: dict) -> int:
    """The backbone's layer count, once it is known to be the checkpoint's backbone:
    a family Reflex runs over, the identity (hidden size, layers, vocabulary) the
    checkpoint was trained on, one adapter per injected layer. Checked from the
    config alone, before anything is downloaded or converted."""
    try:
        backbone_family(backbone)
    except ValueError as err:
        raise ConvertError(str(err)) from None
    if backbone.get("hidden_size") != config["hidden"]:
        raise ConvertError(
            f"backbone hidden size {backbone.get('hidden_size')} does not match the "
            f"checkpoint's {config['hidden']}"
        )
    num_layers = backbone.get("num_hidden_layers")
    if not isinstance(num_layers, int) or num_layers <= 0:
        raise ConvertError("the backbone config has no num_hidden_layers")
    wanted = len(adapter_layers(num_layers, config["inject_every"]))
    stored = len({name.split(".")[1] for name in ckpt.state if name.startswith("adapters.")})
    if stored != wanted:
        raise ConvertError(
            f"the checkpoint has {stored} adapters; a {num_layers}-layer backbone with "
            f"inject_every={config['inject_every']} takes {wanted}"
        )
    if why := identity_mismatch(config, backbone, ckpt.extra.get(IDENTITY_KEY)):
        raise ConvertError(f"this backbone is not the checkpoint's ({config['backbone_id']}): {why}")
    return num_layers


def _recipe(bits, group_size, mixed, no_quantize, dtype, backbone_dtype, adapter_bits):
    """The Recipe the options ask for; None where they leave every default."""
    from reflex_mlx.quantize import DEFAULT_RECIPE, Recipe

    if no_quantize and (bits or mixed or adapter_bits not in (None, "none")):
        raise click.UsageError("--no-quantize contradicts --bits, --recipe and --adapter-bits; give one")
    if bits and mixed:
        raise click.UsageError("--bits and --recipe both set the backbone's bits; give one")
    if not any((bits, group_size, mixed, no_quantize, dtype, backbone_dtype, adapter_bits)):
        return None
    d = DEFAULT_RECIPE
    return Recipe(
        backbone_dtype=backbone_dtype or (None if no_quantize else d.backbone_dtype),
        bits=None if (no_quantize or mixed) else int(bits or d.bits),
        group_size=int(group_size or d.group_size),
        mixed=mixed,
        adapter_dtype=dtype or d.adapter_dtype,
        adapter_bits=None if no_quantize or adapter_bits == "none" else int(adapter_bits or d.adapter_bits),
    )


def _command_line() -> str:
    """The command as typed, for the model card and `info`: `python -m convert ...`, or
    `reflex-mlx convert ...` where the one CLI ran it (its name, then every argument)."""
    return " ".join([click.get_current_context().find_root().info_name, shlex.join(sys.argv[1:])])


def _mac_size(ctx, param, value):
    """--fit's value as a Mac's memory in GB, or one line saying which sizes are."""
    if value is None:
        return None
    from .recipes import parse_mac

    try:
        return parse_mac(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.command(help="Convert reflex.pt and its backbone into an MLX model directory.")
@click.option(
    "--checkpoint",
    default=None,
    help="reflex.pt path, or owner/repo[/file] on the hub (default: the release).",
)
@click.option(
    "--backbone",
    default=None,
    help="Backbone: a transformers directory (causal-LM or base model), an mlx-lm directory, "
    f"or a hub id, e.g. {MLX_COMMUNITY_BACKBONE} (default: the checkpoint's backbone_id).",
)
@click.option(
    "--out",
    type=str,
    default=str(Path(DEFAULT_RELEASE_DIR).expanduser()),
    show_default=True,
)
@click.option(
    "--bits",
    type=click.Choice([str(b) for b in BACKBONE_BITS]),
    default=None,
    help="Backbone quantization bits.  [default: 8, from docs/precision.md]",
)
@click.option(
    "--group-size",
    type=click.Choice([str(g) for g in QUANT_GROUP_SIZES]),
    default=None,
    help=f"Backbone quantization group size.  [default: {QUANT_GROUP_SIZE}]",
)
@click.option(
    "--recipe",
    "mixed",
    type=click.Choice(MIXED_RECIPES),
    default=None,
    help="One of mlx-lm's mixed-precision recipes instead of --bits.",
)
@click.option("--no-quantize", is_flag=True, help="Quantize nothing (backbone and adapters stay float).")
@click.option(
    "--dtype",
    type=click.Choice(FLOAT_DTYPES),
    default=None,
    help="Float dtype of the adapter side.  [default: float32, as released]",
)
@click.option(
    "--adapter-bits",
    type=click.Choice([*(str(b) for b in ADAPTER_BITS), "none"]),
    default=None,
    help="Quantize the adapter side's linear layers.  [default: 8]",
)
@click.option(
    "--backbone-dtype",
    type=click.Choice(FLOAT_DTYPES),
    default=None,
    help="dtype of the backbone's unquantized weights.  [default: float16 when quantized, else as stored]",
)
@click.option(
    "--verify/--no-verify",
    default=None,
    help="Compare the conversion with its unquantized source on the 41 eval prompts "
    "(default: on when the source is unquantized and MLX has a GPU).",
)
@click.option(
    "--verify-tasks",
    type=click.IntRange(min=1, max=41),
    default=None,
    help="Verify on the first N evaluation tasks only (a quicker check).",
)
@click.option(
    "--max-resident-gb",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Refuse a recipe whose model would need more memory than this (GB).",
)
@click.option(
    "--no-text-head",
    is_flag=True,
    help="Drop the backbone's untied lm_head (Reflex never reads it; the demo's text mode does).",
)
@click.option(
    "--fit",
    default=None,
    metavar="SIZE",
    callback=_mac_size,
    help="A Mac's memory (8GB, 16GB, 24GB, ...): the best measured recipe whose model fits "
    "its working set, chosen and explained (docs/conversion.md). Replaces the recipe options.",
)
@click.option(
    "--calibration-data",
    default=None,
    metavar="DIR",
    help="The training corpus a calibrated --fit recipe calibrates on "
    "(default: $REFLEX_CORPUS, or the checkout's shared/corpus).",
)
@click.option("--upload-repo", default=None, help="Publish the model folder to this hub repo (OWNER/NAME).")
def main(
    checkpoint,
    backbone,
    out,
    bits,
    group_size,
    mixed,
    no_quantize,
    dtype,
    adapter_bits,
    backbone_dtype,
    verify,
    verify_tasks,
    max_resident_gb,
    no_text_head,
    fit,
    calibration_data,
    upload_repo,
):
    import signal

    # SIGTERM cleans up like Ctrl-C: the half-written folder is removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if fit is not None:
        given = [
            option
            for option, value in (
                ("--bits", bits),
                ("--group-size", group_size),
                ("--recipe", mixed),
                ("--no-quantize", no_quantize),
                ("--dtype", dtype),
                ("--adapter-bits", adapter_bits),
                ("--backbone-dtype", backbone_dtype),
                ("--max-resident-gb", max_resident_gb),
            )
            if value
        ]
        if given:
            raise click.UsageError(f"--fit chooses the recipe and its memory limit: drop {', '.join(given)}")
    elif calibration_data is not None:
        raise click.UsageError("--calibration-data is read only by a calibrated recipe, which --fit chooses")
    recipe = _recipe(bits, group_size, mixed, no_quantize, dtype, backbone_dtype, adapter_bits)
    try:  # each name in one line before any work: a newline, ~nobody, a name the system refuses
        for value, what in ((checkpoint, "--checkpoint"), (backbone, "--backbone")):
            if value is not None:
                user_path(value, what)
        out = user_path(out, "--out directory")
        if calibration_data is not None:
            calibration_data = user_path(calibration_data, "--calibration-data")
            if not (calibration_data / "programs").is_dir():
                raise ValueError(f"--calibration-data {calibration_data}: not a corpus (no programs/ folder)")
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    if upload_repo is not None and upload_repo.count("/") != 1:
        raise click.UsageError(f"--upload-repo takes OWNER/NAME, not {upload_repo!r}")
    try:
        path = convert_checkpoint(
            checkpoint,
            backbone,
            out,
            recipe=recipe,
            verify=verify,
            max_resident_gb=max_resident_gb,
            text_head=not no_text_head,
            upload_repo=upload_repo,
            verify_tasks=verify_tasks,
            sets_backbone=any((bits, group_size, mixed, no_quantize, backbone_dtype)),
            fit=fit,
            calibration_data=calibration_data,
            command=_command_line(),
        )
    except (ConvertError, CheckpointError, OutputError, FileNotFoundError, OSError, ValueError) as err:
        raise click.ClickException(first_line(err)) from None
    except MemoryError:
        raise click.ClickException(
            "out of memory: choose a smaller recipe, or convert with --no-verify"
        ) from None
    click.echo(f"wrote {path}")
