"""Parity of MLX against the torch reference, released shape on CUDA (docs/parity.md).

The GPU test runs `bench.parity` on a random model of the released shape (bf16
backbone, float32 adapters) and asserts the bf16 tolerances; the same run
sabotages the candidate (one adapter skipped, two codebook rows swapped) and
must see both fail. The CPU test runs the very same code and check function at
the small test shape in float32, so the failure proof is exercised everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import parity
from bench.metrics import TOLERANCES, Tolerance

REPO = Path(__file__).resolve().parents[2]


def _corpus() -> str:
    from reflex_core.corpus import find_corpus

    root = find_corpus() or (REPO / ".corpus")
    if not (Path(root) / "programs").is_dir():
        pytest.skip("corpus not found: set REFLEX_CORPUS or place it at ../shared/corpus or .corpus")
    return str(root)


def _run(out: Path, *argv: str) -> dict:
    parity.main(
        [
            "--subject",
            "release",
            "--out",
            str(out),
            "--corpus",
            _corpus(),
            "--sabotage",
            "none,skip-adapter,swap-rows",
            *argv,
        ]
    )
    return json.loads((out / "parity_release.json").read_text())


def _assert_checks(report: dict, candidate: str, tol: Tolerance) -> None:
    """The unsabotaged candidate passes; each sabotage fails, for its own reason."""
    results = report["candidates"]
    assert parity.check_parity(results[candidate], tol) == []
    skipped = parity.check_parity(results[f"{candidate}+skip-adapter"], tol)
    assert any("relative error" in f for f in skipped), skipped
    swapped = parity.check_parity(results[f"{candidate}+swap-rows"], tol)
    assert any("agreement" in f for f in swapped), swapped
    # The swap leaves the embedding untouched: only the decoded words catch it.
    assert results[f"{candidate}+swap-rows"]["stages"] == results[candidate]["stages"]


def test_cpu_float32_parity_and_sabotage(tmp_path):
    """Small shape, float32 torch on CPU vs float32 MLX on CPU: tight agreement."""
    report = _run(
        tmp_path,
        "--shape",
        "tiny-test",
        "--states",
        "48",
        "--prompt-len",
        "16",
        "--batch",
        "48",
        "--device",
        "cpu",
        "--mlx-device",
        "cpu",
        "--backbone-dtype",
        "float32",
        "--candidates",
        "float32",
    )
    assert report["reference"]["margin"]["distinct_words"] > 1, "words should depend on the state"
    _assert_checks(report, "float32", TOLERANCES["float32"])
    print((tmp_path / "parity_release.md").read_text())


def _mlx_on_gpu() -> None:
    """A GPU run must compare against MLX's CUDA backend, never fall back to its CPU."""
    import mlx.core as mx

    if not mx.is_available(mx.gpu):
        pytest.fail("MLX has no GPU backend in this environment (mlx[cpu]); run `make setup-gpu`")


@pytest.mark.gpu
def test_release_shape_bf16_parity_on_cuda(tmp_path):
    """Released shape, bf16 backbone, torch CUDA vs MLX (CUDA backend), 256 corpus states.

    torch and MLX run in separate processes (--isolate); the report lands in
    $PARITY_OUT when set (make parity-gpu), else in a temporary directory.
    """
    _mlx_on_gpu()
    out = Path(os.environ.get("PARITY_OUT") or tmp_path)
    report = _run(
        out,
        "--shape",
        "release",
        "--states",
        "256",
        "--backbone-dtype",
        "bfloat16",
        "--candidates",
        "bf16,q4",
        "--isolate",
    )
    print((out / "parity_release.md").read_text())
    _assert_checks(report, "bf16", TOLERANCES["bf16"])
    q4 = report["candidates"]["q4"]  # measured and reported, not asserted (docs/parity.md)
    assert q4["top1_agreement"] > 0


@pytest.mark.gpu
def test_tiny_parity_on_cuda(tmp_path):
    """reflex-tiny, every cycle of the 41-task eval: torch on CUDA as released (bf16
    backbone, float32 adapters) against MLX on the GPU with a bf16 and a 4-bit
    backbone, lock-step on the reference's states and free-running.

    Tolerances (docs/parity.md): a trained model's margins are far above bf16
    noise, so bf16 must agree on >= 99.5 % of cycles with identical pass/fail;
    4-bit on >= 99 % with identical pass/fail.
    """
    from convert.convert import convert_checkpoint

    _mlx_on_gpu()
    tiny = REPO / "reflex_torch" / "models" / "reflex-tiny"
    from reflex_mlx.quantize import Recipe

    dirs = {"bf16": Recipe(backbone_dtype="bfloat16"), "q4": Recipe(bits=4)}
    for name, recipe in dirs.items():
        convert_checkpoint(
            str(tiny / "reflex.pt"),
            None,
            tmp_path / f"reflex-tiny-{name}",
            recipe=recipe,
            verify=False,
            quiet=True,
        )
    out = Path(os.environ.get("PARITY_OUT") or tmp_path)
    parity.main(
        [
            "--subject",
            "tiny",
            "--out",
            str(out),
            "--tiny-torch",
            str(tiny),
            "--tiny-mlx",
            ",".join(str(tmp_path / f"reflex-tiny-{n}") for n in dirs),
        ]
    )
    report = json.loads((out / "parity_tiny.json").read_text())
    print((out / "parity_tiny.md").read_text())
    floors = {"reflex-tiny-bf16 (unquantized)": 0.995, "reflex-tiny-q4 (4-bit)": 0.99}
    for name, floor in floors.items():
        c = report["candidates"][name]
        assert c["lockstep"]["rate"] >= floor, (name, c["lockstep"])
        assert c["free_running"]["same_pass"] == c["free_running"]["runs"], (name, c["free_running"])
