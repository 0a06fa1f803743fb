"""One training loop (reflex_core.training.fit) behind `reflex-mlx train --backend mlx|torch`.

Why: the two trainers once wrote resume, schedule, evaluation and save cadence
each their own way. Through the one command, both backends on the session
fixture must follow the same sequence: the same held-out split, an evaluation
at the start, a loss logged each step, evaluations and checkpoints at the same
steps, the same clean stop and the same resume; an option of the other backend
is one line, and --help imports no framework.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from reflex_app.cli import main  # noqa: E402

ADD = "li t0, {a}\nli t1, {b}\nadd t2, t0, t1\nlui t3, 5\nsw t2, 0(t3)\nhalt:\nj halt\n"
SHARED = ["--steps", "4", "--batch", "8", "--lr", "3e-3", "--warmup", "1", "--log-every", "1"]
SHARED += ["--eval-every", "2", "--save-every", "2", "--eval-samples", "20", "--heldout-fraction", "0.2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "adds.jsonl"
    records = [
        {
            "prompt": f"add {a} and {b}",
            "program": ADD.format(a=a, b=b),
            "expected_result": {"mem_0x5000": a + b},
        }
        for a in (3, 5, 9, 12)
        for b in (4, 7, 30)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def train(*args):
    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(main, ["train", *map(str, args)])
    finally:
        torch.set_num_threads(threads)


def sequence(out) -> list[tuple[str, int]]:
    records = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    return [("loss" if "loss" in r else "eval", r["step"]) for r in records]


@pytest.fixture(scope="module")
def runs(data, fixture_dir, mlx_float32_dir, tmp_path_factory):
    """Each backend stopped at step 3 by --stop-at, then resumed to step 4."""
    root = tmp_path_factory.mktemp("one")
    own = {
        "mlx": ["--model", mlx_float32_dir],
        "torch": ["--backbone", fixture_dir / "backbone", "--device", "cpu", "--threads", "1"],
    }
    outputs = {}
    for backend, extra in own.items():
        out = root / backend
        first = train("--backend", backend, "--data", data, "--out", out, *SHARED, *extra, "--stop-at", "3")
        assert first.exit_code == 0, first.output
        per_invocation = extra[2:] if backend == "torch" else []
        resumed = train("--backend", backend, "--out", out, "--resume", *per_invocation)
        assert resumed.exit_code == 0, resumed.output
        outputs[backend] = (out, first.output, resumed.output)
    return outputs


def test_both_backends_follow_the_one_loop(runs):
    expected = [("eval", 0), ("loss", 1), ("loss", 2), ("eval", 2), ("loss", 3), ("eval", 3)]
    expected += [("loss", 4), ("eval", 4)]
    for backend, (out, first, resumed) in runs.items():
        assert sequence(out) == expected, backend
        assert "stopped at step 3/4 (--stop-at 3)" in first, backend
        assert "resumed at step 3" in resumed and "stopped at step 4/4 (done)" in resumed, backend
        assert "peak memory:" in resumed, backend
    (mlx_out, *_), (torch_out, *_) = runs["mlx"], runs["torch"]
    # the same split of the same data; each backend its own files
    held = [json.loads((out / "heldout.json").read_text())["programs"] for out in (mlx_out, torch_out)]
    assert [e["words"] for e in held[0]] == [e["words"] for e in held[1]] and held[0]
    assert (mlx_out / "train_state.safetensors").is_file() and (mlx_out / "config.json").is_file()
    assert (torch_out / "train_state.pt").is_file() and (torch_out / "reflex.pt").is_file()
    saved = torch.load(torch_out / "train_state.pt", weights_only=True)
    assert saved["step"] == 4 and saved["args"]["steps"] == 4


def test_an_option_of_the_other_backend_is_one_line(tmp_path, data):
    for backend, option, owner in (
        ("mlx", ["--hidden", "64"], "torch"),
        ("torch", ["--mode", "lora"], "mlx"),
    ):
        result = train("--backend", backend, "--data", data, "--out", tmp_path / backend, *option)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and f"applies to --backend {owner} only" in lines[0], result.output
        assert not (tmp_path / backend).exists()


def test_the_resume_rule_is_one_for_both(runs):
    for backend, (out, *_) in runs.items():
        result = train("--backend", backend, "--out", out, "--resume", "--lr", "1")
        assert result.exit_code == 1 and "--resume takes its settings from the saved run" in result.output


def test_train_help_imports_no_framework(fresh_interpreter):
    code = (
        "from click.testing import CliRunner\nfrom reflex_app.cli import main\n"
        "r = CliRunner().invoke(main, ['train', '--help'])\nassert r.exit_code == 0, r.output\n"
        "assert '--backend [mlx|torch]' in r.output and '--hidden' in r.output"
    )
    _, modules = fresh_interpreter(code)
    assert not {"mlx", "torch", "transformers"} & {m.split(".")[0] for m in modules}


def test_every_option_defaults_to_its_dataclass_field():
    from reflex_app.cli.train import command
    from reflex_core import training

    params = {p.name: p for p in command.params}
    for cls in (training.TrainDefaults, *training.BACKEND_OPTIONS.values()):
        for name, f in training.options_of(cls).items():
            if f.metadata.get("cli", True) and f.type.startswith(("int", "float", "str", "bool")):
                assert params[name].default == f.default, name
