"""Experiment: MLX decoder layers, mlx-lm's own against reflex_mlx.fast's layer, fused or not.

    python -m bench.experiments.mlx_layers [--small]

The 24 per-cycle layers of the release (random bf16 weights, a 60-token
prompt), compiled: mlx-lm's TransformerBlock, FastReflex's layer unfused, and
with q/k/v and gate/up fused (reflex_mlx.fast.fuse_projections).

Committed numbers: docs/results/mlx_layers_h200.txt, measured at commit 79c996f
on one lent NVIDIA H200 (MLX 0.32.4 CUDA build); that run also timed a layer
with hand-written attention, since dropped (no faster than the fused SDPA).
"""

from __future__ import annotations

import argparse

import mlx.core as mx
import numpy as np

from reflex_core.shapes import RELEASE, TINY_TEST
from reflex_core.timing import median_ms
from reflex_mlx.fast import FastReflex

from .mlx_parts import random_model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="the tiny-test shape, for any machine")
    args = p.parse_args(argv)
    shape = (TINY_TEST if args.small else RELEASE).with_(layers=24, inject_every=24)
    model = random_model(shape, None)  # one adapter, after the last layer
    layers = model.backbone.layers
    rng = np.random.default_rng(0)
    T = 60
    inputs = [rng.normal(size=(T, shape.hidden)).astype(np.float32) for _ in range(30)]

    def mlx_lm(h):
        h = h[None]
        for layer in layers:
            h = layer(h, "causal")
        return h[0, -1, :8]

    def own(fast):
        batch = fast.prefix([list(range(T))])

        def run(h):
            for i in range(len(layers)):
                h = fast._layer(i, h, batch, pooled=False)
            return h[-1, :8]

        return run

    x0 = mx.array(inputs[0]).astype(mx.bfloat16)
    ref = mx.compile(mlx_lm)(x0).astype(mx.float32)
    for name, fn in [
        ("mlx-lm layers", mlx_lm),
        ("FastReflex layer", own(FastReflex(model))),
        ("FastReflex layer, fused q/k/v + gate/up", own(FastReflex(model, fuse=True))),
    ]:
        compiled = mx.compile(fn)
        err = float(mx.linalg.norm(compiled(x0).astype(mx.float32) - ref) / mx.linalg.norm(ref))
        ms = median_ms(
            lambda x, c=compiled: np.array(c(mx.array(x).astype(mx.bfloat16)).astype(mx.float32)),
            inputs,
            warmup=3,
        )
        print(f"{name:45s} {ms:7.3f} ms  rel err vs mlx-lm {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
