"""`reflex-mlx run` on a converted fixture: the trace, the JSON schema, and clean errors;
the command group, and `reflex-mlx convert` (the converter's own command) on the fixture."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from reflex_app.cli import main
from reflex_core import rv32i

MEMORY_KEYS = {"0x5000", "0x5200", "0x6000"}


def _run(*args, backend="mlx"):
    return CliRunner().invoke(main, ["run", "--backend", backend, *map(str, args)])


def test_run_prints_trace_and_outcome(mlx_float32_dir):
    result = _run("compute 5 factorial", "--model", mlx_float32_dir, "--max-cycles", 12)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["1", "pc", "0x1000"]
    assert any(line.startswith("outcome: ") for line in lines)
    for key in MEMORY_KEYS:
        assert any(line.startswith(key + ":") and len(line.split()) == 17 for line in lines)


def test_json_matches_schema(mlx_float32_dir):
    result = _run("say hi", "--model", mlx_float32_dir, "--max-cycles", 9, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # exactly one object: trailing text would fail here
    assert set(report) == {"outcome", "error", "cycles", "memory", "prompt_tokens", "truncated"}
    assert report["outcome"] in {"halted", "error", "limit"}
    assert report["error"] is None or isinstance(report["error"], str)
    assert (report["outcome"] == "error") == (report["error"] is not None)
    assert 1 <= len(report["cycles"]) <= 9
    for cycle in report["cycles"]:
        assert set(cycle) == {"pc", "word", "asm", "op"}
        assert rv32i.encode(cycle["op"]) == cycle["word"]  # the structured op, bit for bit
        assert isinstance(cycle["pc"], int) and 0 <= cycle["word"] < 2**32
        assert isinstance(cycle["asm"], str) and cycle["asm"]
    assert set(report["memory"]) == MEMORY_KEYS
    assert all(
        len(words) == 16 and all(isinstance(w, int) for w in words) for words in report["memory"].values()
    )
    assert isinstance(report["prompt_tokens"], int) and report["prompt_tokens"] > 0
    assert report["truncated"] is False


def test_long_prompt_reports_truncation(mlx_float32_dir):
    result = _run("add 7 and 8 " * 60, "--model", mlx_float32_dir, "--max-cycles", 2, "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["truncated"] is True and report["prompt_tokens"] == 96
    assert "only the first 96" in result.stderr


def _assert_one_line_error(result):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr


def test_missing_model_dir(tmp_path):
    _assert_one_line_error(_run("say hi", "--model", tmp_path / "nope"))


@pytest.mark.parametrize(
    "damage",
    ["no_config", "bad_config", "bad_adapters", "no_backbone", "wrong_adapter_shape", "wrong_value_type"],
)
def test_corrupt_model_dir(mlx_float32_dir, tmp_path, damage):
    broken = tmp_path / "model"
    shutil.copytree(mlx_float32_dir, broken)
    if damage == "no_config":
        (broken / "config.json").unlink()
    elif damage == "bad_config":
        (broken / "config.json").write_text("{not json")
    elif damage == "bad_adapters":
        data = (broken / "adapters.safetensors").read_bytes()
        (broken / "adapters.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "no_backbone":
        shutil.rmtree(broken / "backbone")
    elif damage == "wrong_value_type":
        config = json.loads((broken / "config.json").read_text())
        config["max_instr_tokens"] = "ninety-six"
        (broken / "config.json").write_text(json.dumps(config))
    else:
        config = json.loads((broken / "config.json").read_text())
        config["embed_dim"] += 1
        (broken / "config.json").write_text(json.dumps(config))
    _assert_one_line_error(_run("say hi", "--model", broken))


def test_the_console_script_names_the_command_group():
    """pyproject.toml's `reflex-mlx` is the group this file tests (the installed script may
    predate it until `make setup` reinstalls)."""
    import importlib
    import re

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    module, name = re.search(r'^reflex-mlx = "([\w.]+):(\w+)"$', text, re.M).groups()
    assert getattr(importlib.import_module(module), name) is main


def test_console_script(mlx_float32_dir):
    beside = Path(sys.executable).parent / "reflex-mlx"
    exe = str(beside) if beside.exists() else shutil.which("reflex-mlx")
    if exe is None:
        pytest.skip("the reflex-mlx console script is not installed")
    proc = subprocess.run(
        [exe, "run", "say hi", "--model", str(mlx_float32_dir), "--max-cycles", "3", "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt_tokens"] > 0
    bad = subprocess.run(
        [sys.executable, "-m", "reflex_app", "run", "x", "--model", "/nonexistent"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0


def test_every_command_is_listed_and_loads_its_module():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == sorted(["run", "eval", "bench", "demo", "info", "train", "convert", "analyze"])
    for name in listed:
        assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0


def test_train_options_default_to_the_dataclass():
    """Each train option that sets a TrainOptions field shows that field's default, written once."""
    import dataclasses

    from reflex_app.cli.train import command
    from reflex_mlx.train import TrainOptions

    fields = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.init and f.name != "out"}
    # --families and --exclude-families take comma-separated text for the tuple fields
    scalar = [p for p in command.params if p.name in fields and "families" not in p.name and not p.multiple]
    assert len(scalar) >= 25
    for param in scalar:
        assert param.default == fields[param.name], param.name


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "reflex_app", *map(str, args)], capture_output=True, text=True, timeout=900
    )


def test_convert_writes_the_model_the_converter_writes(fixture_dir, mlx_float32_dir, tmp_path):
    """`reflex-mlx convert` is convert's own command, options and all: a float32 conversion of
    the fixture drives the CPU exactly as the session's float32 conversion (convert_checkpoint)
    does, and `info` shows the command as it was typed."""
    from convert.convert import main as converter
    from reflex_app import load, run

    assert main.get_command(None, "convert") is converter
    out = tmp_path / "model"
    sources = ["--checkpoint", fixture_dir / "reflex.pt", "--backbone", fixture_dir / "backbone"]
    recipe = ["--no-quantize", "--backbone-dtype", "float32", "--dtype", "float32", "--no-verify"]
    proc = _cli("convert", *sources, "--out", out, *recipe)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("wrote ") and (out / "config.json").is_file()
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert f"converted with: reflex-mlx convert --checkpoint {fixture_dir / 'reflex.pt'}" in info.output
    ours, theirs = load(out, backend="mlx"), load(mlx_float32_dir, backend="mlx")
    for prompt in ("compute 5 factorial", "say hi"):
        ran = run(ours, prompt, max_cycles=8)
        assert ran.cycles == run(theirs, prompt, max_cycles=8).cycles and ran.cycles


def test_convert_refuses_a_missing_checkpoint_in_one_line(tmp_path):
    """One `Error:` line and a non-zero exit, under the group and as `python -m convert`; nothing written."""
    args = ["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")]
    grouped = CliRunner().invoke(main, ["convert", *args])
    alone = subprocess.run(
        [sys.executable, "-m", "convert", *args], capture_output=True, text=True, timeout=600
    )
    for code, out, err in (
        (grouped.exit_code, grouped.stdout, grouped.stderr),
        (alone.returncode, alone.stdout, alone.stderr),
    ):
        lines = err.strip().splitlines()
        assert code != 0 and out == "" and len(lines) == 1, err
        assert lines[0].startswith("Error: ") and "no checkpoint at" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no output folder, no partial
