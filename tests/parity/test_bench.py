"""The bench library: parity metrics (unit-tested on numbers), agreement, and `reflex-mlx bench`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from bench.metrics import TOLERANCES, check_parity, compare, margin_threshold, relative_error


def _captures(rng, n=200, layers=(3, 7), embed=16, noise=0.0):
    ref = {
        "kv": rng.normal(size=(n, 65, 8)),
        "pred": rng.normal(size=(n, embed)),
        **{f"layer{L}": rng.normal(size=(n, 8)) for L in layers},
        "margin": rng.uniform(0, 0.2, n),
        "words": rng.integers(0, 50, n).astype(np.uint32),
    }
    cand = {
        k: (v + noise * rng.normal(size=v.shape) if k not in ("margin", "words") else v.copy())
        for k, v in ref.items()
    }
    return ref, cand


def test_relative_error_and_threshold():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[3.0, 4.5], [1.0, 0.0]])
    assert relative_error(a, b).tolist() == [0.1, 0.0]
    assert margin_threshold(256, 0.05) == pytest.approx(4 * 0.05 * math.sqrt(2 / 256))


def test_exact_candidate_passes_and_broken_ones_fail():
    rng = np.random.default_rng(0)
    ref, cand = _captures(rng)
    tol = TOLERANCES["float32"]
    metrics = compare(ref, cand, [3, 7], 16, tol)
    assert metrics["top1_agreement"] == 1.0 and check_parity(metrics, tol) == []
    _, noisy = _captures(np.random.default_rng(0), noise=0.1)
    failures = check_parity(compare(ref, noisy, [3, 7], 16, tol), tol)
    assert any("relative error" in f for f in failures)
    swapped = {**cand, "words": cand["words"].copy()}
    top = ref["margin"].argmax()
    swapped["words"][top] += 1  # a confident state decoded differently
    failures = check_parity(compare(ref, swapped, [3, 7], 16, tol), tol)
    assert any("agreement" in f for f in failures)


def test_agreement_replays_the_reference_calls():
    from bench.agreement import lockstep_agreement, outcome_agreement, recorded_eval

    def make(offset):  # a predictor whose word depends on the program index and the pc
        return lambda prompts: (
            lambda indices, states: [
                0x6F if s[32] > 0x1010 else (0x00100293 + offset * (i == 3)) for i, s in zip(indices, states)
            ]
        )

    report, recording = recorded_eval(make(0), max_cycles=8)
    assert recording.prompts and recording.calls
    same = lockstep_agreement(recording, make(0))
    assert same["rate"] == 1.0 and same["cycles"] == sum(len(c[0]) for c in recording.calls)
    other = lockstep_agreement(recording, make(1 << 7))
    assert 0 < other["rate"] < 1.0 and len(other["tasks_with_disagreement"]) == 1
    # A candidate's own free run answers the states it shares with the reference: the
    # same run needs no forward, a diverging one only the states after the divergence.
    assert lockstep_agreement(recording, make(0), seen=recording) == {**same, "asked": 0}
    _, diverged = recorded_eval(make(1 << 7), max_cycles=8)
    replayed = lockstep_agreement(recording, make(1 << 7), seen=diverged)
    assert 0 < replayed["asked"] < other["asked"] == other["cycles"]
    assert {**replayed, "asked": 0} == {**other, "asked": 0}
    with pytest.raises(ValueError, match="other prompts"):
        lockstep_agreement(recording, make(0), seen=type(recording)(prompts=recording.prompts[1:]))
    assert outcome_agreement(report, report)["identical"] == report["total"]


def test_bench_command_prints_the_ratio_last(fixture_dir, mlx_float32_dir):
    from reflex_app.cli import main

    result = CliRunner().invoke(
        main, ["bench", "--model", str(mlx_float32_dir), "--torch", str(fixture_dir), "--cycles", "3"]
    )
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("mlx/torch per-cycle time ratio: ")
    assert float(last.rsplit(" ", 1)[1]) > 0
    # then, on stderr, the peak memory of each side
    assert result.stderr.strip().splitlines()[-1].startswith("peak memory: torch cpu ")


def test_bench_without_torch_says_so(monkeypatch):
    import importlib.util

    from reflex_app.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code != 0
    assert "torch is not installed" in result.output


def test_data_read_bench_prints_the_ratio_last(tmp_path, capsys):
    """bench/data_read.py on a small JSONL: both ways choose the same programs (it checks),
    and the last line is the ratio."""
    import json

    from bench.data_read import main

    add = "li t0, {a}\nli t1, {b}\nadd t2, t0, t1\nlui t3, 5\nsw t2, 0(t3)\nhalt:\nj halt\n"
    record = lambda a, b: {"prompt": f"add {a} and {b}", "program": add.format(a=a, b=b),
                           "expected_result": {"mem_0x5000": a + b}}  # fmt: skip
    records = [record(a, b) for a in (1, 2, 3) for b in (4, 5, 6)]
    data = tmp_path / "adds.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    main(["--data", str(data), "--max-programs", "4", "--repeat", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("9 programs, 4 used (--max-programs 4)")
    assert lines[-1].startswith("replay-all/choose-first time ratio: ") and float(lines[-1].split()[-1]) > 0
