"""--verify on the GPU, where MLX's quantized matmul runs at speed: reflex-tiny at
4-bit on all 41 tasks, a deliberately damaged 4-bit conversion (one layer's scales
zeroed), and reflex-smol under the converter's default recipe. The reports go to
$VERIFY_OUT (docs/results/verify_*.json)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "reflex_torch" / "models" / "reflex-tiny"
SMOL = REPO / "reflex_torch" / "models" / "reflex-smol"

pytestmark = pytest.mark.gpu


def _out(tmp_path) -> Path:
    out = Path(os.environ.get("VERIFY_OUT") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _keep(model_dir: Path, out: Path, name: str) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    (out / f"verify_{name}.json").write_text(json.dumps(config["fidelity"], indent=1) + "\n")
    shutil.copy(model_dir / "README.md", out / f"card_{name}.md")
    return config["fidelity"]


def _zero_scales(model_dir: Path, layer: int) -> None:
    import mlx.core as mx

    for path in (model_dir / "backbone").glob("model*.safetensors"):
        weights = mx.load(str(path))
        hit = [n for n in weights if n.startswith(f"model.layers.{layer}.") and n.endswith(".scales")]
        if not hit:
            continue
        for name in hit:
            weights[name] = mx.zeros_like(weights[name])
        mx.eval(weights)
        path.unlink()
        mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})


def test_verify_quantized_tiny_and_a_damaged_conversion(tmp_path):
    from convert.convert import convert_checkpoint
    from convert.verify import verify_conversion
    from reflex_mlx.quantize import Recipe

    out = _out(tmp_path)
    model = convert_checkpoint(
        str(TINY / "reflex.pt"), None, tmp_path / "tiny-q4", recipe=Recipe(bits=4), verify=True, quiet=True
    )
    report = _keep(model, out, "reflex-tiny-4bit")
    print(json.dumps({k: v for k, v in report.items() if k != "per_task"}))
    assert report["cycles"] > 1000 and report["same_word"] / report["cycles"] >= 0.99

    damaged = tmp_path / "tiny-q4-damaged"
    shutil.copytree(model, damaged)
    _zero_scales(damaged, layer=0)
    broken = verify_conversion(damaged, TINY / "backbone", TINY / "reflex.pt", progress=False)
    (out / "verify_reflex-tiny-4bit-damaged.json").write_text(json.dumps(broken, indent=1) + "\n")
    print(json.dumps({k: v for k, v in broken.items() if k != "per_task"}))
    assert broken["same_word"] / broken["cycles"] < 0.9
    assert broken["runs_identical"] < broken["runs"]


def test_verify_smol_under_the_default_recipe(tmp_path):
    from convert.convert import convert_checkpoint
    from reflex_core.smol import smol_backbone_dir

    if not (smol_backbone_dir() / "config.json").is_file():
        pytest.skip("reflex-smol's backbone is not built here (make smol)")
    model = convert_checkpoint(str(SMOL / "reflex.pt"), None, tmp_path / "smol", verify=True, quiet=True)
    report = _keep(model, _out(tmp_path), "reflex-smol-default")
    print(json.dumps({k: v for k, v in report.items() if k != "per_task"}))
    assert report["same_word"] / report["cycles"] >= 0.995 and report["same_pass_set"] is True
