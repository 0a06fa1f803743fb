"""One process per output folder, and kills that leave nothing to clean by hand.

Why: two `train` runs on one --out interleaved their curves, two conversions raced
to one folder, and a SIGKILL during the first checkpoint left a folder that neither
--resume nor a fresh run accepted. Real processes and real signals (the runs that
are refused or that finish the job run in this process, through click's runner).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reflex_core.files import lock_path

ADD = "li t0, {a}\nli t1, {b}\nadd t2, t0, t1\nlui t3, 5\nsw t2, 0(t3)\nhalt:\nj halt\n"
FAST = ["--steps", "4", "--batch", "4", "--warmup", "1", "--log-every", "1", "--eval-every", "4"]
FAST += ["--save-every", "2", "--eval-samples", "8", "--heldout-fraction", "0.2"]


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "reflex_app", *map(str, args)]


def _wait_for(test, what: str, process: subprocess.Popen, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := test():
            return found
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.stderr.read()}")
        time.sleep(0.002)
    pytest.fail(f"no {what} within {timeout}s")


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=600)


@pytest.fixture(scope="module")
def adds(tmp_path_factory) -> Path:
    records = [
        {"prompts": [f"add {a} and {b}"], "program": ADD.format(a=a, b=b),
         "expected_result": {"mem_0x5000": a + b}}
        for a in (3, 5, 9, 12) for b in (4, 7, 30)
    ]  # fmt: skip
    path = tmp_path_factory.mktemp("locks") / "adds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_one_train_per_out_and_a_kill_at_the_first_save_needs_no_cleanup(
    mlx_float32_dir, adds, tmp_path, invoke
):
    from reflex_app.cli import main

    out = tmp_path / "run"
    base = ["train", "--model", mlx_float32_dir, "--data", adds, "--out", out]
    never = ["--steps", "100000", "--save-every", "100000", "--eval-every", "100000", "--log-every", "1"]
    first = subprocess.Popen(_cli(*base, *never), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lock_path(out).exists, "the lock", first)
        # a second run (here, in this process), fresh or resuming, while the first holds OUT:
        # one line naming it
        for other in ([*base, *FAST], ["train", "--out", out, "--resume"]):
            line = _one_line(invoke(main, *other))
            assert f"is in use: another train (pid {first.pid})" in line, line
        # killed before its first checkpoint (it saves at the end only)
        _wait_for(lambda: (out / "curve.jsonl").exists(), "a curve", first)
        _kill(first)
    finally:
        first.kill()
    assert (out / "heldout.json").exists() and not (out / "train_state.safetensors").exists()
    assert lock_path(out).exists()  # the dead run's, reclaimed below
    fresh, resume = _cli(*base, *FAST), _cli("train", "--out", out, "--resume")
    state = out / "train_state.safetensors"
    # the same command takes the folder over; killed once its first checkpoint starts
    # (the state, written first, is then half-written), and again while the model files
    # are written after a whole state: each time the next run needs no cleanup
    for written in ("train_state", "adapters"):
        run = subprocess.Popen(resume if state.exists() else fresh, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda w=written: [n for n in os.listdir(out) if w in n], written, run)
            _kill(run)
        finally:
            run.kill()
    assert state.exists()
    last = invoke(main, *resume[3:])  # the last run, in this process
    assert last.returncode == 0, last.stderr
    assert "resumed at step" in last.stderr
    assert "stopped at step 4/4" in last.stderr
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # no half-written file left
    assert not lock_path(out).exists()
    losses = [
        r["step"] for r in map(json.loads, (out / "curve.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert losses == sorted(set(losses)) and losses[-1] == 4  # each step once, in order
    from reflex_mlx.loader import load_model

    load_model(out)  # a whole model, strict


def test_a_second_conversion_to_one_out_is_refused(fixture_dir, tmp_path):
    out = tmp_path / "model"
    command = [sys.executable, "-m", "convert", "--checkpoint", str(fixture_dir / "reflex.pt")]
    command += [
        "--backbone",
        str(fixture_dir / "backbone"),
        "--out",
        str(out),
        "--no-quantize",
        "--no-verify",
    ]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lock_path(out).exists, "the lock", first)
        second = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if first.poll() is None:  # still converting: the second was refused by the lock
            line = _one_line(second)
            assert f"is in use: another convert (pid {first.pid})" in line, line
        else:  # the first won the race to the end: the second finds the folder made
            assert "already exists" in _one_line(second)
        assert first.wait(timeout=600) == 0, first.stderr.read()
    finally:
        first.kill()
    assert (out / "config.json").is_file() and not lock_path(out).exists()


def test_eval_refuses_a_read_only_report_before_the_work(mlx_float32_dir, tmp_path):
    report = tmp_path / "report.json"
    report.write_text("kept")
    report.chmod(0o444)  # root too: the mode bits say read-only
    result = subprocess.run(
        _cli("eval", "--model", mlx_float32_dir, "--json", report),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "read-only" in _one_line(result)
    assert result.stdout == "", "the eval ran before the report was refused"
    assert report.read_text() == "kept"
