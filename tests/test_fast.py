"""The fast paths compute the reference's function (docs/performance.md).

FastReflex (cached prefix, explicit layer loop, no padding) against ReflexModel
with its hooks and padding; run_batch's lockstep eval against the per-prompt
reference eval; MLX's compiled step against its plain step; and a smoke run of
`reflex-mlx bench`. All on the small CPU fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

TASKS = ["compute 5 factorial and store it", "say hi", "add 7 and 8 and store the result"]


def _states(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, size=(n, 65), dtype=np.uint64).tolist()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a small shared CPU two torch threads spin against each other (20x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fast(torch_fixture):
    from reflex_torch.fast import FastReflex

    return FastReflex(torch_fixture[0])


def test_fast_step_equals_the_hooked_padded_forward(torch_fixture, fast):
    from reflex_torch.load import TorchPredictor

    model, tokenizer, config = torch_fixture
    states = _states(64, 0)
    for task in TASKS[:2]:
        reference = TorchPredictor(model, tokenizer, task, config)  # padded to 96, hooks
        prompts = fast.prompts([reference.tokens.ids] * len(states))
        got = fast.step(prompts, torch.tensor(states))
        ref = reference.embed(states)
        rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
        print(f"{task!r}: max relative error {rel:.1e}")
        assert rel < 1e-5
        words = [fast.words[r] for r in fast.rows(got).tolist()]
        assert words == reference.predict_many(states)
        assert len(set(words)) > 1


def test_fast_predictor_and_padded_batch_rows(torch_fixture, fast):
    from reflex_torch.fast import FastBatchPredictor, FastPredictor
    from reflex_torch.load import TorchPredictor

    model, tokenizer, config = torch_fixture
    states = _states(len(TASKS), 1)
    batch = FastBatchPredictor(fast, tokenizer, TASKS, config)
    assert len(set(batch.lengths)) > 1, "the prompts should need padding to batch"
    got = batch(list(range(len(TASKS))), states)
    for i, task in enumerate(TASKS):
        want = TorchPredictor(model, tokenizer, task, config)(states[i])
        assert FastPredictor(fast, tokenizer, task, config)(states[i]) == want
        assert got[i] == want
    # a subset of the programs, as once some have finished
    assert batch([2, 0], [states[2], states[0]]) == [got[2], got[0]]


def test_run_batch_eval_rows_equal_the_reference_eval(torch_fixture, fast):
    from reflex_core.evaluation import evaluate
    from reflex_torch.fast import FastBatchPredictor
    from reflex_torch.load import TorchPredictor

    model, tokenizer, config = torch_fixture
    ref = evaluate(lambda task: TorchPredictor(model, tokenizer, task, config).predict_many,
                   max_cycles=6)
    got = evaluate(make_batch_predictor=lambda prompts: FastBatchPredictor(fast, tokenizer, prompts, config),
                   max_cycles=6)
    assert got == ref


def test_run_batch_matches_single_runs(torch_fixture, fast):
    from reflex_core.loop import run
    from reflex_torch.fast import run_batch
    from reflex_torch.load import TorchPredictor

    model, tokenizer, config = torch_fixture
    results = run_batch(fast, tokenizer, TASKS, config, max_cycles=12)
    for task, result in zip(TASKS, results):
        single = run(TorchPredictor(model, tokenizer, task, config), max_cycles=12)
        assert [c.word for c in result.cycles] == [c.word for c in single.cycles]
        assert result.outcome == single.outcome


def test_bf16_adapters_are_a_copy(torch_fixture):
    from reflex_torch.fast import FastPredictor, FastReflex
    from reflex_torch.load import TorchPredictor

    model, tokenizer, config = torch_fixture
    fast16 = FastReflex(model, adapter_dtype=torch.bfloat16)
    assert fast16.reflex.adapters[0].mlp[0].weight.dtype == torch.bfloat16
    assert model.reflex.adapters[0].mlp[0].weight.dtype == torch.float32  # reference untouched
    states = _states(64, 2)
    want = TorchPredictor(model, tokenizer, TASKS[0], config).predict_many(states)
    got = FastPredictor(fast16, tokenizer, TASKS[0], config).predict_many(states)
    agree = np.mean(np.array(want) == np.array(got))
    print(f"bf16 adapters: word agreement {agree:.3f} on random states")
    assert agree > 0.8


def test_fused_projections_change_nothing(fixture_dir):
    """fuse=True re-homes q/k/v and gate/up into one tensor each: same values, the
    reference keeps working on the views, and the fused step agrees with it."""
    from reflex_torch.fast import FastPredictor, FastReflex
    from reflex_torch.load import TorchPredictor, load_reflex

    model, tokenizer, config = load_reflex(fixture_dir / "reflex.pt",
                                           backbone=str(fixture_dir / "backbone"), device="cpu")
    states = _states(32, 4)
    before = TorchPredictor(model, tokenizer, TASKS[0], config).embed(states)
    attn = model.backbone.layers[1].self_attn
    q_weight = attn.q_proj.weight.clone()
    fused = FastReflex(model, fuse=True)
    assert torch.equal(attn.q_proj.weight, q_weight)
    assert attn.k_proj.weight.data_ptr() == attn.q_proj.weight.data_ptr() + q_weight.numel() * q_weight.element_size()
    after = TorchPredictor(model, tokenizer, TASKS[0], config).embed(states)
    assert torch.equal(before, after)
    got = FastPredictor(fused, tokenizer, TASKS[0], config).embed(states)
    assert ((got - before).norm(dim=-1) / before.norm(dim=-1)).max().item() < 1e-5
    # A second fused FastReflex over the same model shares the fused tensors.
    assert FastReflex(model, fuse=True).fused is fused.fused


def test_torch_compiled_step_equals_the_plain_step(torch_fixture, fast):
    """compile=True (the fastest CUDA setting, with the graph) computes the same step."""
    import shutil

    from reflex_torch.fast import FastReflex

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    model, tokenizer, config = torch_fixture
    token_lists = [tokenizer(t)["input_ids"] for t in TASKS]
    compiled = FastReflex(model, compile=True)
    # The second prompt set changes every size: the recompile with symbolic sizes.
    for prompts, seed in ((token_lists, 5), ([token_lists[1] + token_lists[0], token_lists[2]], 6)):
        states = torch.tensor(_states(len(prompts), seed))
        want = fast.step(fast.prompts(prompts), states)
        got = compiled.step(compiled.prompts(prompts), states)
        assert ((got - want).norm(dim=-1) / want.norm(dim=-1)).max().item() < 1e-5
        assert compiled.rows(got).tolist() == fast.rows(want).tolist()


def test_compiled_mlx_step_equals_the_plain_step(mlx_float32):
    from reflex_mlx.load import MLXBatchPredictor, MLXPredictor

    model, tokenizer, config = mlx_float32
    states = _states(16, 3)
    plain = MLXPredictor(model, tokenizer, TASKS[0], config, compiled=False)
    compiled = MLXPredictor(model, tokenizer, TASKS[0], config)
    a, b = np.array(plain.embed(states)), np.array(compiled.embed(states))
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    assert plain.predict_many(states) == compiled.predict_many(states)
    indices = list(range(len(TASKS)))
    assert (MLXBatchPredictor(model, tokenizer, TASKS, config)(indices, states[:3])
            == MLXBatchPredictor(model, tokenizer, TASKS, config, compiled=False)(indices, states[:3]))


def test_bench_command_prints_the_ratio_last(fixture_dir, mlx_float32_dir):
    from click.testing import CliRunner

    from reflex_mlx.cli import main

    result = CliRunner().invoke(main, ["bench", "--model", str(mlx_float32_dir),
                                       "--torch", str(fixture_dir), "--cycles", "3"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("mlx/torch per-cycle time ratio: ")
    assert float(last.rsplit(" ", 1)[1]) > 0


def test_bench_without_torch_says_so(monkeypatch):
    import importlib.util

    from click.testing import CliRunner

    from reflex_mlx.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code != 0
    assert "torch is not installed" in result.output
