"""reflex-tiny's whole eval run by MLX (a float32 conversion), against the torch reference.

Apart from tests/parity/test_tiny.py so that pytest-xdist runs this file's minutes of MLX
CPU work on one worker while the other computes the reference's eval, once for both
(conftest.tiny_reference_eval).
"""

from __future__ import annotations

import pytest


@pytest.mark.slow(minutes=2)
def test_the_eval_agrees_with_the_reference_free_running_and_in_lock_step(request, tiny_mlx_float32_dir):
    """Every prompt in one batch (as `eval` drives MLX): the same tasks pass as on the
    torch float32 reference (hooks, padded to 96), and MLX's word agrees with the
    reference's on at least 99% of every state the reference saw. A state MLX met in its
    own run is answered from there; the states after a divergence are fed to it."""
    from bench.agreement import batched, lockstep_agreement, outcome_agreement, recorded_eval
    from reflex_mlx.fast import FastReflex
    from reflex_mlx.loader import load_model as load_mlx

    mlx_model, mlx_tok, mlx_cfg = load_mlx(tiny_mlx_float32_dir)
    make = batched(FastReflex(mlx_model, fuse=True, compile=True), mlx_tok, mlx_cfg)
    own, own_recording = recorded_eval(make)
    # asked for only now: the other worker computes it meanwhile, for its own tests
    reference, recording = request.getfixturevalue("tiny_reference_eval")
    outcomes = outcome_agreement(reference, own)
    lockstep = lockstep_agreement(recording, make, seen=own_recording)
    print(
        f"reference {reference['passed']}/{reference['total']}, mlx {own['passed']}/{own['total']}; "
        f"{outcomes}; lockstep words {lockstep['agree']}/{lockstep['cycles']} "
        f"({lockstep['asked']} states after a divergence); "
        f"tasks with a disagreement {lockstep['tasks_with_disagreement']}"
    )
    passed = lambda report: [row["pass"] for s in report["sections"].values() for row in s["rows"]]
    assert passed(reference) == passed(own)
    assert lockstep["cycles"] == sum(len(indices) for indices, _, _ in recording.calls) > 0
    assert lockstep["agree"] >= 0.99 * lockstep["cycles"]
