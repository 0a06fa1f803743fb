"""reflex-tiny, the model the project trains and ships as the offline default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
TINY_TORCH = ROOT / "reflex_torch" / "models" / "reflex-tiny"
TINY_MLX = ROOT / "reflex_mlx" / "models" / "reflex-tiny"
MiB = 1 << 20


def test_weight_files_fit_the_budget():
    weights = [p for d in (TINY_TORCH, TINY_MLX) for p in d.rglob("*") if p.suffix in {".pt", ".safetensors"}]
    assert len(weights) >= 4
    for path in weights:
        assert path.stat().st_size < 16 * MiB, path
    assert sum(p.stat().st_size for p in weights) < 24 * MiB


def test_default_run_computes_5_factorial(tmp_path, monkeypatch):
    """No flags, no network: the bundled model halts with 120 at 0x5000."""
    from reflex_app.cli import MODEL_ENV, main

    monkeypatch.setenv("HOME", str(tmp_path))  # no converted release in the default place
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(main, ["run", "compute 5 factorial", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["outcome"] == "halted"
    assert report["memory"]["0x5000"][0] == 120
    assert "bundled reflex-tiny" in result.stderr


def test_release_dir_is_preferred_and_named(tmp_path, monkeypatch):
    import shutil

    from reflex_app.cli import MODEL_ENV, main
    from reflex_core.spec import DEFAULT_RELEASE_DIR

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(MODEL_ENV, raising=False)
    release = Path(DEFAULT_RELEASE_DIR).expanduser()
    shutil.copytree(TINY_MLX, release)
    result = CliRunner().invoke(main, ["run", "add 7 and 8 and store the result", "--max-cycles", "3"])
    assert result.exit_code == 0, result.output
    assert f"model: {release} (the converted release)" in result.stderr


def test_heldout_top1_is_at_least_95_percent(capsys, one_torch_thread):
    """`python -m reflex_torch.heldout` on the bundled model's own held-out programs."""
    from reflex_torch import heldout

    top1 = heldout.main([str(TINY_TORCH), "--device", "cpu", "--max-samples", "600"])
    match = re.search(r"held-out per-step top-1: ([\d.]+)%", capsys.readouterr().out)
    assert match and float(match.group(1)) == pytest.approx(100 * top1, abs=0.05)
    print(match.group(0))
    assert top1 >= 0.95


def _lockstep(model_dir, recording):
    from bench.agreement import lockstep_agreement, one_by_one
    from reflex_mlx.fast import FastReflex
    from reflex_mlx.loader import load_model as load_mlx

    mlx_model, mlx_tok, mlx_cfg = load_mlx(model_dir)
    fast = FastReflex(mlx_model, fuse=True, compile=True)
    return lockstep_agreement(recording, one_by_one(fast, mlx_tok, mlx_cfg))


SHIPPED_SAMPLE = 16  # every 16th call of the reference's eval: about 140 cycles, every task


@pytest.mark.slow(minutes=1)
def test_the_shipped_float16_conversion_agrees_on_a_sample_of_the_eval(tiny_reference_eval):
    """The bundled float16 model, as users run it, on every 16th of the reference's calls
    (MLX's CPU float16 matmul is too slow for all of them in a test)."""
    from bench.agreement import Recording

    reference, recording = tiny_reference_eval
    sample = Recording(prompts=recording.prompts, calls=recording.calls[::SHIPPED_SAMPLE])
    lockstep = _lockstep(TINY_MLX, sample)
    print(f"shipped float16: lockstep words {lockstep['agree']}/{lockstep['cycles']}")
    assert lockstep["cycles"] == sum(len(indices) for indices, _, _ in sample.calls) >= 100
    assert {recording.prompts[i] for indices, _, _ in sample.calls for i in indices} == set(recording.prompts)
    assert lockstep["agree"] >= 0.99 * lockstep["cycles"]


def test_eval_on_the_torch_backend(tmp_path):
    """The whole evaluation of the bundled model through `reflex-mlx eval --backend torch`
    (the Linux default): reflex-tiny's published 31/41, in seconds on a CPU."""
    from reflex_app.cli import main

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", "--backend", "torch", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["passed"], report["total"]) == (31, 41)
    assert "total        31/41" in result.stdout
