"""The fast torch path computes the reference's function (docs/performance.md).

FastReflex (cached prefix, packed batches) against ReflexModel's padded
forward; the lockstep eval against the
per-prompt reference eval. All on the small CPU fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reflex_core.predict import BatchPredictor, Predictor, run_batch

TASKS = ["compute 5 factorial and store it", "say hi", "add 7 and 8 and store the result"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def fast(torch_fixture):
    from reflex_torch.fast import FastReflex

    return FastReflex(torch_fixture[0])


def _reference(torch_fixture, task, pad=True):
    from reflex_torch.model import Reference

    model, tokenizer, config = torch_fixture
    runner = Reference(model, tokenizer.pad_token_id, config["max_instr_tokens"] if pad else None)
    return Predictor(runner, tokenizer, task, config)


def test_padding_to_96_does_not_change_the_embedding(torch_fixture, random_states):
    """The release pads every prompt to 96 tokens; unpadded gives the same embedding."""
    _, tokenizer, config = torch_fixture
    task = "compute 5 factorial and store it"
    padded, unpadded = _reference(torch_fixture, task), _reference(torch_fixture, task, pad=False)
    assert padded.batch.input_ids.shape[1] == config["max_instr_tokens"] == 96
    assert unpadded.batch.input_ids.shape[1] == len(unpadded.tokens.ids) < 96
    states = random_states(64, 0)
    a, b = padded.embed(states), unpadded.embed(states)
    assert a.dtype == np.float32
    rel = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a, axis=-1)  # per state
    print(f"padded vs unpadded relative error: max {rel.max():.2e} over {len(rel)} states")
    assert rel.max() < 1e-6


def test_fast_step_equals_the_padded_forward(torch_fixture, fast, random_states):
    states = random_states(64, 0)
    for task in TASKS[:2]:
        reference = _reference(torch_fixture, task)  # padded to 96
        got = Predictor(fast, torch_fixture[1], task, torch_fixture[2])
        ref, emb = reference.embed(states), got.embed(states)
        rel = (np.linalg.norm(emb - ref, axis=-1) / np.linalg.norm(ref, axis=-1)).max()
        print(f"{task!r}: max relative error {rel:.1e}")
        assert rel < 1e-5
        words = got.predict_many(states)
        assert words == reference.predict_many(states)
        assert len(set(words)) > 1


def test_fast_step_on_a_llama_backbone(llama_torch_fixture, random_states):
    """The same on the Llama fixture: no q/k/v biases, 3:1 grouped-query heads, its own
    head size, fused and unfused projections."""
    from reflex_torch.fast import FastReflex

    model, tokenizer, config = llama_torch_fixture
    assert model.backbone.config.model_type == "llama"
    states = random_states(64, 4)
    reference = _reference(llama_torch_fixture, TASKS[0])
    ref = reference.embed(states)
    for fuse in (False, True):
        got = Predictor(FastReflex(model, fuse=fuse), tokenizer, TASKS[0], config)
        rel = (np.linalg.norm(got.embed(states) - ref, axis=-1) / np.linalg.norm(ref, axis=-1)).max()
        print(f"llama fuse={fuse}: max relative error {rel:.1e}")
        assert rel < 1e-5
        assert got.predict_many(states) == reference.predict_many(states)


def test_fast_predictor_and_packed_batch_rows(torch_fixture, fast, random_states):
    _, tokenizer, config = torch_fixture
    states = random_states(len(TASKS), 1)
    batch = BatchPredictor(fast, tokenizer, TASKS, config)
    assert len(set(batch.batch.layout.lengths)) > 1, "the prompts should differ in length"
    got = batch(list(range(len(TASKS))), states)
    for i, task in enumerate(TASKS):
        want = _reference(torch_fixture, task)(states[i])
        assert Predictor(fast, tokenizer, task, config)(states[i]) == want
        assert got[i] == want
    # a subset of the programs, as once some have finished
    assert batch([2, 0], [states[2], states[0]]) == [got[2], got[0]]


def test_run_batch_eval_rows_equal_the_reference_eval(torch_fixture, fast):
    from reflex_core.evaluation import evaluate
    from reflex_torch.model import Reference

    model, tokenizer, config = torch_fixture
    reference = Reference(model, tokenizer.pad_token_id, config["max_instr_tokens"])
    ref = evaluate(lambda task: Predictor(reference, tokenizer, task, config).predict_many, max_cycles=6)
    got = evaluate(
        make_batch_predictor=lambda prompts: BatchPredictor(fast, tokenizer, prompts, config), max_cycles=6
    )
    assert got == ref


def test_run_batch_matches_single_runs(torch_fixture, fast):
    from reflex_core.loop import run

    _, tokenizer, config = torch_fixture
    results = run_batch(fast, tokenizer, TASKS, config, max_cycles=12)
    for task, result in zip(TASKS, results):
        single = run(_reference(torch_fixture, task), max_cycles=12)
        assert [c.word for c in result.cycles] == [c.word for c in single.cycles]
        assert result.outcome == single.outcome


def test_bf16_adapters_are_a_copy(torch_fixture, random_states):
    from reflex_torch.fast import FastReflex

    model, tokenizer, config = torch_fixture
    fast16 = FastReflex(model, adapter_dtype=torch.bfloat16)
    assert fast16.reflex.adapters[0].mlp[0].weight.dtype == torch.bfloat16
    assert model.reflex.adapters[0].mlp[0].weight.dtype == torch.float32  # reference untouched
    states = random_states(64, 2)
    want = _reference(torch_fixture, TASKS[0]).predict_many(states)
    got = Predictor(fast16, tokenizer, TASKS[0], config).predict_many(states)
    agree = np.mean(np.array(want) == np.array(got))
    print(f"bf16 adapters: word agreement {agree:.3f} on random states")
    assert agree > 0.8


def test_fused_projections_change_nothing(fixture_dir, random_states):
    """fuse=True re-homes q/k/v and gate/up into one tensor each: same values, the
    reference keeps working on the views, and the fused step agrees with it."""
    from reflex_torch.fast import FastReflex
    from reflex_torch.loader import load_model

    loaded = load_model(fixture_dir / "reflex.pt", backbone=str(fixture_dir / "backbone"), device="cpu")
    model, tokenizer, config = loaded
    states = random_states(32, 4)
    before = _reference(loaded, TASKS[0]).embed(states)
    attn = model.backbone.layers[1].self_attn
    q_weight = attn.q_proj.weight.clone()
    fused = FastReflex(model, fuse=True)
    assert torch.equal(attn.q_proj.weight, q_weight)
    assert (
        attn.k_proj.weight.data_ptr()
        == attn.q_proj.weight.data_ptr() + q_weight.numel() * q_weight.element_size()
    )
    after = _reference(loaded, TASKS[0]).embed(states)
    assert np.array_equal(before, after)
    got = Predictor(fused, tokenizer, TASKS[0], config).embed(states)
    assert (np.linalg.norm(got - before, axis=-1) / np.linalg.norm(before, axis=-1)).max() < 1e-5
    # A second fused FastReflex over the same model shares the fused tensors.
    assert FastReflex(model, fuse=True).fused is fused.fused


def test_torch_compiled_step_equals_the_plain_step(torch_fixture, fast, random_states):
    """compile=True (the fastest CUDA setting, with the graph) computes the same step;
    and the model deep-copies after it: the copy runs and gives the same words."""
    import copy
    import shutil

    from reflex_torch.fast import FastReflex
    from reflex_torch.model import states_tensor

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    model, tokenizer, config = torch_fixture
    token_lists = [tokenizer(t)["input_ids"] for t in TASKS]
    compiled = FastReflex(model, compile=True)
    # The second prompt set changes every size: the recompile with symbolic sizes.
    for prompts, seed in ((token_lists, 5), ([token_lists[1] + token_lists[0], token_lists[2]], 6)):
        states = states_tensor(random_states(len(prompts), seed))
        want = fast.step(fast.prefix(prompts), states)
        got = compiled.step(compiled.prefix(prompts), states)
        assert ((got - want).norm(dim=-1) / want.norm(dim=-1)).max().item() < 1e-5
        assert compiled.rows(got).tolist() == fast.rows(want).tolist()
    clone = copy.deepcopy(model)
    again = FastReflex(clone)
    got = again.step(again.prefix(prompts), states)
    assert torch.equal(got, want)


def test_deepcopied_model_runs_as_the_original(torch_fixture, random_states):
    """Fused views and the runner's state stay in the runner: a deep copy of the
    model, made after a fused runner ran, runs (its own forward and a fused
    runner over it) and gives the original's embeddings and words."""
    import copy

    from reflex_torch.fast import FastReflex

    model, tokenizer, config = torch_fixture
    states = random_states(8, 7)
    fast = Predictor(FastReflex(model, fuse=True), tokenizer, TASKS[0], config)
    want_words, want = fast.predict_many(states), fast.embed(states)
    reference = _reference(torch_fixture, TASKS[0]).embed(states)
    clone = copy.deepcopy(model)
    q_proj = lambda m: m.backbone.layers[0].self_attn.q_proj.weight
    assert q_proj(clone) is not q_proj(model) and torch.equal(q_proj(clone), q_proj(model))
    again = Predictor(FastReflex(clone, fuse=True), tokenizer, TASKS[0], config)
    assert np.array_equal(again.embed(states), want)
    assert again.predict_many(states) == want_words
    cloned = _reference((clone, tokenizer, config), TASKS[0]).embed(states)
    assert np.array_equal(cloned, reference)


def test_cross_attention_is_multihead_attention(torch_fixture):
    """The adapters' attention computes the release's nn.MultiheadAttention from the
    same weights, on prompts [B, T, H], pooled rows [B, 1, H] and packed prompts on a grid."""
    from reflex_torch.fast import FastReflex

    model, tokenizer, _ = torch_fixture
    adapter = model.reflex.adapters[0]
    hidden = adapter.norm_q.normalized_shape[0]
    released = torch.nn.MultiheadAttention(hidden, adapter.attn.heads, batch_first=True).eval()
    released.load_state_dict(adapter.attn.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(0)
    kv = torch.randn(3, 65, hidden, generator=gen)
    with torch.no_grad():
        for rows in (torch.randn(3, 7, hidden, generator=gen), torch.randn(3, 1, hidden, generator=gen)):
            want = released(rows, kv, kv, need_weights=False)[0]
            assert torch.allclose(adapter.attn(rows, kv), want, atol=1e-5)
        fast = FastReflex(model)
        batch = fast.prefix([tokenizer(t)["input_ids"] for t in TASKS])
        packed = torch.randn(batch.layout.tokens, hidden, generator=gen)
        want = batch.from_grid(released(batch.to_grid(packed), kv, kv, need_weights=False)[0])
        assert torch.allclose(batch.from_grid(adapter.attn(batch.to_grid(packed), kv)), want, atol=1e-5)
