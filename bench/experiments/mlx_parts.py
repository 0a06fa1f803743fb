"""Experiment: where an MLX cycle goes at the released shape (random bf16 weights).

    python -m bench.experiments.mlx_parts [--bits 4] [--small]

Times the whole compiled step (reflex_mlx.fast), the per-cycle backbone layers
alone, the adapters alone and their MLPs alone.

Committed numbers: docs/results/mlx_parts_h200.txt, measured at commit f9a5d0d
on one lent NVIDIA H200 (MLX 0.32.4 CUDA build), when the adapters' attention
still called mx.fast.scaled_dot_product_attention (1.46 ms of a 7.9 ms cycle,
which is why reflex_mlx.model's CrossAttention is two plain matmuls now).
"""

from __future__ import annotations

import argparse

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import qwen2

from reflex_core.shapes import RELEASE, TINY_TEST, decoder_config
from reflex_core.spec import ReflexArgs
from reflex_core.timing import median_ms
from reflex_mlx.fast import FastReflex
from reflex_mlx.model import Reflex, ReflexModel


def random_model(shape, bits: int | None) -> ReflexModel:
    """An MLX ReflexModel of `shape`, bf16, unit-gain random linears, gates at 0.5."""

    def scale(module):
        for _, mod in module.named_modules():
            if isinstance(mod, nn.Linear):
                mod.weight = mx.random.normal(mod.weight.shape) * mod.weight.shape[1] ** -0.5

    backbone = qwen2.Model(qwen2.ModelArgs.from_dict(decoder_config(shape, model_type="qwen2")))
    scale(backbone)
    backbone.set_dtype(mx.bfloat16)
    if bits:
        nn.quantize(backbone, group_size=64, bits=bits)
    args = ReflexArgs(
        hidden=shape.hidden,
        embed_dim=shape.embed_dim,
        num_instrs=shape.num_instrs,
        adapter_mlp_ratio=shape.mlp_ratio,
        adapter_layers=tuple(range(shape.inject_every - 1, shape.layers, shape.inject_every)),
    )
    reflex = Reflex(args)
    scale(reflex)
    reflex.set_dtype(mx.bfloat16)
    for a in reflex.adapters:
        a.attn_gate = mx.array([0.5], dtype=mx.bfloat16)
        a.mlp_gate = mx.array([0.5], dtype=mx.bfloat16)
    reflex.instr_words = mx.arange(shape.num_instrs).astype(mx.uint32)
    model = ReflexModel(backbone, reflex)
    mx.eval(model.parameters())
    return model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, default=None)
    p.add_argument("--small", action="store_true", help="the tiny-test shape, for any machine")
    args = p.parse_args(argv)
    shape = TINY_TEST if args.small else RELEASE
    model = random_model(shape, args.bits)
    fast = FastReflex(model, fuse=True, compile=True)
    rng = np.random.default_rng(0)
    batch = fast.prefix([rng.integers(0, 900, 60).tolist()])
    prefix = batch.prefix
    states = [rng.integers(0, 2**32, (1, 65), dtype=np.uint64).astype(np.uint32) for _ in range(30)]
    first, layers = fast.first, model.backbone.layers
    plain = FastReflex(model, fuse=True)

    def backbone_only(p, s):
        h = p[None]
        for i in range(first + 1, len(layers)):
            h = layers[i](h, "causal")
        return h[:, -1, :8] + s[:, :1].astype(h.dtype)

    def adapters_only(p, s):
        kv, h = model.reflex.encode_state(s), p[None]
        for a in model.reflex.adapters:
            h = a(h, kv)
        return h[:, -1, :8]

    def adapter_mlps(p, s):
        h = p[None]
        for a in model.reflex.adapters:
            h = h + a.mlp(a.norm_mlp(h))
        return h[:, -1, :8] + s[:, :1].astype(h.dtype)

    host = lambda f: lambda s: np.array(f(mx.array(s)).astype(mx.float32))
    parts = {
        "step + decode, compiled (FastReflex)": lambda s: fast.words(batch, s),
        "step + decode, not compiled": lambda s: plain.words(batch, s),
        "backbone layers after the first adapter, compiled": host(
            lambda s: mx.compile(backbone_only)(prefix, s)
        ),
        "adapters, compiled": host(lambda s: mx.compile(adapters_only)(prefix, s)),
        "adapter MLPs, compiled": host(lambda s: mx.compile(adapter_mlps)(prefix, s)),
        "trivial op": host(lambda s: s + 1),
    }
    for name, call in parts.items():
        print(f"{name:52s} {median_ms(call, states, warmup=3):8.3f} ms", flush=True)


if __name__ == "__main__":
    main()
