"""Calibrated backbones: mlx-lm's own AWQ, GPTQ, DWQ and sensitivity-chosen mixed
bits (mlx_lm.quant), fed what the Reflex forward feeds the backbone.

Calibration data come from a corpus the user names (nothing is downloaded): the
training programs' prompts and machine states, never an evaluation prompt (nor a
prompt equal to one up to case, spacing and punctuation, the near copies) and
never a held-out program (heldout.json beside the checkpoint, when it has one).
Each sample is one cycle: the chat-templated prompt padded to max_instr_tokens
(as the released reference pads it) and the machine state the adapters read.

mlx-lm's quantizers walk a plain language model; the wrappers here make the
Reflex forward look like one to them without copying their code: the adapters
run after their layers on each sample's state, and the backbone's own modules
(same objects, same paths) are what the quantizers change. The result is the
layout mlx-lm saves and loads (AWQ's scales folded into the norms, quantized
linears and embedding), so the converter's save and reflex_mlx/loader.py need
nothing new.

`calibrate(method, model, reflex, recipe, data, progress)` quantizes the float
backbone `model` (an mlx-lm Model) in place with one of METHODS and returns
what it did, for config.json. A method is `fn(model, reflex, recipe, data,
progress) -> dict`; it leaves every backbone matrix it calibrates quantized,
and calibrate() quantizes whatever it left in float (an untied lm_head) plainly.
"""

from __future__ import annotations

import contextlib
import copy
import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import distill as _distill

DEFAULT_SAMPLES = {"awq": 64, "gptq": 128, "dwq": 256, "sens": 64}  # modest: the H200 run is minutes
DEFAULT_SAMPLES["distill"] = _distill.DEFAULT_SAMPLES  # convert/distill.py
AWQ_GRID = 20  # mlx-lm's default grid of scale ratios and clip shrinks
DWQ_LEARNING_RATE = 1e-5
DWQ_BATCH = 8
DWQ_TOP_K = 1024  # teacher logits kept per position, as mlx-lm's DWQ stores them
SENS_HIGH_BITS = 6
# Bits per backbone weight the sensitivity method spends above plain quantization at
# the recipe's bits (mlx-lm's count over the inner model: embeddings, layers, norm;
# 4.5 -> 4.75 at 4-bit g64 with float16 scales): at the released 7B shape with 4-bit
# adapters about 0.2 GiB more, inside an 8 GB Mac's 5.3 GB working set
# (bench/precision.py counts each row's).
SENS_EXTRA_BPW = 0.25


class CalibrationError(ValueError):
    """A one-line reason calibration data cannot be built."""


# ------------------------------------------------------------------------- data


@dataclass
class CalibrationData:
    """Cycles as the backbone sees them: padded prompt tokens, real lengths, states."""

    tokens: np.ndarray  # [N, T] int32, right-padded with the tokenizer's pad id
    lengths: np.ndarray  # [N] real tokens of each prompt
    states: np.ndarray  # [N, 65] uint32
    prompts: list[str]  # each sample's prompt
    programs: list[tuple[int, ...]]  # each sample's program (its words)
    counts: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, n: int) -> CalibrationData:
        return CalibrationData(
            self.tokens[:n],
            self.lengths[:n],
            self.states[:n],
            self.prompts[:n],
            self.programs[:n],
            self.counts,
        )

    def describe(self) -> dict:
        return {**self.counts, "samples": len(self), "prompt_tokens": int(self.tokens.shape[1])}


def heldout_words(path: str | Path | None) -> set[tuple[int, ...]]:
    """The programs a heldout.json lists (words); none for no file."""
    from reflex_core.training import read_heldout_file

    if path is None or not Path(path).exists():
        return set()
    entries = read_heldout_file(path, CalibrationError)
    try:
        return {tuple(int(w, 16) for w in entry["words"]) for entry in entries}
    except (KeyError, TypeError, ValueError):
        raise CalibrationError(f"{path}: not a heldout.json (programs with hex words)") from None


def training_prompts(corpus: str | Path, heldout: set[tuple[int, ...]]) -> list[tuple[object, list[str]]]:
    """(program, prompts) of every distinct corpus program not held out, its prompts
    without any evaluation prompt or near copy (compared as letters and digits only)."""
    from reflex_core.corpus import load_programs
    from reflex_core.evaluation import bare, eval_prompts

    forbidden = eval_prompts(bare)
    groups: dict[tuple, tuple] = {}
    for program in load_programs(corpus):
        key = tuple(program.words)
        if key in heldout:
            continue
        entry = groups.setdefault(key, (program, {}))
        entry[1].update(dict.fromkeys(p for p in program.variants if bare(p) not in forbidden))
    return [(program, list(prompts)) for program, prompts in groups.values() if prompts]


def calibration_data(
    corpus: str | Path,
    tokenizer,
    config: dict,
    samples: int,
    heldout: str | Path | None = None,
    seed: int = 0,
) -> CalibrationData:
    """`samples` cycles of distinct training programs (as many as there are), each under
    one of its prompts, at one of its replayed cycles, drawn with a fixed seed."""
    from reflex_core.batching import pad_batch
    from reflex_core.corpus import CorpusError, replay
    from reflex_core.prompt import encode_prompt

    if samples < 1:
        raise CalibrationError("calibration needs at least one sample")
    held = heldout_words(heldout)
    try:
        pool = training_prompts(corpus, held)
    except CorpusError as err:
        raise CalibrationError(str(err)) from None
    if not pool:
        raise CalibrationError(f"{corpus}: no training program with a prompt to calibrate on")
    rng = random.Random(seed)
    order = (
        [rng.randrange(len(pool)) for _ in range(samples)]
        if samples > len(pool)
        else rng.sample(range(len(pool)), samples)
    )
    cycles: dict[int, list] = {}
    ids, states, prompts, programs = [], [], [], []
    limit = int(config["max_instr_tokens"])
    for index in order:
        program, choices = pool[index]
        prompt = rng.choice(choices)
        if index not in cycles:
            cycles[index] = replay(program)
        state, _ = rng.choice(cycles[index])
        ids.append(encode_prompt(tokenizer, prompt, config).ids)
        states.append(state)
        prompts.append(prompt)
        programs.append(tuple(program.words))
    rows, masks = pad_batch(ids, tokenizer.pad_token_id or 0, limit)
    return CalibrationData(
        tokens=np.asarray(rows, dtype=np.int32),
        lengths=np.asarray([sum(m) for m in masks], dtype=np.int32),
        states=np.asarray(states, dtype=np.uint32),
        prompts=prompts,
        programs=programs,
        counts={"corpus_programs": len(pool), "heldout_excluded": len(held), "seed": seed},
    )


# ------------------------------------------------------------ the forward, wrapped


class _Side:
    """What the wrapped forward needs besides the backbone: the adapters, each
    sample's tokens and key/values. Shared, not copied, when mlx-lm deep-copies a
    model (dynamic_quant does), and never a child module (nothing here is quantized)."""

    def __init__(self, reflex, data: CalibrationData, adapter_layers):
        self.reflex = reflex
        self.adapters = dict(zip(adapter_layers, reflex.adapters))
        self.tokens = mx.array(data.tokens)
        self.last = mx.array(data.lengths - 1)
        self.kv = mx.concatenate(
            [reflex.encode_state(mx.array(data.states[i : i + 64])) for i in range(0, len(data), 64)]
        )
        mx.eval(self.kv, self.tokens, self.last)
        self.head: mx.array | None = None  # the float LM head, for DWQ's logits

    def __deepcopy__(self, memo):
        return self


class _Forward(nn.Module):
    """The Reflex forward over calibration samples, called with their indices [B]
    (or [B, 1 + T]: the index, then the tokens, as DWQ's batches carry them).
    Its only child is the backbone's inner model, named `model` as in mlx-lm's
    Model, so module paths match the saved layout.

    output: "hidden" (final-normed states), "scores" (codebook logits at the
    InfoNCE temperature, at the pooled token) or "logits" (the float LM head's)."""

    def __init__(self, model, side: _Side, output: str):
        super().__init__()
        self.model = model.model
        object.__setattr__(self, "_side", side)
        object.__setattr__(self, "_output", output)

    def __call__(self, index: mx.array) -> mx.array:
        side = self._side
        if index.ndim == 2:  # DWQ: [index, tokens...]
            index, tokens = index[:, 0], index[:, 1:]
        else:
            tokens = side.tokens[index]
        h = self.model.embed_tokens(tokens)
        kv = side.kv[index]
        for i, layer in enumerate(self.model.layers):
            h = layer(h, "causal")
            if i in side.adapters:
                h = side.adapters[i](h, kv)
        h = self.model.norm(h)
        if self._output == "logits":
            return h @ side.head.T.astype(h.dtype)
        if self._output == "scores":
            from reflex_core.spec import INFONCE_TEMPERATURE

            pooled = h[mx.arange(h.shape[0]), side.last[index]]
            return side.reflex.scores(side.reflex.head(pooled)) / INFONCE_TEMPERATURE
        return h


class _StreamEmbedding(nn.Module):
    """AWQ's view of the token embedding: tokens [B, T + 1], the last column a
    sample index; returns the embedded prompt with that sample's 65 key/value
    rows after it [B, T + 65, H], so each sample's state rides the hidden stream
    through mlx-lm's block-by-block walk."""

    def __init__(self, embed, side: _Side):
        super().__init__()
        self.embed = embed
        object.__setattr__(self, "_side", side)

    def to_quantized(self, group_size: int, bits: int, **kw):
        return _StreamEmbedding(self.embed.to_quantized(group_size=group_size, bits=bits, **kw), self._side)

    def __call__(self, tokens: mx.array) -> mx.array:
        h = self.embed(tokens[:, :-1])
        return mx.concatenate([h, self._side.kv[tokens[:, -1]].astype(h.dtype)], axis=1)


class _StreamLayer(nn.Module):
    """A decoder layer as AWQ walks it: its own children under their own names
    (self_attn, mlp, norms; the same objects, so what AWQ scales and quantizes is
    the backbone's), run on the prompt part of the stream, then the adapter of
    this layer, if any, over the state part."""

    def __init__(self, layer, adapter, tokens: int):
        super().__init__()
        for name, child in layer.children().items():
            setattr(self, name, child)
        object.__setattr__(self, "_layer", layer)
        object.__setattr__(self, "_adapter", adapter)
        object.__setattr__(self, "_tokens", tokens)

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        h, kv = x[:, : self._tokens], x[:, self._tokens :]
        h = self._layer(h, "causal")
        if self._adapter is not None:
            h = self._adapter(h, kv)
        return mx.concatenate([h, kv], axis=1)


# ---------------------------------------------------------------------- methods


@contextlib.contextmanager
def _quiet(progress: bool):
    """mlx-lm's bars (tqdm, with their time estimates) on stderr when progress is
    asked for, none otherwise; its printed lines (loss reductions, parameter
    counts) kept off stdout either way."""
    from functools import partialmethod

    from tqdm import tqdm

    init = tqdm.__init__
    if not progress:  # mlx-lm's modules hold the class itself: its default, for a while
        tqdm.__init__ = partialmethod(init, disable=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm.__init__ = init


def _side(model, reflex, data) -> _Side:
    return _Side(reflex, data, reflex.args.adapter_layers)


def awq(model, reflex, recipe, data, progress) -> dict:
    """mlx-lm's AWQ (activation-aware scales folded into the previous norm or
    linear, then clipping), block by block over the Reflex stream."""
    from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS, awq_quantize

    kind = model.model_type
    if (config := AWQ_MODEL_CONFIGS.get(kind)) is None:
        raise CalibrationError(f"mlx-lm has no AWQ recipe for {kind} backbones")
    side = _side(model, reflex, data)
    inner = model.model
    layers, embed = inner.layers, inner.embed_tokens
    tokens = data.tokens.shape[1]
    inner.layers = [_StreamLayer(layer, side.adapters.get(i), tokens) for i, layer in enumerate(layers)]
    inner.embed_tokens = _StreamEmbedding(embed, side)
    inputs = mx.concatenate([side.tokens, mx.arange(len(data))[:, None].astype(side.tokens.dtype)], axis=1)
    try:
        awq_quantize(
            model,
            inputs,
            config,
            group_size=recipe.group_size,
            bits=recipe.bits,
            embed_group_size=recipe.group_size,
            embed_bits=recipe.bits,
            n_grid=AWQ_GRID,
        )
        embed = inner.embed_tokens.embed
    finally:
        inner.layers, inner.embed_tokens = layers, embed
    return {"n_grid": AWQ_GRID}


def gptq(model, reflex, recipe, data, progress) -> dict:
    """mlx-lm's GPTQ: each linear's Hessian from the Reflex forward's inputs to it,
    then column-by-column rounding with error feedback; the embedding (no
    Hessian) quantized plainly at the same bits."""
    from mlx_lm.quant.gptq import gptq_quantize

    forward = _Forward(model, _side(model, reflex, data), "hidden")
    gptq_quantize(
        forward,
        mx.arange(len(data)),
        recipe.bits,
        recipe.group_size,
        fallback_bits=recipe.bits,
        fallback_group_size=recipe.group_size,
        batch_size=8,
    )
    return {"batch_size": 8}


def _head_weight(model) -> mx.array:
    """The float LM head as a [V, H] matrix (the tied embedding where there is none)."""
    if "lm_head" in model:
        return model.lm_head.weight
    return model.model.embed_tokens.weight


def dwq(model, reflex, recipe, data, progress) -> dict:
    """mlx-lm's DWQ: the quantized backbone's scales and biases trained (Adam) so
    its LM-head distribution at every real prompt token, with the adapters and
    states in, matches the float backbone's (top-k teacher logits, as mlx-lm keeps
    them, computed before quantizing: the float copy is never held twice)."""
    import mlx.optimizers as optimizers
    from mlx_lm.quant.dwq import dwq_quantize

    from reflex_mlx.quantize import quantize_adapters

    if len(data) < 2 * DWQ_BATCH:
        raise CalibrationError(
            f"DWQ needs at least {2 * DWQ_BATCH} samples (a batch to train on and one to validate)"
        )
    side = _side(model, reflex, data)
    side.head = mx.array(_head_weight(model))
    teacher = _Forward(model, side, "logits")
    k = min(DWQ_TOP_K, side.head.shape[0])
    top_logits, top_ids = [], []
    for s in range(0, len(data), DWQ_BATCH):
        logits = teacher(mx.arange(s, min(s + DWQ_BATCH, len(data))))
        ids = mx.argpartition(logits, kth=-k, axis=-1)[..., -k:]
        top_ids.append(ids)
        top_logits.append(mx.take_along_axis(logits, ids, axis=-1))
        mx.eval(top_ids[-1], top_logits[-1])
    top_logits, top_ids = mx.concatenate(top_logits), mx.concatenate(top_ids)
    del teacher

    from reflex_mlx.quantize import quantize_backbone

    quantize_backbone(model, recipe)
    student_side = copy.copy(side)
    if recipe.adapter_bits:  # the student reads the adapters as they will ship
        student_reflex = copy.deepcopy(reflex)
        quantize_adapters(student_reflex, recipe)
        student_side.reflex = student_reflex
        student_side.adapters = dict(zip(reflex.args.adapter_layers, student_reflex.adapters))
    student = _Forward(model, student_side, "logits")
    student.freeze()  # DWQ unfreezes the quantized layers' scales and biases only

    items = [[i, *data.tokens[i, : data.lengths[i]].tolist()] for i in range(len(data))]
    n_valid = max(DWQ_BATCH, len(items) // 8)
    train, valid = [(x, 0) for x in items[n_valid:]], [(x, 0) for x in items[:n_valid]]
    width = data.tokens.shape[1] + 2  # a batch is [index, T tokens, 1 dropped]

    def targets(batch, _it, split):
        index, cols = batch[:, 0], batch.shape[1] - 1
        return top_logits[index, :cols], top_ids[index, :cols]

    opt = optimizers.Adam(learning_rate=DWQ_LEARNING_RATE, bias_correction=True)
    losses = []
    with _LossLog(losses):
        dwq_quantize(
            student,
            targets,
            opt,
            train,
            valid,
            batch_size=DWQ_BATCH,
            max_seq_length=width,
            seed=0,
            dtype=model.model.norm.weight.dtype,  # the recipe's float dtype (or the source's)
        )
    model.unfreeze()  # as plain quantization leaves it: only the packed weights frozen
    model.apply_to_modules(lambda _, m: m.freeze(recurse=False) if hasattr(m, "bits") else None)
    return {
        "learning_rate": DWQ_LEARNING_RATE,
        "batch_size": DWQ_BATCH,
        "steps": len(train) // DWQ_BATCH,
        "top_k": k,
        "validation_loss": losses,
    }


class _LossLog:
    """Keeps mlx-lm DWQ's validation lines ("Validation: it=..., loss=...") as numbers."""

    def __init__(self, sink: list):
        self.sink = sink

    def __enter__(self):
        from tqdm import tqdm

        self.write = tqdm.write

        def write(s, *a, **kw):
            if isinstance(s, str) and s.startswith("Validation:") and "loss=" in s:
                self.sink.append(float(s.rsplit("loss=", 1)[1]))
            return self.write(s, *a, **kw)

        tqdm.write = write
        return self

    def __exit__(self, *exc):
        from tqdm import tqdm

        tqdm.write = self.write


def sens(model, reflex, recipe, data, progress) -> dict:
    """Per-layer mixed bits by measured sensitivity: mlx-lm's dynamic_quant
    estimates each matrix's first-order loss change from low to high bits, here
    under the Reflex objective (KL of the codebook distribution at the pooled
    token, as trained: cosine / 0.07), and its threshold search spends
    SENS_EXTRA_BPW on the most sensitive; quantized by mlx-lm's quantize_model."""
    from mlx_lm.quant.dynamic_quant import estimate_sensitivities, estimate_threshold
    from mlx_lm.utils import compute_bits_per_weight, quantize_model

    forward = _Forward(model, _side(model, reflex, data), "scores")
    low, high, gs = recipe.bits, SENS_HIGH_BITS, recipe.group_size
    sensitivities = dict(
        estimate_sensitivities(forward, mx.arange(len(data)), low, gs, high, gs, batch_size=4)
    )
    if recipe.backbone_dtype is not None:  # bits counted with the scales as they will be stored
        dtype = getattr(mx, recipe.backbone_dtype)
        model.apply(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p)
    plain = copy.deepcopy(forward)
    nn.quantize(plain, group_size=gs, bits=low)
    target = compute_bits_per_weight(plain) + SENS_EXTRA_BPW
    del plain
    threshold = estimate_threshold(forward, sensitivities, target, low, gs, high, gs)
    chosen = sorted(p for p, s in sensitivities.items() if s > threshold)
    quantize_model(
        model,
        {},
        gs,
        low,
        quant_predicate=lambda p, m: {"bits": high, "group_size": gs} if p in chosen else True,
    )
    return {
        "high_bits": high,
        "target_bpw": round(target, 4),
        "bits_per_weight": round(compute_bits_per_weight(forward), 4),
        "high_layers": chosen,
        "sensitivities": {p: float(f"{s:.6g}") for p, s in sensitivities.items()},
    }


Method = Callable[..., dict]
METHODS: dict[str, Method] = {"awq": awq, "gptq": gptq, "dwq": dwq, "sens": sens}
METHODS["distill"] = _distill.distill  # convert/distill.py: the Reflex-objective distillation


# ------------------------------------------------------------------ projection

# A stated assumption, not a measurement: the Mac a 7B calibration needs holds the
# float backbone (15 GB in bf16) beside its activations, so a 32 GB M-series Pro
# class machine; its GPU taken at 4 TFLOP/s effective (about 60 % of an M2/M3 Pro's
# ~6.8 TFLOP/s), and each host round trip of a Python loop (GPTQ's per column) at
# 0.2 ms.
MAC_FLOPS = 4e12
MAC_SYNC_S = 2e-4


def _linears(shape) -> list[tuple[int, int]]:
    """(in, out) of each decoder layer's matrices at a reflex_core.shapes.Shape."""
    head_dim = shape.head_dim or shape.hidden // shape.heads
    q, kv = shape.heads * head_dim, shape.kv_heads * head_dim
    h, i = shape.hidden, shape.intermediate
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def calibration_flops(method: str, shape, samples: int, tokens: int) -> tuple[float, int]:
    """(floating-point operations, host round trips) of one calibration at `shape`,
    counted from the methods' own loops (mlx_lm.quant) as forward-pass equivalents:
    AWQ ~28 passes (its outputs, the plain-quantized loss, 20 grid points over the
    attention and MLP blocks and the down projection, the result) plus its clip
    search (10 shrinks over 512 frames); GPTQ one pass, each matrix's Hessian
    (2·N·T·in²) and solve (in³ + 2·out·in²), one round trip per column; DWQ one
    teacher pass, three (forward and backward) per training sample and two
    validations, each with the LM head; sens one teacher and three student passes."""
    linears = _linears(shape) * shape.layers
    params = sum(i * o for i, o in linears)
    adapters = (shape.layers // shape.inject_every) * (4 + 2 * shape.mlp_ratio) * shape.hidden**2
    tokens_all = samples * tokens
    forward = 2 * tokens_all * (params + adapters)
    head = 2 * tokens_all * shape.vocab * shape.hidden
    if method == "awq":
        return 28 * forward + 2 * 10 * 512 * params, shape.layers * 200
    if method == "gptq":
        hessian = sum(2 * tokens_all * i * i + i**3 + 2 * o * i * i for i, o in linears)
        return forward + hessian, sum(i for i, _ in linears)
    if method == "dwq":
        return 4 * (forward + head), samples // DWQ_BATCH * 4
    if method == "sens":
        return 4 * forward, samples // 4 * 2
    if method == "distill":  # one teacher pass, DEFAULT_STEPS batches forward and backward, two checks
        step = forward / max(samples, 1) * _distill.DEFAULT_BATCH
        return 1.2 * forward + 3 * _distill.DEFAULT_STEPS * step, _distill.DEFAULT_STEPS
    raise CalibrationError(f"no projection for {method}")


def projected_seconds(method: str, shape, samples: int, tokens: int) -> float:
    """Projected Mac seconds for one calibration: calibration_flops over MAC_FLOPS,
    plus its round trips at MAC_SYNC_S (an estimate from stated assumptions)."""
    flops, syncs = calibration_flops(method, shape, samples, tokens)
    return flops / MAC_FLOPS + syncs * MAC_SYNC_S


# ------------------------------------------------------------------- the entry


def quantization_config(model, recipe) -> dict:
    """The "quantization" entry mlx-lm's config.json needs to load `model`: the
    recipe's bits and group size, and each quantized module that differs."""
    config = {"group_size": recipe.group_size, "bits": recipe.bits, "mode": "affine"}
    for path, module in model.named_modules():
        bits = getattr(module, "bits", None)
        if bits is not None and (bits, module.group_size) != (recipe.bits, recipe.group_size):
            config[path] = {"group_size": module.group_size, "bits": bits}
    return config


def _quantize_rest(model, recipe) -> None:
    """Quantize what a method left in float (an untied lm_head): plainly, at the recipe's bits."""
    from mlx_lm.utils import quantize_model

    float_layers = [p for p, m in model.named_modules() if type(m) in (nn.Linear, nn.Embedding)]
    if float_layers:
        quantize_model(
            model, {}, recipe.group_size, recipe.bits, quant_predicate=lambda p, m: p in float_layers
        )


def calibrate(method: str, model, reflex, recipe, data: CalibrationData, progress: bool = False) -> dict:
    """Quantize the float backbone `model` in place by `method` (a METHODS key) at
    the recipe's bits and group size, calibrated on `data` through the float
    Reflex modules `reflex` (left unchanged: quantize them after, by the recipe).
    Returns what it did (method, samples, seconds, the method's own record) and,
    under "quantization", the entry the backbone's config.json needs."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration {method!r}: one of {', '.join(METHODS)}")
    if not recipe.bits or recipe.mixed:
        raise CalibrationError(
            f"{method} calibration needs a uniform bits recipe (--bits), not {recipe.backbone_name}"
        )
    if len(data) < 1:
        raise CalibrationError("calibration needs at least one sample")
    started = time.time()
    if progress:
        import sys

        print(
            f"calibrating the backbone ({method}, {recipe.backbone_name}) on {len(data)} corpus cycles",
            file=sys.stderr,
        )
    reflex_was = reflex.training
    reflex.eval()
    with _quiet(progress):
        record = METHODS[method](model, reflex, recipe, data, progress)
        _quantize_rest(model, recipe)  # mlx-lm prints its bits per weight
    reflex.train(reflex_was)
    if recipe.backbone_dtype is not None:  # scales, biases and norms in the recipe's float dtype
        dtype = getattr(mx, recipe.backbone_dtype)
        model.apply(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p)
    mx.eval(model.parameters())
    return {
        "method": method,
        **record,
        "data": data.describe(),
        "seconds": round(time.time() - started, 2),
        "quantization": quantization_config(model, recipe),
    }


def for_conversion(
    method: str,
    model,
    reflex,
    recipe,
    corpus: str | Path,
    progress: bool,
    tokenizer,
    config: dict,
    heldout: str | Path | None = None,
    samples: int | None = None,
) -> tuple[dict, dict | None, dict]:
    """A conversion's calibration: the data from the corpus the user named (the
    checkpoint's heldout.json, if any, left out), the backbone calibrated by
    `method`, then the adapter side quantized by the recipe. Returns (the backbone
    config's "quantization" entry, the adapter quantization, the record for
    config.json)."""
    from reflex_mlx.quantize import quantize_adapters

    n = samples or DEFAULT_SAMPLES.get(method, 128)
    data = calibration_data(corpus, tokenizer, config, n, heldout=heldout)
    record = calibrate(method, model, reflex, recipe, data, progress)
    quantization = record.pop("quantization")
    return quantization, quantize_adapters(reflex, recipe), record
