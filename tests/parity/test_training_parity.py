"""Training parity (issue 15, part 2): with the same weights and the same batch, the MLX
InfoNCE loss and the gradient of every trained tensor equal torch's, in float32."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import torch
from mlx.utils import tree_flatten

from reflex_core.spec import INFONCE_TEMPERATURE
from reflex_mlx.model import Reflex
from reflex_mlx.train import loss_and_grads, trainable


def _batch(tokenizer, random_states, num_instrs: int, size: int = 12):
    rng = np.random.default_rng(7)
    prompts = ["add 7 and 8 and store the result", "compute 5 factorial and store it", "say hi"]
    ids = [tokenizer.encode(prompts[i % len(prompts)]) for i in range(size)]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id or 0
    input_ids = np.array([x + [pad] * (width - len(x)) for x in ids], dtype=np.int64)
    mask = np.array([[1] * len(x) + [0] * (width - len(x)) for x in ids], dtype=np.int64)
    states = np.array(random_states(size, seed=11), dtype=np.uint32)
    targets = rng.integers(0, num_instrs, size)
    return input_ids, mask, states, targets


def fresh_models(fixture_dir, mlx_float32_dir):
    """The fixture in float32 on both sides, freshly loaded (the session's shared
    models stay inference-only): (torch model, tokenizer, config, trainable MLX model)."""
    from reflex_mlx.loader import load_model as load_mlx
    from reflex_torch.loader import load_model as load_torch

    torch_model, tokenizer, config = load_torch(
        fixture_dir / "reflex.pt",
        backbone=str(fixture_dir / "backbone"),
        device="cpu",
        backbone_dtype=torch.float32,
    )
    return torch_model, tokenizer, config, trainable(load_mlx(mlx_float32_dir)[0])


def test_loss_and_gradients_match_torch(fixture_dir, mlx_float32_dir, random_states):
    torch_model, tokenizer, config, mlx_model = fresh_models(fixture_dir, mlx_float32_dir)
    ids, mask, states, targets = _batch(tokenizer, random_states, config["num_instrs"])

    for p in torch_model.reflex.parameters():  # the recipe trains the Reflex modules only
        p.requires_grad_(True)
    with torch.enable_grad():
        pred = torch_model(torch.tensor(ids), torch.tensor(mask), torch.tensor(states.astype(np.int64)))
        loss = torch.nn.functional.cross_entropy(
            torch_model.reflex.scores(pred) / INFONCE_TEMPERATURE, torch.tensor(targets)
        )
        loss.backward()
    torch_grads = {
        name: mx.array(p.grad.float().numpy())
        for name, p in torch_model.reflex.named_parameters()
        if p.grad is not None
    }
    torch_grads = Reflex.sanitize(torch_grads)  # the packed in_proj split, MLX names

    mlx_loss, grads = loss_and_grads(
        mlx_model, mx.array(ids.astype(np.int32)), mx.array(mask), mx.array(states), mx.array(targets)
    )
    grads = {k.removeprefix("reflex."): v for k, v in tree_flatten(grads) if k.startswith("reflex.")}
    print(f"loss torch {loss.item():.6f}, mlx {mlx_loss.item():.6f}; {len(grads)} trained tensors")
    assert abs(mlx_loss.item() - loss.item()) <= 1e-5 * abs(loss.item())
    assert set(grads) == set(torch_grads), set(grads) ^ set(torch_grads)
    # The key bias's true gradient is zero (a softmax ignores a shift shared by all
    # keys): there both sides hold rounding noise, so errors are measured against
    # the largest gradient too, not only the tensor's own.
    scale = max(np.linalg.norm(np.array(g)) for g in torch_grads.values())
    worst = 0.0
    for name, g in grads.items():
        ref = np.array(torch_grads[name])
        err = np.linalg.norm(np.array(g) - ref) / max(np.linalg.norm(ref), 1e-3 * scale)
        worst = max(worst, err)
        assert err < 1e-4, (name, err, np.linalg.norm(ref), scale)
    print(f"largest relative gradient error: {worst:.2e} (largest gradient norm {scale:.3e})")
    assert not any(k.startswith("backbone.") for k, _ in tree_flatten(mlx_model.trainable_parameters()))


CURVE_STEPS = 20
# Each step's loss on both sides agrees to this relative tolerance: float32 rounding
# differences may grow through AdamW updates (measured here: 2.4e-7 at most over 20 steps).
CURVE_TOLERANCE = 1e-4


def test_a_short_run_follows_the_same_loss_curve(fixture_dir, mlx_float32_dir, random_states):
    """Both trainers from the same weights on the same batches: the same losses step by step."""
    from reflex_core.training import Batch, lr_at
    from reflex_mlx.train import Trainer, make_optimizer

    torch_model, tokenizer, config, mlx_model = fresh_models(fixture_dir, mlx_float32_dir)
    batches = []
    for step in range(CURVE_STEPS):
        ids, mask, states, targets = _batch(tokenizer, random_states, config["num_instrs"], size=8)
        rng = np.random.default_rng(100 + step)
        order = rng.permutation(len(ids))
        states = np.array(random_states(len(ids), seed=200 + step), dtype=np.int64)
        batches.append(
            Batch(ids[order], mask[order], states, rng.integers(0, config["num_instrs"], len(ids)))
        )
    schedule = dict(lr=1e-3, min_lr=1e-5, warmup=3, steps=CURVE_STEPS)

    reflex = torch_model.reflex
    params = [p for p in reflex.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))
    torch_losses = []
    with torch.enable_grad():
        for step, b in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, **schedule)
            pred = torch_model(*(torch.tensor(a) for a in (b.input_ids, b.attention_mask, b.states)))
            loss = torch.nn.functional.cross_entropy(
                reflex.scores(pred) / INFONCE_TEMPERATURE, torch.tensor(b.targets)
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            torch_losses.append(loss.item())

    trainer = Trainer(mlx_model, make_optimizer(1e-3, 0.01), INFONCE_TEMPERATURE, 1.0)
    mlx_losses = [trainer.step(b, lr_at(step, **schedule)).item() for step, b in enumerate(batches)]
    errors = [abs(a - b) / abs(a) for a, b in zip(torch_losses, mlx_losses)]
    print("torch:", " ".join(f"{x:.5f}" for x in torch_losses))
    print("mlx:  ", " ".join(f"{x:.5f}" for x in mlx_losses))
    print(f"largest relative loss difference over {CURVE_STEPS} steps: {max(errors):.2e}")
    assert torch_losses[-1] < 0.8 * torch_losses[0]  # it trains
    assert max(errors) < CURVE_TOLERANCE
