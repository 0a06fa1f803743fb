"""A fast way to run the reference model: the same modules, called explicitly.

`ReflexModel.forward` runs the whole padded prompt every cycle, as the release
does. That is launch-overhead bound (docs/design.md §8). `FastReflex` is a
runner over the *same* modules (no second set of weights, unless bf16
adapters are asked for) that computes the same function with less work:

* no padding: a batch's prompts are packed token after token (N rows; the
  index math is reflex_core.batching); only attention, which must not mix
  prompts, sees them on a [B, T] grid;
* everything up to and including the first adapter's decoder layer does not
  depend on the machine state, so `prefix()` runs it once per prompt set;
* the last decoder layer feeds only the pooled last token, so past its
  attention it runs on one row per prompt, and so does any adapter after it;
* the per-cycle `step` is written out layer by layer over transformers' decoder
  modules; the adapters and the head are the model's own wiring
  (`ReflexModel.adapt`, `ReflexModel.predict`);
* options: q/k/v and gate/up as one matmul each (`fuse_projections`),
  torch.compile, and on CUDA each (prompt set, batch) step captured once as a
  CUDA graph and replayed every cycle, with the decode inside the graph.

reflex_mlx/fast.py is the same file for MLX.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # rotate-half: all four families

from reflex_core.batching import PackedLayout
from reflex_core.cache import once_per_object
from reflex_core.spec import MASK32, STATE_WORDS

from .model import Reflex, ReflexModel, states_tensor


@dataclass
class FusedLayer:
    """One decoder layer's q/k/v as one projection and gate/up as another."""

    qkv: nn.Linear
    qkv_split: list[int]  # where q ends and k ends in qkv's output
    gate_up: nn.Linear


def _joined(parts: list[nn.Linear]) -> nn.Linear:
    """One nn.Linear whose output rows are the parts' rows in order; each part's
    weight and bias become views of it (same values, no second copy)."""
    joined = nn.Linear(
        parts[0].in_features,
        sum(p.out_features for p in parts),
        bias=parts[0].bias is not None,
        device="meta",
    )
    for name in ("weight", "bias"):
        if getattr(parts[0], name) is None:
            continue
        whole = torch.cat([getattr(p, name) for p in parts])
        setattr(joined, name, nn.Parameter(whole, requires_grad=False))
        start = 0
        for p in parts:
            size = p.out_features
            setattr(p, name, nn.Parameter(whole[start : start + size], requires_grad=False))
            start += size
    return joined


@torch.no_grad()
def fuse_projections(backbone: nn.Module) -> list[FusedLayer]:
    """Each decoder layer's q/k/v and gate/up stored as one tensor each, in place.

    The modules keep working unchanged (their weights become views of the
    fused tensors), so the reference is unaffected; the fast step runs one
    product where there were three (q, k, v) or two (gate, up). Done once per
    backbone, however many runners fuse it.
    """

    def build():
        fused = []
        for layer in backbone.layers:
            attn, mlp = layer.self_attn, layer.mlp
            q, k = attn.q_proj.out_features, attn.k_proj.out_features
            fused.append(
                FusedLayer(
                    qkv=_joined([attn.q_proj, attn.k_proj, attn.v_proj]),
                    qkv_split=[q, q + k],
                    gate_up=_joined([mlp.gate_proj, mlp.up_proj]),
                )
            )
        return fused

    return once_per_object(backbone, "fused projections", build)


def cast_reflex(reflex: Reflex, dtype: torch.dtype) -> Reflex:
    """A copy of the Reflex modules in `dtype` (the int64 codebook words stay int64).

    Built on the meta device and filled by load_state_dict, so no transient
    float32 copy exists: for the release, 2.2 GB of bf16 beside the 4.4 GB
    float32 original.
    """
    device = reflex.instr_words.device
    with torch.device("meta"):
        copy = Reflex(reflex.args).to(dtype)
    copy.to_empty(device=device)
    copy.load_state_dict(reflex.state_dict())
    return copy.eval().requires_grad_(False)


class PromptBatch:
    """B prompts, state-independent: their packed prefix [N, H] and the layout's
    indices as tensors (reflex_core.batching.PackedLayout). Pooled rows are
    [B, 1, H], as the model's own forward shapes them."""

    def __init__(self, fast: FastReflex, prefix: torch.Tensor, layout: PackedLayout):
        device = prefix.device
        tensor = lambda values: torch.tensor(values, device=device)
        self.prefix, self.layout = prefix, layout
        self.batch, self.width, self.uniform = layout.batch, layout.width, layout.uniform
        self.grid, self.packed, self.last = tensor(layout.grid), tensor(layout.packed), tensor(layout.last)
        self.key_mask = tensor(layout.key_valid)[:, None, None, :]  # [B, 1, 1, T]
        probe = torch.zeros(1, layout.tokens, 1, dtype=prefix.dtype, device=device)
        cos, sin = fast.backbone.rotary_emb(probe, tensor([layout.positions]))
        self.cos, self.sin = cos[0], sin[0]
        self.graphs: dict[int, tuple] = {}  # CUDA graphs of this batch, by state count
        self.repeats: dict[int, PromptBatch] = {}
        self.host_states: torch.Tensor | None = None  # lockstep states, pinned, for the graph

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] packed -> [B, T, ...]."""
        x = x if self.uniform else x[self.grid]
        return x.view(self.batch, self.width, *x.shape[1:])

    def from_grid(self, y: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [N, ...] packed (the pads dropped)."""
        y = y.reshape(self.batch * self.width, *y.shape[2:])
        return y if self.uniform else y[self.packed]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] packed -> [B, 1, ...]: each prompt's last token."""
        return x[self.last][:, None]

    def select(self, fast: FastReflex, indices: Sequence[int]) -> PromptBatch:
        """The prompts at `indices` only, with their packed rows of the prefix."""
        rows = torch.tensor(self.layout.rows_of(indices), device=self.prefix.device)
        return PromptBatch(fast, self.prefix[rows], self.layout.select(indices))

    def repeat(self, fast: FastReflex, count: int) -> PromptBatch:
        """This one-prompt batch as `count` rows (one per state)."""
        if count not in self.repeats:
            self.repeats[count] = PromptBatch(fast, self.prefix.repeat(count, 1), self.layout.repeat(count))
        return self.repeats[count]


class FastReflex:
    """prefix(token lists) once, then step(batch, states) per cycle.

    adapter_dtype: None keeps the model's own Reflex modules (float32 as
    released); torch.bfloat16 runs them in bf16 from a copy, or from the
    model's own modules cast in place when in_place=True (the reference then
    changes too). fuse: q/k/v and gate/up as one product each
    (`fuse_projections`). compile: pass the step through torch.compile (True,
    or a mode such as "max-autotune-no-cudagraphs"); the first change of shape
    recompiles once with symbolic sizes, which then serve every later shape.
    cuda_graph: capture and replay the step on CUDA (ignored elsewhere).
    """

    def __init__(
        self,
        model: ReflexModel,
        adapter_dtype: torch.dtype | None = None,
        fuse: bool = False,
        compile: bool | str = False,
        cuda_graph: bool = True,
        in_place: bool = False,
    ):
        reflex = model.reflex
        if adapter_dtype is not None and adapter_dtype != reflex.adapters[0].attn_gate.dtype:
            if in_place:
                reflex.to(adapter_dtype)
            else:  # the same backbone around a cast copy of the Reflex modules
                model = ReflexModel(model.backbone, cast_reflex(reflex, adapter_dtype))
        self.model, self.reflex = model, model.reflex
        self.backbone = model.backbone
        self.fused = fuse_projections(self.backbone) if fuse else None
        self.first = model.adapter_layers[0]
        self.device = self.reflex.instr_words.device
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.codebook = [w & MASK32 for w in self.reflex.instr_words.tolist()]
        mode = compile if isinstance(compile, str) else None
        self.compiled = torch.compile(self._step, mode=mode) if compile else None

    # ----------------------------------------------------------- per prompt
    @torch.no_grad()
    def prefix(self, token_lists: Sequence[Sequence[int]]) -> PromptBatch:
        """Pack the prompts and run them up to and including the first adapter's layer."""
        ids = torch.tensor([t for tokens in token_lists for t in tokens], device=self.device)
        batch = PromptBatch(self, self.backbone.embed_tokens(ids), PackedLayout.of(token_lists))
        for i in range(self.first + 1):
            batch.prefix = self._layer(i, batch.prefix, batch, pooled=False)
        return batch

    # ------------------------------------------------------------ per cycle
    @torch.no_grad()
    def step(self, batch: PromptBatch, states: torch.Tensor) -> torch.Tensor:
        """A prompt batch + states [B, 65] int64 -> predicted embeddings [B, E]."""
        return (self.compiled or self._step)(batch, states)

    def _step(self, batch: PromptBatch, states: torch.Tensor) -> torch.Tensor:
        kv = self.reflex.encode_state(states)
        h, pooled = batch.prefix, False  # [N, H] until pooled, then [B, 1, H]
        last_layer = len(self.backbone.layers) - 1
        for i in range(self.first, last_layer + 1):
            if i > self.first:
                pooled = i == last_layer
                h = self._layer(i, h, batch, pooled)
            h = self.model.adapt(i, h, kv, None if pooled else batch)
        if not pooled:
            h = batch.pool(h)
        return self.model.predict(h[:, 0])

    def _layer(self, i: int, h: torch.Tensor, batch: PromptBatch, pooled: bool) -> torch.Tensor:
        """Decoder layer i (transformers' Qwen2/Llama/Mistral/Qwen3 decoder layer math)
        on packed tokens [N, H]; pooled=True returns only each prompt's last token [B, 1, H]."""
        layer = self.backbone.layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        fused = self.fused[i] if self.fused else None
        x = layer.input_layernorm(h)
        if fused:
            q, k, v = fused.qkv(x).tensor_split(fused.qkv_split, dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        heads = lambda t: t.view(len(x), -1, attn.head_dim)
        q, k = heads(q), heads(k)
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm per head before rope
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rotary_pos_emb(q, k, batch.cos, batch.sin, unsqueeze_dim=1)
        grid = lambda t: batch.to_grid(t).transpose(1, 2)  # [B, heads, T, D]
        k, v = grid(k), grid(heads(v))
        if pooled:  # one query per prompt, reading its own prompt's keys
            q = q[batch.last][:, :, None]
            mask = None if batch.uniform else batch.key_mask
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling, enable_gqa=True)
            o, h = o.transpose(1, 2).flatten(2), batch.pool(h)
        else:
            o = F.scaled_dot_product_attention(
                grid(q), k, v, is_causal=True, scale=attn.scaling, enable_gqa=True
            )
            o = batch.from_grid(o.transpose(1, 2)).flatten(1)
        h = h + attn.o_proj(o)
        x = layer.post_attention_layernorm(h)
        if fused:
            gate, up = fused.gate_up(x).chunk(2, dim=-1)
            return h + mlp.down_proj(mlp.act_fn(gate) * up)
        return h + mlp(x)

    def rows(self, pred: torch.Tensor) -> torch.Tensor:
        return self.reflex.rows(pred)

    def decode(self, pred: torch.Tensor) -> list[int]:
        return [self.codebook[r] for r in self.rows(pred).tolist()]

    # ---------------------------------------------- the runner protocol
    def embed(self, batch: PromptBatch, states) -> np.ndarray:
        return self._run(batch, states_tensor(states))[0].float().cpu().numpy()

    @torch.no_grad()
    def words(self, batch: PromptBatch, states, indices: Sequence[int] | None = None) -> list[int]:
        """Words for the states of the prompts at `indices` (all when None).

        With CUDA graphs every call replays the whole batch (finished programs'
        rows repeat their last state and are ignored): one graph, no re-capture
        as programs stop. Eagerly, only the prompts asked for are computed.
        """
        states = states_tensor(states)
        if indices is None or len(indices) == batch.batch:
            return [self.codebook[r] for r in self._run(batch, states)[1].tolist()]
        if not self.cuda_graph:
            pred = self.step(batch.select(self, indices), states.to(self.device))
            return self.decode(pred)
        if batch.host_states is None:
            batch.host_states = torch.zeros(batch.batch, STATE_WORDS, dtype=torch.int64).pin_memory()
        index = torch.tensor(list(indices))
        batch.host_states[index] = states
        rows = self._run(batch, batch.host_states)[1][index.to(self.device)]
        return [self.codebook[r] for r in rows.tolist()]

    def _run(self, batch: PromptBatch, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred [B, E], rows [B]) for states [B, 65]; a one-prompt batch takes any count.

        With graphs the outputs are the graph's own buffers: read them before
        the next call.
        """
        count = states.shape[0]
        if count != batch.batch:
            if batch.batch != 1:
                raise ValueError(f"a batch of {batch.batch} prompts takes {batch.batch} states, not {count}")
            batch = batch.repeat(self, count)
        if not self.cuda_graph:
            pred = self.step(batch, states.to(self.device))
            return pred, self.rows(pred)
        if count not in batch.graphs:
            batch.graphs[count] = self._capture(batch)
        graph, static_states, pred, rows = batch.graphs[count]
        static_states.copy_(states, non_blocking=True)
        graph.replay()
        return pred, rows

    def _capture(self, batch: PromptBatch) -> tuple:
        states = torch.zeros(batch.batch, STATE_WORDS, dtype=torch.int64, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: cuBLAS handles, workspaces, kernel choice
            for _ in range(2):
                self.rows(self.step(batch, states))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            pred = self.step(batch, states)
            rows = self.rows(pred)
        return graph, states, pred, rows
