"""Peak memory of `reflex-mlx train` at the released 7B shape, and which Macs can train what.

    python -m bench.train_memory --out docs/results/train_memory   # on a GPU (MLX's CUDA or Metal)

The model is the released shape with random weights (reflex_core.shapes.RELEASE):
Qwen2.5-Coder-7B's decoder quantized to 4 bits (group 64) by mlx-lm's quantizer,
and the Reflex side (7 adapters, head, 691-row codebook). Each configuration
runs a few real training steps of reflex_mlx/train.py's Trainer (InfoNCE,
AdamW, clipping) on random 80-token prompts, and its peak is MLX's own
(mx.get_peak_memory) over those steps, the resident model included.

The Mac table is a projection: the measured peak against a Mac's GPU working
set, taken as 2/3 of its memory up to 32 GB and 3/4 above (macOS's usual
recommended working set; reflex_core.spec.mac_working_set).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from reflex_core.shapes import RELEASE, SHAPES, decoder_config
from reflex_core.spec import ADAPTER_HEADS, ReflexArgs, adapter_layers, mac_working_set
from reflex_core.timing import human_bytes
from reflex_core.training import Batch

from .common import write_file

PROMPT_TOKENS = 80
STEPS = 3
MAC_SIZES_GB = (16, 24, 32, 64)
CONFIGS = (  # (mode, adapter bits, batch)
    ("full", None, 1),
    ("full", None, 4),
    ("lora", 4, 1),
    ("lora", 4, 4),
    ("lora", 8, 1),
    ("lora", 8, 4),
)


def build_backbone(shape):
    """The decoder with random weights, 4-bit g64, built one layer at a time."""
    from mlx_lm.models import qwen2

    from reflex_mlx.quantize import Recipe, quantize_backbone

    model = qwen2.Model(qwen2.ModelArgs.from_dict(decoder_config(shape)))
    quantize_backbone(model, Recipe(bits=4, group_size=64, backbone_dtype="float16"))
    for layer in [model.model.embed_tokens, *model.model.layers, model.model.norm, model.lm_head]:
        mx.eval(layer.parameters())
    return model


def build_reflex(shape, adapter_bits: int | None):
    from reflex_mlx.model import Reflex
    from reflex_mlx.quantize import Recipe, quantize_adapters

    args = ReflexArgs(
        hidden=shape.hidden,
        embed_dim=shape.embed_dim,
        num_instrs=shape.num_instrs,
        adapter_mlp_ratio=2,
        adapter_layers=tuple(adapter_layers(shape.layers, shape.inject_every)),
        adapter_heads=ADAPTER_HEADS,
    )
    reflex = Reflex(args)
    quantize_adapters(reflex, Recipe(adapter_bits=adapter_bits))
    mx.eval(reflex.parameters())
    return reflex


def measure(backbone, shape, mode: str, adapter_bits: int | None, batch: int, rng) -> dict:
    from reflex_mlx.model import ReflexModel
    from reflex_mlx.quantize import nbytes
    from reflex_mlx.train import Trainer, TrainOptions, count, make_optimizer, make_trainable

    mx.clear_cache()
    mx.reset_peak_memory()
    reflex = build_reflex(shape, adapter_bits)
    model = ReflexModel(backbone, reflex)
    make_trainable(model, TrainOptions(out=Path("."), mode=mode, lora_rank=16))
    resident = nbytes(backbone) + nbytes(reflex)
    trainer = Trainer(model, make_optimizer(1e-4, 0.01), 0.07, 1.0)
    times = []
    for _ in range(STEPS):
        b = Batch(
            rng.integers(0, shape.vocab, (batch, PROMPT_TOKENS)),
            np.ones((batch, PROMPT_TOKENS), dtype=np.int64),
            rng.integers(0, 2**32, (batch, 65), dtype=np.uint64).astype(np.int64),
            rng.integers(0, shape.num_instrs, batch),
        )
        start = time.perf_counter()
        loss = trainer.step(b, 1e-4)
        times.append(time.perf_counter() - start)
    row = {
        "mode": mode,
        "adapters": f"{adapter_bits}-bit" if adapter_bits else "float32",
        "batch": batch,
        "trainable_params": count(model.reflex.trainable_parameters()),
        "resident_bytes": resident,
        "peak_bytes": mx.get_peak_memory(),
        "step_s": min(times[1:]),
        "loss": loss.item(),
    }
    del trainer, model, reflex
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: the release's")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape] if args.shape else RELEASE
    args.out.mkdir(parents=True, exist_ok=True)
    device = f"{mx.default_device()}, {mx.device_info().get('device_name', '')}"
    started = time.time()
    backbone = build_backbone(shape)
    mx.eval(backbone.parameters())
    print(
        f"backbone built (4-bit g64): {human_bytes(mx.get_active_memory())} in {time.time() - started:.0f}s"
    )
    rng = np.random.default_rng(0)
    rows = []
    for mode, bits, batch in CONFIGS:
        try:
            row = measure(backbone, shape, mode, bits, batch, rng)
        except RuntimeError as err:  # an allocation MLX cannot make
            row = {"mode": mode, "adapters": bits, "batch": batch, "error": str(err).splitlines()[0]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        "| mode | adapters | batch | trainable | resident | peak (measured) | s/step | "
        + " | ".join(f"{gb} GB Mac (projected)" for gb in MAC_SIZES_GB)
        + " |",
        "|---" * (7 + len(MAC_SIZES_GB)) + "|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['adapters']} | {r['batch']} | error: {r['error']} |")
            continue
        fits = ["yes" if r["peak_bytes"] <= mac_working_set(gb) else "no" for gb in MAC_SIZES_GB]
        lines.append(
            f"| {r['mode']} | {r['adapters']} | {r['batch']} | {r['trainable_params'] / 1e6:.1f}M | "
            f"{human_bytes(r['resident_bytes'])} | {human_bytes(r['peak_bytes'])} | {r['step_s']:.3f} | "
            + " | ".join(fits)
            + " |"
        )
    table = "\n".join(lines)
    print(table)
    result = {
        "device": device,
        "shape": args.shape or "release",
        "prompt_tokens": PROMPT_TOKENS,
        "steps": STEPS,
        "rows": rows,
    }
    write_file(args.out / "train_memory.json", json.dumps(result, indent=1) + "\n")
    write_file(args.out / "train_memory.md", f"device: {device}\n\n{table}\n")
    return result


if __name__ == "__main__":
    main()
