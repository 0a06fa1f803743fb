"""What `reflex-mlx analyze` reads from an MLX model: the codebook rows, the adapters'
tanh gates, a single adapter switched off (its gates at zero), and the attention each
adapter pays to the 65 state tokens. The statistics themselves are reflex_core.analysis.

Attention is read by `AttentionRecorder`, which stands in for the ReflexModel in a
FastReflex runner: the runner calls its `adapt` where it would call the model's, and it
computes the adapter's attention weights from the same inputs before handing the call on
to the model's own adapter, so the modules run unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx
import numpy as np

from reflex_core.spec import STATE_WORDS

from .fast import FastReflex
from .model import ReflexModel


def reflex_model(runner) -> ReflexModel:
    """The ReflexModel a loaded runner (FastReflex or Reference) drives."""
    return runner.model


def codebook(model: ReflexModel) -> tuple[np.ndarray, list[int]]:
    """(the codebook's rows [N, E] as float32, the word of each row)."""
    reflex = model.reflex
    rows = np.array(reflex.instr_table.weight.astype(mx.float32))
    return rows, [int(w) for w in np.array(reflex.instr_words).tolist()]


def gates(model: ReflexModel) -> list[dict]:
    """tanh of each adapter's attention and MLP gates, with the decoder layer it follows."""
    out = []
    for layer, adapter in zip(model.adapter_layers, model.reflex.adapters):
        attn = float(mx.tanh(adapter.attn_gate.astype(mx.float32)).item())
        mlp = float(mx.tanh(adapter.mlp_gate.astype(mx.float32)).item())
        out.append({"layer": layer, "attn_gate": attn, "mlp_gate": mlp})
    return out


@contextmanager
def gates_zeroed(model: ReflexModel, index: int) -> Iterator[None]:
    """Adapter `index` with both gates at zero (it then passes the hidden state through
    unchanged), restored on leaving. An uncompiled runner sees the change; a compiled one
    holds the weights it traced."""
    adapter = model.reflex.adapters[index]
    saved = adapter.attn_gate, adapter.mlp_gate
    adapter.attn_gate, adapter.mlp_gate = mx.zeros_like(saved[0]), mx.zeros_like(saved[1])
    try:
        yield
    finally:
        adapter.attn_gate, adapter.mlp_gate = saved


class AttentionRecorder:
    """The ReflexModel as a FastReflex runner sees it, adding up each adapter's attention
    weights (mean over heads) from each prompt's last token over the state tokens while
    `recording`. Every other attribute is the model's own."""

    def __init__(self, model: ReflexModel):
        self.model = model
        self.recording = True
        self.sums = np.zeros((len(model.adapter_layers), STATE_WORDS))
        self.counts = np.zeros(len(model.adapter_layers), dtype=np.int64)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def adapt(self, layer: int, h: mx.array, kv: mx.array, grid=None) -> mx.array:
        if self.recording and layer in self.model.adapter_layers:
            index = self.model.adapter_layers.index(layer)
            weights = np.array(last_token_attention(self.model.reflex.adapters[index], h, kv, grid))
            self.sums[index] += weights.sum(axis=0)
            self.counts[index] += weights.shape[0]
        return self.model.adapt(layer, h, kv, grid)

    def mean(self) -> np.ndarray:
        """[adapters, 65]: the average attention per state token (each row sums to 1)."""
        return self.sums / np.maximum(self.counts, 1)[:, None]


def last_token_attention(adapter, h: mx.array, kv: mx.array, grid=None) -> mx.array:
    """[B, 65]: the adapter's softmax weights over the state tokens for each prompt's last
    token, averaged over heads (the adapter's own norm and projections, in its dtype)."""
    dtype = adapter.attn_gate.dtype
    q = adapter.norm_q(h.astype(dtype))
    q = q if grid is None else grid.pool(q)  # [B, 1, H]
    attn = adapter.attn
    split = lambda t: t.reshape(t.shape[0], t.shape[1], attn.heads, -1).transpose(0, 2, 1, 3)
    qh, kh = split(attn.q_proj(q)), split(attn.k_proj(kv.astype(dtype)))
    weights = mx.softmax((qh * attn.scale) @ kh.swapaxes(-1, -2), axis=-1, precise=True)  # [B, heads, 1, 65]
    return weights[:, :, 0].astype(mx.float32).mean(axis=1)


def recording_runner(model: ReflexModel) -> tuple[FastReflex, AttentionRecorder]:
    """An uncompiled runner over the model's own modules (so `gates_zeroed` takes effect)
    and the recorder it reports attention to."""
    recorder = AttentionRecorder(model)
    return FastReflex(recorder, fuse=True, compile=False), recorder
