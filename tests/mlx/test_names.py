"""Hostile names and a doctored training state: each refused in one line.

Why: a model name, a path or a value the user gives is echoed in errors; a newline
in it must not split the error, and a name the system refuses (~nobody, too long,
NUL, empty) must say so rather than end in "internal error" or blame the output.
A resumed run takes its options from train_state.safetensors, which the user can
edit: a foreign or wrongly typed option must be one line too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlx.core as mx
import pytest
from click.testing import CliRunner

from reflex_app.cli import MODEL_ENV, main

HOSTILE = {
    "newline": "no-such\nmodel",
    "line separator": "no-such\u2028model",
    "unknown user": "~nosuchuser-reflex/x",
    "too long": "a" * 4096,
    "long components": "/".join(["b" * 300] * 3),
    "empty": "",
    "control": "a\x1b[31mred",
}


def one_error_line(output: str) -> str:
    """The output's only "Error:" line; nothing else looks like an error or a traceback."""
    lines = output.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "internal error" not in output and "Traceback" not in output, output
    assert "cannot write the output" not in output, output
    return errors[0]


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "reflex_app", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=600,
    )


@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_model_name_is_one_line(name):
    given = cli("run", "add 1 and 2", "--model", name)
    assert given.returncode == 1 and given.stdout == ""
    line = one_error_line(given.stderr)
    assert len(line) < 400 and "\x1b" not in given.stderr
    if name:  # the environment's empty value means "not set"
        from_env = cli("run", "add 1 and 2", env={MODEL_ENV: name})
        assert from_env.returncode == 1 and from_env.stdout == ""
        assert "$REFLEX_MLX_MODEL" in one_error_line(from_env.stderr)
        assert all(line.startswith(("model: ", "Error: ")) for line in from_env.stderr.splitlines())


def test_messages_say_what_is_wrong_with_the_name():
    assert "no model directory at 'no-such\\nmodel'" in cli("run", "x", "--model", HOSTILE["newline"]).stderr
    assert "no home folder" in cli("run", "x", "--model", HOSTILE["unknown user"]).stderr
    assert "File name too long" in cli("run", "x", "--model", HOSTILE["too long"]).stderr
    assert "the model name is empty" in cli("run", "x", "--model", "").stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "x", "--model", "a\0b"],
        ["eval", "--json", "~nosuchuser-reflex/r.json"],
        ["eval", "--json", "a" * 4096],
        ["eval", "--json", "r\n.json", "--model", "\0"],
        ["train", "--out", "~nosuchuser-reflex/out", "--data", "d.jsonl"],
        ["train", "--out", "o\nut", "--data", "a" * 4096],
        ["train", "--out", "", "--data", "d.jsonl"],
        ["train", "--out", "out", "--data", "d.jsonl", "--model", "~nosuchuser-reflex/m"],
        ["bench", "--torch", "b" * 5000],
        ["info", "~nosuchuser-reflex/x"],
        ["info", "no\nmodel"],
        ["train", "--out", "out", "--data", ".", "--lr", "nan"],
        ["train", "--out", "out", "--data", ".", "--heldout-fraction", "5"],
        ["train", "--out", "out", "--data", ".", "--grad-clip", "0"],
    ],
)
def test_every_path_option_refuses_a_hostile_name_in_one_line(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    one_error_line(result.output)
    assert not os.listdir(tmp_path), "nothing is written"


def test_convert_refuses_hostile_names_in_one_line(tmp_path):
    for option, name in [("--checkpoint", "~nosuchuser-reflex/r.pt"), ("--out", "c" * 4096)]:
        proc = subprocess.run(
            [sys.executable, "-m", "convert", option, name],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert proc.returncode == 1
        assert option in one_error_line(proc.stderr), proc.stderr


def test_a_clickexception_is_printed_as_one_line():
    """The guard under every command: whatever a message holds, it prints as one line."""
    import click

    @main.command(name="multi-line-for-test", hidden=True)
    def boom():
        raise click.ClickException("first\nsecond\u2028third")

    try:
        result = CliRunner().invoke(main, ["multi-line-for-test"])
    finally:
        main.commands.pop("multi-line-for-test")
    assert result.exit_code == 1 and result.output == "Error: first\\nsecond\\u2028third\n"


# ------------------------------------------------------------- a resumed state

ADD = "li t0, {a}\nli t1, {b}\nadd t2, t0, t1\nlui t3, 5\nsw t2, 0(t3)\nhalt:\nj halt\n"


@pytest.fixture(scope="module")
def saved_run(mlx_float32_dir, tmp_path_factory):
    """A real train_state.safetensors: two steps of a real run on the fixture."""
    from reflex_mlx.train import TrainOptions, train

    root = tmp_path_factory.mktemp("names")
    data = root / "adds.jsonl"
    pairs = [(a, b) for a in (3, 5, 9) for b in (4, 7)]
    records = [
        {
            "prompt": f"add {a} and {b}",
            "program": ADD.format(a=a, b=b),
            "expected_result": {"mem_0x5000": a + b},
        }
        for a, b in pairs
    ]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = root / "run"
    opts = TrainOptions(
        out=out, model=str(mlx_float32_dir), data=(str(data),), steps=2, batch=4, warmup=0,
        eval_every=100, save_every=2, heldout_fraction=0.0, progress=False,
    )  # fmt: skip
    train(opts, say=lambda *a: None)
    return out


def doctored(saved_run, tmp_path, options=None, metadata=None, arrays=None):
    """A copy of the saved run whose state's options, metadata or arrays are changed."""
    import shutil

    from reflex_mlx.train import STATE_FILE

    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    state, meta = mx.load(str(out / STATE_FILE), return_metadata=True)
    if options is not None:
        meta["options"] = json.dumps({**json.loads(meta["options"]), **options})
    meta.update(metadata or {})
    state.update(arrays or {})
    mx.save_safetensors(str(out / STATE_FILE), state, metadata=meta)
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"options": {"foo": 1}}, "unknown option 'foo'"),
        ({"options": {"lr": "fast"}}, "option 'lr' must be a number"),
        ({"options": {"lr": 10**400}}, "option 'lr' must be a number"),
        ({"options": {"data": {"a": 1}}}, "option 'data' must be a list of strings"),
        ({"options": {"mode": "mystery"}}, "option 'mode' must be one of full, lora"),
        ({"options": {"backbone_dtype": "save_safetensors"}}, "option 'backbone_dtype' must be one of"),
        ({"options": {"steps": 0}}, "option 'steps' must be at least 1"),
        ({"options": {"data": ["~nosuchuser-reflex/d"]}}, "no home folder"),
        ({"metadata": {"options": "[1, 2]"}}, "its options are not a JSON object"),
        ({"metadata": {"options": "{"}}, "its options are not JSON"),
        ({"metadata": {"step": "six\nteen"}}, "is not a step number"),
        ({"metadata": {"step": "\u00b2"}}, "is not a step number"),
        ({"metadata": {"sampler": '{"bit_generator": "nope"}'}}, "sampler state cannot be restored"),
        ({"arrays": {"evil.x": mx.zeros(2)}}, "unknown array 'evil.x'"),
    ],
)
def test_a_doctored_training_state_is_one_line(saved_run, tmp_path, change, message):
    from reflex_mlx.train import TrainError, TrainOptions, train

    out = doctored(saved_run, tmp_path, **change)
    with pytest.raises(TrainError) as err:
        train(TrainOptions(out=out, steps=4, extra={"resume": True}), say=lambda *a: None)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert "train_state.safetensors" in str(err.value) or "home folder" in str(err.value)


def test_a_state_from_another_model_is_one_line(saved_run, tmp_path):
    """Arrays the model has no place for, or of another shape, are refused before training."""
    from reflex_mlx.train import STATE_FILE, TrainError, TrainOptions, train

    state = mx.load(str(saved_run / STATE_FILE))
    key = next(k for k in state if k.startswith("param."))
    for arrays, message in [
        ({key: mx.zeros((3,))}, f"'{key}' is float32[3]"),
        ({"param.no_such_layer.weight": mx.zeros(2)}, "has an array the model has no place for"),
    ]:
        out = doctored(saved_run, tmp_path / message[:8].strip("'"), arrays=arrays)
        with pytest.raises(TrainError, match="train_state.safetensors") as err:
            train(TrainOptions(out=out, steps=4, extra={"resume": True}), say=lambda *a: None)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_doctored_state_through_the_cli_is_one_error_line(saved_run, tmp_path):
    out = doctored(saved_run, tmp_path, options={"foo\nbar": 1})
    proc = cli("train", "--out", str(out), "--resume")
    assert proc.returncode == 1
    assert "unknown option 'foo\\nbar'" in one_error_line(proc.stderr)


def test_a_broken_corpus_costs_the_eval_one_warning_not_its_report(tmp_path, monkeypatch, capsys):
    """eval adds a score without near-copies where it finds the corpus; a damaged one is said in one line."""
    from reflex_app.cli.eval import near_copy_line

    family = tmp_path / "programs" / "cat"
    family.mkdir(parents=True)
    (family / "fam.json").write_text('{"programs": [' * 50_000)
    monkeypatch.setenv("REFLEX_CORPUS", str(tmp_path))
    near_copy_line({"sections": {}})
    err = capsys.readouterr().err
    assert err.startswith("warning: no score without near-copies: ") and err.count("\n") == 1, err
