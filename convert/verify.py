"""A conversion's fidelity: the converted model against its unquantized source,
on the 41 evaluation prompts.

The converted model drives every run, as `reflex-mlx eval` would, and each
state it meets is recorded. The *source* (the backbone as it was before
conversion, with the checkpoint's float32 adapters, computed in float32) then
predicts on exactly those states. It is never loaded whole: its decoder
layers are read from disk one at a time (MLX loads safetensors lazily) and
applied to the hidden states of every recorded cycle, so the peak is one
source layer plus the hidden states, and the converted model has been freed
by then. A 16 GB Mac can verify a 7B conversion this way.

Where a run diverges (the source would have chosen another word somewhere),
the source's own outcome on that task needs the source to drive it: that is
done when the whole float32 source fits in half the machine's memory, and
reported as unknown otherwise.

The report goes into the model's config.json (`fidelity`) and its model
card; `reflex-mlx info MODEL` prints it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from reflex_core.evaluation import Task, load_tasks
from reflex_core.loop import check, run_many
from reflex_core.spec import EVAL_MAX_CYCLES, ReflexArgs
from reflex_core.timing import peak_rss

HIDDEN_BUDGET = 1 << 30  # bytes of float32 hidden states held for one chunk of runs
ROW_BUDGET = 256 << 20  # bytes of a layer's widest activation in one call


class VerifyError(Exception):
    """A one-line reason the verification could not be done."""


@dataclass
class Run:
    """One evaluation run as the converted model drove it."""

    task: Task
    tokens: list[int]
    states: list[list[int]] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    passed: bool = False


def verify_conversion(
    model_dir: Path,
    source_dir: Path,
    checkpoint_path: Path,
    progress: bool = True,
    tasks: int | None = None,
    max_cycles: int = EVAL_MAX_CYCLES,
) -> dict:
    """The fidelity report of the converted model in `model_dir` (see the module doc).
    tasks: only the first N tasks of the table (for quick checks; None: all 41)."""
    started = time.perf_counter()
    table = load_tasks()[:tasks] if tasks else load_tasks()
    try:
        runs, config = drive_converted(model_dir, table, max_cycles)
        mx.clear_cache()
        mx.reset_peak_memory()
        source = StreamedSource(source_dir, checkpoint_path, config)
        predicted = source.words(runs, progress=progress)
        stream_peak = mx.get_peak_memory()
        same = [sum(a == b for a, b in zip(run.words, words)) for run, words in zip(runs, predicted)]
        diverged = [i for i, run in enumerate(runs) if same[i] != len(run.words)]
        source_passed = {i: runs[i].passed for i in range(len(runs)) if i not in diverged}
        source_driven = False
        if diverged and source.fits_whole():
            for i, passed in zip(diverged, source.drive([runs[i] for i in diverged], max_cycles)):
                source_passed[i] = passed
            source_driven = True
    except MemoryError:
        raise VerifyError("out of memory while verifying; convert with --no-verify") from None
    except RuntimeError as err:
        if "memory" in str(err).lower():
            raise VerifyError(
                f"out of memory while verifying ({str(err)[:80]}); convert with --no-verify"
            ) from None
        raise
    total = sum(len(run.words) for run in runs)
    known = len(source_passed) == len(runs)
    return {
        "prompts": "the 41-task evaluation" if not tasks else f"the first {len(table)} evaluation tasks",
        "same_word": sum(same),
        "cycles": total,
        "runs": len(runs),
        "runs_identical": len(runs) - len(diverged),
        "converted_passed": sum(run.passed for run in runs),
        "source_passed": sum(source_passed.values()) if known else None,
        "same_pass_set": all(source_passed[i] == run.passed for i, run in enumerate(runs)) if known else None,
        "source_drove_diverged_runs": source_driven,
        "per_task": [
            {
                "tag": run.task.tag,
                "same_word": s,
                "cycles": len(run.words),
                "converted_pass": run.passed,
                "source_pass": source_passed.get(i),
            }
            for i, (run, s) in enumerate(zip(runs, same))
        ],
        "source": "unquantized backbone + float32 adapters, computed in float32, streamed layer by layer",
        "peak_memory_bytes": int(stream_peak),
        "process_peak_rss_bytes": peak_rss(),
        "seconds": round(time.perf_counter() - started, 1),
        "device": str(mx.default_device()),
    }


def drive_converted(model_dir: Path, table: list[Task], max_cycles: int) -> tuple[list[Run], dict]:
    """Run every task with the converted model (its fast path), recording each state and word."""
    from reflex_core.predict import BatchPredictor
    from reflex_mlx.fast import FastReflex
    from reflex_mlx.loader import load_model

    model, tokenizer, config = load_model(model_dir)
    tasks = [task for task in table for _ in range(task.repeat)]
    predict = BatchPredictor(FastReflex(model, fuse=True), tokenizer, [t.prompt for t in tasks], config)
    runs = [Run(task, list(tokens.ids)) for task, tokens in zip(tasks, predict.tokens)]

    def recorded(indices, states):
        words = predict(indices, states)
        for i, state, word in zip(indices, states, words):
            runs[i].states.append(list(state))
            runs[i].words.append(int(word))
        return words

    results = run_many(recorded, len(runs), max_cycles=max_cycles, with_indices=True)
    for run, result in zip(runs, results):
        run.passed = check(result, run.task.check, run.task.expected)
    return runs, config


def _to_float32(module) -> None:
    module.update(tree_map(lambda p: p.astype(mx.float32), module.parameters()))


def _free(module) -> None:
    module.update(tree_map(lambda p: mx.array([], dtype=p.dtype), module.parameters()))


class StreamedSource:
    """The unquantized source, one decoder layer (and one adapter) in memory at a time."""

    def __init__(self, source_dir: Path, checkpoint_path: Path, config: dict):
        from reflex_mlx.backbone import load_backbone

        from .checkpoint import read_checkpoint

        self.source_dir = Path(source_dir)
        self.checkpoint_path = Path(checkpoint_path)
        self.config = config
        self.args = ReflexArgs.from_config(config)
        self.ckpt = read_checkpoint(checkpoint_path)
        model, self.backbone_config, _, _ = load_backbone(self.source_dir, lazy=True)
        self.source_bytes = 4 * sum(v.size for _, v in tree_flatten(model.parameters()))
        self.source_bytes += 4 * sum(math.prod(t.shape) for t in self.ckpt.state.values())

    def _reflex(self):
        """The Reflex modules with the checkpoint's encoder, head and codebook loaded,
        in float32; the adapters stay unmaterialized until `_load_adapter`."""
        from reflex_mlx.model import Reflex

        reflex = Reflex(self.args)
        self._load(reflex, lambda n: not n.startswith("adapters."))
        return reflex

    def _load_adapter(self, reflex, k: int) -> None:
        """Adapter k's weights from the checkpoint, in float32 (`_free` lets them go)."""
        self._load(reflex, lambda n: n.startswith(f"adapters.{k}."))

    def _load(self, reflex, wanted) -> None:
        from reflex_mlx.model import Reflex

        weights = Reflex.sanitize({n: mx.array(t.numpy()) for n, t in self.ckpt.state.items() if wanted(n)})
        reflex.load_weights(list(weights.items()), strict=False)
        reflex.apply(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p)

    def words(self, runs: list[Run], progress: bool = True) -> list[list[int]]:
        """The source's word at every recorded cycle of every run: ReflexModel's own
        wiring (`adapt` after each layer, `predict` on the last token), one layer at a time."""
        from reflex_mlx.backbone import load_backbone
        from reflex_mlx.model import ReflexModel

        H = self.backbone_config["hidden_size"]
        wide = max(H, self.backbone_config.get("intermediate_size", H))
        per_cycle = lambda run: 4 * len(run.tokens) * H
        chunks, chunk, held = [], [], 0
        for i, run in enumerate(runs):
            if chunk and held + per_cycle(run) * len(run.words) > HIDDEN_BUDGET:
                chunks.append(chunk)
                chunk, held = [], 0
            chunk.append(i)
            held += per_cycle(run) * len(run.words)
        chunks.append(chunk)

        reflex = self._reflex()
        out: list[list[int]] = [[] for _ in runs]
        bar = None
        if progress:
            from tqdm import tqdm

            layers = self.backbone_config["num_hidden_layers"]
            bar = tqdm(total=len(chunks) * layers, desc="verify: source layers", unit="layer", leave=False)
        for chunk in chunks:
            # lazy: nothing is read until a layer is used
            model = ReflexModel(load_backbone(self.source_dir, lazy=True)[0], reflex)
            _to_float32(model.backbone.embed_tokens)
            hidden = {i: model.backbone.embed_tokens(mx.array([runs[i].tokens])) for i in chunk}
            mx.eval(list(hidden.values()))
            _free(model.backbone.embed_tokens)
            for index, layer in enumerate(model.backbone.layers):
                _to_float32(layer)
                adapted = index in model.adapter_layers
                if adapted:
                    self._load_adapter(reflex, model.adapter_layers.index(index))
                for i in chunk:
                    run, h = runs[i], hidden[i]
                    rows = max(1, ROW_BUDGET // (4 * wide * len(run.tokens)))
                    if h.shape[0] == 1:  # still the prompt alone: the state has not entered yet
                        h = layer(h, "causal")
                        if adapted:
                            h = mx.broadcast_to(h, (len(run.words), *h.shape[1:]))
                            h = self._adapt(model, index, h, run.states, rows)
                    else:
                        parts = []
                        for a in range(0, h.shape[0], rows):
                            part = layer(h[a : a + rows], "causal")
                            if adapted:
                                part = self._adapt(model, index, part, run.states[a : a + rows])
                            parts.append(part)
                            mx.eval(parts[-1])
                        h = mx.concatenate(parts, axis=0)
                    mx.eval(h)
                    hidden[i] = h
                _free(layer)
                if adapted:
                    _free(reflex.adapters[model.adapter_layers.index(index)])
                if bar is not None:
                    bar.update(1)
            _to_float32(model.backbone.norm)
            for i in chunk:
                out[i] = reflex.decode(model.predict(hidden.pop(i)[:, -1, :]))
            del model
            mx.clear_cache()
        if bar is not None:
            bar.close()
        return out

    @staticmethod
    def _adapt(model, layer: int, h: mx.array, states, rows: int | None = None) -> mx.array:
        """model.adapt after decoder layer `layer`, `rows` states at a time."""
        from reflex_mlx.model import states_array

        rows = rows or h.shape[0]
        parts = []
        for a in range(0, h.shape[0], rows):
            kv = model.reflex.encode_state(states_array(states[a : a + rows]))
            parts.append(model.adapt(layer, h[a : a + rows], kv))
            mx.eval(parts[-1])
        return mx.concatenate(parts, axis=0)

    def fits_whole(self) -> bool:
        """Whether the float32 source fits in half of this machine's memory."""
        total = mx.device_info().get("memory_size") or os.sysconf("SC_PAGE_SIZE") * os.sysconf(
            "SC_PHYS_PAGES"
        )
        return self.source_bytes <= total // 2

    def drive(self, runs: list[Run], max_cycles: int) -> list[bool]:
        """The source drives these tasks itself (whole, float32): whether each passes."""
        from mlx_lm.utils import load_tokenizer

        from reflex_core.predict import BatchPredictor
        from reflex_mlx.backbone import load_backbone
        from reflex_mlx.fast import FastReflex
        from reflex_mlx.model import ReflexModel

        backbone = load_backbone(self.source_dir, lazy=True)[0]
        backbone.apply(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p)
        reflex = self._reflex()
        for k in range(self.args.num_adapters):
            self._load_adapter(reflex, k)
        model = ReflexModel(backbone, reflex)
        tokenizer = load_tokenizer(self.source_dir)
        predict = BatchPredictor(FastReflex(model), tokenizer, [run.task.prompt for run in runs], self.config)
        results = run_many(predict, len(runs), max_cycles=max_cycles, with_indices=True)
        return [check(result, run.task.check, run.task.expected) for run, result in zip(runs, results)]
