"""reflex-tiny's whole eval run freely by MLX (a float32 conversion), against the torch reference.

Apart from tests/parity/test_tiny.py (the lock-step half) so that pytest-xdist runs the
two halves, each minutes of MLX CPU work, on two workers; the reference's eval is
computed once for both (conftest.tiny_reference_eval).
"""

from __future__ import annotations

import pytest


@pytest.mark.slow(minutes=2)
def test_free_running_eval_passes_the_same_tasks_on_both_backends(request, tiny_mlx_float32_dir):
    """Every prompt in one batch (as `eval` drives MLX): the same tasks pass as on the
    torch float32 reference (hooks, padded to 96)."""
    from bench.agreement import batched, outcome_agreement
    from reflex_core.evaluation import evaluate
    from reflex_mlx.fast import FastReflex
    from reflex_mlx.load import load_model as load_mlx

    mlx_model, mlx_tok, mlx_cfg = load_mlx(tiny_mlx_float32_dir)
    fast = FastReflex(mlx_model, fuse=True, compile=True)
    own = evaluate(make_batch_predictor=batched(fast, mlx_tok, mlx_cfg))
    # asked for only now: the other worker computes it meanwhile, for its own half
    reference, _ = request.getfixturevalue("tiny_reference_eval")
    outcomes = outcome_agreement(reference, own)
    print(
        f"reference {reference['passed']}/{reference['total']}, "
        f"mlx {own['passed']}/{own['total']}; {outcomes}"
    )
    passed = lambda report: [row["pass"] for s in report["sections"].values() for row in s["rows"]]
    assert passed(reference) == passed(own)
