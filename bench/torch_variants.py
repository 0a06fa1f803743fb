"""Time FastReflex variants at the released shape: CUDA graph vs torch.compile (a mode) x fused projections.

    PYTHONPATH=$PWD python3 bench/torch_variants.py graph,compile,max-autotune-no-cudagraphs 1,8,41

Random weights (reflex_torch.random_model, seed 0), bf16 adapters, the bench
prompts (bench.speed.prompt_set), median of 30 calls state -> words. The H200
output is docs/results/torch_variants_h200.txt (docs/performance.md).
"""
import sys, time, statistics, torch, numpy as np
from reflex_torch.random_model import SHAPES, build_random_reflex
from reflex_torch.fast import FastReflex
from bench.speed import prompt_set

modes = sys.argv[1].split(",")   # e.g. graph,compile,max-autotune-no-cudagraphs
batches = [int(b) for b in sys.argv[2].split(",")]
import os
SHAPE = SHAPES[os.environ.get("SHAPE", "release")]
dev = "cuda" if torch.cuda.is_available() else "cpu"
model, config = build_random_reflex(SHAPE, 0, dev, torch.bfloat16 if dev == "cuda" else torch.float32)
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
prompts = prompt_set(SHAPE.vocab, 0, max(batches))
rng = np.random.default_rng(0)
def timeit(runner, b, n=30):
    xs = [torch.tensor(rng.integers(0, 2**31, (b, 65)), dtype=torch.int64) for _ in range(n)]
    for x in xs[:3]: runner(x)[1].tolist()
    ts = []
    for x in xs:
        sync(); t = time.perf_counter(); runner(x)[1].tolist(); ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)
for mode in modes:
    for fuse in (False, True):
        compile = False if mode == "graph" else (True if mode == "compile" else mode)
        fast = FastReflex(model, adapter_dtype=torch.bfloat16, compile=compile, fuse=fuse)
        for b in batches:
            t0 = time.time()
            runner = fast.runner(fast.prompts([list(p) for p in prompts[:b]]))
            runner(torch.zeros(b, 65, dtype=torch.int64))
            setup = time.time() - t0
            ms = timeit(runner, b)
            print(f"{mode:32s} fuse={fuse!s:5s} b={b:3d} {ms:8.3f} ms/cycle {ms/b:7.3f} ms/prog-cycle (setup {setup:.0f} s)", flush=True)
            del runner
        del fast
