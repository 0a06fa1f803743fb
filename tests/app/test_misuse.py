"""Misuse of the command line and interrupted conversions: one line on stderr, a
non-zero exit, no traceback, old outputs intact, nothing half-written left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "reflex_app"]


def _one_error_line(proc) -> str:
    stderr = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
    assert proc.returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _damaged(src: Path, dst: Path, damage: str) -> Path:
    import mlx.core as mx

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    if damage == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
            (dst / "backbone" / name).unlink(missing_ok=True)
    elif damage in ("nan adapters", "integer adapters"):
        weights = mx.load(str(dst / "adapters.safetensors"))
        name = next(k for k in weights if k.endswith("mlp.fc1.weight"))
        if damage == "nan adapters":
            weights[name] = weights[name] * float("nan")
        else:
            weights[name] = weights[name].astype(mx.int32)
        mx.save_safetensors(str(dst / "adapters.safetensors"), weights)
    elif damage == "heads do not divide":
        config["adapter_heads"] = 5
    elif damage == "zero heads":
        config["adapter_heads"] = 0
    elif damage == "huge codebook":
        config["num_instrs"] = 10**12
    elif damage == "unsupported backbone family":
        backbone = json.loads((dst / "backbone" / "config.json").read_text())
        (dst / "backbone" / "config.json").write_text(json.dumps({**backbone, "model_type": "gpt2"}))
    elif damage == "missing adapter key":
        weights = mx.load(str(dst / "adapters.safetensors"))
        del weights["kv_norm.bias"]
        mx.save_safetensors(str(dst / "adapters.safetensors"), weights)
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "manifest.json").unlink()  # the checks behind the manifest (an older folder has none)
    return dst


@pytest.mark.parametrize(
    "damage",
    [
        "no tokenizer",
        "nan adapters",
        "integer adapters",
        "heads do not divide",
        "zero heads",
        "huge codebook",
        "missing adapter key",
        "unsupported backbone family",
    ],
)
def test_damaged_models_are_refused_at_load(mlx_float32_dir, tmp_path, damage, invoke):
    from reflex_app.cli import main

    model = _damaged(mlx_float32_dir, tmp_path / "model", damage)
    line = _one_error_line(invoke(main, "run", "say hi", "--backend", "mlx", "--model", model))
    print(f"{damage}: {line}")
    if damage == "missing adapter key":
        assert "kv_norm.bias" in line
    if damage == "unsupported backbone family":
        assert "'gpt2' is not supported" in line and "llama, mistral, qwen2, qwen3" in line


def test_an_unsupported_backbone_family_is_refused_by_convert_and_torch(fixture_dir, tmp_path, invoke):
    """One line naming what is supported, from the converter and the torch backend alike."""
    from convert.convert import main as convert_main
    from reflex_app.cli import main

    model = tmp_path / "gpt2-ish"
    shutil.copytree(fixture_dir, model)
    config_path = model / "backbone" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "model_type": "gpt2"}))
    convert = invoke(
        convert_main, "--checkpoint", model / "reflex.pt", "--backbone", model / "backbone",
        "--out", tmp_path / "out", "--no-quantize",
    )  # fmt: skip
    line = convert.stderr.strip().splitlines()[-1]
    assert convert.returncode != 0 and "Traceback" not in convert.stderr, line
    assert "'gpt2' is not supported" in line
    assert not (tmp_path / "out").exists()
    line = _one_error_line(invoke(main, "run", "say hi", "--backend", "torch", "--model", model))
    assert "'gpt2' is not supported" in line


def test_misuse_table(mlx_float32_dir, fixture_dir, tmp_path):
    report = tmp_path / "old.json"
    report.write_text('{"kept": true}')
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    model = mlx_float32_dir
    cases = {
        "non-utf-8 prompt": ["run", b"compute \xff\xfe 5 factorial", "--model", mlx_float32_dir],
        "empty prompt": ["run", "  ", "--model", mlx_float32_dir],
        "missing model": ["run", "say hi", "--model", tmp_path / "nope"],
        "model is a file": ["run", "say hi", "--model", report],
        "zero cycles": ["run", "say hi", "--max-cycles", "0"],
        "eval --json empty": ["eval", "--json", "", "--model", mlx_float32_dir],
        "eval --json a folder": ["eval", "--json", ".", "--model", mlx_float32_dir],
        "eval --json in a missing folder": ["eval", "--json", tmp_path / "no" / "r", "--model", model],
        "eval --json read-only folder": ["eval", "--json", readonly / "r.json", "--model", model],
        "bench --torch without reflex.pt": ["bench", "--model", mlx_float32_dir, "--torch", tmp_path],
        "unknown backend": ["run", "say hi", "--backend", "jax"],
        "unknown command": ["frobnicate"],
    }
    if os.geteuid() == 0:  # root writes into read-only folders anyway
        del cases["eval --json read-only folder"]
    for name, args in cases.items():
        args = [a if isinstance(a, bytes) else str(a) for a in args]
        proc = subprocess.run(
            [*map(os.fsencode, CLI), *map(os.fsencode, args)],
            capture_output=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=300,
        )
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode != 0, (name, stderr)
        assert "Traceback" not in stderr, (name, stderr)
        assert stderr.strip(), name
        print(f"{name}: {stderr.strip().splitlines()[-1]}")
    assert report.read_text() == '{"kept": true}'
    readonly.chmod(0o700)


def test_output_to_a_full_device_and_a_closed_pipe(mlx_float32_dir):
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*CLI, "run", "say hi", "--backend", "mlx", "--model", str(mlx_float32_dir), "--max-cycles", "3"],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr.decode()
    assert "No space left on device" in proc.stderr.decode()
    pipe = subprocess.Popen(
        [*CLI, "run", "say hi", "--backend", "mlx", "--model", str(mlx_float32_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    pipe.stdout.read(20)
    pipe.stdout.close()
    _, err = pipe.communicate(timeout=300)
    assert "Traceback" not in err.decode()


def test_internal_errors_hint_and_debug(monkeypatch):
    from click.testing import CliRunner

    import reflex_app.cli as cli
    from reflex_app import api

    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(api, "load", broken)
    result = CliRunner().invoke(cli.main, ["run", "say hi"])
    assert result.exit_code == 1 and "internal error: ZeroDivisionError: boom" in result.output
    assert "--debug" in result.output
    result = CliRunner().invoke(cli.main, ["--debug", "run", "say hi"])
    assert isinstance(result.exception, ZeroDivisionError)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_conversion_leaves_nothing_after_the_next_run(fixture_dir, tmp_path, how, invoke):
    from convert.convert import main as convert_main

    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "convert",
        "--checkpoint",
        str(fixture_dir / "reflex.pt"),
        "--backbone",
        str(fixture_dir / "backbone"),
        "--out",
        str(out),
        "--no-quantize",
        "--no-verify",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = None
    deadline = time.time() + 600
    while time.time() < deadline and partial is None and proc.poll() is None:
        partial = next(iter(tmp_path.glob(".out.partial-*")), None)
        time.sleep(0.02)
    if partial is None:
        proc.wait()
        pytest.skip("the conversion finished before it could be interrupted")
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=600)
    if out.exists():  # the signal came after the final rename: then the model is whole
        assert (out / "config.json").exists() and (out / "adapters.safetensors").exists()
        shutil.rmtree(out)
    left = list(tmp_path.glob(".out.partial-*"))
    if how != "SIGKILL":
        assert left == [], how  # cleaned up on the way out
    again = invoke(convert_main, *args[3:])  # the next run, in this process
    assert again.returncode == 0, again.stderr
    assert (out / "config.json").exists() and list(tmp_path.glob(".out.partial-*")) == []
    if left:  # SIGKILL mid-way: the next run removed the dead run's folder, and said so
        assert "interrupted conversion" in again.stderr


def test_partial_folders_of_dead_runs_are_removed(tmp_path):
    from convert.convert import remove_stale_partials

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    out = tmp_path / "model"
    stale = tmp_path / f".model.partial-{dead.stdout.strip()}"
    live = tmp_path / f".model.partial-{os.getpid()}"
    other = tmp_path / ".other.partial-1"
    for folder in (stale, live, other):
        (folder / "backbone").mkdir(parents=True)
    assert remove_stale_partials(out) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_a_hub_id_that_cannot_be_fetched_fails_fast(tmp_path):
    """Offline (no DNS), one line from the local cache instead of the hub client's retries
    (how long it takes is bench material; the limit only keeps a hang from stalling the run)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "convert",
            "--checkpoint",
            "nobody-here/no-such-repo/reflex.pt",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        timeout=600,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf")},
    )
    _one_error_line(proc)
    assert not (tmp_path / "out").exists()
