"""Reflex in PyTorch: state encoder, gated cross-attention adapters, head and codebook
around a transformers decoder backbone: Qwen2 as released, or Llama, Mistral, Qwen3
(reflex_core.spec.SUPPORTED_BACKBONES; docs/design.md §3).

Plain modules, read top to bottom: `ReflexModel.forward` is the released
forward, the adapters called in the decoder's own loop after the listed
layers (where the release hooks them). `Reflex` holds exactly the modules
stored in `reflex.pt` (its state_dict keys are the checkpoint's keys).
`Reference` runs it as a predictor runner. The fast path (prefix cached,
packed batches, fused projections, torch.compile, CUDA graphs) is a runner
over these same modules: reflex_torch/fast.py.
reflex_mlx/model.py is the same file for MLX.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_causal_mask

from reflex_core.batching import pad_batch
from reflex_core.spec import LAYER_NORM_EPS, MASK32, STATE_WORDS, ReflexArgs


class MLP(nn.Sequential):
    """Linear, exact (erf) GELU, Linear; an nn.Sequential, so stored as the release stores it."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))


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


class CrossAttention(nn.Module):
    """Multi-head attention of prompt queries over state keys/values; no mask.
    Stored as torch's nn.MultiheadAttention stores it (the release's module):
    packed in_proj rows Wq; Wk; Wv, then out_proj; and initialised as it is."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(x, w[:D], b[:D])
        k, v = F.linear(kv, w[D:], b[D:]).chunk(2, dim=-1)  # one product for keys and values
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, heads, L, D/heads]
        o = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.out_proj(o.transpose(1, 2).reshape(B, T, D))


class Adapter(nn.Module):
    """h + tanh(g_a) * attn(LN(h), kv), then + tanh(g_m) * MLP(LN(.)); in its own dtype."""

    def __init__(self, hidden: int, mlp_ratio: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.attn = CrossAttention(hidden, heads)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.norm_mlp = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.mlp = MLP(hidden, mlp_ratio * hidden)
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor, kv: torch.Tensor, grid=None) -> torch.Tensor:
        """h [B, T, H] (as released, and one pooled row per state [B, 1, H]), or
        packed rows [N, H] whose prompts `grid` lays out (a fast-path PromptBatch)."""
        dtype = self.attn_gate.dtype  # float32 as released; cast back after
        x, kv = h.to(dtype), kv.to(dtype)
        q = self.norm_q(x)
        a = self.attn(q, kv) if grid is None else grid.from_grid(self.attn(grid.to_grid(q), kv))
        x = x + torch.tanh(self.attn_gate) * a
        x = x + torch.tanh(self.mlp_gate) * self.mlp(self.norm_mlp(x))
        return x.to(h.dtype)


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
        self.head_mlp = MLP(H, H)
        self.embed_head = nn.Linear(H, args.embed_dim)
        self.instr_table = nn.Embedding(args.num_instrs, args.embed_dim)
        self.register_buffer("instr_words", torch.zeros(args.num_instrs, dtype=torch.int64))

    def encode_state(self, words: torch.Tensor) -> torch.Tensor:
        return self.kv_norm(self.state_encoder(words))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        # the Reflex modules' float dtype (as in MLX, where a quantized embed_head's weight is packed)
        return self.embed_head(self.head_mlp(pooled.to(self.kv_norm.weight.dtype)))

    def scores(self, pred: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each prediction against every codebook row, float32."""
        unit = lambda t: t / t.norm(dim=-1, keepdim=True)
        return unit(pred.float()) @ unit(self.instr_table.weight.float()).T

    def rows(self, pred: torch.Tensor) -> torch.Tensor:
        """The codebook row each prediction snaps to."""
        return self.scores(pred).argmax(dim=-1)

    def decode(self, pred: torch.Tensor) -> list[int]:
        """The instruction words (host ints, unsigned 32-bit) of the predictions."""
        return [int(w) & MASK32 for w in self.instr_words[self.rows(pred)].tolist()]


class ReflexModel(nn.Module):
    """A transformers base model (AutoModel) with the Reflex adapters after the listed layers."""

    def __init__(self, backbone: nn.Module, reflex: Reflex):
        super().__init__()
        self.backbone = backbone  # transformers' base model: embed_tokens, rotary_emb, layers, norm
        self.reflex = reflex
        self.adapter_layers = list(reflex.args.adapter_layers)
        if max(self.adapter_layers) >= len(self.backbone.layers):
            raise ValueError(
                f"the adapter layers {self.adapter_layers} do not fit a "
                f"{len(self.backbone.layers)}-layer backbone"
            )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, states: torch.Tensor
    ) -> torch.Tensor:
        """Prompt tokens [B, T] (right padded), mask [B, T], states [B, 65] -> pred [B, E].

        The decoder layers see the mask transformers builds from `attention_mask`
        (causal, pads hidden), as the release runs them; prompts are far shorter
        than any sliding window.
        """
        kv = self.reflex.encode_state(states)
        h = self.backbone.embed_tokens(input_ids)
        positions = torch.arange(h.shape[1], device=h.device)[None]
        mask = create_causal_mask(self.backbone.config, h, attention_mask, None, positions)
        rope = self.backbone.rotary_emb(h, positions)
        for i, layer in enumerate(self.backbone.layers):
            h = self.adapt(i, layer(h, attention_mask=mask, position_embeddings=rope), kv)
        last = attention_mask.sum(dim=1) - 1
        return self.predict(h[torch.arange(h.shape[0], device=h.device), last])

    def adapt(self, layer: int, h: torch.Tensor, kv: torch.Tensor, grid=None) -> torch.Tensor:
        """Decoder layer `layer`'s output through its adapter, if the release has one there."""
        if layer not in self.adapter_layers:
            return h
        return self.reflex.adapters[self.adapter_layers.index(layer)](h, kv, grid)

    def predict(self, last: torch.Tensor) -> torch.Tensor:
        """Each prompt's last token after the decoder [B, H] -> pred [B, E]: the
        backbone's final RMSNorm (per token), then the head."""
        return self.reflex.head(self.backbone.norm(last))


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
