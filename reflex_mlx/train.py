"""`reflex-mlx train`: teach a converted Reflex model new programs, in MLX, over its
frozen backbone (quantized or not: a 4-bit backbone is what a Mac holds).

    reflex-mlx train --model tiny --data gcd.jsonl --rehearse ../shared/corpus --out runs/gcd
    reflex-mlx train --model smol --data my.jsonl --mode lora --lora-rank 16 --out runs/lora
    reflex-mlx train --out runs/gcd --resume            # continue a stopped run
    reflex-mlx run "gcd of 21 and 14" --model runs/gcd  # OUT is a model directory

The objective is the released one (InfoNCE over the whole codebook, as in
reflex_torch/train.py; tests/parity/test_training_parity.py holds the two
equal). Data, split, sample format, options, schedule, held-out pairs and the
training loop itself (reflex_core.training.fit, over this module's `Run`) come
from reflex_core/training.py, shared with the torch trainer. Words of the new data
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
from reflex_core.errors import ReflexError, first_line, one_line, user_path
from reflex_core.files import (
    parse_json,
    write_atomically,
)
from reflex_core.spec import (
    ADAPTERS_FILE,
    BACKBONE_DIR,
    INFONCE_TEMPERATURE,
    MODEL_CONFIG_FILE,
)
from reflex_core.training import CURVE_FILE, HELDOUT_FILE, DataError, TrainError

from .model import Reference, ReflexModel, states_array

STATE_FILE = "train_state.safetensors"
STATE_FORMAT = "reflex-mlx-train-state"
# What a run writes into OUT before its first checkpoint (heldout.json first): a
# folder holding only these a fresh run may take over.
BEFORE_FIRST_CHECKPOINT = (HELDOUT_FILE, CURVE_FILE, BACKBONE_DIR, BACKBONE_DIR + ".partial")


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
    """One optimisation step at a time: loss, gradients, clipping, AdamW; one
    process (rank 0 of 1) of reflex_core.training.fit's Steps."""

    rank, world = 0, 1

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

    def mean(self, loss: mx.array) -> float:
        return loss.item()

    def barrier(self) -> None:
        pass


def as_arrays(batch: training.Batch) -> tuple[mx.array, ...]:
    return (
        mx.array(batch.input_ids.astype(np.int32)),
        mx.array(batch.attention_mask.astype(np.int32)),
        states_array(batch.states),
        mx.array(batch.targets.astype(np.int32)),
    )


# ------------------------------------------------------------------- options


@dataclass(kw_only=True)
class TrainOptions(training.TrainDefaults, training.MLXOptions):
    """Everything a run is made of: the options both trainers take and the MLX
    trainer's own (reflex_core.training), each with its one default."""

    out: Path
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


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
    """A converted model directory, a name (tiny, smol) or a hub id, as `reflex-mlx run --model`
    takes it (reflex_core.runs.locate); None: the bundled reflex-tiny."""
    from reflex_core.runs import locate

    from . import BUNDLED_MODEL

    if name is None:
        return BUNDLED_MODEL
    try:
        _, path = locate(name, backend="mlx")
    except ReflexError as err:
        raise TrainError(str(err)) from None
    return path or BUNDLED_MODEL


def load_for_training(model_dir: Path, opts: TrainOptions, say) -> tuple[ReflexModel, object, dict]:
    """The model as inference loads it, then made trainable: the backbone frozen
    (cast to float32 where `backbone_dtype` asks: a float16 backbone is slow on a
    CPU), the Reflex side in float32 (full mode: its quantized linears dequantized)."""
    from mlx_lm.utils import dequantize_model

    from .loader import ModelError, load_model

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


def saved_options(metadata: dict, path: Path) -> dict:
    """The options a saved run recorded (reflex_core.training.saved_options)."""
    shown = one_line(path)
    try:
        saved = parse_json(metadata["options"])
    except ValueError as err:
        raise TrainError(f"{shown}: its options are not JSON ({err})") from None
    return training.saved_options(saved, TrainOptions, shown)


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


# -------------------------------------------------------------------- eval


def top1(model: ReflexModel, tokenizer, config: dict, pairs, batch: int = 64) -> float:
    """Held-out top-1 (reflex_core.training.top1) through the Reference runner, each
    batch right-padded to its longest prompt; NaN with no pairs."""
    if not pairs:
        return float("nan")
    runner = Reference(model, tokenizer.pad_token_id or 0)
    return training.top1(runner, tokenizer, config, pairs, batch)[0] / len(pairs)


class Run(Trainer):
    """The steps of one run, with its evaluation and checkpoints (training.fit's Steps)."""

    def __init__(self, model, optimizer, opts: TrainOptions, data: Data, tokenizer, config, record, step):
        super().__init__(model, optimizer, opts.temperature, opts.grad_clip)
        self.opts, self.data, self.tokenizer, self.config, self.record = opts, data, tokenizer, config, record
        self.done = step

    def step(self, batch: training.Batch, lr: float) -> mx.array:
        try:
            loss = super().step(batch, lr)
        except (MemoryError, RuntimeError) as err:
            text = str(err).lower()
            if isinstance(err, MemoryError) or "alloc" in text or "memory" in text:
                raise TrainError(
                    f"out of memory at step {self.done + 1} with --batch {self.opts.batch}: try a smaller "
                    "--batch or --mode lora (the last checkpoint, if any, is intact: --resume)"
                ) from None
            raise
        self.done += 1
        return loss

    def evaluate(self) -> dict | None:
        data, opts = self.data, self.opts
        if not data.pairs:
            return None
        score = lambda pairs: top1(self.model, self.tokenizer, self.config, pairs, opts.eval_batch)
        result = {"heldout_top1": score(data.pairs), "n": len(data.pairs)}
        if data.rehearse_pairs:
            result["rehearse_top1"] = score(data.rehearse_pairs)
        return result

    def save(
        self, step: int, rng
    ) -> None:  # the state first: from it a killed save resumes and writes the model
        write_state(self.opts.out, step, self.model, self.optimizer, rng, self.opts)
        write_model(self.opts.out, self.model, self.config, self.opts, {**self.record, "step": step})


# --------------------------------------------------------------------- main


def train(opts: TrainOptions, given: set[str] = frozenset(), say=None) -> dict:
    """Run (or resume) a training run, holding OUT's lock; returns a summary. Raises
    TrainError in one line (also when another process holds OUT)."""
    with training.holding(opts.out):
        return _train(opts, given, say)


def _train(opts: TrainOptions, given: set[str], say) -> dict:
    say = say or (lambda *a: print(*a, file=sys.stderr, flush=True))
    started = time.time()
    out = opts.out = Path(opts.out).expanduser()
    saved_arrays, step, rng = None, 0, None
    if opts.extra.get("resume"):
        saved_arrays, metadata = read_state(out)
        fresh = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
        merged = training.resumed_options(saved_options(metadata, out / STATE_FILE), fresh, given)
        tuples = {name: tuple(merged[name]) for name in ("data", "rehearse", "families", "exclude_families")}
        opts = TrainOptions(**{**merged, **tuples, "out": out, "extra": {"resume": True}})
        step = int(metadata["step"])
        rng = training.restore_sampler(parse_json(metadata["sampler"]))
    else:
        take_over(out, say)
        if not opts.data:
            raise TrainError("no training data: give --data (a corpus folder or a JSONL file)")
    check_options(opts)

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
    training.write_heldout(out, opts.seed, opts.heldout_fraction, data.counts, data.heldout)
    link_backbone(model_dir / config.get("backbone", BACKBONE_DIR), out)

    optimizer = make_optimizer(opts.lr, opts.weight_decay)
    optimizer.init(model.trainable_parameters())
    if saved_arrays is not None:
        restore_state(model, optimizer, saved_arrays, out / STATE_FILE)
    record = {
        "source_model": str(model_dir),
        "new_codebook_rows": added,
        "codebook_rows_before": len(old_codebook),
        "options": opts.record(),
    }
    run = Run(model, optimizer, opts, data, tokenizer, config, record, step)
    written = f"{out}: reflex-mlx run PROMPT --model {out}"
    result = training.fit(
        run,
        s,
        opts,
        out,
        step=step,
        rng=rng,
        started=started,
        say=say,
        progress=opts.progress,
        written=written,
    )
    return {**result, "out": out, "new_rows": added, "model": model}


def check_options(opts: TrainOptions) -> None:
    """The options' ranges and choices (reflex_core.training), and the data named, before
    minutes of model loading."""
    if opts.mode == "full" and opts.lora_output != "keep":
        raise TrainError("--lora-output applies to --mode lora only")
    training.check_values(vars(opts), TrainOptions)
    for path in (*opts.data, *opts.rehearse):
        try:
            found = user_path(path, "training data path").exists()
        except ValueError as err:
            raise TrainError(str(err)) from None
        if not found:
            raise TrainError(f"no training data at '{one_line(path)}'")
