"""Reflex-objective distillation of a quantized backbone (a calibrated 4-bit recipe).

mlx-lm quantizes the backbone (reflex_mlx.quantize.quantize_backbone); then only
the quantized layers' `scales` and `biases` learn, their packed weights frozen,
so that the student's Reflex prediction follows the float teacher's on corpus
states:

* the head's embedding: 1 - cosine(student, teacher) (decoding is by cosine, so
  only the direction counts);
* the codebook distribution: KL(teacher || student) of the softmax of the
  cosine scores over the training temperature (the released InfoNCE's logits).

Why scales and biases rather than a low-rank correction: the result stays in
mlx-lm's quantized layout (the same QuantizedLinear modules, the same bytes), so
the converter saves it and reflex_mlx/loader.py loads it unchanged and it costs no
memory; a low-rank correction would add float matrices per layer (resident
memory, a loader change) or, fused back, be rounded away by re-quantization.

The teacher runs first, on the float backbone, and its predictions (one
embed_dim vector per sample) are all that is kept of it: the student is the
same backbone quantized in place, so the float and quantized copies are never
held together. Calibration data are convert.calibrate's: the training
programs' prompts and machine states, never an evaluation prompt nor a near
copy nor a held-out program of the checkpoint (heldout.json beside it); a tenth
of its programs is kept apart to measure the loss before and after.
"""

from __future__ import annotations

import math
import random
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from reflex_core import training
from reflex_core.spec import INFONCE_TEMPERATURE

# Defaults sized for reflex-smol on one H200 within about two minutes: the teacher's
# 2048 cycles (prompts padded to 96 tokens) and 300 steps of 16 forward and backward
# come to about 0.36 PFLOP (convert.calibrate.calibration_flops), some seconds at even
# 10 % of the GPU's float16 rate; at this size the step is kernel-launch bound
# (~30 layers x ~60 kernels forward and backward, ~20-50 ms), so 300 steps are
# 6-15 s. Every one is an option of `distill`.
DEFAULT_STEPS = 300
DEFAULT_BATCH = 16
DEFAULT_SAMPLES = 2048  # calibration cycles (convert.calibrate.DEFAULT_SAMPLES): the teacher runs each once
DEFAULT_LR = 1e-3  # per step, in units of each group's own quantization step (see `_Params`)
# Adam is blind to a constant factor on the loss; the factor keeps a float16 backbone's
# small activation gradients above float16's smallest numbers. A step whose gradients
# overflow (inf or nan) is skipped and the factor halved, as mixed-precision training does.
LOSS_SCALE = 1024.0
MIN_LOSS_SCALE = 1.0 / 1024  # below this an overflow is not the scale's doing: training stops
CHECK_FRACTION = 0.1  # of the calibration programs, kept apart for the before/after check


class DistillError(ValueError):
    """A one-line reason distillation cannot run."""


# ------------------------------------------------------------------------ data


def split_by_program(data, fraction: float = CHECK_FRACTION, seed: int = 0) -> tuple[list[int], list[int]]:
    """(fit, check) sample indices of convert.calibrate's CalibrationData: the
    samples of a seeded `fraction` of its distinct programs kept apart, so that
    the check measures states and prompts of programs never trained on."""
    programs = sorted(set(data.programs))
    if len(programs) < 2:
        raise DistillError("distillation needs calibration samples of at least two programs")
    n_check = max(1, round(fraction * len(programs)))
    held = set(random.Random(seed).sample(programs, n_check))
    fit = [i for i, p in enumerate(data.programs) if p not in held]
    check = [i for i, p in enumerate(data.programs) if p in held]
    return fit, check


def _batches(data, index: list[int], batch: int) -> list[tuple[mx.array, ...]]:
    """The samples at `index` as (ids, mask, states) batches of at most `batch`, each
    prompt as calibration padded it (to max_instr_tokens, as the reference reads it)."""
    out = []
    for start in range(0, len(index), batch):
        chosen = np.asarray(index[start : start + batch])
        tokens = data.tokens[chosen]
        mask = (np.arange(tokens.shape[1])[None, :] < data.lengths[chosen][:, None]).astype(np.int32)
        out.append(
            (
                mx.array(tokens.astype(np.int32)),
                mx.array(mask),
                mx.array(data.states[chosen].astype(np.uint32)),
            )
        )
    return out


# ---------------------------------------------------------------- objective


def unit(x: mx.array) -> mx.array:
    x = x.astype(mx.float32)
    return x / mx.linalg.norm(x, axis=-1, keepdims=True)


def distill_loss(reflex, student: mx.array, teacher: mx.array, temperature: float) -> tuple[mx.array, ...]:
    """(total, KL part, cosine part), each a batch mean: KL(teacher || student) of the
    codebook distributions at `temperature`, plus 1 - cosine of the embeddings."""
    log_p = lambda pred: nn.log_softmax(reflex.scores(pred) / temperature, axis=-1)
    kl = nn.losses.kl_div_loss(log_p(student), log_p(teacher), axis=-1, reduction="mean")
    cos = 1.0 - (unit(student) * unit(teacher)).sum(axis=-1).mean()
    return kl + cos, kl, cos


# --------------------------------------------------------------- parameters


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's affine-quantized modules below 8 bits (linears and embeddings)."""
    return [
        (path, m)
        for path, m in model.named_modules()
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        and getattr(m, "mode", "affine") == "affine"
        and m.bits < 8
    ]


class _Params:
    """The trainable view of the quantized layers' scales and biases.

    Each group's dequantized value is scale * q + bias. Training moves
    scale -> s0 * (1 + a) and bias -> b0 + s0 * c with a, c float32 starting at 0:
    every group's change is in units of its own quantization step, so one
    learning rate suits layers whose scales differ by orders of magnitude (plain
    Adam on the raw values moves each by about lr whatever its size). The stored
    dtype (float16 as the recipes store them) is written back after each step."""

    def __init__(self, layers: list[tuple[str, nn.Module]]):
        self.layers = layers
        self.s0 = {p: m.scales.astype(mx.float32) for p, m in layers}
        self.b0 = {p: m.biases.astype(mx.float32) for p, m in layers}
        self.dtype = {p: m.scales.dtype for p, m in layers}
        self.delta = {p: {"a": mx.zeros_like(self.s0[p]), "c": mx.zeros_like(self.s0[p])} for p, _ in layers}

    def values(self, delta: dict) -> list[tuple[str, mx.array]]:
        out = []
        for path, _ in self.layers:
            s0, d = self.s0[path], delta[path]
            out.append((f"{path}.scales", (s0 * (1 + d["a"])).astype(self.dtype[path])))
            out.append((f"{path}.biases", (self.b0[path] + s0 * d["c"]).astype(self.dtype[path])))
        return out

    def count(self) -> int:
        return sum(self.s0[p].size * 2 for p, _ in self.layers)


# --------------------------------------------------------------------- run


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr)


def _student_reflex(reflex, recipe):
    """The adapter side as the converted model will hold it: the recipe's dtype and
    quantized linears applied to a copy (the caller's `reflex` is left as it is),
    so that the backbone learns around the adapters' own rounding too."""
    from reflex_mlx.fast import cast_reflex
    from reflex_mlx.quantize import quantize_adapters

    already = any(isinstance(m, nn.QuantizedLinear) for _, m in reflex.named_modules())
    if already or (recipe.adapter_dtype == "float32" and not recipe.adapter_bits):
        return reflex
    student = cast_reflex(reflex, mx.float32)
    quantize_adapters(student, recipe)
    student.eval()
    mx.eval(student.parameters())
    return student


def distill(
    model: nn.Module,
    reflex,
    recipe,
    data,
    progress: bool = True,
    *,
    steps: int | None = None,
    batch: int | None = None,
    lr: float | None = None,
    temperature: float = INFONCE_TEMPERATURE,
    seed: int = 0,
) -> dict:
    """Quantize the float mlx-lm `model` by `recipe` (in place), then train its
    quantized scales and biases against the float model's Reflex predictions on
    `data`; returns a summary for config.json (steps, losses before and after on
    the held-apart check programs, agreement of the chosen codebook row, seconds).
    `reflex` (the Reflex modules as converted, float) is read, never changed."""
    from reflex_mlx.model import ReflexModel
    from reflex_mlx.quantize import quantize_backbone

    steps = DEFAULT_STEPS if steps is None else steps  # defaults read here: a caller may set them
    batch = DEFAULT_BATCH if batch is None else batch
    lr = DEFAULT_LR if lr is None else lr
    if not recipe.quantizes_backbone:
        raise DistillError("distillation trains a quantized backbone: the recipe quantizes none")
    for name, value in (("steps", steps), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise DistillError(f"distillation's {name} must be a positive integer, not {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise DistillError(f"distillation's learning rate must be a positive number, not {lr!r}")
    started = time.time()
    fit_index, check_index = split_by_program(data, seed=seed)
    fit_batches = _batches(data, fit_index, batch)
    check_batches = _batches(data, check_index, batch)

    # 1. the teacher: the float backbone, the float adapters
    teacher = ReflexModel(model, reflex)
    teacher.eval()
    bar = _bar(len(fit_batches) + len(check_batches), "distill: teacher", progress)
    targets = []
    for b in fit_batches + check_batches:
        pred = teacher(*b).astype(mx.float32)
        mx.eval(pred)
        targets.append(pred)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    fit_targets, check_targets = targets[: len(fit_batches)], targets[len(fit_batches) :]
    teacher_seconds = time.time() - started
    del teacher

    # 2. the student: the same backbone quantized in place, the adapters as converted
    quantize_backbone(model, recipe)
    student_reflex = _student_reflex(reflex, recipe)
    student = ReflexModel(model, student_reflex)
    student.eval()
    layers = quantized_layers(model)
    params = _Params(layers)
    weights_before = {p: m.weight for p, m in layers}

    def forward(delta, arrays):
        model.update(tree_unflatten(params.values(delta)))
        return student(*arrays)

    def measure(batches, targets_) -> dict:
        totals = np.zeros(3)
        same, count = 0, 0
        for b, t in zip(batches, targets_):
            pred = forward(params.delta, b)
            parts = distill_loss(student_reflex, pred, t, temperature)
            rows = student_reflex.rows(pred), student_reflex.rows(t)
            mx.eval(*parts, *rows)
            totals += np.array([p.item() for p in parts]) * b[0].shape[0]
            same += int((rows[0] == rows[1]).sum().item())
            count += b[0].shape[0]
        loss, kl, cos = totals / max(count, 1)
        return {"loss": loss, "kl": kl, "cosine": cos, "same_row": same / max(count, 1), "samples": count}

    before = measure(check_batches, check_targets)

    def loss_fn(delta, arrays, target, scale):  # scaled: float16 gradients must not flush to 0
        return scale * distill_loss(student_reflex, forward(delta, arrays), target, temperature)[0]

    grad_fn = mx.value_and_grad(loss_fn)
    optimizer = optim.Adam(learning_rate=lr)
    optimizer.init(params.delta)
    bar = _bar(steps, "distill", progress)
    train_started, losses, skipped, scale = time.time(), [], 0, LOSS_SCALE
    for step in range(steps):
        i = step % len(fit_batches)
        optimizer.learning_rate = training.lr_at(
            step, lr=lr, min_lr=lr / 10, warmup=min(10, steps // 10), steps=steps
        )
        loss, grads = grad_fn(params.delta, fit_batches[i], fit_targets[i], mx.array(scale))
        finite = mx.isfinite(loss)
        for _, g in tree_flatten(grads):
            finite = finite & mx.all(mx.isfinite(g))
        if not finite.item():  # an overflow: skip the step, halve the factor
            skipped += 1
            scale /= 2
            if scale < MIN_LOSS_SCALE:
                break
            continue
        grads = tree_map(lambda g, s=scale: g / s, grads)  # Adam squares them: unscale first
        params.delta = optimizer.apply_gradients(grads, params.delta)
        mx.eval(loss, params.delta, optimizer.state)
        losses.append(loss.item() / scale)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if bar is not None:
        bar.close()
    train_seconds = time.time() - train_started
    model.update(tree_unflatten(params.values(params.delta)))
    mx.eval(model.parameters())
    after = measure(check_batches, check_targets)
    kept = bool(np.isfinite(after["loss"]) and after["loss"] <= before["loss"])
    if not kept:  # never worse than plain quantization on the held-apart programs
        params.delta = {p: {k: mx.zeros_like(v) for k, v in d.items()} for p, d in params.delta.items()}
        model.update(tree_unflatten(params.values(params.delta)))
        mx.eval(model.parameters())
    if any(not mx.array_equal(m.weight, weights_before[p]).item() for p, m in layers):
        raise RuntimeError("distillation changed a packed weight")  # a bug, not a user error
    return {
        "method": "distill",
        "objective": "KL(teacher || student) of codebook softmax at temperature "
        f"{temperature:g} + (1 - cosine) of the head embedding",
        "trains": "backbone quantized scales and biases",
        "trainable_parameters": params.count(),
        "layers": len(layers),
        "steps": steps,
        "batch": batch,
        "samples": len(fit_index),
        "check_samples": before["samples"],
        "lr": lr,
        "seed": seed,
        "check_before": before,
        "check_after": after,
        "loss_before": before["loss"],
        "loss_after": after["loss"],
        "kept": kept,  # False: the check loss rose, so the plain quantization was restored
        "train_loss_first": float(np.mean(losses[:10])) if losses else None,
        "train_loss_last": float(np.mean(losses[-10:])) if losses else None,
        "skipped_steps": skipped,  # gradients overflowed: the step was skipped, the loss factor halved
        "loss_scale": scale,
        "device": str(mx.default_device()),
        "seconds": time.time() - started,
        "teacher_seconds": teacher_seconds,
        "train_seconds": train_seconds,
    }
