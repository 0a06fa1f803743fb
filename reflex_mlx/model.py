"""Reflex in MLX: state encoder, gated cross-attention adapters, head and codebook
around an mlx-lm Qwen2 backbone (DESIGN.md §3).

The adapters are injected by an explicit loop over the backbone's decoder
layers; each layer is computed by `ReflexModel._layer`, mlx-lm's Qwen2 block
math over the layer's own modules, with q/k/v and gate/up fused into one matmul
each. Only the real prompt tokens run (no padding: attention is causal, so
right pads never changed the last real token). Everything up to the first
adapter does not depend on the machine state, so `prefix()` computes it once
per prompt and `step()` runs the rest each cycle. Only the last token is
pooled, so the last decoder layer's MLP and any adapter after it run on that
token alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu

from reflex_core.spec import ADAPTER_HEADS, LAYER_NORM_EPS, STATE_WORDS, adapter_layers


@dataclass
class ReflexArgs:
    hidden: int
    embed_dim: int
    num_instrs: int
    adapter_mlp_ratio: int
    adapter_layers: list[int] = field(default_factory=list)
    adapter_heads: int = ADAPTER_HEADS

    @classmethod
    def from_config(cls, config: dict) -> "ReflexArgs":
        layers = config.get("adapter_layers") or adapter_layers(
            config["num_layers"], config["inject_every"]
        )
        return cls(
            hidden=config["hidden"], embed_dim=config["embed_dim"],
            num_instrs=config["num_instrs"], adapter_mlp_ratio=config["adapter_mlp_ratio"],
            adapter_layers=list(layers), adapter_heads=config.get("adapter_heads", ADAPTER_HEADS),
        )


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.gelu(self.fc1(x)))  # exact (erf) GELU, as released


class StateEncoder(nn.Module):
    """65 machine words -> 65 tokens: one embedding per byte, projected, plus a role."""

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
    """Multi-head attention of prompt queries over state keys/values; no mask."""

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
        if k.shape[0] != B:
            k, v = mx.broadcast_to(k, (B, *k.shape[1:])), mx.broadcast_to(v, (B, *v.shape[1:]))
        # Written out rather than mx.fast.scaled_dot_product_attention: with 65 keys
        # and 448-wide heads (the release) two small matmuls are far faster on
        # CUDA (1.5 ms of a 7.9 ms cycle went to the fused call); softmax in float32.
        weights = mx.softmax((q * self.scale) @ k.swapaxes(-1, -2), axis=-1, precise=True)
        out = weights @ v
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, T, D))


class Adapter(nn.Module):
    """h + tanh(g_a) * attn(LN(h), kv), then + tanh(g_m) * MLP(LN(.)); in its own dtype."""

    def __init__(self, dim: int, mlp_ratio: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = CrossAttention(dim, heads)
        self.attn_gate = mx.zeros((1,))
        self.norm_mlp = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(dim, mlp_ratio * dim)
        self.mlp_gate = mx.zeros((1,))

    def __call__(self, h: mx.array, kv: mx.array) -> mx.array:
        dtype = self.attn_gate.dtype
        x, kv = h.astype(dtype), kv.astype(dtype)
        x = x + mx.tanh(self.attn_gate) * self.attn(self.norm_q(x), kv)
        x = x + mx.tanh(self.mlp_gate) * self.mlp(self.norm_mlp(x))
        return x.astype(h.dtype)


class Reflex(nn.Module):
    """The modules `reflex.pt` stores, under MLX names (see `sanitize`)."""

    def __init__(self, args: ReflexArgs):
        super().__init__()
        self.args = args
        H = args.hidden
        self.state_encoder = StateEncoder(H)
        self.kv_norm = nn.LayerNorm(H, eps=LAYER_NORM_EPS)
        self.adapters = [
            Adapter(H, args.adapter_mlp_ratio, args.adapter_heads) for _ in args.adapter_layers
        ]
        self.head_mlp = MLP(H, H)
        self.embed_head = nn.Linear(H, args.embed_dim)
        self.instr_table = nn.Embedding(args.num_instrs, args.embed_dim)
        self.instr_words = mx.zeros((args.num_instrs,), dtype=mx.uint32)

    def encode_state(self, words: mx.array) -> mx.array:
        return self.kv_norm(self.state_encoder(words))

    def head(self, last_hidden: mx.array) -> mx.array:
        return self.embed_head(self.head_mlp(last_hidden.astype(self.embed_head.weight.dtype)))

    def scores(self, pred: mx.array) -> mx.array:
        """Cosine similarity against every codebook row, in float32."""
        unit = lambda t: t / mx.linalg.norm(t, axis=-1, keepdims=True)
        table = unit(self.instr_table.weight.astype(mx.float32))
        return unit(pred.astype(mx.float32)) @ table.T

    def decode(self, pred: mx.array) -> mx.array:
        return self.instr_words[mx.argmax(self.scores(pred), axis=-1)]

    @staticmethod
    def sanitize(weights: dict) -> dict:
        """Map the released PyTorch names (and packing) onto this module's names."""
        out = {}
        for key, value in weights.items():
            if key.endswith("attn.in_proj_weight") or key.endswith("attn.in_proj_bias"):
                stem = key.rsplit(".", 1)[0]
                suffix = "weight" if key.endswith("weight") else "bias"
                q, k, v = mx.split(value, 3, axis=0)  # packed Wq; Wk; Wv rows
                out.update({f"{stem}.q_proj.{suffix}": q, f"{stem}.k_proj.{suffix}": k,
                            f"{stem}.v_proj.{suffix}": v})
                continue
            if key == "instr_words":
                value = value.astype(mx.uint32)  # low 32 bits, as the release masks them
            for torch_name, mlx_name in (("mlp.0.", "mlp.fc1."), ("mlp.2.", "mlp.fc2.")):
                key = key.replace(torch_name, mlx_name)  # also head_mlp.{0,2}
            out[key] = value
        return out


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
            part[name] = joined[name][start:start + rows]
        start += rows
    return joined


def fuse_projections(layer: nn.Module) -> dict:
    """A decoder layer's q/k/v projections as one matmul and gate/up as another.

    At one prompt per cycle the step is bound by kernel launches more than by
    arithmetic: two fewer matmuls per layer save 1.4 ms over the 24 uncached
    layers of the release on an H200 (bench/mlx_layers.py). Kept beside the
    layer, outside the module tree (so the weights are saved and counted once),
    and made once per layer.
    """
    if "_fused" not in layer.__dict__:
        attn, mlp = layer.self_attn, layer.mlp
        sizes = [attn.q_proj["weight"].shape[0], attn.k_proj["weight"].shape[0]]
        layer.__dict__["_fused"] = {
            "qkv": _joined([attn.q_proj, attn.k_proj, attn.v_proj]),
            "qkv_split": [sizes[0], sizes[0] + sizes[1]],
            "gate_up": _joined([mlp.gate_proj, mlp.up_proj]),
        }
    return layer.__dict__["_fused"]


class ReflexModel(nn.Module):
    """An mlx-lm Qwen2 model with the Reflex modules injected after the listed layers.

    fuse: run each decoder layer's q/k/v and gate/up projections as one matmul
    each (`fuse_projections`; the same function, rounded by other kernels).
    """

    def __init__(self, backbone: nn.Module, reflex: Reflex, fuse: bool = True):
        super().__init__()
        self.backbone = backbone.model  # mlx-lm's Qwen2Model: embed_tokens, layers, norm
        self.reflex = reflex
        self.__dict__["fused"] = [fuse_projections(layer) for layer in self.backbone.layers] if fuse else None
        # layer index -> adapter index (ints: a dict of modules would register them twice)
        self.adapter_index = {layer: i for i, layer in enumerate(reflex.args.adapter_layers)}
        self.first_adapter = min(reflex.args.adapter_layers)
        if max(reflex.args.adapter_layers) >= len(self.backbone.layers):
            raise ValueError("the adapter layers do not fit this backbone")

    def prefix(self, tokens: mx.array) -> mx.array:
        """Hidden states [1, T, H] up to the first adapter: the same every cycle."""
        h = self.backbone.embed_tokens(tokens)
        for i in range(self.first_adapter + 1):
            h = self._layer(i, h)
        return h

    def step(
        self, prefix: mx.array, states: mx.array, last: mx.array | None = None,
        capture: dict | None = None,
    ) -> mx.array:
        """Prefix [1 or B, T, H] + states [B, 65] -> predicted embeddings [B, E].

        Prompts of different lengths batch by right padding: under the causal
        mask the pads after a prompt never reach its real tokens, so `last`
        (each row's last real position) reads exactly the unpadded result.

        `capture`, when given, receives the intermediate values the parity suite
        compares: "kv" (the encoded state), each adapter layer's index -> the
        hidden state after that layer and its adapter at the last token, "pred".
        """
        kv = self.reflex.encode_state(states)
        h = mx.broadcast_to(prefix, (states.shape[0], *prefix.shape[1:]))
        last_layer = len(self.backbone.layers) - 1
        for i in range(self.first_adapter, last_layer + 1):
            if i > self.first_adapter:
                h = self._layer(i, h, pool=i == last_layer, last=last)  # [B, 1, H] once pooled
            if i in self.adapter_index:
                h = self.reflex.adapters[self.adapter_index[i]](h, kv)
            if capture is not None and i in self.reflex.args.adapter_layers:  # even if skipped
                capture[i] = self._pool(h, last)
        pred = self.reflex.head(self.backbone.norm(self._pool(h, last)))  # RMSNorm is per token
        if capture is not None:
            capture.update(kv=kv, pred=pred)
        return pred

    def _layer(self, i: int, h: mx.array, pool: bool = False, last: mx.array | None = None) -> mx.array:
        """Decoder layer i: mlx-lm's Qwen2 TransformerBlock math over its own modules,
        with the fused projections when there are some.

        pool=True (the last layer) computes it only where it is read, each row's
        last token: attention still reads every token's keys and values; the MLP
        (most of the layer's weights and arithmetic) and any adapter after it run
        on one row per prompt.
        """
        layer = self.backbone.layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        fused = self.fused[i] if self.fused else None
        x = layer.input_layernorm(h)
        if fused:
            q, k, v = mx.split(fused["qkv"](x), fused["qkv_split"], axis=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        B, L, _ = x.shape
        heads = lambda t, n: t.reshape(B, L, n, -1).transpose(0, 2, 1, 3)
        q, k, v = attn.rope(heads(q, attn.n_heads)), attn.rope(heads(k, attn.n_kv_heads)), heads(v, attn.n_kv_heads)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=self._mask(h))
        attended = attn.o_proj(o.transpose(0, 2, 1, 3).reshape(B, L, -1))
        h = (self._pool(h, last) + self._pool(attended, last))[:, None] if pool else h + attended
        x = layer.post_attention_layernorm(h)
        if fused:
            gate, up = mx.split(fused["gate_up"](x), 2, axis=-1)
            return h + mlp.down_proj(swiglu(gate, up))
        return h + mlp(x)

    def __call__(self, tokens: mx.array, states: mx.array) -> mx.array:
        return self.step(self.prefix(tokens), states)

    def compiled_step(self, prefix: mx.array, states: mx.array,
                      last: mx.array | None = None) -> mx.array:
        """`step` through mx.compile: traced once per input shape, then replayed with
        its elementwise ops fused, so a cycle launches fewer kernels. The weights
        are constants of the trace (inference only: change them, call again on a
        fresh model). Same function as `step`; tests/test_fast.py checks it."""
        return self._compiled("step", lambda *a: self.step(*a))(prefix, states, last)

    def words(self, prefix: mx.array, states: mx.array, last: mx.array | None = None) -> mx.array:
        """The decoded words [B] (uint32) of `step`."""
        return self.reflex.decode(self.step(prefix, states, last))

    def compiled_words(self, prefix: mx.array, states: mx.array,
                       last: mx.array | None = None) -> mx.array:
        """`words` through mx.compile: step and decode in one compiled call."""
        return self._compiled("words", lambda *a: self.words(*a))(prefix, states, last)

    def _compiled(self, name: str, fn):
        cache = self.__dict__.setdefault("_compiled_fns", {})  # kept out of the module tree
        if name not in cache:
            cache[name] = (mx.compile(lambda p, s: fn(p, s, None)), mx.compile(fn))
        return lambda p, s, last: cache[name][0](p, s) if last is None else cache[name][1](p, s, last)

    @staticmethod
    def _pool(h: mx.array, last: mx.array | None) -> mx.array:
        if h.shape[1] == 1:  # already pooled (or a one-token prompt)
            return h[:, 0, :]
        return h[:, -1, :] if last is None else h[mx.arange(h.shape[0]), last]

    @staticmethod
    def _mask(h: mx.array):
        return "causal" if h.shape[1] > 1 else None
