"""The reference Reflex model in PyTorch, matching the released behaviour (DESIGN.md §3).

`Reflex` holds exactly the modules stored in `reflex.pt` (its state_dict keys are
the checkpoint's keys). `ReflexModel` wires it to a transformers Qwen2 base
model the way the release does: a forward hook on each listed decoder layer
replaces that layer's output by the adapter's, and the backbone's own final
RMSNorm runs after the last layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reflex_core.spec import ADAPTER_HEADS, LAYER_NORM_EPS, STATE_WORDS, adapter_layers


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
        x = self.value_proj(torch.cat(parts, dim=-1)) + self.role_embed.weight
        return self.norm(x)


class Adapter(nn.Module):
    """Gated cross-attention from the prompt stream to the state tokens, then a gated MLP."""

    def __init__(self, hidden: int, mlp_ratio: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.attn = nn.MultiheadAttention(hidden, ADAPTER_HEADS, batch_first=True)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.norm_mlp = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(), nn.Linear(mlp_ratio * hidden, hidden)
        )
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        # Computed in the adapter's own dtype (float32 as released), cast back after.
        dtype = self.attn_gate.dtype
        x, kv = h.to(dtype), kv.to(dtype)
        a, _ = self.attn(self.norm_q(x), kv, kv, need_weights=False)
        x = x + torch.tanh(self.attn_gate) * a
        x = x + torch.tanh(self.mlp_gate) * self.mlp(self.norm_mlp(x))
        return x.to(h.dtype)


class Reflex(nn.Module):
    """Everything `reflex.pt` stores: state encoder, adapters, head and codebook."""

    def __init__(self, config: dict, num_adapters: int):
        super().__init__()
        hidden, embed_dim = config["hidden"], config["embed_dim"]
        self.config = config
        self.state_encoder = StateEncoder(hidden)
        self.kv_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.adapters = nn.ModuleList(
            Adapter(hidden, config["adapter_mlp_ratio"]) for _ in range(num_adapters)
        )
        self.head_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.embed_head = nn.Linear(hidden, embed_dim)
        self.instr_table = nn.Embedding(config["num_instrs"], embed_dim)
        self.register_buffer("instr_words", torch.zeros(config["num_instrs"], dtype=torch.int64))

    def encode_state(self, words: torch.Tensor) -> torch.Tensor:
        return self.kv_norm(self.state_encoder(words))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        dtype = self.embed_head.weight.dtype
        return self.embed_head(self.head_mlp(pooled.to(dtype)))

    def scores(self, pred: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each prediction against every codebook row, float32."""
        table = F.normalize(self.instr_table.weight.float(), dim=-1)
        return F.normalize(pred.float(), dim=-1) @ table.T

    def decode(self, pred: torch.Tensor) -> list[int]:
        rows = self.scores(pred).argmax(dim=-1)
        return [int(w) & 0xFFFFFFFF for w in self.instr_words[rows].tolist()]


class ReflexModel(nn.Module):
    """Frozen Qwen2 base model + Reflex, with adapters hooked after the listed layers."""

    def __init__(self, backbone: nn.Module, reflex: Reflex):
        super().__init__()
        self.backbone = backbone
        self.reflex = reflex
        num_layers = backbone.config.num_hidden_layers
        self.adapter_layers = adapter_layers(num_layers, reflex.config["inject_every"])
        if len(self.adapter_layers) != len(reflex.adapters):
            raise ValueError(
                f"backbone has {num_layers} layers, which needs {len(self.adapter_layers)} adapters; "
                f"the checkpoint has {len(reflex.adapters)}"
            )
        self._kv: torch.Tensor | None = None
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
