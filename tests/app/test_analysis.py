"""reflex_mlx.analysis and `reflex-mlx analyze` on the bundled reflex-tiny: the gates, the
ablation changes the output (and is undone), the recorded attention leaves the words
unchanged, bad input gets one Error line, and `analyze all` writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from reflex_app import api
from reflex_app.cli import main
from reflex_core.machine import Machine
from reflex_core.predict import Predictor
from reflex_core.spec import STATE_WORDS
from reflex_mlx import analysis

ROOT = Path(__file__).resolve().parents[2]
TINY_HELDOUT = ROOT / "reflex_torch" / "models" / "reflex-tiny" / "heldout.json"


@pytest.fixture(scope="module")
def tiny():
    return api.load("tiny")


def _states(count: int) -> list[list[int]]:
    """Machine states along the reference run of a short program (real, not random)."""
    machine, states = Machine(), []
    for word in [0x00500293, 0x00100313, 0x006282B3, 0x00005537, 0x00552023][:count]:
        states.append(machine.state())
        machine.write_word(machine.pc, word)
        machine.step()
    return states


def test_codebook_and_gates(tiny):
    model = analysis.reflex_model(tiny.runner)
    rows, words = analysis.codebook(model)
    assert rows.shape == (tiny.config["num_instrs"], tiny.config["embed_dim"]) and rows.dtype == np.float32
    assert len(words) == len(rows) and all(0 <= w < 2**32 for w in words)
    gates = analysis.gates(model)
    assert [g["layer"] for g in gates] == model.adapter_layers
    raw = float(np.array(model.reflex.adapters[0].attn_gate)[0])
    assert gates[0]["attn_gate"] == pytest.approx(np.tanh(raw), rel=1e-6)


def test_ablation_changes_the_output_and_is_undone(tiny):
    model = analysis.reflex_model(tiny.runner)
    runner, recorder = analysis.recording_runner(model)
    recorder.recording = False
    predictor = Predictor(runner, tiny.tokenizer, "compute 5 factorial and store it", tiny.config)
    states = _states(5)
    before = predictor.embed(states)
    changed = []
    for index in range(len(model.adapter_layers)):
        with analysis.gates_zeroed(model, index):
            off = predictor.embed(states)
        changed.append(float(np.abs(off - before).max()))
    assert all(c > 1e-3 for c in changed), changed
    with analysis.gates_zeroed(model, 0):
        words_off = predictor.predict_many(states)
    assert words_off != predictor.predict_many(states)  # adapter 0 off changes the chosen words
    np.testing.assert_array_equal(predictor.embed(states), before)  # restored


def test_recorded_attention_leaves_the_words_as_the_compiled_runner_gives(tiny):
    model = analysis.reflex_model(tiny.runner)
    runner, recorder = analysis.recording_runner(model)
    prompts = ["add 7 and 8 and store the result", "count up from 1 to 5 and store each value"]
    states = _states(3)
    for prompt in prompts:
        recorded = Predictor(runner, tiny.tokenizer, prompt, tiny.config).predict_many(states)
        assert recorded == Predictor(tiny.runner, tiny.tokenizer, prompt, tiny.config).predict_many(states)
    mean = recorder.mean()
    assert mean.shape == (len(model.adapter_layers), STATE_WORDS)
    assert list(recorder.counts) == [2 * len(states)] * len(model.adapter_layers)
    np.testing.assert_allclose(mean.sum(axis=1), 1.0, rtol=1e-5)


def _analyze(*args):
    return CliRunner().invoke(main, ["analyze", *map(str, args)])


def _one_error(result) -> str:
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


def test_bad_input_gets_one_error_line(tmp_path):
    assert "no model directory" in _one_error(
        _analyze("codebook", "--model", tmp_path / "none", "--out", tmp_path / "o")
    )
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "not a folder" in _one_error(_analyze("codebook", "--model", "tiny", "--out", afile))
    assert afile.read_text() == "x"
    assert "No such command" in _one_error(_analyze("lengths", "--model", "tiny", "--out", tmp_path / "o"))
    assert "unknown family" in _one_error(
        _analyze("length", "--model", "tiny", "--out", tmp_path / "o", "--families", "sort")
    )
    assert "--multipliers" in _one_error(
        _analyze("length", "--model", "tiny", "--out", tmp_path / "o", "--multipliers", "x2")
    )
    assert "no eval task" in _one_error(
        _analyze("adapters", "--model", "tiny", "--out", tmp_path / "o", "--eval-task", "nope")
    )
    assert "no heldout file" in _one_error(
        _analyze("codebook", "--model", "tiny", "--out", tmp_path / "o", "--heldout", tmp_path / "none.json")
    )


@pytest.mark.slow
def test_analyze_all_writes_the_report(tmp_path):
    out = tmp_path / "report"
    result = _analyze(
        "all", "--model", "tiny", "--out", out,
        "--multipliers", "1", "--per-family", "2", "--families", "multiply", "--max-cycles", "20",
        "--eval-task", "add 7+8", "--heldout", TINY_HELDOUT, "--heldout-cycles", "8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    length = json.loads((out / "length.json").read_text())
    assert [(r["family"], r["multiplier"], r["size"]) for r in length["runs"]] == [("multiply", 1, 1)]
    assert length["runs"][0]["expected"] == 3 and length["runs"][0]["max_cycles"] == 20
    assert length["skipped_tasks"] == [{"family": "multiply", "multiplier": 1, "size": 7}]  # 35 cycles
    codebook = json.loads((out / "codebook.json").read_text())
    assert codebook["confusions"]["cycles"] == 8
    assert codebook["neighbours"]["rows"] == len(codebook["words"])
    adapters = json.loads((out / "adapters.json").read_text())
    assert len(adapters["ablation"]) == len(adapters["gates"]) == 2
    assert adapters["eval_tasks"] == ["add 7+8"] and adapters["eval"]["total"] == 1
    page = (out / "README.md").read_text()
    for heading in ("## Length generalisation", "## The codebook", "## The adapters"):
        assert heading in page
    assert (out / "neighbours.md").is_file()
    pngs = {"length.png", "codebook_pca.png", "ablation.png", "attention.png"}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not any(out.glob("*.png"))
        assert "pip install 'reflex-mlx[analysis]'" in result.output
    else:
        assert pngs <= {p.name for p in out.glob("*.png")}
        assert all(f"]({name})" in page for name in pngs)
