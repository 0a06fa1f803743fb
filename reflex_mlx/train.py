"""`reflex-mlx train`: teach a converted Reflex model new programs, in MLX, over its
frozen backbone (quantized or not: a 4-bit backbone is what a Mac holds).

    reflex-mlx train --model tiny --data gcd.jsonl --rehearse ../shared/corpus --out runs/gcd
    reflex-mlx train --model smol --data my.jsonl --mode lora --lora-rank 16 --out runs/lora
    reflex-mlx train --out runs/gcd --resume            # continue a stopped run
    reflex-mlx run "gcd of 21 and 14" --model runs/gcd  # OUT is a model directory

The objective is the released one (InfoNCE over the whole codebook, as in
reflex_torch/train.py; tests/parity/test_training_parity.py holds the two
equal). Data, split, sample format, schedule and held-out pairs come from
reflex_core/training.py, shared with the torch trainer. Words of the new data
that the codebook lacks get new rows (reflex_core.training.grow_codebook);
old rows keep their place. Modes: full (every Reflex weight but the
codebook's words) or LoRA on the Reflex linear layers (mlx-lm's LoRALinear;
the codebook's embeddings train too, so new rows can learn). OUT holds the
model (config.json, adapters.safetensors, lora.safetensors when kept,
backbone/ linked to the source's files), heldout.json, curve.jsonl and
train_state.safetensors, each written atomically; a checkpoint writes the state
first, so that a run killed at any point either resumes (--resume) or, killed
before its first checkpoint, starts anew with the same command. One process at
a time holds OUT (reflex_core.files.output_lock).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from reflex_core import training
from reflex_core.errors import first_line, one_line, user_path
from reflex_core.files import (
    OutputError,
    append_record,
    keep_records,
    output_lock,
    parse_json,
    remove_temporaries,
    write_atomically,
)
from reflex_core.spec import (
    ADAPTERS_FILE,
    BACKBONE_DIR,
    INFONCE_TEMPERATURE,
    MODEL_CONFIG_FILE,
)
from reflex_core.training import HELDOUT_FILE, DataError

from .model import Reference, ReflexModel, states_array

STATE_FILE = "train_state.safetensors"
STATE_FORMAT = "reflex-mlx-train-state"
CURVE_FILE = "curve.jsonl"
# What a run writes into OUT before its first checkpoint (heldout.json first): a
# folder holding only these a fresh run may take over.
BEFORE_FIRST_CHECKPOINT = (HELDOUT_FILE, CURVE_FILE, BACKBONE_DIR, BACKBONE_DIR + ".partial")


class TrainError(Exception):
    """A one-line reason training cannot go on."""


# ------------------------------------------------------------------ objective


def infonce_loss(
    model: ReflexModel, input_ids, attention_mask, states, targets, temperature=INFONCE_TEMPERATURE
):
    """Cross-entropy of the cosine similarities to the whole codebook, over the
    temperature, against each state's target row (the released objective)."""
    pred = model(input_ids, attention_mask, states)
    return nn.losses.cross_entropy(model.reflex.scores(pred) / temperature, targets, reduction="mean")


def trainable(model: ReflexModel) -> ReflexModel:
    """Full training: freeze what the recipe keeps fixed, the backbone and the codebook's words."""
    model.backbone.freeze()
    model.reflex.freeze(recurse=False, keys=["instr_words"])
    return model


def loss_and_grads_of(model: ReflexModel, temperature=INFONCE_TEMPERATURE):
    """(model, ids, mask, states, targets) -> (loss, grads of every trainable
    parameter, as a nested dict like model.trainable_parameters())."""
    return nn.value_and_grad(model, lambda m, *batch: infonce_loss(m, *batch, temperature))


def loss_and_grads(
    model: ReflexModel, input_ids, attention_mask, states, targets, temperature=INFONCE_TEMPERATURE
):
    """One batch's loss and gradients."""
    return loss_and_grads_of(model, temperature)(model, input_ids, attention_mask, states, targets)


def make_optimizer(lr: float, weight_decay: float) -> optim.Optimizer:
    """AdamW as the torch trainer has it: betas (0.9, 0.95), bias correction, weight
    decay on matrices only (not on norms, biases, gates)."""
    adam = lambda wd: optim.AdamW(lr, betas=[0.9, 0.95], eps=1e-8, weight_decay=wd, bias_correction=True)
    return optim.MultiOptimizer([adam(weight_decay), adam(0.0)], [lambda path, grad: grad.ndim >= 2])


def set_lr(optimizer: optim.Optimizer, lr: float) -> None:
    for part in optimizer.optimizers:
        part.learning_rate = lr


class Trainer:
    """One optimisation step at a time: loss, gradients, clipping, AdamW."""

    def __init__(self, model: ReflexModel, optimizer, temperature: float, grad_clip: float):
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.loss_and_grads = loss_and_grads_of(model, temperature)

    def step(self, batch: training.Batch, lr: float) -> mx.array:
        set_lr(self.optimizer, lr)
        loss, grads = self.loss_and_grads(self.model, *as_arrays(batch))
        grads, _ = optim.clip_grad_norm(grads, self.grad_clip)
        self.optimizer.update(self.model, grads)
        mx.eval(loss, self.model.trainable_parameters(), self.optimizer.state)
        return loss


def as_arrays(batch: training.Batch) -> tuple[mx.array, ...]:
    return (
        mx.array(batch.input_ids.astype(np.int32)),
        mx.array(batch.attention_mask.astype(np.int32)),
        states_array(batch.states),
        mx.array(batch.targets.astype(np.int32)),
    )


# ------------------------------------------------------------------- options


@dataclass(kw_only=True)
class TrainOptions(training.TrainDefaults):
    """Everything a run is made of; the CLI's options, one for one (see `reflex-mlx train
    --help`). The options the torch trainer takes too, and their defaults, are
    reflex_core.training.TrainDefaults'."""

    out: Path
    model: str | None = None
    data: tuple[str, ...] = ()
    rehearse: tuple[str, ...] = ()
    rehearse_fraction: float = 0.5
    families: tuple[str, ...] = ()
    exclude_families: tuple[str, ...] = ()
    skip_failing: bool = False
    mode: str = "full"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: str = "all"
    lora_output: str = "keep"
    backbone_dtype: str = "auto"
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


# What a resumed run may be told anew; everything else comes from the saved run.
RESUME_OVERRIDES = ("steps", "log_every", "eval_every", "save_every")
# Per invocation: when to stop this time, and how to show progress.
NOT_RESUMED = ("time_limit", "stop_at", "progress")


# ---------------------------------------------------------------------- data


@dataclass
class Data:
    samples: training.SampleTable
    heldout: list[dict]  # heldout.json entries, each with its "source"
    pairs: list[training.Pair]  # the fixed eval sample over the new data's held-out programs
    rehearse_pairs: list[training.Pair]
    codebook: list[int]
    new_rows: list[list[int]]  # for each new codebook row, the old rows it starts from
    counts: dict


def read_sources(paths, opts: TrainOptions, say) -> training.Split:
    return training.read_split(
        paths,
        heldout_fraction=opts.heldout_fraction,
        seed=opts.seed,
        eval_filter=opts.eval_filter,
        max_programs=opts.max_programs,
        families=opts.families,
        exclude=opts.exclude_families,
        skip_failing=opts.skip_failing,
        say=say,
    )


def prepare_data(opts: TrainOptions, old_codebook: list[int], tokenizer, config: dict, say) -> Data:
    """The new data (and the rehearsed old data) split, replayed, tokenized; the grown codebook."""
    splits = [("data", read_sources(opts.data, opts, say))]
    if opts.rehearse:
        splits.append(("rehearse", read_sources(opts.rehearse, opts, say)))
    groups, sources, heldout, cycles, held_cycles, counts = [], [], [], [], [], {}
    for index, (name, split) in enumerate(splits):
        for line in training.split_report(split.counts, split.heldout, split.held_cycles):
            say(f"{name}: {line}")
        if not split.train:
            raise TrainError(f"no {name} program is left to train on after the held-out split")
        groups += split.train
        sources += [index] * len(split.train)
        cycles += split.cycles
        heldout += [{**entry, "source": name} for entry in split.heldout]
        held_cycles += split.held_cycles
        counts[name] = split.counts
    words = {w for program in cycles + held_cycles for _, w in program}
    codebook, new_rows = training.grow_codebook(old_codebook, words)
    weights = [1.0 - opts.rehearse_fraction, opts.rehearse_fraction] if opts.rehearse else None
    samples = training.SampleTable(groups, cycles, codebook, tokenizer, config, sources, weights)

    def pairs_of(source: str) -> list[training.Pair]:
        chosen = [i for i, e in enumerate(heldout) if e["source"] == source]
        entries, program_cycles = [heldout[i] for i in chosen], [held_cycles[i] for i in chosen]
        return training.make_pairs(entries, program_cycles, all_prompts=True, max_samples=opts.eval_samples)

    return Data(samples, heldout, pairs_of("data"), pairs_of("rehearse"), codebook, new_rows, counts)


# --------------------------------------------------------------------- model


def resolve_model(name: str | None) -> Path:
    """A converted model directory, a name (tiny, smol) or a hub id, as `reflex-mlx run --model` takes it."""
    from reflex_core import hub
    from reflex_core.backends import BackendError
    from reflex_core.smol import MODEL_NAMES

    from .backend import BACKEND
    from .load import BUNDLED_MODEL

    if name is None or name == "tiny":
        return BUNDLED_MODEL
    try:
        path = user_path(name, "model name")
    except ValueError as err:
        raise TrainError(str(err)) from None
    if name in MODEL_NAMES and not path.is_dir():
        try:
            return BACKEND.named(name) or BUNDLED_MODEL
        except BackendError as err:
            raise TrainError(str(err)) from None
    if hub.is_hub_id(name):
        try:
            return hub.fetch_model(name)
        except (FileNotFoundError, ValueError) as err:
            raise TrainError(str(err)) from None
    if not path.is_dir():
        raise TrainError(f"no model directory at '{one_line(name)}'")
    return path


def load_for_training(model_dir: Path, opts: TrainOptions, say) -> tuple[ReflexModel, object, dict]:
    """The model as inference loads it, then made trainable: the backbone frozen
    (cast to float32 where `backbone_dtype` asks: a float16 backbone is slow on a
    CPU), the Reflex side in float32 (full mode: its quantized linears dequantized)."""
    from mlx_lm.utils import dequantize_model

    from .load import ModelError, load_model

    try:
        model, tokenizer, config = load_model(model_dir)
    except ModelError as err:
        raise TrainError(str(err)) from None
    if config.get("lora"):
        raise TrainError(f"{model_dir} carries a LoRA; fuse it first (train with --lora-output fuse)")
    arrays = tree_flatten(model.backbone.parameters())
    floats = {p.dtype for _, p in arrays if mx.issubdtype(p.dtype, mx.floating)}
    dtype = opts.backbone_dtype
    if dtype == "auto":
        half = floats & {mx.float16, mx.bfloat16}
        dtype = "float32" if half and not mx.is_available(mx.gpu) and not config.get("quantization") else None
    if dtype and dtype != "as-stored":
        cast = getattr(mx, dtype)
        model.backbone.apply(lambda p: p.astype(cast) if mx.issubdtype(p.dtype, mx.floating) else p)
        say(f"backbone computes in {dtype} (stored {', '.join(sorted(str(f) for f in floats))})")
    reflex = model.reflex
    # which adapter layers the model stores quantized: full training writes them back so
    config["_quantized_adapter_paths"] = [
        path for path, m in reflex.named_modules() if isinstance(m, nn.QuantizedLinear)
    ]
    if opts.mode == "full" and config.get("adapter_quantization"):
        dequantize_model(reflex)
        say("adapter side dequantized to float32 for full training")
    reflex.apply(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p)
    mx.eval(model.parameters())
    return model, tokenizer, config


def grow(model: ReflexModel, codebook: list[int], new_rows: list[list[int]], seed: int) -> int:
    """Give the codebook its new words: each new row starts at the mean of the old
    rows `new_rows` names, plus a small seeded perturbation so that new words with
    the same start can part. Old rows keep their place and values."""
    reflex = model.reflex
    old = reflex.instr_table.weight
    if not new_rows:
        return 0
    table = np.array(old.astype(mx.float32))
    starts = np.stack([table[rows].mean(axis=0) for rows in new_rows])
    noise = np.random.default_rng(seed).standard_normal(starts.shape) * 0.02 * table.std()
    weight = mx.array(np.concatenate([table, starts + noise]).astype(np.float32))
    reflex.instr_table = nn.Embedding(*weight.shape)
    reflex.instr_table.weight = weight
    reflex.instr_words = mx.array(np.asarray(codebook, dtype=np.uint32))
    reflex.args = dataclasses.replace(reflex.args, num_instrs=len(codebook))
    return len(new_rows)


def make_trainable(model: ReflexModel, opts: TrainOptions) -> list[str]:
    """Freeze what the mode keeps fixed; returns the LoRA-wrapped layers (none in full mode)."""
    from .lora import apply_lora

    if opts.mode == "full":
        trainable(model)
        return []
    model.backbone.freeze()
    model.reflex.freeze()
    targets = "all" if opts.lora_targets == "all" else opts.lora_targets.split(",")
    try:
        paths = apply_lora(model.reflex, opts.lora_rank, opts.lora_alpha, targets)
    except ValueError as err:
        raise TrainError(str(err)) from None
    model.reflex.instr_table.unfreeze()  # the codebook's embeddings, new rows included, learn
    return paths


def count(tree) -> int:
    return sum(v.size for _, v in tree_flatten(tree))


# -------------------------------------------------------------------- saving


def link_backbone(source: Path, out: Path) -> None:
    """OUT/backbone: the source's files, hard-linked where the file system allows (the
    backbone is frozen, so a 4 GB backbone is not copied), else copied."""
    target = out / BACKBONE_DIR
    if target.is_dir():
        return
    tmp = out / (BACKBONE_DIR + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, tmp, copy_function=link)
    os.replace(tmp, target)


def output_weights(model: ReflexModel, opts: TrainOptions, config: dict) -> tuple[dict, dict, dict | None]:
    """(adapters.safetensors weights, lora.safetensors weights, adapter_quantization) as OUT stores them."""
    from .lora import LoRALinear, base_weights, lora_weights

    reflex = model.reflex
    if opts.mode == "lora" and opts.lora_output == "keep":
        return base_weights(reflex), lora_weights(reflex), config.get("adapter_quantization")
    weights = base_weights(reflex)
    for path, module in reflex.named_modules():
        if isinstance(module, LoRALinear):  # merged (re-quantized where the layer was)
            weights.update({f"{path}.{k}": v for k, v in tree_flatten(module.fuse().parameters())})
    quantization = config.get("adapter_quantization")
    if opts.mode == "full" and quantization:  # back to the source's adapter precision
        stored_quantized = set(config.get("_quantized_adapter_paths", ()))
        for path, module in reflex.named_modules():
            if isinstance(module, nn.Linear) and path in stored_quantized:
                q = nn.QuantizedLinear.from_linear(module, quantization["group_size"], quantization["bits"])
                weights.update({f"{path}.{k}": v for k, v in tree_flatten(q.parameters())})
    return weights, {}, quantization


def write_model(out: Path, model: ReflexModel, config: dict, opts: TrainOptions, record: dict) -> None:
    from .lora import LORA_FILE

    weights, lora, quantization = output_weights(model, opts, config)
    keep_lora = bool(lora)
    new_config = {k: v for k, v in config.items() if not k.startswith("_")}
    new_config.update(
        {
            "num_instrs": int(model.reflex.instr_words.shape[0]),
            "adapter_dtype": "float32",
            "adapter_quantization": quantization,
            "lora": {"rank": opts.lora_rank, "alpha": opts.lora_alpha, "targets": opts.lora_targets}
            if keep_lora
            else None,
            "training": record,
        }
    )
    new_config.pop("fidelity", None)  # measured on the source model, not on this one
    new_config.pop("memory", None)
    write_atomically(out / ADAPTERS_FILE, lambda tmp: _save(tmp, weights))
    if keep_lora:
        write_atomically(out / LORA_FILE, lambda tmp: _save(tmp, lora))
    else:
        (out / LORA_FILE).unlink(missing_ok=True)
    write_atomically(out / MODEL_CONFIG_FILE, json.dumps(new_config, indent=2) + "\n")
    from reflex_core.folder import write_manifest

    write_manifest(out)  # the linked backbone is hashed once per run (same inode), then remembered


def _save(path: Path, arrays: dict, metadata: dict | None = None) -> None:
    # mx.save_safetensors adds the suffix to a name without it: give it a real one
    target = path.with_name(path.name + ".safetensors")
    try:
        mx.save_safetensors(str(target), arrays, metadata={"format": "mlx", **(metadata or {})})
        os.replace(target, path)
    finally:
        target.unlink(missing_ok=True)


def write_state(out: Path, step: int, model: ReflexModel, optimizer, rng, opts: TrainOptions) -> None:
    arrays = {f"param.{k}": v for k, v in tree_flatten(model.reflex.trainable_parameters())}
    arrays.update({f"opt.{k}": v for k, v in tree_flatten(optimizer.state)})
    metadata = {
        "format": STATE_FORMAT,
        "step": str(step),
        "sampler": json.dumps(training.sampler_state(rng)),
        "options": json.dumps(opts.record()),
    }
    write_atomically(out / STATE_FILE, lambda tmp: _save(tmp, arrays, metadata))


def read_state(out: Path) -> tuple[dict, dict]:
    """(arrays, metadata) of OUT/train_state.safetensors, checked: its format, step,
    sampler and options (saved_options), and arrays only under param. and opt.;
    anything else is one line naming the file."""
    path = out / STATE_FILE
    shown = one_line(path)
    if not path.is_file():
        raise TrainError(f"--resume but no {shown}: no checkpoint was saved; without --resume it starts anew")
    try:
        arrays, metadata = mx.load(str(path), return_metadata=True)
    except Exception as err:  # a truncated or foreign file: one line
        raise TrainError(f"cannot read {shown}: {one_line(first_line(err), 200)}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != STATE_FORMAT:
        raise TrainError(f"{shown} is not a reflex-mlx training state")
    for key in ("step", "sampler", "options"):
        if not isinstance(metadata.get(key), str):
            raise TrainError(f"{shown}: no {key} recorded")
    step = metadata["step"]
    if not (step.isascii() and step.isdigit() and len(step) <= 12):
        raise TrainError(f"{shown}: its step '{one_line(metadata['step'], 40)}' is not a step number")
    try:
        training.restore_sampler(parse_json(metadata["sampler"]))
    except (ValueError, TypeError, KeyError, OverflowError):
        raise TrainError(f"{shown}: its sampler state cannot be restored") from None
    saved_options(metadata, path)
    stray = next((k for k in arrays if not k.startswith(("param.", "opt."))), None)
    if stray is not None:
        raise TrainError(f"{shown}: unknown array '{one_line(stray, 60)}'")
    return arrays, metadata


# The options a saved run may record, by the type their TrainOptions field has
# (integers within 64 bits, numbers finite: a value past them cannot be computed with).
_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) < v < 2**63
_OPTION_TYPES = {
    "int": _is_int,
    "float": lambda v: _is_int(v) or (isinstance(v, float) and math.isfinite(v)),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "Path": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, dict),
    "tuple[str, ...]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "dict": "an object"}
_TYPE_WORDS.update({"str": "a string", "Path": "a string", "tuple[str, ...]": "a list of strings"})
# Options with a fixed set of values (the CLI's choices).
BACKBONE_DTYPES = ("auto", "as-stored", "float32", "float16", "bfloat16")
_OPTION_CHOICES = {
    "mode": ("full", "lora"),
    "lora_output": ("keep", "fuse"),
    "eval_filter": tuple(training.EVAL_FILTERS),
    "backbone_dtype": BACKBONE_DTYPES,
}
# Counts that must be at least 1 (or 0), as the CLI's ranges have them.
_AT_LEAST = {"steps": 1, "batch": 1, "lora_rank": 1, "warmup": 0, "log_every": 1, "eval_every": 1}
_AT_LEAST.update({"eval_samples": 1, "eval_batch": 1, "save_every": 1, "max_programs": 1, "seed": 0})


def saved_options(metadata: dict, path: Path) -> dict:
    """The options a saved run recorded, each a TrainOptions field of its type and
    range; TrainError in one line naming the file and the option otherwise."""
    shown = one_line(path)
    try:
        saved = parse_json(metadata["options"])
    except ValueError as err:
        raise TrainError(f"{shown}: its options are not JSON ({err})") from None
    if not isinstance(saved, dict):
        raise TrainError(f"{shown}: its options are not a JSON object")
    fields = {f.name: f.type for f in dataclasses.fields(TrainOptions)}
    for name, value in saved.items():
        if name not in fields:
            raise TrainError(f"{shown}: unknown option '{one_line(name, 60)}'")
        kind = fields[name]
        optional = kind.endswith(" | None")
        kind = kind.removesuffix(" | None")
        if value is None and optional:
            continue
        if not _OPTION_TYPES[kind](value):
            raise TrainError(f"{shown}: option '{name}' must be {_TYPE_WORDS[kind]}")
        if name in _OPTION_CHOICES and value not in _OPTION_CHOICES[name]:
            raise TrainError(f"{shown}: option '{name}' must be one of {', '.join(_OPTION_CHOICES[name])}")
        if name in _AT_LEAST and value < _AT_LEAST[name]:
            raise TrainError(f"{shown}: option '{name}' must be at least {_AT_LEAST[name]}")
    return saved


def _kind(value) -> str:
    """An array's dtype and shape as a message says them: float32[64]."""
    dtype = str(getattr(value, "dtype", type(value).__name__)).rsplit(".", 1)[-1]
    return f"{dtype}{list(getattr(value, 'shape', ()))}"


def restore_state(model: ReflexModel, optimizer, arrays: dict, path: Path) -> None:
    """The saved weights and optimizer state, each array where the fresh run has one
    of the same shape and dtype (a state from another model is refused in one line)."""
    shown = one_line(path)
    for prefix, tree in (("param.", model.reflex.trainable_parameters()), ("opt.", optimizer.state)):
        want = dict(tree_flatten(tree))
        have = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        for key in sorted(set(want) ^ set(have)):
            side = "lacks" if key in want else "has an array the model has no place for:"
            raise TrainError(f"{shown} {side} '{one_line(prefix + key, 80)}'")
        for key, value in have.items():
            if _kind(value) != _kind(want[key]):
                name = one_line(prefix + key, 80)
                raise TrainError(f"{shown}: '{name}' is {_kind(value)}, the model's {_kind(want[key])}")
    model.reflex.update(
        tree_unflatten([(k[len("param.") :], v) for k, v in arrays.items() if k.startswith("param.")])
    )
    optimizer.state = tree_unflatten(
        [(k[len("opt.") :], v) for k, v in arrays.items() if k.startswith("opt.")]
    )


def log(out: Path, record: dict) -> None:
    append_record(out / CURVE_FILE, record)


# ------------------------------------------------------------- taking over OUT


def take_over(out: Path, say) -> None:
    """A fresh run's OUT: absent, empty, or holding only what a run stopped before its
    first checkpoint wrote (removed here, so that nothing of it mixes in). Anything
    else, a saved run or a model above all, is refused: nothing is overwritten."""
    if not out.exists():
        return
    if not out.is_dir():
        raise TrainError(f"{out} is not a folder: choose another --out")
    entries = {entry.name: entry for entry in out.iterdir()}
    if not entries:
        return
    own = {HELDOUT_FILE, CURVE_FILE}
    partial = all(
        name in BEFORE_FIRST_CHECKPOINT
        and not entry.is_symlink()
        and (entry.is_file() if name in own else entry.is_dir())
        for name, entry in entries.items()
    )
    if not partial or HELDOUT_FILE not in entries:
        raise TrainError(f"{out} already holds files: --resume to continue that run, or another --out")
    for entry in entries.values():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    say(f"starting anew in {out}: it held only a run stopped before its first checkpoint")


def trim_curve(out: Path, step: int) -> None:
    """Keep curve.jsonl's records up to the resumed step: a run killed after its last
    checkpoint had logged steps that the resumed run does again."""
    keep_records(out / CURVE_FILE, lambda record: type(record.get("step")) is int and record["step"] <= step)


# -------------------------------------------------------------------- eval


def top1(model: ReflexModel, tokenizer, config: dict, pairs, batch: int = 64) -> float:
    """Held-out top-1 (reflex_core.training.top1) through the Reference runner, each
    batch right-padded to its longest prompt; NaN with no pairs."""
    if not pairs:
        return float("nan")
    runner = Reference(model, tokenizer.pad_token_id or 0)
    return training.top1(runner, tokenizer, config, pairs, batch)[0] / len(pairs)


# --------------------------------------------------------------------- main


def train(opts: TrainOptions, given: set[str] = frozenset(), say=None) -> dict:
    """Run (or resume) a training run, holding OUT's lock; returns a summary. Raises
    TrainError in one line (also when another process holds OUT)."""
    try:
        with output_lock(opts.out, "train"):
            return _train(opts, given, say)
    except OutputError as err:
        raise TrainError(str(err)) from None


def _train(opts: TrainOptions, given: set[str], say) -> dict:
    say = say or (lambda *a: print(*a, file=sys.stderr, flush=True))
    started = time.time()
    out = Path(opts.out).expanduser()
    resume = bool(opts.extra.get("resume"))
    saved_arrays, step, rng = None, 0, None
    remove_temporaries(out)
    if resume:
        saved_arrays, metadata = read_state(out)
        saved = saved_options(metadata, out / STATE_FILE)
        fresh = opts
        opts = TrainOptions(**{**saved, "out": out, "extra": {"resume": True}})
        for name in RESUME_OVERRIDES:
            if name in given:
                setattr(opts, name, getattr(fresh, name))
        for name in NOT_RESUMED:
            setattr(opts, name, getattr(fresh, name))
        opts.data, opts.rehearse = tuple(opts.data), tuple(opts.rehearse)
        opts.families, opts.exclude_families = tuple(opts.families), tuple(opts.exclude_families)
        step = int(metadata["step"])
        rng = training.restore_sampler(parse_json(metadata["sampler"]))
    else:
        take_over(out, say)
        if not opts.data:
            raise TrainError("no training data: give --data (a corpus folder or a JSONL file)")
    check_options(opts)
    if opts.min_lr is None:
        opts.min_lr = opts.lr / 100

    model_dir = resolve_model(opts.model)
    model, tokenizer, config = load_for_training(model_dir, opts, say)
    old_codebook = np.array(model.reflex.instr_words).tolist()
    try:
        data = prepare_data(opts, old_codebook, tokenizer, config, say)
    except DataError as err:
        raise TrainError(str(err)) from None
    added = grow(model, data.codebook, data.new_rows, opts.seed)
    lora_paths = make_trainable(model, opts)
    s = data.samples
    say(
        f"train: {s.num_prompts} distinct prompts (longest {s.max_prompt_len} tokens, {s.truncated} "
        f"truncated), {len(s)} samples; codebook {len(old_codebook)} + {added} new rows"
    )
    say(
        f"model {model_dir}: backbone {count(model.backbone.parameters()) / 1e6:.2f}M params (frozen), "
        f"reflex {count(model.reflex.parameters()) / 1e6:.2f}M, trainable "
        f"{count(model.reflex.trainable_parameters()) / 1e6:.3f}M ({opts.mode}"
        + (f", rank {opts.lora_rank} on {len(lora_paths)} layers" if lora_paths else "")
        + f"); device mlx {'gpu' if mx.default_device() == mx.gpu else 'cpu'}"
    )

    out.mkdir(parents=True, exist_ok=True)
    heldout_record = {"seed": opts.seed, "fraction": opts.heldout_fraction, "counts": data.counts}
    write_atomically(out / HELDOUT_FILE, json.dumps({**heldout_record, "programs": data.heldout}, indent=1))
    link_backbone(model_dir / config.get("backbone", BACKBONE_DIR), out)

    optimizer = make_optimizer(opts.lr, opts.weight_decay)
    optimizer.init(model.trainable_parameters())
    if saved_arrays is not None:
        restore_state(model, optimizer, saved_arrays, out / STATE_FILE)
        trim_curve(out, step)
        say(f"resumed at step {step}")
    rng = rng or training.sampler(opts.seed)
    trainer = Trainer(model, optimizer, opts.temperature, opts.grad_clip)
    record = {
        "source_model": str(model_dir),
        "new_codebook_rows": added,
        "codebook_rows_before": len(old_codebook),
        "options": opts.record(),
    }

    def evaluate() -> dict:
        result = {"step": step, "heldout_top1": top1(model, tokenizer, config, data.pairs, opts.eval_batch)}
        if data.rehearse_pairs:
            result["rehearse_top1"] = top1(model, tokenizer, config, data.rehearse_pairs, opts.eval_batch)
        result["elapsed"] = time.time() - started
        log(out, result)
        line = f"step {step} | held-out top-1 {100 * result['heldout_top1']:.2f}% ({len(data.pairs)} pairs)"
        if "rehearse_top1" in result:
            line += f" | rehearsed data {100 * result['rehearse_top1']:.2f}%"
        say(line)
        return result

    def save() -> None:  # the state first: from it a killed save resumes and writes the model
        write_state(out, step, model, optimizer, rng, opts)
        write_model(out, model, config, opts, {**record, "step": step})

    bar = None
    if opts.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=opts.steps, initial=step, desc="train", unit="step", leave=False)
        say = lambda *a, _say=say: bar.write(" ".join(str(x) for x in a), file=sys.stderr)
    last, stop_reason, window = None, "done", (time.time(), step)
    if step == 0 and data.pairs:
        last = evaluate()
    try:
        while step < opts.steps:
            if reason := training.stop_reason(started, step, opts.time_limit, opts.stop_at):
                stop_reason = reason
                break
            lr = training.lr_at(step, lr=opts.lr, min_lr=opts.min_lr, warmup=opts.warmup, steps=opts.steps)
            loss = trainer.step(s.draw(opts.batch, rng), lr).item()
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if step % opts.log_every == 0 or step == 1:
                rate = (step - window[1]) / max(time.time() - window[0], 1e-9)
                log(out, {"step": step, "loss": loss, "lr": lr, "steps_per_s": rate})
                say(f"step {step}/{opts.steps} | loss {loss:.4f} | lr {lr:.2e} | {rate:.2f} steps/s")
                window = (time.time(), step)
            if step % opts.eval_every == 0 and data.pairs:
                last = evaluate()
            if step % opts.save_every == 0:
                save()
            if step % opts.eval_every == 0 or step % opts.save_every == 0:
                window = (time.time(), step)
    except (MemoryError, RuntimeError) as err:
        text = str(err)
        if isinstance(err, MemoryError) or "alloc" in text.lower() or "memory" in text.lower():
            raise TrainError(
                f"out of memory at step {step + 1} with --batch {opts.batch}: try a smaller --batch "
                "or --mode lora (the last checkpoint, if any, is intact: --resume)"
            ) from None
        raise
    finally:
        if bar is not None:
            bar.close()
    if data.pairs and (last is None or last["step"] != step):
        last = evaluate()
    save()
    say(
        f"stopped at step {step}/{opts.steps} ({stop_reason}); wrote {out} "
        f"({time.time() - started:.0f}s): reflex-mlx run PROMPT --model {out}"
    )
    return {"step": step, "out": out, "new_rows": added, "last_eval": last, "model": model}


# The numeric options' ranges: a value outside them cannot train (a NaN rate, no
# programs left to train on) and would otherwise fail deep inside the run.
_RULES = {
    "above 0": lambda v: v > 0,
    "of at least 0": lambda v: v >= 0,
    "in [0, 1)": lambda v: 0 <= v < 1,
}
_NUMBER_RANGES = {
    "rehearse_fraction": "in [0, 1)",
    "heldout_fraction": "in [0, 1)",
    "lora_alpha": "above 0",
    "lr": "above 0",
    "min_lr": "of at least 0",
    "weight_decay": "of at least 0",
    "grad_clip": "above 0",
    "temperature": "above 0",
    "time_limit": "of at least 0",  # 0: stop at once, saving what the model is
}


def check_options(opts: TrainOptions) -> None:
    if opts.mode not in ("full", "lora"):
        raise TrainError(f"--mode must be full or lora, not {opts.mode!r}")
    if opts.mode == "full" and opts.lora_output != "keep":
        raise TrainError("--lora-output applies to --mode lora only")
    for name, rule in _NUMBER_RANGES.items():
        value = getattr(opts, name)
        if value is not None and not (math.isfinite(value) and _RULES[rule](value)):
            raise TrainError(f"--{name.replace('_', '-')} must be a finite number {rule}, not {value}")
    for path in (*opts.data, *opts.rehearse):  # before minutes of model loading
        try:
            found = user_path(path, "training data path").exists()
        except ValueError as err:
            raise TrainError(str(err)) from None
        if not found:
            raise TrainError(f"no training data at '{one_line(path)}'")
