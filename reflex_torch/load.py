"""Load `reflex.pt` and its backbone as the reference model, and predict words with it."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Model

from reflex_core.hub import resolve_backbone, resolve_checkpoint
from reflex_core.prompt import PromptTokens, encode_prompt, padded
from reflex_core.spec import adapter_layers, reflex_config

from .model import Reflex, ReflexModel


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_reflex(
    checkpoint: str | Path | None = None,
    backbone: str | None = None,
    device: str | torch.device | None = None,
    backbone_dtype: torch.dtype | None = None,
):
    """(model, tokenizer, config): the released inference setup.

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
    qwen = Qwen2Model.from_pretrained(source, dtype=backbone_dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    num_adapters = len(adapter_layers(qwen.config.num_hidden_layers, config["inject_every"]))
    reflex = Reflex(config, num_adapters)
    reflex.load_state_dict(saved["state"], strict=True)
    model = ReflexModel(qwen, reflex.to(device)).eval()
    model.requires_grad_(False)
    return model, tokenizer, config


class TorchPredictor:
    """State -> word for one task, with the prompt padded as the release pads it."""

    def __init__(self, model: ReflexModel, tokenizer, task: str, config: dict, pad: bool = True):
        self.model = model
        self.tokens: PromptTokens = encode_prompt(tokenizer, task, config)
        length = int(config["max_instr_tokens"]) if pad else len(self.tokens.ids)
        ids, mask = padded(self.tokens, length, tokenizer.pad_token_id)
        device = next(model.reflex.parameters()).device
        self.input_ids = torch.tensor([ids], device=device)
        self.attention_mask = torch.tensor([mask], device=device)

    @torch.no_grad()
    def embed(self, states: list[list[int]]) -> torch.Tensor:
        """Predicted embeddings [B, E] for a batch of states, all under this prompt."""
        batch = len(states)
        words = torch.tensor(states, dtype=torch.int64, device=self.input_ids.device)
        return self.model(
            self.input_ids.expand(batch, -1), self.attention_mask.expand(batch, -1), words
        )

    def predict_many(self, states: list[list[int]]) -> list[int]:
        return self.model.reflex.decode(self.embed(states))

    def __call__(self, state: list[int]) -> int:
        return self.predict_many([state])[0]
