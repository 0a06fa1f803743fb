"""The torch side's output folders: one process each, and what a killed run left is made whole.

Why: the torch trainer and the reflex-smol build wrote their folders with no
lock (two builds sharing the cache crashed, one leaving its temporary files in
the built folder), and a kill between write_release's two renames left no
backbone/ to resume from.
"""

from __future__ import annotations

import os

import pytest

from reflex_core.files import lock_path, output_lock


def test_the_trainer_holds_its_out(tmp_path):
    from reflex_torch import train

    out = tmp_path / "run"
    with output_lock(out, "convert"):  # another open of the lock: refused as another process is
        with pytest.raises(SystemExit) as stopped:
            train.main(["--out", str(out), "--steps", "1", "--device", "cpu"])
    message = str(stopped.value.code)
    assert message.startswith("error: ") and f"another convert (pid {os.getpid()})" in message
    assert "\n" not in message and not out.exists()


def test_a_killed_runs_folder_is_made_whole(tmp_path):
    from reflex_torch.train import CURVE_FILE, STATE_FILE, recover

    out = tmp_path / "run"
    (out / "backbone.old").mkdir(parents=True)
    (out / "backbone.tmp").mkdir()
    (out / "backbone.tmp" / "config.json").write_text("new")  # whole before backbone/ moved away
    for name in (".reflex.pt.tmp-123", CURVE_FILE, STATE_FILE):
        (out / name).write_text("x")
    recover(out, resume=True)
    assert sorted(os.listdir(out)) == sorted(["backbone", CURVE_FILE, STATE_FILE])
    assert (out / "backbone" / "config.json").read_text() == "new"
    recover(out, resume=False)  # a fresh run: nothing of the old run's curve or state
    assert os.listdir(out) == ["backbone"]


def test_one_smol_build_per_folder_and_its_files_stay_outside_it(tmp_path):
    from reflex_torch.smol import BuildError, _build, build

    out = tmp_path / "SmolLM2"
    with output_lock(out, "build"):
        with pytest.raises(BuildError, match="is in use: another build"):
            build(out, wheel=tmp_path / "no.whl")
    stale = [tmp_path / ".SmolLM2.partial", tmp_path / ".SmolLM2.partial-1", tmp_path / ".SmolLM2.scratch-x"]
    for folder in stale:
        folder.mkdir()
    wheel = tmp_path / "broken.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(BuildError, match="cannot read the wheel"):
        _build(out, wheel)
    assert sorted(os.listdir(tmp_path)) == ["broken.whl"]  # its scratch, and the dead builds', gone
    assert not lock_path(out).exists()
