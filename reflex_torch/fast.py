"""A fast way to run the reference model: the same modules, called explicitly.

`ReflexModel` reproduces the release by hooking adapters onto transformers'
decoder layers and running the whole padded prompt every cycle. That is
launch-overhead bound (DESIGN.md §8). `FastReflex` is a switch over the *same*
`ReflexModel` (no second set of weights, unless bf16 adapters are asked for)
that computes the same function with less work:

* no padding: the prompts of a batch are packed token after token ([N, H],
  N = the real tokens); only attention, which must not mix prompts, sees them
  on a [B, T] grid (causal, so a prompt's right pads never reach its tokens);
* everything up to and including the first adapter's decoder layer does not
  depend on the machine state, so `prompts()` runs it once per prompt set;
* the last decoder layer feeds only the pooled last token, so past its
  attention (which still reads every token's keys) it runs on one row per
  prompt, and so does any adapter after it;
* the per-cycle step is written out layer by layer over the backbone's own
  modules (norms, projections, MLP, rotary tables; DESIGN.md §3's order), so
  ReflexModel's adapter hooks never fire and the adapters are applied here;
* on CUDA each (prompt set, batch) step is captured once as a CUDA graph and
  replayed every cycle, with the decode (cosine + argmax) inside the graph;
  optionally torch.compile fuses its elementwise kernels first.

`FastPredictor` (one prompt) and `FastBatchPredictor` / `run_batch` (many
prompts in lockstep) plug into `reflex_core.loop` and `reflex_core.evaluation`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from reflex_core.loop import RunResult, run_many
from reflex_core.prompt import PromptTokens, encode_prompt
from reflex_core.spec import DEFAULT_MAX_CYCLES, STATE_WORDS

from .model import Adapter, Reflex, ReflexModel

_MASK32 = 0xFFFFFFFF


def cast_reflex(reflex: Reflex, dtype: torch.dtype) -> Reflex:
    """A copy of the Reflex modules in `dtype` (the int64 codebook words stay int64).

    Built on the meta device and filled by load_state_dict, so no transient
    float32 copy exists: for the release, 2.2 GB of bf16 beside the 4.4 GB
    float32 original.
    """
    device = reflex.instr_words.device
    with torch.device("meta"):
        copy = Reflex(reflex.config, len(reflex.adapters)).to(dtype)
    copy.to_empty(device=device)
    copy.load_state_dict(reflex.state_dict())
    return copy.eval().requires_grad_(False)


@torch.no_grad()
def fuse_projections(backbone) -> list[dict]:
    """Store each decoder layer's q/k/v and gate/up weights in one tensor, in place.

    The modules keep working unchanged (their weights become views of the
    fused tensor, same values), so the reference is unaffected; the fast step
    then runs one matrix product where there were three (q, k, v) or two
    (gate, up). No extra memory once done: layer by layer, the old tensors go.
    Done once per backbone (kept on it), so every fused FastReflex over the
    same model shares the tensors. Returns, per layer, the fused tensors:
    "qkv", "qkv_bias", "gate_up".
    """
    if "_fused_projections" not in backbone.__dict__:
        fused_layers = []
        for layer in backbone.layers:
            attn, mlp = layer.self_attn, layer.mlp
            fused_layers.append({
                "qkv": _fuse([attn.q_proj, attn.k_proj, attn.v_proj], "weight"),
                "qkv_bias": _fuse([attn.q_proj, attn.k_proj, attn.v_proj], "bias"),
                "gate_up": _fuse([mlp.gate_proj, mlp.up_proj], "weight"),
            })
        backbone.__dict__["_fused_projections"] = fused_layers
    return backbone.__dict__["_fused_projections"]


def _fuse(modules, name: str) -> torch.Tensor:
    fused = torch.cat([getattr(m, name) for m in modules])
    start = 0
    for m in modules:
        size = getattr(m, name).shape[0]
        setattr(m, name, torch.nn.Parameter(fused[start:start + size], requires_grad=False))
        start += size
    return fused


class PromptBatch:
    """B prompts, state-independent: their packed prefix and where each token sits.

    `prefix` [N, H] holds the hidden states after the first adapter's layer for
    the N real tokens, prompt after prompt. `grid` [B*T] maps the padded grid
    that attention uses to packed rows (pads repeat their prompt's last token;
    causal attention never lets a real token see them), `packed` [N] maps back,
    `last` [B] is each prompt's last token, `cos`/`sin` [N, D] its rotary table.
    """

    def __init__(self, fast: "FastReflex", prefix: torch.Tensor, lengths: Sequence[int]):
        device = prefix.device
        self.lengths = list(lengths)
        self.batch, self.width = len(self.lengths), max(self.lengths)
        self.uniform = len(set(self.lengths)) == 1  # then grid == packed: no gathers
        self.starts = starts = [sum(self.lengths[:b]) for b in range(self.batch)]
        T = self.width
        positions = [t for n in self.lengths for t in range(n)]
        self.prefix = prefix
        self.grid = torch.tensor([s + min(t, n - 1) for s, n in zip(starts, self.lengths) for t in range(T)],
                                 device=device)
        self.packed = torch.tensor([b * T + t for b, n in enumerate(self.lengths) for t in range(n)],
                                   device=device)
        self.last = torch.tensor([s + n - 1 for s, n in zip(starts, self.lengths)], device=device)
        # keys a pooled (last) query may read: its own prompt's tokens
        self.key_mask = (torch.arange(T, device=device)[None] < torch.tensor(self.lengths, device=device)[:, None]
                         )[:, None, None, :]
        probe = torch.zeros(1, len(positions), 1, dtype=prefix.dtype, device=device)
        cos, sin = fast.backbone.rotary_emb(probe, torch.tensor([positions], device=device))
        self.cos, self.sin = cos[0], sin[0]

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] packed -> [B, T, ...]."""
        x = x if self.uniform else x[self.grid]
        return x.view(self.batch, self.width, *x.shape[1:])

    def from_grid(self, y: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [N, ...] packed (the pads dropped)."""
        y = y.reshape(self.batch * self.width, *y.shape[2:])
        return y if self.uniform else y[self.packed]

    def select(self, fast: "FastReflex", indices: Sequence[int]) -> "PromptBatch":
        """The prompts at `indices` only, with their packed rows of the prefix."""
        rows = [self.starts[i] + t for i in indices for t in range(self.lengths[i])]
        return PromptBatch(fast, self.prefix[torch.tensor(rows, device=self.prefix.device)],
                           [self.lengths[i] for i in indices])

    def repeat(self, fast: "FastReflex", count: int) -> "PromptBatch":
        """This one-prompt batch as `count` rows (one per state)."""
        if self.batch != 1:
            raise ValueError("only a one-prompt batch repeats")
        return PromptBatch(fast, self.prefix.repeat(count, 1), self.lengths * count)


class FastReflex:
    """prompts(token lists) once, then step(prompts, states) per cycle.

    adapter_dtype: None keeps the model's own Reflex modules (float32 as
    released); torch.bfloat16 runs them in bf16 from a copy, or from the
    model's own modules cast in place when in_place=True (the reference then
    changes too). fuse: store q/k/v and gate/up as one tensor each
    (fuse_projections: same values, the reference keeps working) and run one
    product for each. cuda_graph: capture and replay the step on CUDA (ignored
    elsewhere). compile: also pass the step through torch.compile (True, or a
    torch.compile mode such as "max-autotune-no-cudagraphs"); off by default,
    since it costs compilations: the first shape is compiled as is, the
    first change of shape (another prompt length or batch) recompiles once
    with symbolic sizes, which then serve every later shape.
    """

    def __init__(self, model: ReflexModel, adapter_dtype: torch.dtype | None = None,
                 cuda_graph: bool = True, in_place: bool = False, compile: bool | str = False,
                 fuse: bool = False):
        self.model = model
        self.backbone = model.backbone
        self.fused = fuse_projections(self.backbone) if fuse else None
        if compile:
            mode = compile if isinstance(compile, str) else None
            self.compiled = torch.compile(self._step, mode=mode)  # dynamic=None: automatic
        else:
            self.compiled = None
        reflex = model.reflex
        own_dtype = reflex.adapters[0].attn_gate.dtype
        if adapter_dtype is not None and adapter_dtype != own_dtype:
            if in_place:
                reflex.to(adapter_dtype)
            else:
                reflex = cast_reflex(reflex, adapter_dtype)
        self.reflex = reflex
        self.adapter_dtype = reflex.adapters[0].attn_gate.dtype
        self.first = model.adapter_layers[0]
        self.adapter_at = dict(zip(model.adapter_layers, reflex.adapters))
        self.device = reflex.instr_words.device
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.words = [w & _MASK32 for w in reflex.instr_words.tolist()]
        # The codebook side of the cosine, normalised once (Reflex.scores recomputes it).
        self.table = F.normalize(reflex.instr_table.weight.float(), dim=-1)

    # ----------------------------------------------------------- per prompt
    @torch.no_grad()
    def prompts(self, token_lists: Sequence[Sequence[int]]) -> PromptBatch:
        """Pack the prompts (no padding) and run them up to the first adapter's layer."""
        ids = torch.tensor([t for tokens in token_lists for t in tokens], device=self.device)
        batch = PromptBatch(self, self.backbone.embed_tokens(ids), [len(t) for t in token_lists])
        for i in range(self.first + 1):
            batch.prefix = self._decoder_layer(i, batch.prefix, batch, pooled=False)
        return batch

    # ------------------------------------------------------------ per cycle
    @torch.no_grad()
    def step(self, prompts: PromptBatch, states: torch.Tensor) -> torch.Tensor:
        """A prompt batch + states [B, 65] int64 -> predicted embeddings [B, E]."""
        return (self.compiled or self._step)(prompts, states)

    def _step(self, prompts: PromptBatch, states: torch.Tensor) -> torch.Tensor:
        kv = self.reflex.encode_state(states)
        h, pooled = prompts.prefix, False  # [N, H] until pooled, then [B, H]
        last_layer = len(self.backbone.layers) - 1
        for i in range(self.first, last_layer + 1):
            if i > self.first:
                pooled = i == last_layer
                h = self._decoder_layer(i, h, prompts, pooled)
            if i in self.adapter_at:
                h = self._adapter(self.adapter_at[i], h, kv, None if pooled else prompts)
        if not pooled:
            h = h[prompts.last]
        return self.reflex.head(self.backbone.norm(h))  # RMSNorm is per token

    def _decoder_layer(self, i: int, h: torch.Tensor, prompts: PromptBatch, pooled: bool) -> torch.Tensor:
        """Decoder layer i (Qwen2DecoderLayer.forward's math) on packed tokens;
        pooled=True returns only each prompt's last token."""
        layer = self.backbone.layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        fused = self.fused[i] if self.fused else None
        d = attn.head_dim
        x = layer.input_layernorm(h)
        if fused:
            q, k, v = F.linear(x, fused["qkv"], fused["qkv_bias"]).split(
                [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features], dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q, k = apply_rotary_pos_emb(q.view(len(x), -1, d), k.view(len(x), -1, d),
                                    prompts.cos, prompts.sin, unsqueeze_dim=1)
        grid = lambda t: prompts.to_grid(t).transpose(1, 2)  # [B, heads, T, D]
        k, v = grid(k), grid(v.reshape(len(x), -1, d))
        if pooled:  # one query per prompt, reading its own prompt's keys
            q = q[prompts.last][:, :, None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=None if prompts.uniform else prompts.key_mask,
                                               scale=attn.scaling, enable_gqa=True)
            o, h = o.flatten(1), h[prompts.last]
        else:
            o = F.scaled_dot_product_attention(grid(q), k, v, is_causal=True, scale=attn.scaling,
                                               enable_gqa=True)
            o = prompts.from_grid(o.transpose(1, 2)).flatten(1)
        h = h + attn.o_proj(o)
        x = layer.post_attention_layernorm(h)
        if fused:
            gate, up = F.linear(x, fused["gate_up"]).chunk(2, dim=-1)
            return h + mlp.down_proj(mlp.act_fn(gate) * up)
        return h + mlp(x)

    def _adapter(self, adapter: Adapter, h: torch.Tensor, kv: torch.Tensor,
                 prompts: PromptBatch | None) -> torch.Tensor:
        """Adapter.forward on packed tokens (or on one pooled row per prompt: prompts=None)."""
        dtype = adapter.attn_gate.dtype
        x, kv = h.to(dtype), kv.to(dtype)
        mha = adapter.attn
        dim, heads = mha.embed_dim, mha.num_heads
        q = F.linear(adapter.norm_q(x), mha.in_proj_weight[:dim], mha.in_proj_bias[:dim])
        k, v = F.linear(kv, mha.in_proj_weight[dim:], mha.in_proj_bias[dim:]).chunk(2, dim=-1)
        heads_of = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, heads, L, D]
        q = prompts.to_grid(q) if prompts is not None else q[:, None]
        o = F.scaled_dot_product_attention(heads_of(q), heads_of(k), heads_of(v)).transpose(1, 2)
        o = prompts.from_grid(o).flatten(1) if prompts is not None else o.flatten(1)
        x = x + torch.tanh(adapter.attn_gate) * mha.out_proj(o)
        x = x + torch.tanh(adapter.mlp_gate) * adapter.mlp(adapter.norm_mlp(x))
        return x.to(h.dtype)

    def rows(self, pred: torch.Tensor) -> torch.Tensor:
        """Codebook row of each prediction: Reflex.scores' cosine, float32, argmax."""
        return (F.normalize(pred.float(), dim=-1) @ self.table.T).argmax(dim=-1)

    def runner(self, prompts: PromptBatch) -> "StepRunner":
        return StepRunner(self, prompts)


class StepRunner:
    """One prompt batch's per-cycle step, as a CUDA graph where possible.

    A one-prompt batch serves any number of states (one row each, a graph per
    count); a batch of B prompts takes exactly B states. A graph reads fixed
    addresses: the prompt batch (held here), a static states buffer written
    before each replay, and outputs allocated at capture.
    """

    def __init__(self, fast: FastReflex, prompts: PromptBatch):
        self.fast, self.prompts = fast, prompts
        self.batches: dict[int, PromptBatch] = {prompts.batch: prompts}
        self.graphs: dict[int, tuple] = {}

    def _prompts_for(self, count: int) -> PromptBatch:
        if count not in self.batches:
            if self.prompts.batch != 1:
                raise ValueError(f"a batch of {self.prompts.batch} prompts takes {self.prompts.batch} "
                                 f"states, not {count}")
            self.batches[count] = self.prompts.repeat(self.fast, count)
        return self.batches[count]

    def _compute(self, prompts: PromptBatch, states: torch.Tensor):
        pred = self.fast.step(prompts, states)
        return pred, self.fast.rows(pred)

    def _capture(self, prompts: PromptBatch) -> tuple:
        states = torch.zeros(prompts.batch, STATE_WORDS, dtype=torch.int64, device=self.fast.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: cuBLAS handles, workspaces, kernel choice
            for _ in range(2):
                self._compute(prompts, states)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            pred, rows = self._compute(prompts, states)
        return graph, states, pred, rows

    @torch.no_grad()
    def __call__(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, 65] int64 (any device) -> (pred [B, E], rows [B]) on the device.

        With graphs the outputs are the graph's own buffers: read them before
        the next call.
        """
        prompts = self._prompts_for(states.shape[0])
        if not self.fast.cuda_graph:
            return self._compute(prompts, states.to(self.fast.device))
        if prompts.batch not in self.graphs:
            self.graphs[prompts.batch] = self._capture(prompts)
        graph, static_states, pred, rows = self.graphs[prompts.batch]
        static_states.copy_(states, non_blocking=True)
        graph.replay()
        return pred, rows


def states_tensor(states: Sequence[Sequence[int]]) -> torch.Tensor:
    return torch.tensor(states, dtype=torch.int64)


class FastPredictor:
    """State -> word for one task, like TorchPredictor but through FastReflex."""

    def __init__(self, fast: FastReflex, tokenizer, task: str, config: dict):
        self.fast = fast
        self.tokens: PromptTokens = encode_prompt(tokenizer, task, config)
        self.run = fast.runner(fast.prompts([self.tokens.ids]))

    def embed(self, states: list[list[int]]) -> torch.Tensor:
        return self.run(states_tensor(states))[0].clone()

    def predict_many(self, states: list[list[int]]) -> list[int]:
        rows = self.run(states_tensor(states))[1].tolist()
        return [self.fast.words[r] for r in rows]

    def __call__(self, state: list[int]) -> int:
        return self.predict_many([state])[0]


class FastBatchPredictor:
    """Many prompts in lockstep: predict(indices, states) for `run_many(with_indices=True)`.

    The prompts' prefixes are computed once, packed. With CUDA graphs every
    cycle replays the whole batch (finished programs' rows repeat their last
    state and are ignored): one graph, no re-capture as programs stop.
    Eagerly, only the prompts still running are computed.
    """

    def __init__(self, fast: FastReflex, tokenizer, prompts: list[str], config: dict):
        self.fast = fast
        self.tokens = [encode_prompt(tokenizer, p, config) for p in prompts]
        self.prompts = fast.prompts([t.ids for t in self.tokens])
        self.lengths = self.prompts.lengths
        self.run = fast.runner(self.prompts)
        self.host_states = torch.zeros(len(prompts), STATE_WORDS, dtype=torch.int64)
        if fast.device.type == "cuda":
            self.host_states = self.host_states.pin_memory()

    def __call__(self, indices: Sequence[int], states: list[list[int]]) -> list[int]:
        if self.fast.cuda_graph:
            index = torch.tensor(list(indices), dtype=torch.int64)
            self.host_states[index] = states_tensor(states)
            rows = self.run(self.host_states)[1][index.to(self.fast.device)].tolist()
        else:
            subset = (self.prompts if len(indices) == self.prompts.batch
                      else self.prompts.select(self.fast, indices))
            pred = self.fast.step(subset, states_tensor(states).to(self.fast.device))
            rows = self.fast.rows(pred).tolist()
        return [self.fast.words[r] for r in rows]


def run_batch(fast: FastReflex, tokenizer, prompts: list[str], config: dict,
              max_cycles: int = DEFAULT_MAX_CYCLES) -> list[RunResult]:
    """Run every prompt's program in lockstep; each stops on its own outcome."""
    predict = FastBatchPredictor(fast, tokenizer, prompts, config)
    return run_many(predict, len(prompts), max_cycles=max_cycles, with_indices=True)
