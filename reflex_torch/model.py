"""The reference Reflex model in PyTorch, matching the released behaviour (docs/design.md §3).

`Reflex` holds exactly the modules stored in `reflex.pt` (its state_dict keys are
the checkpoint's keys). `ReflexModel` wires it to a transformers base model
(Qwen2 as released, or Llama, Mistral, Qwen3) the way the release does: a
forward hook on each listed decoder layer replaces that layer's output by the
adapter's, and the backbone's own final
RMSNorm runs after the last layer. `Reference` runs it as a predictor runner
(reflex_core.predict), the prompt padded as the release pads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reflex_core.batching import pad_batch
from reflex_core.spec import LAYER_NORM_EPS, MASK32, STATE_WORDS, ReflexArgs


class StateEncoder(nn.Module):
    """65 machine words -> 65 key/value tokens: 4 byte embeddings, projection, role."""

    def __init__(self, hidden: int):
        super().__init__()
        self.role_embed = nn.Embedding(STATE_WORDS, hidden)
        self.byte_embeds = nn.ModuleList(nn.Embedding(256, 32) for _ in range(4))
        self.value_proj = nn.Linear(4 * 32, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)

    def forward(self, words: torch.Tensor) -> torch.Tensor:  # [B, 65] int64 -> [B, 65, H]
        parts = [emb((words >> (8 * k)) & 0xFF) for k, emb in enumerate(self.byte_embeds)]
        return self.norm(self.value_proj(torch.cat(parts, dim=-1)) + self.role_embed.weight)


class Adapter(nn.Module):
    """h + tanh(g_a) * attn(LN(h), kv), then + tanh(g_m) * MLP(LN(.)); in its own dtype."""

    def __init__(self, hidden: int, mlp_ratio: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.norm_mlp = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(), nn.Linear(mlp_ratio * hidden, hidden)
        )
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor, kv: torch.Tensor, grid=None) -> torch.Tensor:
        """h [B, T, H] as released, or for the fast path packed rows [N, H] whose
        prompts `grid` lays out (a PromptBatch), or one pooled row per state [B, H]."""
        dtype = self.attn_gate.dtype  # float32 as released; cast back after
        x, kv = h.to(dtype), kv.to(dtype)
        if grid is None and x.dim() == 3:  # the release: torch's own module
            a = self.attn(self.norm_q(x), kv, kv, need_weights=False)[0]
        else:
            a = self.cross_attend(self.norm_q(x), kv, grid)
        x = x + torch.tanh(self.attn_gate) * a
        x = x + torch.tanh(self.mlp_gate) * self.mlp(self.norm_mlp(x))
        return x.to(h.dtype)

    def cross_attend(self, x: torch.Tensor, kv: torch.Tensor, grid=None) -> torch.Tensor:
        """self.attn's function (batch_first, no mask, eval) on packed or pooled rows:
        projections on the real rows only, attention per prompt on the grid.
        tests/torch/test_fast.py checks it against nn.MultiheadAttention."""
        E, heads = self.attn.embed_dim, self.attn.num_heads
        w, b = self.attn.in_proj_weight, self.attn.in_proj_bias  # packed Wq; Wk; Wv
        q = F.linear(x, w[:E], b[:E])
        k, v = F.linear(kv, w[E:], b[E:]).chunk(2, dim=-1)
        q = grid.to_grid(q) if grid is not None else q[:, None]  # [B, L, E]
        split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, heads, L, D]
        o = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2)
        o = grid.from_grid(o).flatten(1) if grid is not None else o.flatten(1)
        return self.attn.out_proj(o)


class Reflex(nn.Module):
    """Everything `reflex.pt` stores: state encoder, adapters, head and codebook."""

    def __init__(self, args: ReflexArgs):
        super().__init__()
        self.args = args
        H = args.hidden
        self.state_encoder = StateEncoder(H)
        self.kv_norm = nn.LayerNorm(H, eps=LAYER_NORM_EPS)
        self.adapters = nn.ModuleList(
            Adapter(H, args.adapter_mlp_ratio, args.adapter_heads) for _ in args.adapter_layers
        )
        self.head_mlp = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.Linear(H, H))
        self.embed_head = nn.Linear(H, args.embed_dim)
        self.instr_table = nn.Embedding(args.num_instrs, args.embed_dim)
        self.register_buffer("instr_words", torch.zeros(args.num_instrs, dtype=torch.int64))

    def encode_state(self, words: torch.Tensor) -> torch.Tensor:
        return self.kv_norm(self.state_encoder(words))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.embed_head(self.head_mlp(pooled.to(self.embed_head.weight.dtype)))

    def scores(self, pred: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each prediction against every codebook row, float32."""
        table = F.normalize(self.instr_table.weight.float(), dim=-1)
        return F.normalize(pred.float(), dim=-1) @ table.T

    def rows(self, pred: torch.Tensor) -> torch.Tensor:
        """The codebook row each prediction snaps to."""
        return self.scores(pred).argmax(dim=-1)

    def decode(self, pred: torch.Tensor) -> list[int]:
        """The instruction words (host ints, unsigned 32-bit) of the predictions."""
        return [int(w) & MASK32 for w in self.instr_words[self.rows(pred)].tolist()]


class ReflexModel(nn.Module):
    """Frozen base model (AutoModel) + Reflex, with adapters hooked after the listed layers."""

    def __init__(self, backbone: nn.Module, reflex: Reflex):
        super().__init__()
        self.backbone = backbone
        self.reflex = reflex
        self.adapter_layers = list(reflex.args.adapter_layers)
        if max(self.adapter_layers) >= len(backbone.layers):
            raise ValueError(
                f"the adapter layers {self.adapter_layers} do not fit a {len(backbone.layers)}-layer backbone"
            )
        self._kv: torch.Tensor | None = None  # the encoded state, only during forward()
        for adapter, layer in zip(reflex.adapters, self.adapter_layers):
            backbone.layers[layer].register_forward_hook(self._hook(adapter))

    def _hook(self, adapter: Adapter):
        def replace_output(module, args, output):
            if self._kv is None:
                raise RuntimeError("adapter hook ran outside ReflexModel.forward")
            if isinstance(output, tuple):
                return (adapter(output[0], self._kv),) + tuple(output[1:])
            return adapter(output, self._kv)

        return replace_output

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, states: torch.Tensor
    ) -> torch.Tensor:
        """Prompt tokens [B, T] (right padded), mask [B, T], states [B, 65] -> pred [B, E]."""
        self._kv = self.reflex.encode_state(states)
        try:
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
        finally:
            self._kv = None
        last = attention_mask.sum(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.reflex.head(pooled)


def states_tensor(states: Sequence[Sequence[int]], device=None) -> torch.Tensor:
    """Machine states as the models take them: int64 (torch has no uint32 embedding index)."""
    return torch.tensor(np.asarray(states, dtype=np.int64), device=device)


class ReferenceBatch:
    """Prompts padded as the reference reads them: ids and mask [B, T]."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.input_ids, self.attention_mask = input_ids, attention_mask

    def rows(self, count: int, indices: Sequence[int] | None):
        if indices is not None:
            index = torch.tensor(list(indices), device=self.input_ids.device)
            return self.input_ids[index], self.attention_mask[index]
        if len(self.input_ids) == 1:  # one prompt serves any number of states
            return self.input_ids.expand(count, -1), self.attention_mask.expand(count, -1)
        return self.input_ids, self.attention_mask


class Reference:
    """ReflexModel as a predictor runner (reflex_core.predict): the whole forward
    every cycle, the prompt right-padded to `pad_to` (the release pads to
    max_instr_tokens; None pads a batch only to its longest prompt)."""

    def __init__(self, model: ReflexModel, pad_id: int = 0, pad_to: int | None = None):
        self.model, self.pad_id, self.pad_to = model, pad_id, pad_to
        self.device = model.reflex.instr_words.device

    def prefix(self, token_lists: Sequence[Sequence[int]]) -> ReferenceBatch:
        ids, mask = pad_batch(token_lists, self.pad_id, self.pad_to)
        return ReferenceBatch(torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device))

    @torch.no_grad()
    def step(self, batch: ReferenceBatch, states, indices=None) -> torch.Tensor:
        ids, mask = batch.rows(len(states), indices)
        return self.model(ids, mask, states_tensor(states, self.device))

    def embed(self, batch: ReferenceBatch, states) -> np.ndarray:
        return self.step(batch, states).float().cpu().numpy()

    def words(self, batch: ReferenceBatch, states, indices=None) -> list[int]:
        return self.model.reflex.decode(self.step(batch, states, indices))
