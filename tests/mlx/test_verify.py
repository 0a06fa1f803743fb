"""--verify: the converted model against its unquantized source, streamed layer by
layer; its report in config.json, the model card and `reflex-mlx info`; a damaged
conversion shows up as low agreement.

MLX's quantized and float16 matmuls are slow on the Linux CPU, so these verify float32
conversions of reflex-tiny on the first 6 tasks; quantized conversions and
reflex-smol are verified on the GPU (tests/parity/test_parity_gpu.py,
docs/results)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from convert.convert import convert_checkpoint
from convert.verify import verify_conversion
from reflex_mlx.quantize import Recipe

TINY = Path(__file__).resolve().parents[2] / "reflex_torch" / "models" / "reflex-tiny"
TASKS = 6


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "tiny-f32"
    recipe = Recipe(backbone_dtype="float32", adapter_dtype="float32")
    return convert_checkpoint(
        str(TINY / "reflex.pt"), None, out, recipe=recipe, verify=True, verify_tasks=TASKS, quiet=True
    )


def test_a_float32_conversion_agrees_with_its_source(verified):
    report = json.loads((verified / "config.json").read_text())["fidelity"]
    assert report["runs"] == sum(1 for _ in report["per_task"]) >= TASKS
    assert report["same_word"] == report["cycles"] > 100
    assert report["runs_identical"] == report["runs"] and report["same_pass_set"] is True
    assert report["converted_passed"] == report["source_passed"]
    assert 0 < report["peak_memory_bytes"] < 1 << 30
    card = (verified / "README.md").read_text()
    assert f"same word on {report['cycles']}/{report['cycles']} cycles" in card
    assert "| factorial 5 |" in card
    info = subprocess.run(
        [sys.executable, "-m", "reflex_app", "info", str(verified), "--tasks"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert info.returncode == 0, info.stderr
    assert f"fidelity: same word on {report['cycles']}/{report['cycles']} cycles (100.00 %)" in info.stdout
    assert "same pass set: yes" in info.stdout and "| factorial 5 |" in info.stdout


def _damage(model_dir: Path, layer: int) -> None:
    """One layer's matrices replaced by their group-of-64 means: what zeroed
    quantization scales leave of a layer (each group becomes its bias)."""
    path = model_dir / "backbone" / "model.safetensors"
    weights = mx.load(str(path))
    for name, value in list(weights.items()):
        if name.startswith(f"model.layers.{layer}.") and value.ndim == 2:
            groups = value.reshape(value.shape[0], -1, 64)
            means = mx.broadcast_to(groups.mean(axis=-1, keepdims=True), groups.shape)
            weights[name] = means.reshape(value.shape).astype(value.dtype)
    mx.eval(weights)
    path.unlink()
    mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})


def test_a_damaged_conversion_shows_low_agreement(verified, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(verified, damaged)
    _damage(damaged, layer=0)
    (damaged / "manifest.json").unlink()  # what verify itself measures, not the manifest's digest
    report = verify_conversion(
        damaged, TINY / "backbone", TINY / "reflex.pt", progress=False, tasks=TASKS, max_cycles=60
    )
    assert report["same_word"] / report["cycles"] < 0.9, report
    assert report["runs_identical"] < report["runs"]
    # The source drove the diverged runs itself. Its runs here stop at 60 cycles, the
    # undamaged verify's at the default, so a task it passes here it passed there too.
    assert report["source_drove_diverged_runs"] is True and report["source_passed"] > 0
    undamaged = json.loads((verified / "config.json").read_text())["fidelity"]
    for here, there in zip(report["per_task"], undamaged["per_task"], strict=True):
        assert there["source_pass"] or not here["source_pass"], (here, there)


@pytest.mark.skipif(mx.is_available(mx.gpu), reason="the CPU's default")
def test_without_a_gpu_the_default_skips_verify_and_says_why(fixture_dir, tmp_path, capsys):
    out = convert_checkpoint(
        str(fixture_dir / "reflex.pt"), str(fixture_dir / "backbone"), tmp_path / "f16",
        recipe=Recipe(backbone_dtype="float16", adapter_dtype="float32"),
    )  # fmt: skip
    assert "fidelity" not in json.loads((out / "config.json").read_text())
    assert "verify skipped: MLX has no GPU here" in capsys.readouterr().err
