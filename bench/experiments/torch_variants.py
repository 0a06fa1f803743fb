"""Experiment: the fast torch path's variants at the released shape: CUDA graph alone,
torch.compile (a mode) inside the graph, each with and without fused projections.

    python -m bench.experiments.torch_variants graph,compile,max-autotune-no-cudagraphs 1,8,41

Random weights (reflex_torch.random, seed 0), bf16 adapters, the bench prompts
(bench.common.prompt_set), median of 30 calls states -> words.

Committed numbers: docs/results/torch_variants_h200.txt, measured at commit
69be16f on one lent NVIDIA H200 (torch 2.11 CUDA).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from reflex_core.shapes import SHAPES
from reflex_core.timing import median_ms
from reflex_torch.fast import FastReflex
from reflex_torch.random import build_random_reflex

from ..common import prompt_set, torch_sync


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    modes, batches = argv[0].split(","), [int(b) for b in argv[1].split(",")]
    shape = SHAPES[os.environ.get("SHAPE", "release")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = build_random_reflex(shape, 0, device, torch.bfloat16 if device == "cuda" else torch.float32)
    prompts = prompt_set(shape.vocab, 0, max(batches))
    rng = np.random.default_rng(0)
    for mode in modes:
        for fuse in (False, True):
            compile = False if mode == "graph" else (True if mode == "compile" else mode)
            fast = FastReflex(model, adapter_dtype=torch.bfloat16, compile=compile, fuse=fuse)
            for b in batches:
                t0 = time.time()
                group = fast.prefix([list(p) for p in prompts[:b]])
                fast.words(group, np.zeros((b, 65), dtype=np.int64))
                setup = time.time() - t0
                states = [rng.integers(0, 2**31, (b, 65)) for _ in range(30)]
                ms = median_ms(lambda s, f=fast, g=group: f.words(g, s), states, warmup=3, sync=torch_sync())
                print(
                    f"{mode:32s} fuse={fuse!s:5s} b={b:3d} {ms:8.3f} ms/cycle {ms / b:7.3f} "
                    f"ms/prog-cycle (setup {setup:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
