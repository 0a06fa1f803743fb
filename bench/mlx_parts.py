"""Where an MLX cycle goes at the released shape (random bf16 weights): the whole step, the
backbone layers alone, the adapters alone, their MLPs alone, the decode inside the compile.

    PYTHONPATH=$PWD python3 bench/mlx_parts.py [BITS]      (SMALL=1: a small shape, any machine)

The H200 output in docs/results/mlx_parts_h200.txt was measured at commit f9a5d0d, when
CrossAttention still called mx.fast.scaled_dot_product_attention: the adapters' attention
cost 1.46 ms of a 7.9 ms cycle, which is why it is now two plain matmuls.
"""
import time, statistics, sys
import numpy as np, mlx.core as mx, mlx.nn as nn
from mlx_lm.models import qwen2
from reflex_mlx.model import Reflex, ReflexArgs, ReflexModel

import os
SMALL = os.environ.get("SMALL")
H, I = (256, 512) if SMALL else (3584, 18944)
args = qwen2.ModelArgs(model_type="qwen2", hidden_size=H, num_hidden_layers=28, intermediate_size=I,
                       num_attention_heads=28 if not SMALL else 8, num_key_value_heads=4, rms_norm_eps=1e-6, vocab_size=152064 if not SMALL else 1000,
                       rope_theta=1e6, tie_word_embeddings=False)
bits = int(sys.argv[1]) if len(sys.argv) > 1 else 0
back = qwen2.Model(args)
def scale(m):
    for _, mod in m.named_modules():
        if isinstance(mod, nn.Linear):
            mod.weight = (mx.random.normal(mod.weight.shape) * mod.weight.shape[1] ** -0.5).astype(mx.bfloat16)
scale(back)
back.set_dtype(mx.bfloat16)
if bits:
    nn.quantize(back, group_size=64, bits=bits)
mx.eval(back.parameters())
rargs = ReflexArgs(hidden=H, embed_dim=256, num_instrs=691, adapter_mlp_ratio=4, adapter_layers=list(range(3, 28, 4)))
reflex = Reflex(rargs)
scale(reflex)
reflex.set_dtype(mx.bfloat16)
for a in reflex.adapters:
    a.attn_gate = mx.array([0.5], dtype=mx.bfloat16); a.mlp_gate = mx.array([0.5], dtype=mx.bfloat16)
reflex.instr_words = mx.arange(691).astype(mx.uint32)
model = ReflexModel(back, reflex)
mx.eval(model.parameters())
print("built", flush=True)
rng = np.random.default_rng(0)
prefix = model.prefix(mx.array(rng.integers(0, 900, (1, 60))))
mx.eval(prefix)

def timeit(fn, n=30):
    xs = [mx.array(rng.integers(0, 2**32, (1, 65), dtype=np.uint64).astype(np.uint32)) for _ in range(n)]
    for x in xs[:3]: np.array(fn(x).astype(mx.float32))
    ts = []
    for x in xs:
        t = time.perf_counter(); np.array(fn(x).astype(mx.float32)); ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)

first = model.first_adapter
layers = model.backbone.layers
def old_step(p, s):
    kv = model.reflex.encode_state(s)
    h = p
    for i in range(first, 28):
        if i > first: h = layers[i](h, "causal")
        if i in model.adapter_index: h = model.reflex.adapters[model.adapter_index[i]](h, kv)
    return model.reflex.head(model.backbone.norm(h[:, -1]))
def backbone_only(p, s):
    h = p
    for i in range(first + 1, 28): h = layers[i](h, "causal")
    return h[:, -1, :8] + s[:, :1].astype(h.dtype)
def adapters_only(p, s):
    kv = model.reflex.encode_state(s); h = p
    for a in model.reflex.adapters: h = a(h, kv)
    return h[:, -1, :8]
def adapters_no_attn(p, s):
    h = p
    for a in model.reflex.adapters: h = h + a.mlp(a.norm_mlp(h))
    return h[:, -1, :8] + s[:, :1].astype(h.dtype)
comp = {k: mx.compile(f) for k, f in dict(old=old_step, backbone=backbone_only, adapters=adapters_only,
                                          adapter_mlps=adapters_no_attn).items()}
res = {}
res["new step (tail) compiled + decode"] = timeit(lambda s: model.reflex.decode(model.compiled_step(prefix, s)))
res["new step (tail) not compiled + decode"] = timeit(lambda s: model.reflex.decode(model.step(prefix, s)))
res["old step compiled + decode"] = timeit(lambda s: model.reflex.decode(comp["old"](prefix, s)))
res["backbone layers 4..27 compiled"] = timeit(lambda s: comp["backbone"](prefix, s))
res["7 adapters compiled"] = timeit(lambda s: comp["adapters"](prefix, s))
res["7 adapter MLPs compiled"] = timeit(lambda s: comp["adapter_mlps"](prefix, s))
res["trivial op"] = timeit(lambda s: s + 1)
dec = mx.compile(lambda p, s: model.reflex.decode(model.step(p, s)))
res["step+decode in one compile"] = timeit(lambda s: dec(prefix, s))
for k, v in res.items(): print(f"{k:40s} {v:8.3f} ms", flush=True)
