"""Training Reflex in MLX (issue 15's first part): the released InfoNCE objective over
a frozen backbone, its loss and the gradients of every trained tensor. The torch
trainer (reflex_torch/train.py) computes the same function; tests/parity/test_training_parity.py
holds the two to float32 tolerance on the same weights and batch."""

from __future__ import annotations

import mlx.nn as nn

from reflex_core.spec import INFONCE_TEMPERATURE

from .model import ReflexModel


def infonce_loss(
    model: ReflexModel, input_ids, attention_mask, states, targets, temperature=INFONCE_TEMPERATURE
):
    """Cross-entropy of the cosine similarities to the whole codebook, over the
    temperature, against each state's target row (the released objective)."""
    pred = model(input_ids, attention_mask, states)
    return nn.losses.cross_entropy(model.reflex.scores(pred) / temperature, targets, reduction="mean")


def trainable(model: ReflexModel) -> ReflexModel:
    """Freeze what the recipe keeps fixed: the backbone, and the codebook's words."""
    model.backbone.freeze()
    model.reflex.freeze(recurse=False, keys=["instr_words"])
    return model


def loss_and_grads(
    model: ReflexModel, input_ids, attention_mask, states, targets, temperature=INFONCE_TEMPERATURE
):
    """(loss, grads of every trainable parameter, as a nested dict like model.trainable_parameters())."""
    step = nn.value_and_grad(model, lambda m, *batch: infonce_loss(m, *batch, temperature))
    return step(model, input_ids, attention_mask, states, targets)
