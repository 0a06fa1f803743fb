"""MLX against the PyTorch reference on CPU, on the project's random fixtures:
one over a Qwen2 backbone (as released) and one over a Llama backbone.

float32 MLX (unquantized backbone, fast runner as the CLI uses it) must match
the float32 reference (padded to 96) to 1e-4 relative error and decode
the same word; the 4-bit backbone is measured and printed (its error is what
4-bit quantization of random weights gives).
"""

from __future__ import annotations

import numpy as np
import pytest

from reflex_core.corpus import find_corpus, load_programs, replay
from reflex_core.predict import Predictor

TASK = "compute 5 factorial and store it"
FAMILIES = ("qwen2", "llama")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


def _fixture(request, family: str, name: str):
    """The conftest fixture `name` for this backbone family (llama_<name> for Llama)."""
    return request.getfixturevalue(name if family == "qwen2" else f"llama_{name}")


@pytest.fixture(scope="module")
def torch_model(request, family):
    return _fixture(request, family, "torch_fixture")


@pytest.fixture(scope="module")
def mlx_model(request, family):
    return _fixture(request, family, "mlx_float32")


@pytest.fixture(scope="module")
def mlx_4bit(request, family):
    return _fixture(request, family, "mlx_4bit_dir")


def _compare(torch_fixture, mlx_model, task, states):
    from reflex_mlx.fast import FastReflex
    from reflex_torch.model import Reference

    model, tokenizer, config = torch_fixture
    reference = Predictor(
        Reference(model, tokenizer.pad_token_id, config["max_instr_tokens"]), tokenizer, task, config
    )
    mlx_reflex, mlx_tokenizer, mlx_config = mlx_model
    candidate = Predictor(FastReflex(mlx_reflex, fuse=True, compile=True), mlx_tokenizer, task, mlx_config)
    ref, got = reference.embed(states), candidate.embed(states)
    rel = np.linalg.norm(ref - got, axis=-1) / np.linalg.norm(ref, axis=-1)
    ref_words = reference.predict_many(states)
    agree = float(np.mean(np.array(ref_words) == np.array(candidate.predict_many(states))))
    return rel, agree, ref_words


@pytest.mark.slow
def test_float32_parity_on_random_states(family, torch_model, mlx_model, random_states):
    rel, agree, words = _compare(torch_model, mlx_model, TASK, random_states(256, 1))
    print(f"{family} float32: max relative error {rel.max():.2e}, word agreement {agree:.4f}")
    assert rel.max() < 1e-4
    assert agree == 1.0
    assert len(set(words)) > 1, "the fixture's words should depend on the state"


def test_words_depend_on_the_prompt(torch_model, random_states):
    from reflex_torch.model import Reference

    model, tokenizer, config = torch_model
    reference = Reference(model, tokenizer.pad_token_id, 96)
    states = random_states(128, 2)
    a = Predictor(reference, tokenizer, "say hi", config).predict_many(states)
    b = Predictor(reference, tokenizer, TASK, config).predict_many(states)
    assert a != b


@pytest.fixture(scope="module")
def replayed_programs():
    root = find_corpus()
    if root is None:
        pytest.skip("corpus not found: set REFLEX_CORPUS or place it at ../shared/corpus")
    programs = load_programs(root)
    wanted = ["factorial", "fibonacci", "memcpy"]
    return [max((p for p in programs if p.family == f), key=lambda p: p.num_ops) for f in wanted]


def test_float32_parity_on_replayed_programs(family, torch_model, mlx_model, replayed_programs):
    for program in replayed_programs:
        states = [state for state, _ in replay(program)]
        rel, agree, _ = _compare(torch_model, mlx_model, program.instruction, states)
        print(f"{family} {program.family}: {len(states)} cycles, max rel {rel.max():.2e}, agree {agree}")
        assert rel.max() < 1e-4
        assert agree == 1.0


@pytest.mark.slow
def test_4bit_agreement_is_measured(family, torch_model, mlx_4bit, random_states):
    from reflex_mlx.loader import load_model

    # 64 states: MLX's 4-bit matmul is slow on the Linux CPU; a loose bound needs few
    rel, agree, _ = _compare(torch_model, load_model(mlx_4bit), TASK, random_states(64, 3))
    print(
        f"{family} 4-bit backbone vs float32 reference: median relative error {np.median(rel):.3f}, "
        f"word agreement {agree:.3f}"
    )
    assert 0 < np.median(rel) < 1.0  # quantized, so not equal; yet the same function
