"""A fast way to run the MLX model: the same modules, called explicitly.

`ReflexModel.__call__` runs the whole prompt every cycle, as the release does.
`FastReflex` is a runner over the *same* modules (no second set of weights,
unless other adapter dtypes are asked for) that computes the same function
with less work:

* no padding: a batch's prompts are packed token after token (N rows; the
  index math is reflex_core.batching); only attention, which must not mix
  prompts, sees them on a [B, T] grid;
* everything up to and including the first adapter's decoder layer does not
  depend on the machine state, so `prefix()` runs it once per prompt set;
* the last decoder layer feeds only the pooled last token, so past its
  attention it runs on one row per prompt, and so does any adapter after it;
* the per-cycle `step` is written out layer by layer over mlx-lm's decoder
  modules (the TransformerBlock math of its qwen2, llama and qwen3 models);
  the adapters and the head are the model's own wiring (`ReflexModel.adapt`,
  `ReflexModel.predict`);
* options: q/k/v and gate/up as one matmul each (`fuse_projections`), and
  mx.compile of step and decode together, so a cycle launches fewer kernels.

reflex_torch/fast.py is the same file for PyTorch (where a CUDA graph plays
mx.compile's part).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.activations import swiglu

from reflex_core.batching import PackedLayout
from reflex_core.cache import once_per_object

from .model import Reflex, ReflexModel, states_array


@dataclass
class FusedLayer:
    """One decoder layer's q/k/v as one projection and gate/up as another."""

    qkv: nn.Module | None  # None where the parts differ in precision (then run apart)
    qkv_split: list[int]  # where q ends and k ends in qkv's output
    gate_up: nn.Module | None


def _joined(parts: list[nn.Module]) -> nn.Module:
    """One projection (nn.Linear or nn.QuantizedLinear) whose output rows are the
    parts' rows in order; each part's arrays become slices of it (views, so the
    weights are not held twice)."""
    joined = copy.copy(parts[0])
    names = [n for n in ("weight", "scales", "biases", "bias") if n in parts[0]]
    for name in names:
        joined[name] = mx.concatenate([part[name] for part in parts], axis=0)
    start = 0
    for part in parts:
        rows = part["weight"].shape[0]
        for name in names:
            part[name] = joined[name][start : start + rows]
        start += rows
    return joined


def _alike(parts: list[nn.Module]) -> bool:
    """Projections that can share one matmul: same kind, bits, group size and mode
    (mlx-lm's mixed recipes give v_proj and down_proj more bits in some layers)."""
    kind = lambda m: (
        type(m),
        getattr(m, "bits", None),
        getattr(m, "group_size", None),
        getattr(m, "mode", None),
    )
    return len({kind(part) for part in parts}) == 1


def fuse_projections(backbone: nn.Module) -> list[FusedLayer]:
    """Each decoder layer's q/k/v and gate/up stored as one array each, in place.

    The modules keep working unchanged (their arrays become slices of the
    fused ones); the fast step runs one matmul where there were three (q, k, v)
    or two (gate, up). At one prompt per cycle the step is bound by kernel
    launches: this saves 1.4 ms over the 24 uncached layers of the release on
    an H200 (docs/results/mlx_layers_h200.txt). Done once per backbone, however
    many runners fuse it.
    """

    def build():
        fused = []
        for layer in backbone.layers:
            attn, mlp = layer.self_attn, layer.mlp
            q, k = attn.q_proj["weight"].shape[0], attn.k_proj["weight"].shape[0]
            qkv, gate_up = [attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]
            fused.append(
                FusedLayer(
                    qkv=_joined(qkv) if _alike(qkv) else None,
                    qkv_split=[q, q + k],
                    gate_up=_joined(gate_up) if _alike(gate_up) else None,
                )
            )
        mx.eval(
            backbone.parameters(),
            [part.parameters() for f in fused for part in (f.qkv, f.gate_up) if part is not None],
        )
        return fused

    return once_per_object(backbone, "fused projections", build)


def cast_reflex(reflex: Reflex, dtype: mx.Dtype) -> Reflex:
    """A copy of the Reflex modules in `dtype` (the uint32 codebook words stay uint32)."""
    copy_ = Reflex(reflex.args)
    weights = [
        (k, v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v)
        for k, v in tree_flatten(reflex.parameters())
    ]
    copy_.load_weights(weights, strict=True)
    copy_.eval()
    mx.eval(copy_.parameters())
    return copy_


class PromptBatch:
    """B prompts, state-independent: their packed prefix [1, N, H] and the layout's
    indices as arrays (reflex_core.batching.PackedLayout).

    Packed rows keep a leading axis of 1 (torch's are [N, H]): MLX's CUDA matmuls
    were measured slower on 2-D activations (9.1 against 7.6 ms a cycle at the
    released shape, docs/performance.md). Everything else is read off the
    arrays' shapes, so a compiled step can rebuild the batch from them.
    """

    def __init__(
        self,
        prefix: mx.array,
        grid: mx.array,
        packed: mx.array,
        last: mx.array,
        layout: PackedLayout | None = None,
    ):
        self.prefix, self.grid, self.packed, self.last, self.layout = prefix, grid, packed, last, layout
        self.batch = last.shape[0]
        self.width = grid.shape[0] // self.batch
        self.uniform = prefix.shape[1] == self.batch * self.width  # then grid == packing
        self.repeats: dict[int, PromptBatch] = {}

    @classmethod
    def of_layout(cls, prefix: mx.array, layout: PackedLayout) -> PromptBatch:
        index = lambda values: mx.array(values, dtype=mx.int32)
        return cls(prefix, index(layout.grid), index(layout.packed), index(layout.last), layout)

    def arrays(self) -> tuple[mx.array, ...]:
        return self.prefix, self.grid, self.packed, self.last

    def to_grid(self, x: mx.array) -> mx.array:
        """[1, N, ...] packed -> [B, T, ...]."""
        x = x if self.uniform else x[:, self.grid]
        return x.reshape(self.batch, self.width, *x.shape[2:])

    def from_grid(self, y: mx.array) -> mx.array:
        """[B, T, ...] -> [1, N, ...] packed (the pads dropped)."""
        y = y.reshape(1, self.batch * self.width, *y.shape[2:])
        return y if self.uniform else y[:, self.packed]

    def pool(self, x: mx.array) -> mx.array:
        """[1, N, ...] packed -> [B, 1, ...]: each prompt's last token."""
        if self.uniform:
            return x.reshape(self.batch, self.width, *x.shape[2:])[:, -1:]
        return x[:, self.last].swapaxes(0, 1)

    def select(self, indices: Sequence[int]) -> PromptBatch:
        """The prompts at `indices` only, with their packed rows of the prefix."""
        rows = mx.array(self.layout.rows_of(indices), dtype=mx.int32)
        return PromptBatch.of_layout(self.prefix[:, rows], self.layout.select(indices))

    def repeat(self, count: int) -> PromptBatch:
        """This one-prompt batch as `count` rows (one per state)."""
        if count not in self.repeats:
            prefix = mx.tile(self.prefix, (1, count, 1))
            self.repeats[count] = PromptBatch.of_layout(prefix, self.layout.repeat(count))
        return self.repeats[count]


class FastReflex:
    """prefix(token lists) once, then step(batch, states) per cycle.

    adapter_dtype: None keeps the model's own Reflex modules (float32 as
    released); e.g. mx.bfloat16 runs them from a cast copy. fuse: q/k/v and
    gate/up as one matmul each (`fuse_projections`). compile: step and decode
    through mx.compile, traced once per shape and replayed with elementwise
    ops fused; the weights are constants of the trace (inference only).
    """

    def __init__(
        self,
        model: ReflexModel,
        adapter_dtype: mx.Dtype | None = None,
        fuse: bool = False,
        compile: bool = False,
    ):
        reflex = model.reflex
        if adapter_dtype is not None and adapter_dtype != reflex.adapters[0].attn_gate.dtype:
            model = copy.copy(model)  # the same backbone around a cast copy of the Reflex modules
            model.reflex = cast_reflex(reflex, adapter_dtype)
        self.model, self.reflex = model, model.reflex
        self.backbone = model.backbone
        self.fused = fuse_projections(self.backbone) if fuse else None
        self.first = model.adapter_layers[0]
        self.codebook = np.array(self.reflex.instr_words).tolist()
        self.forward = mx.compile(self._forward) if compile else self._forward

    # ----------------------------------------------------------- per prompt
    def prefix(self, token_lists: Sequence[Sequence[int]]) -> PromptBatch:
        """Pack the prompts and run them up to and including the first adapter's layer."""
        ids = mx.array(np.concatenate([np.asarray(t, dtype=np.int32) for t in token_lists]))[None]
        batch = PromptBatch.of_layout(self.backbone.embed_tokens(ids), PackedLayout.of(token_lists))
        for i in range(self.first + 1):
            batch.prefix = self._layer(i, batch.prefix, batch, pooled=False)
        mx.eval(batch.prefix)
        return batch

    # ------------------------------------------------------------ per cycle
    def step(self, batch: PromptBatch, states: mx.array, capture: dict | None = None) -> mx.array:
        """A prompt batch + states [B, 65] uint32 -> predicted embeddings [B, E].

        `capture`, when given, receives what the parity suite compares: "kv"
        (the encoded state), each adapter layer's index -> the hidden state
        after that layer and its adapter at the last token, and "pred".
        """
        kv = self.reflex.encode_state(states)
        h, pooled = batch.prefix, False  # [1, N, H] until pooled, then [B, 1, H]
        last_layer = len(self.backbone.layers) - 1
        for i in range(self.first, last_layer + 1):
            if i > self.first:
                pooled = i == last_layer
                h = self._layer(i, h, batch, pooled)
            h = self.model.adapt(i, h, kv, None if pooled else batch)
            if capture is not None and i in self.model.adapter_layers:  # even if skipped
                capture[i] = (h if pooled else batch.pool(h))[:, 0]
        if not pooled:
            h = batch.pool(h)
        pred = self.model.predict(h[:, 0])
        if capture is not None:
            capture.update(kv=kv, pred=pred)
        return pred

    def _layer(self, i: int, h: mx.array, batch: PromptBatch, pooled: bool) -> mx.array:
        """Decoder layer i (mlx-lm's TransformerBlock math) on packed tokens
        [1, N, H]; pooled=True returns only each prompt's last token [B, 1, H]."""
        layer = self.backbone.layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        fused = self.fused[i] if self.fused else None
        x = layer.input_layernorm(h)
        if fused and fused.qkv is not None:
            q, k, v = mx.split(fused.qkv(x), fused.qkv_split, axis=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        B, T = batch.batch, batch.width
        qk_norm = hasattr(attn, "q_norm")  # Qwen3: RMSNorm per head before rope

        def grid(t, n, norm=None):  # packed [1, N, n*D] -> [B, n, T, D]
            t = batch.to_grid(t).reshape(B, T, n, -1)
            return (norm(t) if norm is not None else t).transpose(0, 2, 1, 3)

        q, k, v = (
            attn.rope(grid(q, attn.n_heads, attn.q_norm if qk_norm else None)),
            attn.rope(grid(k, attn.n_kv_heads, attn.k_norm if qk_norm else None)),
            grid(v, attn.n_kv_heads),
        )
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask="causal" if T > 1 else None)
        o = batch.from_grid(o.transpose(0, 2, 1, 3).reshape(B, T, -1))
        if pooled:  # only each prompt's last token is read after this layer
            o, h = batch.pool(o), batch.pool(h)
        h = h + attn.o_proj(o)
        x = layer.post_attention_layernorm(h)
        if fused and fused.gate_up is not None:
            gate, up = mx.split(fused.gate_up(x), 2, axis=-1)
            return h + mlp.down_proj(swiglu(gate, up))
        return h + mlp(x)

    def _forward(self, prefix, grid, packed, last, states) -> tuple[mx.array, mx.array]:
        """(pred, codebook rows): the step and the decode, one function for mx.compile."""
        pred = self.step(PromptBatch(prefix, grid, packed, last), states)
        return pred, self.reflex.rows(pred)

    def rows(self, pred: mx.array) -> mx.array:
        return self.reflex.rows(pred)

    def decode(self, pred: mx.array) -> list[int]:
        return [self.codebook[r] for r in np.array(self.rows(pred)).tolist()]

    # ---------------------------------------------- the runner protocol
    def embed(self, batch: PromptBatch, states) -> np.ndarray:
        return np.array(self._run(batch, states)[0].astype(mx.float32))

    def words(self, batch: PromptBatch, states, indices: Sequence[int] | None = None) -> list[int]:
        """Words for the states of the prompts at `indices` (all when None); only
        the prompts asked for are computed."""
        if indices is not None and len(indices) != batch.batch:
            batch = batch.select(indices)
        return [self.codebook[r] for r in np.array(self._run(batch, states)[1]).tolist()]

    def _run(self, batch: PromptBatch, states) -> tuple[mx.array, mx.array]:
        count = len(states)
        if count != batch.batch:
            if batch.batch != 1:
                raise ValueError(f"a batch of {batch.batch} prompts takes {batch.batch} states, not {count}")
            batch = batch.repeat(count)
        return self.forward(*batch.arrays(), states_array(states))
