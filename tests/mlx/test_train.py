"""`reflex-mlx train` (issue 15) on the small fixture, in float32 on the CPU.

Why: a trained directory must be a model that `run` loads; the codebook must
open to new words without moving the old ones; an interrupted run must resume
to exactly the model of one that never stopped; a LoRA must load kept beside
the model or merged into it; and bad data must be refused in one line that
names the line or program, leaving nothing behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from reflex_core.training import read_heldout

# Programs a user might write: "add A and B" as assembly, with the result checked.
ADD = "li t0, {a}\nli t1, {b}\nadd t2, t0, t1\nlui t3, 5\nsw t2, 0(t3)\nhalt:\nj halt\n"


PAIRS = tuple((a, b) for a in (3, 5, 9, 12, 40) for b in (4, 7, 30))


def write_jsonl(path: Path, pairs=PAIRS) -> Path:
    lines = [
        json.dumps(
            {
                "prompts": [f"add {a} and {b}", f"sum of {a} and {b}"],
                "program": ADD.format(a=a, b=b),
                "expected_result": {"mem_0x5000": a + b},
                "family": "add_user",
            }
        )
        for a, b in pairs
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def cli(invoke):
    """`reflex-mlx ARGS` in this process; the kill tests below start real processes."""
    from reflex_app.cli import main

    return lambda *args: invoke(main, *args)


COMMON = ["--steps", "12", "--batch", "8", "--lr", "3e-3", "--warmup", "2", "--log-every", "1"]
COMMON += ["--eval-every", "6", "--save-every", "6", "--eval-samples", "40", "--heldout-fraction", "0.2"]


def train_run(model_dir: Path, data: Path, out: Path, *extra: str):
    from reflex_mlx.train import TrainOptions, train

    opts = dict(
        out=out,
        model=str(model_dir),
        data=(str(data),),
        steps=12,
        batch=8,
        lr=3e-3,
        warmup=2,
        log_every=1,
        eval_every=6,
        save_every=6,
        eval_samples=40,
        heldout_fraction=0.2,
        progress=False,
    )
    for item in extra:
        key, value = item.split("=")
        try:
            opts[key] = json.loads(value)
        except ValueError:
            opts[key] = value
    return train(TrainOptions(**opts), say=lambda *a: None)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "adds.jsonl")


@pytest.fixture(scope="module")
def full_run(mlx_float32_dir, data_file, tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("full") / "run"
    result = cli("train", "--model", mlx_float32_dir, "--data", data_file, "--out", out, *COMMON)
    assert result.returncode == 0, result.stderr
    return out, result


def curve(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]


def test_a_short_run_learns_and_writes_a_model_run_loads(full_run, mlx_float32_dir, cli):
    out, result = full_run
    losses = [r["loss"] for r in curve(out) if "loss" in r]
    assert [r["step"] for r in curve(out) if "loss" in r] == list(range(1, 13))
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    evals = [r for r in curve(out) if "heldout_top1" in r]
    assert [r["step"] for r in evals] == [0, 6, 12]
    assert "peak memory:" in result.stderr and "stopped at step 12/12 (done)" in result.stderr
    # the held-out programs are the user's own, never trained on
    held = read_heldout(out)
    assert len(held) == 3 and all(e["source"] == "data" for e in held)
    # OUT is a model: `run` loads it and drives the machine
    ran = cli("run", "add 5 and 7", "--model", out, "--backend", "mlx", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["outcome"] in ("halted", "limit", "error")


def test_the_codebook_grows_and_keeps_its_old_rows(full_run, mlx_float32_dir):
    out, _ = full_run
    old = mx.load(str(mlx_float32_dir / "adapters.safetensors"))
    new = mx.load(str(out / "adapters.safetensors"))
    n = old["instr_words"].shape[0]
    config = json.loads((out / "config.json").read_text())
    added = config["training"]["new_codebook_rows"]
    assert added > 0 and config["num_instrs"] == n + added == new["instr_words"].shape[0]
    assert np.array_equal(np.array(new["instr_words"][:n]), np.array(old["instr_words"]))
    # every word the user's programs need is now a row (li/add/sw with these operands)
    from reflex_core.assembler import assemble

    words = set(np.array(new["instr_words"]).tolist())
    assert set(assemble(ADD.format(a=40, b=30))) <= words


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_model(full_run, mlx_float32_dir, data_file, tmp_path, cli):
    out, _ = full_run
    # simulate a kill after the step-6 checkpoint: rerun to step 6 only, then resume
    again = tmp_path / "again"
    part = cli(
        "train", "--model", mlx_float32_dir, "--data", data_file, "--out", again, *COMMON, "--stop-at", "6"
    )
    assert part.returncode == 0 and "stopped at step 6/12" in part.stderr
    refused = cli("train", "--out", again, "--resume", "--lr", "1")
    assert refused.returncode == 1 and "--resume takes its settings" in refused.stderr
    resumed = cli("train", "--out", again, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 6" in resumed.stderr
    a, b = mx.load(str(out / "adapters.safetensors")), mx.load(str(again / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert np.allclose(np.array(a[key]), np.array(b[key]), rtol=1e-5, atol=1e-6), key
    steps = [r["step"] for r in curve(again) if "loss" in r]
    assert steps == list(range(1, 13))


@pytest.mark.slow
def test_lora_kept_beside_or_merged(mlx_float32_dir, data_file, tmp_path):
    from reflex_mlx.loader import load_model
    from reflex_mlx.lora import LORA_FILE
    from reflex_mlx.model import Reference

    kept = train_run(mlx_float32_dir, data_file, tmp_path / "keep", "mode=lora", "lora_rank=4")
    fused = train_run(
        mlx_float32_dir, data_file, tmp_path / "fuse", "mode=lora", "lora_rank=4", "lora_output=fuse"
    )
    assert (tmp_path / "keep" / LORA_FILE).is_file() and not (tmp_path / "fuse" / LORA_FILE).exists()
    config = json.loads((tmp_path / "keep" / "config.json").read_text())
    assert config["lora"] == {"rank": 4, "alpha": 32.0, "targets": "all"}
    # LoRA leaves the adapter side's own linear weights as they were
    base = mx.load(str(mlx_float32_dir / "adapters.safetensors"))
    saved = mx.load(str(tmp_path / "keep" / "adapters.safetensors"))
    key = "adapters.0.attn.q_proj.weight"
    assert np.array_equal(np.array(base[key]), np.array(saved[key]))
    # what each directory loads to predicts what training ended with
    states = np.random.default_rng(0).integers(0, 2**32, (4, 65), dtype=np.uint64).tolist()
    embeds = []
    for result, folder in ((kept, "keep"), (fused, "fuse")):
        model, tokenizer, cfg = load_model(tmp_path / folder)
        runner = Reference(model, tokenizer.pad_token_id or 0)
        batch = runner.prefix([tokenizer.encode("add 3 and 4")])
        loaded = runner.embed(batch, states)
        trained = Reference(result["model"], tokenizer.pad_token_id or 0).embed(batch, states)
        assert np.allclose(loaded, trained, rtol=1e-4, atol=1e-5)
        embeds.append(loaded)
    assert cfg.get("lora") is None


@pytest.mark.slow
def test_bad_data_is_one_line_and_writes_nothing(mlx_float32_dir, tmp_path, cli):
    good = write_jsonl(tmp_path / "good.jsonl").read_text().splitlines()
    record = lambda prompt, program, value=1: json.dumps(
        {"prompt": prompt, "program": program, "expected_result": {"mem_0x5000": value}}
    )
    cases = {
        "malformed.jsonl": (good[:1] + ["{not json"], "malformed.jsonl:2: not a JSON object"),
        "asm.jsonl": (
            [record("x", "li t0, 1\nfrob t1")],
            "asm.jsonl:1: the program does not assemble: line 2",
        ),
        "wrong.jsonl": (
            [record("add 1 and 2", ADD.format(a=1, b=2), 4)],
            "wrong.jsonl:1: ('add 1 and 2') halts without its expected result",
        ),
        "nohalt.jsonl": (
            [record("spin", "li t0, 1\nloop:\naddi t0, t0, 1\nj loop")],
            "nohalt.jsonl:1: ('spin') does not halt",
        ),
        "words.jsonl": ([record("x", ["0xffffffff"])], "is not an RV32I instruction"),
        "noexpect.jsonl": ([json.dumps({"prompt": "x", "program": "jal x0, 0"})], 'needs "expected_result"'),
    }
    for name, (lines, message) in cases.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        out = tmp_path / f"out-{name}"
        result = cli(
            "train", "--model", mlx_float32_dir, "--data", tmp_path / name, "--out", out, "--steps", "2"
        )
        assert result.returncode == 1, (name, result.stderr)
        lines_err = result.stderr.strip().splitlines()
        assert len(lines_err) == 1 and message in lines_err[0], (name, result.stderr)
        assert "Traceback" not in result.stderr
        assert not out.exists()
    # --skip-failing leaves the bad program out and trains on the rest
    (tmp_path / "mixed.jsonl").write_text("\n".join(good[:6] + cases["wrong.jsonl"][0]) + "\n")
    out = tmp_path / "mixed-out"
    result = cli(
        "train", "--model", mlx_float32_dir, "--data", tmp_path / "mixed.jsonl", "--out", out,
        "--steps", "2", "--skip-failing", "--heldout-fraction", "0.2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rejected mixed.jsonl:7: ('add 1 and 2') halts without its expected result" in result.stderr
    # an OUT that already holds a run is never overwritten
    again = cli("train", "--model", mlx_float32_dir, "--data", tmp_path / "good.jsonl", "--out", out)
    assert again.returncode == 1 and "already holds files" in again.stderr
    assert (out / "config.json").is_file()


def test_quantized_adapters_train_full_or_under_lora(fixture_dir, data_file, tmp_path):
    """8-bit adapters (the converter's default): full training dequantizes them and writes
    them back at 8 bits; a kept LoRA leaves their packed weights as they were."""
    from convert.convert import convert_checkpoint
    from reflex_mlx.loader import load_model
    from reflex_mlx.quantize import Recipe

    source = convert_checkpoint(
        str(fixture_dir / "reflex.pt"), str(fixture_dir / "backbone"), tmp_path / "a8",
        recipe=Recipe(backbone_dtype="float32", adapter_bits=8), verify=False, quiet=True,
    )  # fmt: skip
    base = mx.load(str(source / "adapters.safetensors"))
    key = "adapters.0.mlp.fc1"
    assert base[f"{key}.weight"].dtype == mx.uint32
    full = train_run(source, data_file, tmp_path / "full", "steps=4")
    lora = train_run(source, data_file, tmp_path / "lora", "steps=4", 'mode="lora"', "lora_rank=4")
    assert full["step"] == lora["step"] == 4
    for folder in ("full", "lora"):
        saved = mx.load(str(tmp_path / folder / "adapters.safetensors"))
        config = json.loads((tmp_path / folder / "config.json").read_text())
        assert config["adapter_quantization"] == {"bits": 8, "group_size": 64}
        assert saved[f"{key}.weight"].dtype == mx.uint32 and f"{key}.scales" in saved
        changed = not np.array_equal(np.array(saved[f"{key}.weight"]), np.array(base[f"{key}.weight"]))
        assert changed == (folder == "full")
        load_model(tmp_path / folder)  # loads, strict


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(full_run, mlx_float32_dir, data_file, tmp_path, cli):
    import signal
    import time

    out = tmp_path / "killed"
    args = [
        "train",
        "--model",
        mlx_float32_dir,
        "--data",
        data_file,
        "--out",
        out,
        *COMMON,
        "--save-every",
        "2",
    ]
    process = subprocess.Popen([sys.executable, "-m", "reflex_app", *map(str, args)], stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not (out / "train_state.safetensors").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = cli("train", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    at = int(resumed.stderr.split("resumed at step ")[1].split()[0])
    assert at < 12  # the kill landed mid-run
    a = mx.load(str(full_run[0] / "adapters.safetensors"))
    b = mx.load(str(out / "adapters.safetensors"))
    for key in a:
        assert np.allclose(np.array(a[key]), np.array(b[key]), rtol=1e-5, atol=1e-6), key
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # no half-written file left


def test_a_time_limit_stops_cleanly_with_a_model(mlx_float32_dir, data_file, tmp_path, cli):
    out = tmp_path / "limited"
    result = cli(
        "train", "--model", mlx_float32_dir, "--data", data_file, "--out", out, *COMMON, "--time-limit", "0"
    )
    assert result.returncode == 0, result.stderr
    assert "stopped at step 0/12 (time limit 0s)" in result.stderr
    ran = cli("run", "add 3 and 4", "--model", out, "--backend", "mlx", "--max-cycles", "5", "--json")
    assert ran.returncode == 0, ran.stderr
