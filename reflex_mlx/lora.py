"""LoRA on the Reflex modules' linear layers, with mlx-lm's own LoRALinear.

A trained LoRA is either merged into the layers (`fuse`) or kept beside them:
then the model directory holds `lora.safetensors` and config.json's "lora"
entry, and the loader (reflex_mlx/loader.py) wraps the same layers again before
loading it. The adapter side's own weights stay exactly as they were, so a kept
LoRA over 8-bit adapters loses nothing to re-quantization.
"""

from __future__ import annotations

import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear

from reflex_core.spec import LORA_FILE  # noqa: F401  (re-exported: where it was defined)

# The Reflex modules' linear layers, by the last part(s) of their path.
LORA_TARGETS = (
    "value_proj",
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "mlp.fc1",
    "mlp.fc2",
    "head_mlp.fc1",
    "head_mlp.fc2",
    "embed_head",
)


def target_paths(reflex: nn.Module, targets: str | list[str] = "all") -> list[str]:
    """Paths of the linear layers (float or quantized) that `targets` names:
    "all", or names from LORA_TARGETS ("q_proj,v_proj"; "mlp.fc1" also matches head_mlp.fc1)."""
    names = list(LORA_TARGETS) if targets == "all" else [t for t in targets if t]
    unknown = [n for n in names if not any(t == n or t.endswith("." + n) for t in LORA_TARGETS)]
    if unknown:
        raise ValueError(f"unknown LoRA target {unknown[0]!r} (choose from all, {', '.join(LORA_TARGETS)})")
    return [
        path
        for path, module in reflex.named_modules()
        if isinstance(module, (nn.Linear, nn.QuantizedLinear))
        and any(path == n or path.endswith("." + n) for n in names)
    ]


def apply_lora(reflex: nn.Module, rank: int, alpha: float, targets) -> list[str]:
    """Wrap the targeted layers in LoRALinear (scale alpha / rank, B zero so the
    model is unchanged until trained); returns their paths."""
    paths = target_paths(reflex, targets)
    if not paths:
        raise ValueError("no Reflex linear layer matches the LoRA targets")
    modules = dict(reflex.named_modules())
    wrapped = [(path, LoRALinear.from_base(modules[path], r=rank, scale=alpha / rank)) for path in paths]
    reflex.update_modules(tree_unflatten(wrapped))
    return paths


def lora_weights(reflex: nn.Module) -> dict:
    """The LoRA matrices only (lora.safetensors)."""
    return {k: v for k, v in tree_flatten(reflex.parameters()) if k.endswith((".lora_a", ".lora_b"))}


def base_weights(reflex: nn.Module) -> dict:
    """Every other weight under its plain name (a LoRALinear's `.linear.` dropped),
    so adapters.safetensors loads into the model without LoRA."""
    lora = {p for p, m in reflex.named_modules() if isinstance(m, LoRALinear)}
    out = {}
    for key, value in tree_flatten(reflex.parameters()):
        if key.endswith((".lora_a", ".lora_b")):
            continue
        for path in lora:
            if key.startswith(path + ".linear."):
                key = path + "." + key[len(path + ".linear.") :]
                break
        out[key] = value
    return out


def fuse(reflex: nn.Module) -> int:
    """Merge every LoRA into its layer (a quantized layer is re-quantized at its own
    bits and group size); returns how many were merged."""
    fused = [(p, m.fuse()) for p, m in reflex.named_modules() if isinstance(m, LoRALinear)]
    if fused:
        reflex.update_modules(tree_unflatten(fused))
    return len(fused)
