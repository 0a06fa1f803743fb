"""Per-cycle speed of every way to run Reflex, on one random model, in one run (docs/performance.md).

    python -m bench.speed --shape release --out DIR [--cycles 30] [--corpus PATH]
        [--seed 0] [--batches 1,8,41] [--agree-states 256] [--no-mlx] [--torch-compile [MODE]]
    python -m bench.speed --tiny-torch DIR --out DIR [--max-cycles 400]

release / tiny-test: one random model of that shape (reflex_torch.random_model)
on CUDA if present, timed path by path: the released-style forward (hooks,
prompt padded to 96, float32 adapters), the unpadded reference, the fast torch
path (FastReflex: cached prefix + CUDA graph) at each batch with float32 and
bf16 adapters, and MLX (bf16 and 4-bit backbones, copied from the same torch
weights) with its compiled step. Each time is the median over --cycles calls
of state list -> decoded words (host to host, so it includes the upload of the
states and the read-back of the words). Word agreement with the released-style
path is measured on corpus (or random) states at the same time.

--tiny-torch: word agreement of every fast path with the reference on the
41-task evaluation of a trained model (reflex-tiny), per cycle on the
reference's own states (lock-step) and run by run (free-running).

Writes DIR/speed.json and DIR/speed.md (or agreement_tiny.*) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from reflex_core.spec import EVAL_MAX_CYCLES

FLOOR_MS = 3.55  # DESIGN.md §8: the H200 reads the release's weights once in bf16
PROMPT_LEN = 60
PAD_TO = 96
PAD_ID = 151643


# ------------------------------------------------------------------ helpers
def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(call, inputs: list, warmup: int = 3) -> float:
    """Median wall time of call(x) over inputs, after `warmup` untimed calls.

    Every call returns host values (the decoded words), so it has finished
    when it returns; the synchronize before each start drains earlier work.
    """
    for x in inputs[:warmup]:
        call(x)
    times = []
    for x in inputs:
        _sync()
        t0 = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_states(n: int, corpus: str | None, seed: int) -> np.ndarray:
    """n machine states: replayed corpus programs when a corpus is found, else random words."""
    try:
        from .parity import corpus_states

        return corpus_states(n, corpus)[0]
    except SystemExit:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 2**32, size=(n, 65), dtype=np.uint64).astype(np.uint32)


def prompt_set(vocab: int, seed: int, count: int) -> list[np.ndarray]:
    """count random prompts: the first PROMPT_LEN tokens long, the others 50..70."""
    rng = np.random.default_rng(seed + 1)
    lengths = [PROMPT_LEN] + list(rng.integers(50, 71, count - 1))
    top = min(vocab, PAD_ID)
    return [rng.integers(0, top, n) for n in lengths]


def _padded(prompts, pad_id: int, width: int | None = None):
    import torch

    width = width or max(len(p) for p in prompts)
    ids = torch.tensor([list(p) + [pad_id] * (width - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    return ids, mask


# ------------------------------------------------------------------ torch paths
def reference_words(model, prompt, states: np.ndarray, pad_to: int | None, batch: int = 32):
    """Words decoded by ReflexModel (hooks) for one prompt, padded to pad_to (None: unpadded)."""
    import torch

    device = model.reflex.instr_words.device
    pad_id = min(PAD_ID, model.backbone.config.vocab_size - 1)
    ids, mask = _padded([prompt], pad_id, pad_to)
    ids, mask = ids.to(device), mask.to(device)
    words = []
    with torch.no_grad():
        for s in range(0, len(states), batch):
            chunk = torch.tensor(states[s:s + batch].astype(np.int64), device=device)
            b = len(chunk)
            words += model.reflex.decode(model(ids.expand(b, -1), mask.expand(b, -1), chunk))
    return np.array(words, dtype=np.uint32)


def torch_rows(model, shape_name: str, prompts, states: np.ndarray, batches: list[int],
               cycles: int, agree_states: np.ndarray, ref_words: np.ndarray,
               note, torch_compile: str | None = None) -> list[dict]:
    """Time the released-style path, the reference and the fast path; measure agreement."""
    import torch

    from reflex_torch.fast import FastReflex

    device = model.reflex.instr_words.device
    pad_id = min(PAD_ID, model.backbone.config.vocab_size - 1)
    rows = []
    one = [states[i:i + 1].astype(np.int64) for i in range(cycles)]

    def released_call(pad_to):
        ids, mask = _padded([prompts[0]], pad_id, pad_to)
        ids, mask = ids.to(device), mask.to(device)

        def call(s):
            with torch.no_grad():
                return model.reflex.decode(model(ids, mask, torch.tensor(s, device=device)))
        return call

    rows.append({"path": "released-style (hooks, padded 96, fp32 adapters, eager)", "batch": 1,
                 "ms_cycle": median_ms(released_call(PAD_TO), one), "agreement": 1.0})
    unpadded = reference_words(model, prompts[0], agree_states, None)
    rows.append({"path": "reference (hooks, unpadded, fp32 adapters, eager)", "batch": 1,
                 "ms_cycle": median_ms(released_call(None), one),
                 "agreement": float((unpadded == ref_words).mean())})

    graphs = device.type == "cuda"
    if not graphs:
        note("no CUDA: the fast rows run eagerly (no CUDA graphs)")
    # (label, adapter dtype, fused projections, torch.compile mode or None)
    variants = [("fp32 adapters", None, False, None), ("bf16 adapters", torch.bfloat16, False, None),
                ("bf16 adapters, fused q/k/v + gate/up", torch.bfloat16, True, None)]
    if torch_compile:
        mode = "" if torch_compile == "default" else f" mode {torch_compile}"
        variants.append((f"bf16 adapters, fused, torch.compile{mode} +", torch.bfloat16, True,
                         torch_compile))
    for label, dtype, fuse, compile_mode in variants:  # "default" is torch.compile's own default mode
        fast = FastReflex(model, adapter_dtype=dtype, cuda_graph=True, compile=compile_mode or False, fuse=fuse)
        words = np.array(fast.words, dtype=np.uint32)
        for batch in batches:
            group = prompts[:batch]
            t0 = time.time()
            runner = fast.runner(fast.prompts([list(p) for p in group]))
            inputs = [torch.tensor(states[(i * batch + np.arange(batch)) % len(states)].astype(np.int64))
                      for i in range(cycles)]
            runner(inputs[0])  # capture (and compile) outside the timing
            if compile_mode:
                note(f"{label} batch {batch}: compiled and captured in {time.time() - t0:.0f} s")
            ms = median_ms(lambda s: runner(s)[1].tolist(), inputs)
            row = {"path": f"fast torch ({label} {'CUDA graph' if graphs else 'eager'})",
                   "batch": batch, "ms_cycle": ms}
            if batch == 1:  # the first prompt on the agreement states, in chunks of 32
                got = []
                for s in range(0, len(agree_states), 32):
                    got += runner(torch.tensor(agree_states[s:s + 32].astype(np.int64)))[1].tolist()
                row["agreement"] = float((words[got] == ref_words).mean())
            else:  # every prompt of the batch, each with its own states, vs the reference per prompt
                row["agreement"] = batch_agreement(model, fast, runner, group, agree_states, words)
            rows.append(row)
            del runner
        del fast
        torch.cuda.empty_cache() if graphs else None
    return rows


def batch_agreement(model, fast, runner, group, agree_states, words, rounds: int = 4) -> float:
    """Padded-batch fast path vs the released-style reference, prompt by prompt."""
    import torch

    batch = len(group)
    picks = [(np.arange(batch) + r * batch) % len(agree_states) for r in range(rounds)]
    got = np.stack([words[runner(torch.tensor(agree_states[p].astype(np.int64)))[1].tolist()]
                    for p in picks], axis=1)  # [batch, rounds]
    same = 0
    for j, prompt in enumerate(group):
        ref = reference_words(model, prompt, agree_states[[p[j] for p in picks]], PAD_TO)
        same += int((ref == got[j]).sum())
    return same / (batch * rounds)


# -------------------------------------------------------------------- MLX paths
def mlx_variant(base, torch_model, config, adapter_dtype: str, fuse: bool = True):
    """An MLX ReflexModel sharing `base`'s backbone, with adapters copied in adapter_dtype."""
    import mlx.core as mx

    from reflex_mlx.from_torch import to_mlx
    from reflex_mlx.model import Reflex, ReflexModel

    reflex = Reflex(base.reflex.args)
    target = getattr(mx, adapter_dtype)
    weights = Reflex.sanitize({k: to_mlx(v) for k, v in torch_model.reflex.state_dict().items()})
    reflex.load_weights([(k, v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v)
                         for k, v in weights.items()], strict=True)
    model = ReflexModel(SimpleNamespace(model=base.backbone), reflex, fuse=fuse)
    model.eval()
    mx.eval(model.parameters())
    return model


def mlx_rows(torch_model, config, prompts, states, batches, cycles, agree_states, ref_words,
             note) -> list[dict]:
    """Copy the torch weights into MLX (bf16 and 4-bit backbones), free torch, time each."""
    import mlx.core as mx

    from reflex_mlx.from_torch import mlx_model_from_torch, release_torch_memory

    device = "gpu" if mx.default_device() == mx.gpu else "cpu"
    models = {}
    t0 = time.time()
    for name, bits in (("bf16", None), ("4-bit", 4)):
        base = mlx_model_from_torch(torch_model, config, "bfloat16", bits, "float32")
        models[(name, "fp32")] = base
        models[(name, "bf16")] = mlx_variant(base, torch_model, config, "bfloat16")
        if bits is None:
            unfused = mlx_variant(base, torch_model, config, "bfloat16", fuse=False)
    note(f"MLX on {device}: copied the weights in {time.time() - t0:.0f} s")
    torch_model.to("meta")  # frees the torch copy where the caller still holds the model
    release_torch_memory()

    rows = []
    for (name, adapters), model in models.items():
        for batch in batches if adapters == "bf16" else [1]:
            group = prompts[:batch]
            width = max(len(p) for p in group)
            ids = mx.array(np.array([list(p) + [0] * (width - len(p)) for p in group]))
            last = None if batch == 1 else mx.array([len(p) - 1 for p in group])
            prefix = model.prefix(ids)
            mx.eval(prefix)
            variants = [("compiled", model.compiled_words)]
            if batch == 1 and adapters == "fp32" and name == "bf16":
                variants.append(("not compiled", model.words))
            if batch == 1 and adapters == "bf16" and name == "bf16":
                variants.append(("compiled, q/k/v and gate/up not fused", unfused.compiled_words))
            for how, words_of in variants:
                def call(s, words_of=words_of):
                    return np.array(words_of(prefix, mx.array(s), last))
                inputs = [states[(i * batch + np.arange(batch)) % len(states)] for i in range(cycles)]
                row = {"path": f"MLX {device} ({name} backbone, {adapters} adapters, {how})",
                       "batch": batch, "ms_cycle": median_ms(call, inputs)}
                if batch == 1 and how.startswith("compiled"):
                    got = np.concatenate([call(agree_states[s:s + 32])
                                          for s in range(0, len(agree_states), 32)])
                    row["agreement"] = float((got.astype(np.uint32) == ref_words).mean())
                rows.append(row)
    if hasattr(mx, "get_peak_memory"):
        note(f"MLX peak memory {mx.get_peak_memory() / 2**30:.1f} GiB")
    return rows


# ------------------------------------------------------------------- the table
def finish(rows: list[dict], shape: str) -> list[dict]:
    released = rows[0]["ms_cycle"]
    for r in rows:
        if "ms_cycle" not in r:
            continue
        r["ms_program_cycle"] = r["ms_cycle"] / r["batch"]
        r["speedup_vs_released"] = released / r["ms_program_cycle"]
        r["x_floor"] = r["ms_cycle"] / FLOOR_MS if shape == "release" else None
    return rows


def markdown(rows: list[dict], header: str, notes: list[str]) -> str:
    lines = [header, "",
             "| path | batch | ms/cycle | ms/program-cycle | speed-up vs released (per program-cycle) "
             "| ms/cycle ÷ floor 3.55 | word agreement vs released |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | {r['batch']} | error: {r['error']} | | | | |")
            continue
        floor = f"{r['x_floor']:.2f}" if r.get("x_floor") is not None else "-"
        agree = f"{r['agreement']:.4f}" if r.get("agreement") is not None else "-"
        lines.append(f"| {r['path']} | {r['batch']} | {r['ms_cycle']:.2f} | {r['ms_program_cycle']:.3f} "
                     f"| {r['speedup_vs_released']:.2f} | {floor} | {agree} |")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write(out: Path, stem: str, report: dict, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(text)
    print(text)


def run_speed(args) -> dict:
    import torch

    from reflex_torch.random_model import SHAPES, build_random_reflex

    notes: list[str] = []
    note = lambda text: (notes.append(text), print(f"# {text}", flush=True))
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shape = SHAPES[args.shape]
    t0 = time.time()
    model, config = build_random_reflex(shape, args.seed, device,
                                        torch.bfloat16 if cuda else torch.float32)
    note(f"built the random {args.shape} model on {device} in {time.time() - t0:.0f} s "
         f"(backbone {'bf16' if cuda else 'float32'}, adapters float32)")
    batches = [b for b in args.batches]
    prompts = prompt_set(shape.vocab, args.seed, max(batches))
    # Timing cycles and batches take states round-robin from these.
    states = bench_states(max(args.cycles, args.agree_states), args.corpus, args.seed)
    agree_states = states[: args.agree_states]
    ref_words = reference_words(model, prompts[0], agree_states, PAD_TO)
    note(f"{len(np.unique(ref_words))} distinct reference words over {len(agree_states)} agreement states")
    if not cuda:
        note("no CUDA here: the times are CPU times, not the H200's; the floor column is left out")

    rows = torch_rows(model, args.shape, prompts, states, batches, args.cycles, agree_states,
                      ref_words, note, args.torch_compile)
    if cuda:
        note(f"torch peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if not args.no_mlx:
        try:
            rows += mlx_rows(model, config, prompts, states, batches, args.cycles, agree_states,
                             ref_words, note)
        except Exception as err:  # keep the torch rows: report why MLX did not run
            traceback.print_exc()
            rows.append({"path": "MLX", "batch": 1, "error": str(err).splitlines()[0][:120]})
    rows = finish(rows, args.shape)
    report = {"shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "torch": torch.__version__, "cycles": args.cycles, "seed": args.seed,
              "prompt_tokens": [len(p) for p in prompts], "floor_ms": FLOOR_MS,
              "rows": rows, "notes": notes}
    header = (f"## Speed, {args.shape} shape, random weights, {report['device']} "
              f"(median of {args.cycles} cycles; batch 1 prompt {PROMPT_LEN} tokens)")
    write(args.out, "speed", report, markdown(rows, header, notes))
    return report


# ---------------------------------------------------------------- tiny agreement
def run_tiny(args) -> dict:
    """Every fast path against the reference on the trained model's 41-task eval."""
    import torch

    from reflex_core.evaluation import evaluate, per_prompt
    from reflex_torch.fast import FastBatchPredictor, FastPredictor, FastReflex
    from reflex_torch.load import TorchPredictor, load_reflex

    from .agreement import lockstep_agreement, outcome_agreement

    torch_dir = Path(args.tiny_torch)
    model, tokenizer, config = load_reflex(torch_dir / "reflex.pt", backbone=str(torch_dir / "backbone"))
    make_ref = lambda task: TorchPredictor(model, tokenizer, task, config).predict_many
    fasts = {}
    if not args.no_torch_fast:
        fasts = {"fp32": FastReflex(model), "bf16": FastReflex(model, adapter_dtype=torch.bfloat16),
                 "bf16 fused": FastReflex(model, adapter_dtype=torch.bfloat16, fuse=True)}
    if args.torch_compile and not args.no_torch_fast:  # the fastest setting of the speed table
        fasts["bf16 fused torch.compile"] = FastReflex(model, adapter_dtype=torch.bfloat16, fuse=True,
                                                       compile=args.torch_compile)
    single = {f"fast torch {k} adapters, b1": (lambda task, f=f: FastPredictor(f, tokenizer, task, config).predict_many)
              for k, f in fasts.items()}
    batched = {f"fast torch {k} adapters, run_batch": (lambda prompts, f=f: FastBatchPredictor(f, tokenizer, prompts, config))
               for k, f in fasts.items()}
    if not args.no_mlx:
        import mlx.core as mx

        from reflex_mlx.from_torch import mlx_model_from_torch
        from reflex_mlx.load import MLXBatchPredictor, MLXPredictor

        where = "gpu" if mx.default_device() == mx.gpu else "cpu"
        # (backbone, bits, adapters): as shipped for a Mac, the speed table's fastest, 4-bit
        for backbone, bits, adapters in (("bf16", None, "float32"), ("bf16", None, "bfloat16"),
                                         ("4-bit", 4, "float32")):
            m = mlx_model_from_torch(model, config, "bfloat16", bits, adapters)
            name = f"MLX {where} {backbone} backbone, {'fp32' if adapters == 'float32' else 'bf16'} adapters"
            single[f"{name}, b1 (compiled)"] = \
                lambda task, m=m: MLXPredictor(m, tokenizer, task, config).predict_many
            batched[f"{name}, batch (compiled)"] = \
                lambda prompts, m=m: MLXBatchPredictor(m, tokenizer, prompts, config)

    # One reference eval; every batched candidate sees each cycle's exact (indices, states).
    tallies = {name: [0, 0] for name in batched}
    recorded = []

    def make_checked(prompts):
        ref = per_prompt(make_ref, prompts)
        cands = {name: make(prompts) for name, make in batched.items()}

        def predict(indices, states):
            words = ref(indices, states)
            for name, cand in cands.items():
                got = cand(indices, states)
                tallies[name][0] += sum(int(a) & 0xFFFFFFFF == int(b) & 0xFFFFFFFF for a, b in zip(words, got))
                tallies[name][1] += len(words)
            return words
        return predict

    t0 = time.time()
    ref_report = evaluate(make_batch_predictor=make_checked, max_cycles=args.max_cycles,
                          on_states=lambda p, s, w: recorded.append((p, s, list(w))))
    results = {}
    for name, (agree, total) in tallies.items():
        own = evaluate(make_batch_predictor=batched[name], max_cycles=args.max_cycles)
        results[name] = {"lockstep": {"cycles": total, "agree": agree, "rate": agree / max(total, 1)},
                         "free_running": outcome_agreement(ref_report, own)}
    for name, make in single.items():
        own = evaluate(make, max_cycles=args.max_cycles)
        results[name] = {"lockstep": lockstep_agreement(recorded, make),
                         "free_running": outcome_agreement(ref_report, own)}
    device = model.reflex.instr_words.device
    lines = [f"## Agreement with the reference on the 41-task eval of {torch_dir.name}", "",
             f"Reference: ReflexModel (hooks, padded to 96) on {device}, "
             f"{ref_report['passed']}/{ref_report['total']} passed; {time.time() - t0:.0f} s in all.", "",
             "| path | lock-step word agreement | runs identical | same pass | passed |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        ls, fr = r["lockstep"], r["free_running"]
        lines.append(f"| {name} | {ls['agree']}/{ls['cycles']} ({ls['rate']:.4f}) | {fr['identical']}/{fr['runs']} "
                     f"| {fr['same_pass']}/{fr['runs']} | {fr['candidate_passed']}/{fr['runs']} |")
    report = {"torch": str(torch_dir), "device": str(device), "reference_passed": ref_report["passed"],
              "total": ref_report["total"], "max_cycles": args.max_cycles, "paths": results}
    write(args.out, "agreement_tiny", report, "\n".join(lines) + "\n")
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=["release", "tiny-test"], default="release")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cycles", type=int, default=30, help="timed calls per row (median)")
    p.add_argument("--corpus", default=None, help="folder holding programs/ (default: find_corpus())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", default="1,8,41", help="fast-path batch sizes, comma separated")
    p.add_argument("--agree-states", type=int, default=256,
                   help="states for the word-agreement column (multiple of 32)")
    p.add_argument("--no-mlx", action="store_true", help="leave out the MLX rows")
    p.add_argument("--no-torch-fast", action="store_true",
                   help="--tiny-torch: leave out the fast torch paths (the reference still runs)")
    p.add_argument("--torch-compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="add rows for the fast path with torch.compile inside the graph (bf16 adapters, "
                        "fused; compiled for the first shape, once more with symbolic sizes); MODE: a torch.compile mode, "
                        "e.g. max-autotune-no-cudagraphs")
    p.add_argument("--tiny-torch", default=None,
                   help="instead: eval agreement of every fast path on this trained torch model dir")
    p.add_argument("--max-cycles", type=int, default=EVAL_MAX_CYCLES, help="--tiny-torch: eval cycle limit")
    args = p.parse_args(argv)
    args.batches = sorted({int(b) for b in args.batches.split(",")} | {1})
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    run_tiny(args) if args.tiny_torch else run_speed(args)


if __name__ == "__main__":
    main()
