"""Reflex in MLX: state encoder, gated cross-attention adapters, head and codebook
around an mlx-lm decoder backbone: Qwen2 as released, or Llama, Mistral, Qwen3
(reflex_core.spec.SUPPORTED_BACKBONES; docs/design.md §3).

Plain modules, read top to bottom: `ReflexModel.__call__` is the released
forward, the adapters called in the decoder's own loop after the listed
layers (where the release hooks them). `Reference` runs it as a predictor
runner. The fast path (prefix cached, packed batches, fused projections,
mx.compile) is a runner over these same modules: reflex_mlx/fast.py.
reflex_torch/model.py is the same file for PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from reflex_core.batching import pad_batch
from reflex_core.spec import LAYER_NORM_EPS, STATE_WORDS, ReflexArgs


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.gelu(self.fc1(x)))  # exact (erf) GELU, as released


class StateEncoder(nn.Module):
    """65 machine words -> 65 key/value tokens: 4 byte embeddings, projection, role."""

    def __init__(self, hidden: int):
        super().__init__()
        self.role_embed = nn.Embedding(STATE_WORDS, hidden)
        self.byte_embeds = [nn.Embedding(256, 32) for _ in range(4)]
        self.value_proj = nn.Linear(4 * 32, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)

    def __call__(self, words: mx.array) -> mx.array:  # [B, 65] uint32 -> [B, 65, H]
        parts = [emb((words >> (8 * k)) & 0xFF) for k, emb in enumerate(self.byte_embeds)]
        return self.norm(self.value_proj(mx.concatenate(parts, axis=-1)) + self.role_embed.weight)


class CrossAttention(nn.Module):
    """Multi-head attention of prompt queries over state keys/values; no mask
    (torch's nn.MultiheadAttention, its packed in_proj split by `Reflex.sanitize`)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def __call__(self, x: mx.array, kv: mx.array) -> mx.array:
        B, T, D = x.shape
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(0, 2, 1, 3)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(kv)), split(self.v_proj(kv))
        # Written out rather than mx.fast.scaled_dot_product_attention: with 65 keys
        # and 448-wide heads (the release) two small matmuls are far faster on
        # CUDA (1.5 ms of a 7.9 ms cycle went to the fused call); softmax in float32.
        weights = mx.softmax((q * self.scale) @ k.swapaxes(-1, -2), axis=-1, precise=True)
        return self.out_proj((weights @ v).transpose(0, 2, 1, 3).reshape(B, T, D))


class Adapter(nn.Module):
    """h + tanh(g_a) * attn(LN(h), kv), then + tanh(g_m) * MLP(LN(.)); in its own dtype."""

    def __init__(self, hidden: int, mlp_ratio: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.attn = CrossAttention(hidden, heads)
        self.attn_gate = mx.zeros((1,))
        self.norm_mlp = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.mlp = MLP(hidden, mlp_ratio * hidden)
        self.mlp_gate = mx.zeros((1,))

    def __call__(self, h: mx.array, kv: mx.array, grid=None) -> mx.array:
        """h [B, T, H] (as released, and one pooled row per state [B, 1, H]), or
        packed rows [1, N, H] whose prompts `grid` lays out (a fast-path PromptBatch)."""
        dtype = self.attn_gate.dtype  # float32 as released; cast back after
        x, kv = h.astype(dtype), kv.astype(dtype)
        q = self.norm_q(x)
        a = self.attn(q, kv) if grid is None else grid.from_grid(self.attn(grid.to_grid(q), kv))
        x = x + mx.tanh(self.attn_gate) * a
        x = x + mx.tanh(self.mlp_gate) * self.mlp(self.norm_mlp(x))
        return x.astype(h.dtype)


class Reflex(nn.Module):
    """Everything `reflex.pt` stores, under MLX names (see `sanitize`)."""

    def __init__(self, args: ReflexArgs):
        super().__init__()
        self.args = args
        H = args.hidden
        self.state_encoder = StateEncoder(H)
        self.kv_norm = nn.LayerNorm(H, eps=LAYER_NORM_EPS)
        self.adapters = [Adapter(H, args.adapter_mlp_ratio, args.adapter_heads) for _ in args.adapter_layers]
        self.head_mlp = MLP(H, H)
        self.embed_head = nn.Linear(H, args.embed_dim)
        self.instr_table = nn.Embedding(args.num_instrs, args.embed_dim)
        self.instr_words = mx.zeros((args.num_instrs,), dtype=mx.uint32)

    def encode_state(self, words: mx.array) -> mx.array:
        return self.kv_norm(self.state_encoder(words))

    def head(self, pooled: mx.array) -> mx.array:
        # the adapter side's float dtype (a quantized embed_head's weight is packed uint32)
        return self.embed_head(self.head_mlp(pooled.astype(self.kv_norm.weight.dtype)))

    def scores(self, pred: mx.array) -> mx.array:
        """Cosine similarity of each prediction against every codebook row, float32."""
        unit = lambda t: t / mx.linalg.norm(t, axis=-1, keepdims=True)
        return unit(pred.astype(mx.float32)) @ unit(self.instr_table.weight.astype(mx.float32)).T

    def rows(self, pred: mx.array) -> mx.array:
        """The codebook row each prediction snaps to."""
        return mx.argmax(self.scores(pred), axis=-1)

    def decode(self, pred: mx.array) -> list[int]:
        """The instruction words (host ints, unsigned 32-bit) of the predictions."""
        return np.array(self.instr_words[self.rows(pred)]).tolist()

    @staticmethod
    def sanitize(weights: dict) -> dict:
        """Map the released PyTorch names (and packing) onto this module's names.
        Idempotent: already-mapped weights pass through unchanged."""
        out = {}
        for key, value in weights.items():
            if key.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
                stem, suffix = key.rsplit(".", 1)[0], key.rsplit("_", 1)[1]
                q, k, v = mx.split(value, 3, axis=0)  # packed Wq; Wk; Wv rows
                out.update(
                    {f"{stem}.q_proj.{suffix}": q, f"{stem}.k_proj.{suffix}": k, f"{stem}.v_proj.{suffix}": v}
                )
                continue
            if key == "instr_words":
                value = value.astype(mx.uint32)  # low 32 bits, as the release masks them
            for torch_name, mlx_name in (("mlp.0.", "mlp.fc1."), ("mlp.2.", "mlp.fc2.")):
                key = key.replace(torch_name, mlx_name)  # also head_mlp.{0,2}
            out[key] = value
        return out


class ReflexModel(nn.Module):
    """An mlx-lm decoder model with the Reflex adapters after the listed layers."""

    def __init__(self, backbone: nn.Module, reflex: Reflex):
        super().__init__()
        self.backbone = backbone.model  # mlx-lm's inner model: embed_tokens, layers, norm
        self.reflex = reflex
        self.adapter_layers = list(reflex.args.adapter_layers)
        if max(self.adapter_layers) >= len(self.backbone.layers):
            raise ValueError(
                f"the adapter layers {self.adapter_layers} do not fit a "
                f"{len(self.backbone.layers)}-layer backbone"
            )

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, states: mx.array) -> mx.array:
        """Prompt tokens [B, T] (right padded), mask [B, T], states [B, 65] -> pred [B, E].

        Causal attention never lets a real token see the pads after it, so the
        mask is needed only to find each row's last real token.
        """
        kv = self.reflex.encode_state(states)
        h = self.backbone.embed_tokens(input_ids)
        mask = "causal" if h.shape[1] > 1 else None
        for i, layer in enumerate(self.backbone.layers):
            h = self.adapt(i, layer(h, mask), kv)
        last = attention_mask.sum(axis=1) - 1
        return self.predict(h[mx.arange(h.shape[0]), last])

    def adapt(self, layer: int, h: mx.array, kv: mx.array, grid=None) -> mx.array:
        """Decoder layer `layer`'s output through its adapter, if the release has one there."""
        if layer not in self.adapter_layers:
            return h
        return self.reflex.adapters[self.adapter_layers.index(layer)](h, kv, grid)

    def predict(self, last: mx.array) -> mx.array:
        """Each prompt's last token after the decoder [B, H] -> pred [B, E]: the
        backbone's final RMSNorm (per token), then the head."""
        return self.reflex.head(self.backbone.norm(last))


def states_array(states: Sequence[Sequence[int]]) -> mx.array:
    """Machine states as the models take them: uint32."""
    return mx.array(np.asarray(states, dtype=np.uint32))


class ReferenceBatch:
    """Prompts padded as the reference reads them: ids and mask [B, T]."""

    def __init__(self, input_ids: mx.array, attention_mask: mx.array):
        self.input_ids, self.attention_mask = input_ids, attention_mask

    def rows(self, count: int, indices: Sequence[int] | None):
        if indices is not None:
            index = mx.array(list(indices))
            return self.input_ids[index], self.attention_mask[index]
        if len(self.input_ids) == 1:  # one prompt serves any number of states
            shape = (count, self.input_ids.shape[1])
            return mx.broadcast_to(self.input_ids, shape), mx.broadcast_to(self.attention_mask, shape)
        return self.input_ids, self.attention_mask


class Reference:
    """ReflexModel as a predictor runner (reflex_core.predict): the whole forward
    every cycle, the prompt right-padded to `pad_to` (the release pads to
    max_instr_tokens; None pads a batch only to its longest prompt)."""

    def __init__(self, model: ReflexModel, pad_id: int = 0, pad_to: int | None = None):
        self.model, self.pad_id, self.pad_to = model, pad_id, pad_to

    def prefix(self, token_lists: Sequence[Sequence[int]]) -> ReferenceBatch:
        ids, mask = pad_batch(token_lists, self.pad_id, self.pad_to)
        return ReferenceBatch(mx.array(np.asarray(ids, dtype=np.int32)), mx.array(np.asarray(mask)))

    def step(self, batch: ReferenceBatch, states, indices=None) -> mx.array:
        ids, mask = batch.rows(len(states), indices)
        return self.model(ids, mask, states_array(states))

    def embed(self, batch: ReferenceBatch, states) -> np.ndarray:
        return np.array(self.step(batch, states).astype(mx.float32))

    def words(self, batch: ReferenceBatch, states, indices=None) -> list[int]:
        return self.model.reflex.decode(self.step(batch, states, indices))
