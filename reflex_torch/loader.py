"""Load `reflex.pt` and its backbone as the reference model (the released inference setup)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from reflex_core.hub import resolve_backbone, resolve_checkpoint
from reflex_core.spec import ReflexArgs, backbone_family, reflex_config

from . import BUNDLED_MODEL  # noqa: F401  (the bundled reflex-tiny, named here too for the loaders' callers)
from .model import Reflex, ReflexModel


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    checkpoint: str | Path | None = None,
    backbone: str | None = None,
    device: str | torch.device | None = None,
    backbone_dtype: torch.dtype | None = None,
):
    """(model, tokenizer, config) from a reflex.pt (default: the release, from the hub).

    The backbone runs in bf16 on CUDA and float32 on CPU unless told otherwise;
    the Reflex modules stay in the dtype they were stored in (float32).
    """
    device = torch.device(device) if device is not None else default_device()
    if backbone_dtype is None:
        backbone_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    checkpoint_path = resolve_checkpoint(str(checkpoint) if checkpoint else None)
    saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    config = reflex_config(saved["config"])
    source = resolve_backbone(backbone or config["backbone_id"], near=checkpoint_path)
    backbone = load_backbone(source, backbone_dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    reflex = Reflex(ReflexArgs.from_config(config, backbone.config.num_hidden_layers))
    reflex.load_state_dict(saved["state"], strict=True)
    model = ReflexModel(backbone, reflex.to(device)).eval()
    model.requires_grad_(False)
    return model, tokenizer, config


def load_backbone(source: str, dtype: torch.dtype):
    """The base model (no LM head) as the release loads it, with transformers'
    AutoModel, once its family is known to be one Reflex runs over."""
    config = AutoConfig.from_pretrained(source)
    backbone_family(config.to_dict())
    return AutoModel.from_pretrained(source, config=config, dtype=dtype)
