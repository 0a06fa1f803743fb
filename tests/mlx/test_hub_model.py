"""Converted models on the hub: the card, loading from a populated hub cache
offline, refusing a repository that is not a Reflex model, and an upload that
cannot happen. There is no network here: the download itself (huggingface_hub's
snapshot_download against the hub) and a real upload only a user can exercise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_MLX = ROOT / "reflex_mlx" / "models" / "reflex-tiny"
TINY = ROOT / "reflex_torch" / "models" / "reflex-tiny"


def _cli(args, env, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "reflex_app", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture
def offline_hub(hub_cache):
    cache, populate = hub_cache
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return env, populate


def test_a_hub_model_runs_from_the_cache_offline(offline_hub):
    env, populate = offline_hub
    populate("someone/reflex-tiny-mlx", TINY_MLX)
    proc = _cli(
        ["run", "add 7 and 8 and store the result", "--model", "someone/reflex-tiny-mlx", "--json"], env
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["outcome"] == "halted" and report["memory"]["0x5000"][0] == 15
    assert "peak memory: mlx cpu" in proc.stderr
    info = _cli(["info", "someone/reflex-tiny-mlx"], env)
    assert info.returncode == 0 and "codebook: 695 words" in info.stdout, info.stderr


def test_a_hub_repo_that_is_not_a_reflex_model_is_refused(offline_hub):
    env, populate = offline_hub
    populate("someone/just-a-backbone", TINY / "backbone")
    for args in (
        ["run", "say hi", "--model", "someone/just-a-backbone"],
        ["info", "someone/just-a-backbone"],
    ):
        proc = _cli(args, env)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            "Error: someone/just-a-backbone is not a reflex-mlx model "
            "(its config.json is not one `python -m convert` writes)"
        )
    proc = _cli(["run", "say hi", "--model", "someone/not-in-the-cache"], env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cannot fetch the model someone/not-in-the-cache" in proc.stderr.strip().splitlines()[-1]
    proc = _cli(["run", "say hi", "--model", "someone/reflex-tiny-mlx", "--backend", "torch"], env)
    assert "converted for MLX: use --backend mlx" in proc.stderr


def test_the_card_and_an_upload_that_cannot_happen(fixture_dir, tmp_path, offline_hub):
    env, _ = offline_hub
    out = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-m", "convert", "--checkpoint", str(fixture_dir / "reflex.pt"),
         "--backbone", str(fixture_dir / "backbone"), "--out", str(out),
         "--upload-repo", "someone/reflex-fixture"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cannot upload to someone/reflex-fixture" in proc.stderr.strip().splitlines()[-1]
    assert "nothing was published" in proc.stderr
    card = (out / "README.md").read_text()  # the local model is complete
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: mlx" in front and "license: mit" in front and "- reflex" in front
    assert body.startswith("\n# someone/reflex-fixture")
    assert 'reflex-mlx run "compute 5 factorial" --model someone/reflex-fixture' in body
    assert "python -m convert --checkpoint" in body and "--upload-repo someone/reflex-fixture" in body
    assert "8-bit g64" in body and "linear layers 8-bit" in body and "resident" in body
    assert "## Licenses" in body and "MIT" in body
    proc = subprocess.run(
        [sys.executable, "-m", "convert", "--upload-repo", "no-slash", "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode != 0 and "--upload-repo takes OWNER/NAME" in proc.stderr


def test_memory_habits_of_a_mac():
    """One warning line when the model exceeds the recommended working set; nothing
    where the device reports none (not Metal). The wiring itself (mx.set_wired_limit)
    is a no-op on this CPU backend: only a Mac shows it."""
    from reflex_mlx.backend import WIRE_ABOVE, wire_model

    assert wire_model(10 * WIRE_ABOVE, {}) is None
    mac_8gb = {"max_recommended_working_set_size": int(5.3e9)}
    assert wire_model(WIRE_ABOVE // 2, mac_8gb) is None
    warning = wire_model(int(9.3e9), mac_8gb)
    assert warning.startswith(
        "the model holds 8.7 GiB, more than this Mac's recommended working set (4.9 GiB)"
    )
    assert warning.endswith("(python -m convert --fit SIZE, this Mac's memory)")
    assert wire_model(int(9.3e9), {**mac_8gb, "memory_size": 8 << 30}).endswith("--fit 8GB)")


def test_the_release_id_falls_back_to_its_other_spelling(hub_cache, tmp_path):
    """Only `ilbert/…` in the cache: the default checkpoint is found there, and said."""
    from reflex_core.spec import HUB_FILE, HUB_REPOS

    cache, populate = hub_cache
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / HUB_FILE).write_bytes((TINY / "reflex.pt").read_bytes())
    populate(HUB_REPOS[1], folder)
    code = "from reflex_core.hub import resolve_checkpoint; print(resolve_checkpoint(None))"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(HUB_FILE) and HUB_REPOS[1].replace("/", "--") in proc.stdout
    assert f"{HUB_REPOS[0]} was not found; using {HUB_REPOS[1]}/{HUB_FILE}" in proc.stderr
    empty = {**env, "HF_HUB_CACHE": str(tmp_path / "empty")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=empty, timeout=600
    )
    assert proc.returncode != 0 and f"nor under {HUB_REPOS[1]}" in proc.stderr
