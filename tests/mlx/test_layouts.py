"""Every backbone layout the original accepts converts to the same model; the
recipes' memory lines; the backbone's identity is checked against the checkpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from convert.convert import ConvertError, convert_checkpoint
from convert.convert import main as convert_main
from reflex_mlx.backbone import BASE_MODEL, CAUSAL_LM, MLX_QUANTIZED, layout
from reflex_mlx.quantize import Recipe

FLOAT = Recipe(backbone_dtype="float32", adapter_dtype="float32")


def _convert(fixture_dir, backbone, out, **kw):
    kw.setdefault("recipe", FLOAT)
    return convert_checkpoint(
        str(fixture_dir / "reflex.pt"), str(backbone), out, verify=False, quiet=True, **kw
    )


def convert_args(fixture_dir, out, *options) -> list:
    """`python -m convert`'s arguments for the fixture (run with conftest's invoke)."""
    return [
        "--checkpoint",
        fixture_dir / "reflex.pt",
        "--backbone",
        fixture_dir / "backbone",
        "--out",
        out,
        *options,
    ]


def _words(model_dir, states):
    from reflex_core.predict import Predictor
    from reflex_mlx.fast import FastReflex
    from reflex_mlx.loader import load_model

    model, tokenizer, config = load_model(model_dir)
    return Predictor(FastReflex(model), tokenizer, "compute 5 factorial", config).predict_many(states)


def _backbone_weights(model_dir):
    out = {}
    for file in sorted((model_dir / "backbone").glob("model*.safetensors")):
        out.update(mx.load(str(file)))
    return out


@pytest.fixture(scope="module")
def transformers_layouts(fixture_dir, tmp_path_factory):
    """The fixture's backbone saved by transformers as a base model (no `model.`
    prefix, no lm_head) and as a causal LM in 20 kB shards."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("layouts")
    tokenizer = AutoTokenizer.from_pretrained(fixture_dir / "backbone")
    AutoModel.from_pretrained(fixture_dir / "backbone").save_pretrained(root / "base")
    untied = AutoModel.from_pretrained(fixture_dir / "backbone", tie_word_embeddings=False)
    untied.save_pretrained(root / "base-untied")
    AutoModelForCausalLM.from_pretrained(fixture_dir / "backbone").save_pretrained(
        root / "sharded", max_shard_size="20KB"
    )
    for name in ("base", "base-untied", "sharded"):
        tokenizer.save_pretrained(root / name)
    return root


def test_base_model_and_sharded_directories_convert_to_the_same_model(
    fixture_dir, transformers_layouts, mlx_float32_dir, tmp_path, random_states
):
    base, sharded = transformers_layouts / "base", transformers_layouts / "sharded"
    assert layout(base) == BASE_MODEL and layout(sharded) == CAUSAL_LM
    assert not any(n.startswith("model.") for f in base.glob("*.safetensors") for n in mx.load(str(f)))
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    states = random_states(6, seed=3)
    expected = _words(mlx_float32_dir, states)
    reference = _backbone_weights(mlx_float32_dir)
    for source in (base, sharded):
        out = _convert(fixture_dir, source, tmp_path / source.name)
        weights = _backbone_weights(out)
        inner = {k: v for k, v in reference.items() if not k.startswith("lm_head.")}
        assert {k: v for k, v in weights.items() if not k.startswith("lm_head.")}.keys() == inner.keys()
        assert all(np.array_equal(np.array(weights[k]), np.array(inner[k])) for k in inner), source.name
        assert _words(out, states) == expected, source.name
        config = json.loads((out / "config.json").read_text())
        assert config["backbone_layout"] == layout(source)
    # the fixture ties its head to the embeddings: a base model of it can still write text;
    # an untied base model has no head, and says so
    assert json.loads((tmp_path / "base" / "config.json").read_text())["text_head"] is True
    assert json.loads((tmp_path / "sharded" / "config.json").read_text())["text_head"] is True
    out = _convert(fixture_dir, transformers_layouts / "base-untied", tmp_path / "untied")
    assert json.loads((out / "config.json").read_text())["text_head"] is False
    assert _words(out, states) == expected


def test_an_mlx_quantized_backbone_is_used_as_it_is(fixture_dir, tmp_path):
    from mlx_lm import convert as mlx_lm_convert

    quantized = tmp_path / "mlx-q4"
    mlx_lm_convert(str(fixture_dir / "backbone"), str(quantized), quantize=True, q_bits=4, q_group_size=32)
    assert layout(quantized) == MLX_QUANTIZED
    out = _convert(fixture_dir, quantized, tmp_path / "out", recipe=None)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"bits": 4, "group_size": 32}  # not re-quantized to the default 8-bit
    assert config["backbone_layout"] == MLX_QUANTIZED
    source = {}
    for file in quantized.glob("model*.safetensors"):
        source.update(mx.load(str(file)))
    converted = _backbone_weights(out)
    assert converted.keys() == source.keys()
    assert all(np.array_equal(np.array(converted[k]), np.array(source[k])) for k in source)
    # adapters still follow the default recipe: 8-bit linear layers
    assert config["adapter_quantization"] == {"bits": 8, "group_size": 64}
    with pytest.raises(ConvertError, match="already quantized by mlx-lm .4-bit, group 32."):
        _convert(fixture_dir, quantized, tmp_path / "again", recipe=Recipe(bits=8))
    assert not (tmp_path / "again").exists()


def test_a_hub_backbone_loads_from_the_local_cache_offline(fixture_dir, tmp_path, hub_cache):
    cache, populate = hub_cache
    populate("someone/fixture-backbone", fixture_dir / "backbone")
    proc = subprocess.run(
        [sys.executable, "-m", "convert", "--checkpoint", str(fixture_dir / "reflex.pt"),
         "--backbone", "someone/fixture-backbone", "--out", str(tmp_path / "out"),
         "--no-quantize", "--no-verify"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["source_backbone"] == "someone/fixture-backbone"


def test_a_backbone_that_is_not_the_checkpoints_is_refused(fixture_dir, tmp_path):
    import shutil

    other = tmp_path / "other-vocab"
    shutil.copytree(fixture_dir / "backbone", other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 1}))
    with pytest.raises(ConvertError, match=r"not the checkpoint's .*vocab_size"):
        _convert(fixture_dir, other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


RECIPES = [
    (["--bits", "3"], 3),
    (["--bits", "4", "--group-size", "32"], 4),
    (["--bits", "5"], 5),
    (["--bits", "6"], 6),
    ([], 8),  # the default: 8-bit backbone, 8-bit adapters
    (["--recipe", "mixed_3_6"], None),
    (["--bits", "4", "--adapter-bits", "4"], 4),
    (["--bits", "4", "--adapter-bits", "none", "--dtype", "bfloat16"], 4),
    (["--no-quantize", "--no-verify"], None),
]


@pytest.mark.parametrize("options,bits", RECIPES, ids=[" ".join(o) or "default" for o, _ in RECIPES])
def test_each_recipe_ends_with_its_memory_line(fixture_dir, tmp_path, options, bits, invoke):
    proc = invoke(convert_main, *convert_args(fixture_dir, tmp_path / "out", *options))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("resident ≈"))
    m = re.search(r"reads ([\d.]+) (KiB|MiB) per cycle, ([\d.]+) bits per backbone weight", line)
    assert m, line
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    memory = config["memory"]
    assert memory["bits_per_weight"] == pytest.approx(float(m[3]), abs=0.01)
    if bits is not None and "--no-quantize" not in options:
        assert config["quantization"]["bits"] == bits
        group = int(options[options.index("--group-size") + 1]) if "--group-size" in options else 64
        # a float16 scale and bias per group on top, and the float norms
        assert bits + 32 / group <= memory["bits_per_weight"] < bits + 32 / group + 0.25
    # what the line says is what a load holds
    from reflex_mlx.loader import load_model
    from reflex_mlx.quantize import resident_bytes

    model, _, _ = load_model(tmp_path / "out")
    assert memory["resident_bytes"] >= resident_bytes(model.backbone, model.reflex)
    quantized = [n for n, m in model.reflex.named_modules() if isinstance(m, nn.QuantizedLinear)]
    adapter_bits = {"4": 4, "none": None}.get(
        options[options.index("--adapter-bits") + 1] if "--adapter-bits" in options else "", 8
    )
    if "--no-quantize" in options or adapter_bits is None:
        assert quantized == []
    else:
        assert quantized and all(
            m.bits == adapter_bits for n, m in model.reflex.named_modules() if n in quantized
        )
    assert dict(tree_flatten(model.reflex.parameters()))["instr_table.weight"].dtype != mx.uint32


def test_a_group_size_that_divides_few_layers_is_said(fixture_dir, tmp_path, invoke):
    proc = invoke(convert_main, *convert_args(fixture_dir, tmp_path / "out", "--group-size", "128"))
    assert proc.returncode == 0, proc.stderr
    assert re.search(
        r"warning: \d+ backbone layers stay float16: the group size 128 does not divide", proc.stderr
    )


def test_recipes_that_do_not_fit_are_one_line_errors(fixture_dir, tmp_path, invoke):
    for options, message in (
        (["--max-resident-gb", "0.0001"], "more than --max-resident-gb"),
        (["--bits", "4", "--recipe", "mixed_4_6"], "give one"),
        (["--no-quantize", "--bits", "4"], "contradicts"),
    ):
        proc = invoke(convert_main, *convert_args(fixture_dir, tmp_path / "out", *options))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert message in proc.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out.partial-*")) == []


def test_the_defaults_are_the_precision_tables_choice():
    from convert.recipes import default_entry
    from reflex_mlx.quantize import DEFAULT_RECIPE

    # the registry is held to the table row by row in tests/mlx/test_fit.py, the 8 GB pick too
    assert default_entry().recipe == DEFAULT_RECIPE and default_entry().row == "8bit-g64/8bit"


def test_layouts_that_cannot_be_converted_are_one_line_errors(fixture_dir, tmp_path):
    import shutil

    gptq = tmp_path / "gptq"
    shutil.copytree(fixture_dir / "backbone", gptq)
    config = json.loads((gptq / "config.json").read_text())
    (gptq / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(ConvertError, match="quantized with gptq"):
        _convert(fixture_dir, gptq, tmp_path / "out")
    empty = tmp_path / "no-weights"
    shutil.copytree(fixture_dir / "backbone", empty)
    for file in empty.glob("model*.safetensors"):
        file.unlink()
    with pytest.raises(ConvertError, match="no model.*safetensors weights"):
        _convert(fixture_dir, empty, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out.partial-*")) == []
