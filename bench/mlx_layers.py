"""MLX on CUDA: where the 24 per-cycle backbone layers' time goes, and what a hand-written
layer (explicit attention, fused projections) would save. Random bf16 weights, released shape.

    PYTHONPATH=$PWD python3 bench/mlx_layers.py          (SMALL=1: a small shape, any machine)
"""
import os, statistics, time
import numpy as np, mlx.core as mx, mlx.nn as nn
from mlx_lm.models import qwen2

SMALL = os.environ.get("SMALL")
H, I, NH = (256, 512, 8) if SMALL else (3584, 18944, 28)
T, LAYERS = 60, 24
args = qwen2.ModelArgs(model_type="qwen2", hidden_size=H, num_hidden_layers=LAYERS, intermediate_size=I,
                       num_attention_heads=NH, num_key_value_heads=4, rms_norm_eps=1e-6, vocab_size=1000,
                       rope_theta=1e6, tie_word_embeddings=False)
back = qwen2.Model(args)
for _, mod in back.named_modules():
    if isinstance(mod, nn.Linear):
        mod.weight = mx.random.normal(mod.weight.shape) * mod.weight.shape[1] ** -0.5
back.set_dtype(mx.bfloat16)
mx.eval(back.parameters())
layers = back.layers
fused = [dict(qkv=mx.concatenate([l.self_attn.q_proj.weight, l.self_attn.k_proj.weight, l.self_attn.v_proj.weight]),
              qkv_b=mx.concatenate([l.self_attn.q_proj.bias, l.self_attn.k_proj.bias, l.self_attn.v_proj.bias]),
              gu=mx.concatenate([l.mlp.gate_proj.weight, l.mlp.up_proj.weight])) for l in layers]
mx.eval(fused)
D = H // NH
KV = 4
rng = np.random.default_rng(0)
causal = mx.triu(mx.full((T, T), -mx.inf, dtype=mx.float32), k=1)


def attend(attn, q, k, v, explicit):
    B = q.shape[0]
    q = attn.rope(q.reshape(B, T, NH, D).transpose(0, 2, 1, 3))
    k = attn.rope(k.reshape(B, T, KV, D).transpose(0, 2, 1, 3))
    v = v.reshape(B, T, KV, D).transpose(0, 2, 1, 3)
    if explicit:
        q = q.reshape(B, KV, NH // KV, T, D)
        w = (q * attn.scale) @ k[:, :, None].swapaxes(-1, -2)
        w = mx.softmax(w.astype(mx.float32) + causal, axis=-1).astype(v.dtype)
        o = (w @ v[:, :, None]).reshape(B, NH, T, D)
    else:
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask="causal")
    return o.transpose(0, 2, 1, 3).reshape(B, T, -1)


def layer(i, h, explicit, fuse):
    l, f = layers[i], fused[i]
    a = l.self_attn
    x = l.input_layernorm(h)
    if fuse:
        q, k, v = mx.split(x @ f["qkv"].T + f["qkv_b"], [H, H + KV * D], axis=-1)
    else:
        q, k, v = a.q_proj(x), a.k_proj(x), a.v_proj(x)
    h = h + a.o_proj(attend(a, q, k, v, explicit))
    x = l.post_attention_layernorm(h)
    if fuse:
        g, u = mx.split(x @ f["gu"].T, 2, axis=-1)
        return h + l.mlp.down_proj(nn.silu(g) * u)
    return h + l.mlp(x)


def variant(explicit=None, fuse=False, matmuls_only=False):
    def run(h):
        for i in range(LAYERS):
            if explicit is None:
                h = layers[i](h, "causal")
            elif matmuls_only:
                f, l = fused[i], layers[i]
                y = h @ f["qkv"].T
                h = h + l.self_attn.o_proj(y[..., :H])
                h = h + l.mlp.down_proj(mx.split(h @ f["gu"].T, 2, axis=-1)[0])
            else:
                h = layer(i, h, explicit, fuse)
        return h[:, -1, :8]
    return mx.compile(run)


def timeit(fn, n=30):
    xs = [mx.array(rng.normal(size=(1, T, H)).astype(np.float32)).astype(mx.bfloat16) for _ in range(n)]
    for x in xs[:3]:
        np.array(fn(x).astype(mx.float32))
    ts = []
    for x in xs:
        t = time.perf_counter(); np.array(fn(x).astype(mx.float32)); ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


x0 = mx.array(rng.normal(size=(1, T, H)).astype(np.float32)).astype(mx.bfloat16)
ref = variant()(x0).astype(mx.float32)
for name, kw in [("mlx-lm layers", {}), ("own layer, fast sdpa", dict(explicit=False)),
                 ("own layer, explicit attention", dict(explicit=True)),
                 ("own layer, fast sdpa, fused qkv+gate/up", dict(explicit=False, fuse=True)),
                 ("own layer, explicit attention, fused", dict(explicit=True, fuse=True)),
                 ("matmuls only (fused shapes)", dict(explicit=True, matmuls_only=True))]:
    fn = variant(**kw)
    err = "" if kw.get("matmuls_only") else \
        f"  rel err vs mlx-lm {float(mx.linalg.norm(fn(x0).astype(mx.float32) - ref) / mx.linalg.norm(ref)):.1e}"
    print(f"{name:45s} {timeit(fn):7.3f} ms{err}", flush=True)
print(f"{'trivial op':45s} {timeit(lambda x: x[:, -1, :8] + 1):7.3f} ms")
