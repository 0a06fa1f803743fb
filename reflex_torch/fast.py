"""A fast way to run the reference model: the same modules, called explicitly.

`ReflexModel` reproduces the release by hooking adapters onto transformers'
decoder layers and running the whole padded prompt every cycle. That is
launch-overhead bound (DESIGN.md §8). `FastReflex` is a switch over the *same*
`ReflexModel` (no second set of weights, unless bf16 adapters are asked for):

* only the real prompt tokens run (causal attention: right pads never reached
  the last real token, so they never changed the result);
* everything up to and including the first adapter's decoder layer does not
  depend on the machine state, so `prefix()` runs it once per prompt;
* `step()` runs the remaining layers and the adapters layer by layer, calling
  each decoder layer's `forward` directly so that the adapter hooks of
  `ReflexModel` do not fire (the adapters are applied here, explicitly);
* on CUDA each (prompt set, batch) step is captured once as a CUDA graph and
  replayed every cycle, with the decode (cosine + argmax) inside the graph.

`FastPredictor` (one prompt) and `FastBatchPredictor` / `run_batch` (many
prompts in lockstep) plug into `reflex_core.loop` and `reflex_core.evaluation`.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F

from reflex_core.loop import RunResult, run_many
from reflex_core.prompt import PromptTokens, encode_prompt, pad_batch
from reflex_core.spec import DEFAULT_MAX_CYCLES, STATE_WORDS

from .model import Reflex, ReflexModel

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


class FastReflex:
    """prefix(ids) once per prompt, then step(prefix, states) per cycle.

    adapter_dtype: None keeps the model's own Reflex modules (float32 as
    released); torch.bfloat16 runs them in bf16 from a copy, or from the
    model's own modules cast in place when in_place=True (the reference then
    changes too). cuda_graph: capture and replay the step on CUDA (ignored
    elsewhere). compile: also pass the step through torch.compile (fused
    elementwise kernels, then captured as a graph); off by default, since it
    costs a compilation per (batch, prompt length).
    """

    def __init__(self, model: ReflexModel, adapter_dtype: torch.dtype | None = None,
                 cuda_graph: bool = True, in_place: bool = False, compile: bool = False):
        self.model = model
        self.compiled = torch.compile(self._step, dynamic=False) if compile else None
        self.backbone = model.backbone
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
        self._contexts: dict[int, dict] = {}

    # ------------------------------------------------------------ the pieces
    def _context(self, length: int) -> dict:
        """Positions, rotary tables and causal mask for `length` tokens: state-independent."""
        if length not in self._contexts:
            dtype = self.backbone.embed_tokens.weight.dtype
            positions = torch.arange(length, device=self.device)[None]
            probe = torch.zeros(1, length, 1, dtype=dtype, device=self.device)
            cos_sin = self.backbone.rotary_emb(probe, positions)
            self._contexts[length] = {
                "position_ids": positions, "position_embeddings": cos_sin,
                "attention_mask": self._causal_mask(length, dtype, positions),
            }
        return self._contexts[length]

    def _causal_mask(self, length: int, dtype: torch.dtype, positions: torch.Tensor):
        """What Qwen2Model would build for an unpadded prompt: None under sdpa
        (its kernel applies is_causal), an explicit mask for eager attention."""
        from transformers.masking_utils import create_causal_mask

        kwargs = dict(config=self.backbone.config,
                      inputs_embeds=torch.zeros(1, length, 1, dtype=dtype, device=self.device),
                      attention_mask=None, past_key_values=None, position_ids=positions)
        if "cache_position" in inspect.signature(create_causal_mask).parameters:  # older 5.x
            kwargs["cache_position"] = positions[0]
        return create_causal_mask(**kwargs)

    def _layer(self, i: int, h: torch.Tensor, ctx: dict) -> torch.Tensor:
        # .forward, not __call__: ReflexModel's adapter hooks must not fire here.
        out = self.backbone.layers[i].forward(h, past_key_values=None, use_cache=False, **ctx)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def prefix(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] (no padding needed) -> hidden [B, T, H] after layer `first`."""
        ids = ids.to(self.device)
        ctx = self._context(ids.shape[1])
        h = self.backbone.embed_tokens(ids)
        for i in range(self.first + 1):
            h = self._layer(i, h, ctx)
        return h

    @torch.no_grad()
    def step(self, prefix: torch.Tensor, states: torch.Tensor,
             last: torch.Tensor | None = None) -> torch.Tensor:
        """prefix [1 or B, T, H] + states [B, 65] int64 -> predicted embeddings [B, E].

        `last` holds each row's last real token when prompts of different
        lengths were right-padded together (default: the last column).
        """
        ctx = self._context(prefix.shape[1])  # built outside any compiled region
        return (self.compiled or self._step)(prefix, states, last, ctx)

    def _step(self, prefix, states, last, ctx) -> torch.Tensor:
        batch = states.shape[0]
        kv = self.reflex.encode_state(states)
        h = prefix.expand(batch, -1, -1)
        for i in range(self.first, len(self.backbone.layers)):
            if i > self.first:
                h = self._layer(i, h, ctx)
            if i in self.adapter_at:
                h = self.adapter_at[i](h, kv)
        pooled = h[:, -1] if last is None else h[torch.arange(batch, device=h.device), last]
        return self.reflex.head(self.backbone.norm(pooled))  # RMSNorm is per token

    def rows(self, pred: torch.Tensor) -> torch.Tensor:
        """Codebook row of each prediction: Reflex.scores' cosine, float32, argmax."""
        return (F.normalize(pred.float(), dim=-1) @ self.table.T).argmax(dim=-1)

    def runner(self, prefix: torch.Tensor, last: torch.Tensor | None = None) -> "StepRunner":
        return StepRunner(self, prefix, last)


class StepRunner:
    """One prefix's per-cycle step, as a CUDA graph per batch size where possible.

    A graph reads fixed addresses: the prefix (held here), a static states
    buffer written before each replay, and outputs allocated at capture.
    """

    def __init__(self, fast: FastReflex, prefix: torch.Tensor, last: torch.Tensor | None):
        self.fast, self.prefix, self.last = fast, prefix, last
        self.graphs: dict[int, tuple] = {}

    def _compute(self, states: torch.Tensor, last: torch.Tensor | None):
        pred = self.fast.step(self.prefix, states, last)
        return pred, self.fast.rows(pred)

    def _capture(self, batch: int) -> tuple:
        states = torch.zeros(batch, STATE_WORDS, dtype=torch.int64, device=self.fast.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: cuBLAS handles, workspaces, kernel choice
            for _ in range(2):
                self._compute(states, self.last)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            pred, rows = self._compute(states, self.last)
        return graph, states, pred, rows

    @torch.no_grad()
    def __call__(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, 65] int64 (any device) -> (pred [B, E], rows [B]) on the device.

        With graphs the outputs are the graph's own buffers: read them before
        the next call.
        """
        batch = states.shape[0]
        if not self.fast.cuda_graph:
            return self._compute(states.to(self.fast.device), self.last)
        if self.last is not None and batch != self.last.shape[0]:
            raise ValueError("a padded prompt batch replays with one state per prompt")
        if batch not in self.graphs:
            self.graphs[batch] = self._capture(batch)
        graph, static_states, pred, rows = self.graphs[batch]
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
        self.prefix = fast.prefix(torch.tensor([self.tokens.ids]))
        self.run = fast.runner(self.prefix)

    def embed(self, states: list[list[int]]) -> torch.Tensor:
        return self.run(states_tensor(states))[0].clone()

    def predict_many(self, states: list[list[int]]) -> list[int]:
        rows = self.run(states_tensor(states))[1].tolist()
        return [self.fast.words[r] for r in rows]

    def __call__(self, state: list[int]) -> int:
        return self.predict_many([state])[0]


class FastBatchPredictor:
    """Many prompts in lockstep: predict(indices, states) for `run_many(with_indices=True)`.

    The prompts are right-padded together and their prefixes computed once;
    each row reads its own last real token. With CUDA graphs every cycle
    replays the whole batch (finished programs' rows repeat their last state
    and are ignored): one graph, no re-capture as programs stop. Eagerly, only
    the rows still running are computed.
    """

    def __init__(self, fast: FastReflex, tokenizer, prompts: list[str], config: dict,
                 pad_id: int | None = None):
        self.fast = fast
        self.tokens = [encode_prompt(tokenizer, p, config) for p in prompts]
        pad = pad_id if pad_id is not None else (tokenizer.pad_token_id or 0)
        ids, self.lengths = pad_batch(self.tokens, pad)
        self.prefix = fast.prefix(torch.tensor(ids))
        self.last = torch.tensor([n - 1 for n in self.lengths], device=fast.device)
        self.run = fast.runner(self.prefix, self.last)
        self.host_states = torch.zeros(len(prompts), STATE_WORDS, dtype=torch.int64)
        if fast.device.type == "cuda":
            self.host_states = self.host_states.pin_memory()

    def __call__(self, indices: Sequence[int], states: list[list[int]]) -> list[int]:
        index = torch.tensor(list(indices), dtype=torch.int64)
        if self.fast.cuda_graph:
            self.host_states[index] = states_tensor(states)
            rows = self.run(self.host_states)[1][index.to(self.fast.device)].tolist()
        else:
            width = max(self.lengths[i] for i in indices)  # drop columns all rows ignore
            prefix = self.prefix[index.to(self.fast.device), :width]
            pred = self.fast.step(prefix, states_tensor(states).to(self.fast.device),
                                  self.last[index.to(self.fast.device)])
            rows = self.fast.rows(pred).tolist()
        return [self.fast.words[r] for r in rows]


def run_batch(fast: FastReflex, tokenizer, prompts: list[str], config: dict,
              max_cycles: int = DEFAULT_MAX_CYCLES) -> list[RunResult]:
    """Run every prompt's program in lockstep; each stops on its own outcome."""
    predict = FastBatchPredictor(fast, tokenizer, prompts, config)
    return run_many(predict, len(prompts), max_cycles=max_cycles, with_indices=True)
