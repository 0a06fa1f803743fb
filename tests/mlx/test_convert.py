"""The converter's output directory, its options, and its refusals."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from convert.checkpoint import read_checkpoint
from convert.convert import ConvertError, convert_checkpoint
from reflex_core.spec import ADAPTERS_FILE, MODEL_FORMAT, ReflexArgs
from reflex_mlx.model import Reflex
from reflex_mlx.quantize import Recipe


def test_layout_and_names(fixture_dir, mlx_float32_dir):
    config = json.loads((mlx_float32_dir / "config.json").read_text())
    assert config["format"] == MODEL_FORMAT
    assert config["adapter_layers"] == [3, 7] and config["num_layers"] == 8
    assert config["quantization"] is None and config["adapter_dtype"] == "float32"
    weights = mx.load(str(mlx_float32_dir / ADAPTERS_FILE))
    expected = dict(tree_flatten(Reflex(ReflexArgs.from_config(config)).parameters()))
    assert set(weights) == set(expected)
    assert all(weights[k].shape == expected[k].shape for k in weights)
    # the packed in_proj is split in Wq; Wk; Wv order
    saved = torch.load(fixture_dir / "reflex.pt", weights_only=True)["state"]
    packed = saved["adapters.1.attn.in_proj_weight"].numpy()
    H = config["hidden"]
    for i, name in enumerate(["q_proj", "k_proj", "v_proj"]):
        got = np.array(weights[f"adapters.1.attn.{name}.weight"])
        assert np.array_equal(got, packed[i * H : (i + 1) * H])
    assert np.array(weights["instr_words"]).tolist() == [
        w & 0xFFFFFFFF for w in saved["instr_words"].tolist()
    ]
    assert (mlx_float32_dir / "backbone" / "tokenizer.json").exists()


def test_quantized_backbone(mlx_4bit_dir):
    backbone = json.loads((mlx_4bit_dir / "backbone" / "config.json").read_text())
    assert backbone["quantization"]["bits"] == 4
    assert backbone["quantization"]["group_size"] == 64
    config = json.loads((mlx_4bit_dir / "config.json").read_text())
    assert config["quantization"] == {"bits": 4, "group_size": 64}


def test_dtype_option(fixture_dir, tmp_path):
    out = convert_checkpoint(
        str(fixture_dir / "reflex.pt"),
        str(fixture_dir / "backbone"),
        tmp_path / "bf16",
        recipe=Recipe(backbone_dtype=None, adapter_dtype="bfloat16"),
        verify=False,
        quiet=True,
    )
    weights = mx.load(str(out / ADAPTERS_FILE))
    assert weights["embed_head.weight"].dtype == mx.bfloat16
    assert weights["instr_words"].dtype == mx.uint32


def test_existing_output_is_not_touched(fixture_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConvertError, match="already exists"):
        convert_checkpoint(str(fixture_dir / "reflex.pt"), str(fixture_dir / "backbone"), out)
    assert (out / "keep.txt").read_text() == "mine"


def test_failure_leaves_nothing_behind(fixture_dir, tmp_path):
    # A backbone whose hidden size does not match the checkpoint's adapters.
    from reflex_core.shapes import FIXTURE
    from reflex_torch.random import build_fixture

    other = build_fixture(
        tmp_path / "other", shape=FIXTURE.with_(hidden=32, intermediate=64, heads=2, kv_heads=1)
    )
    out = tmp_path / "parent" / "model"
    with pytest.raises(ConvertError, match="hidden size"):  # found before any conversion
        convert_checkpoint(str(fixture_dir / "reflex.pt"), str(other / "backbone"), out, quiet=True)
    assert not out.exists()

    # A layer count that takes another number of adapters: refused up front too.
    shallow = tmp_path / "shallow"
    shutil.copytree(fixture_dir / "backbone", shallow)
    config = json.loads((shallow / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (shallow / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError, match="has 2 adapters"):
        convert_checkpoint(str(fixture_dir / "reflex.pt"), str(shallow), out, quiet=True)

    # A tensor of the wrong shape is found from the shapes alone, before the backbone
    # is converted: nothing is written, nothing is left behind.
    saved = torch.load(fixture_dir / "reflex.pt", weights_only=True)
    saved["state"]["embed_head.weight"] = saved["state"]["embed_head.weight"][:-1]
    torch.save(saved, tmp_path / "misshapen.pt")
    with pytest.raises(ConvertError, match="does not fit"):
        convert_checkpoint(str(tmp_path / "misshapen.pt"), str(fixture_dir / "backbone"), out, quiet=True)
    assert not (tmp_path / "parent").exists() or list((tmp_path / "parent").iterdir()) == []


def test_cli_one_line_errors(fixture_dir, tmp_path, invoke, monkeypatch):
    from convert.convert import main

    broken = tmp_path / "reflex.pt"
    data = (fixture_dir / "reflex.pt").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    for checkpoint in [broken, tmp_path / "missing.pt"]:
        proc = invoke(
            main,
            "--checkpoint",
            checkpoint,
            "--backbone",
            fixture_dir / "backbone",
            "--out",
            tmp_path / "out",
        )
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "out").exists()
    monkeypatch.chdir(tmp_path)
    for argv, message in (
        (["--checkpoint", "nowhere/reflex.pt"], "no checkpoint at nowhere/reflex.pt"),
        (
            ["--checkpoint", str(fixture_dir / "reflex.pt"), "--backbone", "./gone"],
            "no backbone directory at ./gone",
        ),
        (["--bits", "8", "--no-quantize"], "contradict"),
    ):
        proc = invoke(main, *argv, "--out", tmp_path / "out")
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert message in proc.stderr, proc.stderr


def test_reader_matches_torch_on_fixture(fixture_dir):
    saved = torch.load(fixture_dir / "reflex.pt", weights_only=True)
    ckpt = read_checkpoint(fixture_dir / "reflex.pt")
    assert ckpt.config == saved["config"]
    assert set(ckpt.state) == set(saved["state"])
    for name, tensor in saved["state"].items():
        assert np.array_equal(ckpt.state[name].numpy(), tensor.numpy()), name
        assert ckpt.state[name].numpy().dtype == tensor.numpy().dtype
