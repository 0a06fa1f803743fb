"""The MLX model: plain modules, the fast runner computing the same function, no torch."""

from __future__ import annotations

import copy
import subprocess
import sys

import mlx.core as mx
import numpy as np

from reflex_core.predict import BatchPredictor, Predictor

TASKS = ["compute 5 factorial and store it", "say hi", "add 7 and 8 and store the result"]


def test_fast_runner_equals_the_plain_forward(mlx_float32, random_states):
    """FastReflex (prefix cached, packed, fused, compiled) vs ReflexModel.__call__ padded to 96."""
    from reflex_mlx.fast import FastReflex
    from reflex_mlx.model import Reference

    model, tokenizer, config = mlx_float32
    states = random_states(16, 3)
    plain = Predictor(Reference(model, tokenizer.pad_token_id, 96), tokenizer, TASKS[0], config)
    for fuse, compile in ((False, False), (True, False), (True, True)):
        fast = Predictor(FastReflex(model, fuse=fuse, compile=compile), tokenizer, TASKS[0], config)
        a, b = plain.embed(states), fast.embed(states)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max(), (fuse, compile)
        assert plain.predict_many(states) == fast.predict_many(states)
    indices = list(range(len(TASKS)))
    compiled = BatchPredictor(FastReflex(model, fuse=True, compile=True), tokenizer, TASKS, config)
    eager = BatchPredictor(Reference(model, tokenizer.pad_token_id), tokenizer, TASKS, config)
    assert compiled(indices, states[:3]) == eager(indices, states[:3])
    assert compiled([2, 0], [states[2], states[0]]) == eager([2, 0], [states[2], states[0]])


def test_deepcopy_after_a_compiled_step(mlx_float32, random_states):
    """Compiled functions and fused views live in the runner: the model stays a plain
    module, and its deep copy runs (its own forward and a fused, compiled runner over
    it) to the original's embeddings and words."""
    from reflex_mlx.fast import FastReflex
    from reflex_mlx.model import Reference

    model, tokenizer, config = mlx_float32
    states = random_states(4, 1)
    reference = lambda m: Predictor(Reference(m, tokenizer.pad_token_id, 96), tokenizer, TASKS[1], config)
    fast = Predictor(FastReflex(model, fuse=True, compile=True), tokenizer, TASKS[1], config)
    words, embedded, plain = fast.predict_many(states), fast.embed(states), reference(model).embed(states)
    clone = copy.deepcopy(model)
    assert sorted(vars(clone)) == sorted(vars(model))
    again = Predictor(FastReflex(clone, fuse=True, compile=True), tokenizer, TASKS[1], config)
    assert again.predict_many(states) == words
    assert np.array_equal(again.embed(states), embedded)
    assert np.array_equal(reference(clone).embed(states), plain)


def test_sanitize_is_idempotent(mlx_float32_dir):
    from reflex_core.spec import ADAPTERS_FILE
    from reflex_mlx.model import Reflex

    stored = mx.load(str(mlx_float32_dir / ADAPTERS_FILE))
    once = Reflex.sanitize(stored)
    twice = Reflex.sanitize(once)
    assert once.keys() == twice.keys() == stored.keys()
    assert all(mx.array_equal(once[k], twice[k]) for k in once)
    packed = {
        "adapters.0.attn.in_proj_weight": mx.arange(12).reshape(6, 2),
        "adapters.0.mlp.0.weight": mx.zeros((2, 2)),
        "instr_words": mx.array([-1, 5]),
    }
    mapped = Reflex.sanitize(packed)
    assert sorted(mapped) == [
        "adapters.0.attn.k_proj.weight",
        "adapters.0.attn.q_proj.weight",
        "adapters.0.attn.v_proj.weight",
        "adapters.0.mlp.fc1.weight",
        "instr_words",
    ]
    assert mapped["adapters.0.attn.v_proj.weight"].tolist() == [[8, 9], [10, 11]]
    assert mapped["instr_words"].tolist() == [2**32 - 1, 5]
    assert Reflex.sanitize(mapped).keys() == mapped.keys()


def test_mlx_side_imports_and_runs_without_torch(tmp_path):
    """reflex_mlx and convert import no torch; `run` works where torch is absent."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import reflex_app.cli, reflex_mlx.loader, reflex_mlx.model, reflex_mlx.fast\n"
        "import convert, convert.convert\n"
        "from reflex_app.cli import main\n"
        "main(['run', 'compute 5 factorial', '--max-cycles', '4', '--json'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert '"outcome"' in proc.stdout
    assert "backend: mlx" in proc.stderr


def test_bf16_adapters_are_a_copy(mlx_float32, random_states):
    """Another adapter dtype runs from a cast copy around the same backbone; the model's
    own Reflex modules stay float32."""
    from reflex_mlx.fast import FastReflex

    model, tokenizer, config = mlx_float32
    fast16 = FastReflex(model, adapter_dtype=mx.bfloat16)
    assert fast16.reflex.adapters[0].mlp.fc1.weight.dtype == mx.bfloat16
    assert model.reflex.adapters[0].mlp.fc1.weight.dtype == mx.float32
    assert fast16.model.backbone is model.backbone and fast16.model.reflex is not model.reflex
    states = random_states(32, 2)
    want = Predictor(FastReflex(model), tokenizer, TASKS[0], config).predict_many(states)
    got = Predictor(fast16, tokenizer, TASKS[0], config).predict_many(states)
    assert np.mean(np.array(want) == np.array(got)) > 0.8
