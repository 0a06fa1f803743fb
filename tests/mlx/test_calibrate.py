"""Calibrated backbones (convert/calibrate.py): the data never holds an evaluation
prompt or a held-out program, and each mlx-lm method, fed the Reflex forward,
writes a folder reflex_mlx/loader.py loads whose predictions beat (or, for DWQ,
move away from) plain 4-bit quantization."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reflex_core.corpus import find_corpus

CORPUS = find_corpus()
if CORPUS is None:
    pytest.skip("training corpus absent (../shared/corpus or $REFLEX_CORPUS)", allow_module_level=True)

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from convert import calibrate as calib  # noqa: E402
from reflex_core.corpus import load_programs  # noqa: E402
from reflex_core.evaluation import bare, load_tasks  # noqa: E402
from reflex_core.prompt import encode_prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_HELDOUT = ROOT / "reflex_torch" / "models" / "reflex-tiny" / "heldout.json"
SAMPLES = 6
# The quantized recipe under test: float32 scales (MLX's CPU emulates float16, slowly).
RECIPE = dict(bits=4, group_size=64, backbone_dtype="float32", adapter_bits=4)


def test_calibration_data_holds_no_eval_prompt_and_no_heldout_program(tiny_tokenizer):
    tokenizer, config = tiny_tokenizer
    held = calib.heldout_words(TINY_HELDOUT)
    forbidden = {bare(task.prompt) for task in load_tasks()}
    programs = load_programs(CORPUS)
    # the corpus does hold held-out programs and eval prompts' near copies: the filter keeps them out
    assert any(tuple(p.words) in held for p in programs)
    assert any(bare(v) in forbidden for p in programs for v in p.variants)

    pool = calib.training_prompts(CORPUS, held)
    assert not {tuple(program.words) for program, _ in pool} & held
    assert not {bare(p) for _, prompts in pool for p in prompts} & forbidden

    data = calib.calibration_data(CORPUS, tokenizer, config, 120, heldout=TINY_HELDOUT, seed=3)
    assert len(data) == 120 and len(set(data.programs)) == 120  # distinct programs
    assert not set(data.programs) & held
    assert not {bare(p) for p in data.prompts} & forbidden
    # the backbone's input exactly: the chat-templated prompt padded to max_instr_tokens
    limit = config["max_instr_tokens"]
    assert data.tokens.shape == (120, limit) and data.states.shape == (120, 65)
    for i in range(0, 120, 17):
        ids = encode_prompt(tokenizer, data.prompts[i], config).ids
        assert data.lengths[i] == len(ids)
        assert data.tokens[i, : len(ids)].tolist() == ids
        assert (data.tokens[i, len(ids) :] == (tokenizer.pad_token_id or 0)).all()
    # the same seed draws the same cycles
    again = calib.calibration_data(CORPUS, tokenizer, config, 120, heldout=TINY_HELDOUT, seed=3)
    assert (again.states == data.states).all() and again.prompts == data.prompts


def test_unknown_method_and_bad_heldout_are_one_line_errors(tmp_path, mlx_float32_dir):
    from reflex_mlx.loader import load_with_language_model
    from reflex_mlx.quantize import Recipe

    model, tokenizer, config, backbone = load_with_language_model(mlx_float32_dir)
    data = calib.calibration_data(CORPUS, tokenizer, config, 2)
    with pytest.raises(calib.CalibrationError, match="unknown calibration 'nope'"):
        calib.calibrate("nope", backbone, model.reflex, Recipe(**RECIPE), data)
    with pytest.raises(calib.CalibrationError, match="uniform bits"):
        calib.calibrate("awq", backbone, model.reflex, Recipe(mixed="mixed_4_6"), data)
    (tmp_path / "heldout.json").write_text('{"programs": [{"words": ["zz"]}]}')
    with pytest.raises(calib.CalibrationError, match="not a heldout.json"):
        calib.calibration_data(CORPUS, tokenizer, config, 2, heldout=tmp_path / "heldout.json")


@pytest.fixture(scope="module")
def float_model(mlx_float32_dir):
    """(float ReflexModel, tokenizer, config, calibration data, its float predictions)."""
    from reflex_mlx.loader import load_model

    model, tokenizer, config = load_model(mlx_float32_dir)
    data = calib.calibration_data(CORPUS, tokenizer, config, SAMPLES)  # what for_conversion draws
    return model, tokenizer, config, data, _predict(model, data)


def _predict(model, data) -> mx.array:
    mask = (np.arange(data.tokens.shape[1])[None] < data.lengths[:, None]).astype(np.int32)
    return model(mx.array(data.tokens), mx.array(mask), mx.array(data.states))


def _error(model, data, reference) -> float:
    return float(((_predict(model, data) - reference) ** 2).mean())


def _write(
    src: Path, out: Path, backbone, reflex, recipe, quantization, adapter_quantization, record
) -> Path:
    """The converter's folder with the calibrated backbone and quantized adapters in it."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import save_config, save_model

    from reflex_core.folder import write_manifest
    from reflex_core.spec import ADAPTERS_FILE, MODEL_FORMAT

    shutil.copytree(src, out)
    for f in (out / "backbone").glob("model*.safetensors*"):
        f.unlink()
    bconfig = json.loads((out / "backbone" / "config.json").read_text())
    bconfig["quantization"] = quantization
    save_model(out / "backbone", backbone)
    save_config(bconfig, config_path=out / "backbone" / "config.json")
    weights = dict(tree_flatten(reflex.parameters()))
    mx.save_safetensors(str(out / ADAPTERS_FILE), weights, metadata={"format": MODEL_FORMAT})
    config = json.loads((out / "config.json").read_text())
    config.update(
        adapter_quantization=adapter_quantization,
        quantization={"bits": recipe.bits, "group_size": recipe.group_size},
        recipe={**recipe.describe(), "calibration": record["method"]},
    )
    (out / "config.json").write_text(json.dumps(config))
    write_manifest(out)
    return out


def _calibrated(method, float_model, mlx_float32_dir, tmp_path):
    """Calibrate a fresh float backbone by `method` as a conversion would, write and
    load it: (loaded model, record)."""
    from reflex_mlx.loader import load_model, load_with_language_model
    from reflex_mlx.quantize import Recipe

    fresh, tokenizer, config, backbone = load_with_language_model(mlx_float32_dir)
    recipe = Recipe(**RECIPE)
    quantization, adapters, record = calib.for_conversion(
        method, backbone, fresh.reflex, recipe, CORPUS, False, tokenizer, config, samples=SAMPLES
    )
    assert record["method"] == method and record["data"]["samples"] == SAMPLES
    assert adapters == {"bits": 4, "group_size": 64}
    folder = _write(
        mlx_float32_dir, tmp_path / method, backbone, fresh.reflex, recipe, quantization, adapters, record
    )
    loaded, _, _ = load_model(folder)
    return loaded, record


@pytest.fixture(scope="module")
def plain_error(float_model, mlx_float32_dir):
    """The plain 4-bit recipe's prediction error on the calibration cycles."""
    from reflex_mlx.loader import load_with_language_model
    from reflex_mlx.model import ReflexModel
    from reflex_mlx.quantize import Recipe, quantize_adapters, quantize_backbone

    _, _, _, data, reference = float_model
    fresh, _, _, backbone = load_with_language_model(mlx_float32_dir)
    quantize_backbone(backbone, Recipe(**RECIPE))
    quantize_adapters(fresh.reflex, Recipe(**RECIPE))
    return _error(ReflexModel(backbone, fresh.reflex), data, reference)


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_awq_and_gptq_beat_plain_4bit_on_the_calibration_cycles(
    method, float_model, plain_error, mlx_float32_dir, tmp_path, monkeypatch, capfd
):
    monkeypatch.setattr(calib, "AWQ_GRID", 2)  # mlx-lm's 20 grid points cost minutes here
    capfd.readouterr()
    loaded, record = _calibrated(method, float_model, mlx_float32_dir, tmp_path)
    shown = "".join(capfd.readouterr())  # progress off: none of mlx-lm's bars or lines
    assert not any(s in shown for s in ("Loss reduction", "Computing Hessians", "Quantizing", "it/s"))
    _, _, _, data, reference = float_model
    layers = [m for _, m in loaded.backbone.named_modules() if hasattr(m, "bits")]
    assert layers and all(m.bits == 4 and m.group_size == 64 for m in layers)
    assert _error(loaded, data, reference) < plain_error


def test_sensitivity_spends_its_budget_on_the_most_sensitive(
    float_model, plain_error, mlx_float32_dir, tmp_path
):
    loaded, record = _calibrated("sens", float_model, mlx_float32_dir, tmp_path)
    _, _, _, data, reference = float_model
    high = {p for p, m in loaded.backbone.named_modules() if getattr(m, "bits", 4) == 6}
    assert high and {f"model.{p}" for p in high} == set(record["high_layers"])
    sens = record["sensitivities"]
    assert min(sens[p] for p in record["high_layers"]) >= max(
        s for p, s in sens.items() if p not in record["high_layers"]
    )
    assert record["bits_per_weight"] <= record["target_bpw"]
    assert _error(loaded, data, reference) < plain_error


def test_dwq_trains_the_scales_toward_the_float_model(float_model, mlx_float32_dir, tmp_path, monkeypatch):
    """DWQ changes only scales and biases: the same packed weights as plain 4-bit."""
    from reflex_mlx.loader import load_with_language_model
    from reflex_mlx.quantize import Recipe, quantize_backbone

    monkeypatch.setattr(calib, "DWQ_LEARNING_RATE", 1e-3)  # a random fixture's logits are nearly flat
    monkeypatch.setattr(calib, "DWQ_BATCH", 2)
    loaded, record = _calibrated("dwq", float_model, mlx_float32_dir, tmp_path)
    assert record["steps"] >= 2
    _, _, _, backbone = load_with_language_model(mlx_float32_dir)
    quantize_backbone(backbone, Recipe(**RECIPE))
    plain = dict(backbone.model.named_modules())
    moved = 0
    for path, module in loaded.backbone.named_modules():
        if hasattr(module, "scales"):
            assert mx.array_equal(module.weight, plain[path].weight)
            moved += not mx.allclose(module.scales, plain[path].scales)
    assert moved


def test_precision_bench_specs_name_a_recipe_and_its_calibration():
    from bench.precision import parse_recipe, parse_spec
    from reflex_mlx.quantize import Recipe

    small = Recipe(bits=4, group_size=64, adapter_bits=4)
    assert parse_spec("awq4-g64/4bit") == (small, "awq")
    assert parse_spec("sens4_6-g64/4bit") == (small, "sens")
    assert parse_spec("gptq4-g32/8bit") == (Recipe(bits=4, group_size=32, adapter_bits=8), "gptq")
    assert parse_spec("4bit-g64/4bit") == (small, None)
    for bad in ("nope4-g64/4bit", "sens4_8-g64/4bit", "awq4_6-g64/4bit", "dwq4-g64/2dollars"):
        with pytest.raises(ValueError):
            parse_spec(bad)
    with pytest.raises(ValueError, match="calibrated|unknown"):
        parse_recipe("awq4-g64/4bit")  # a plain recipe never silently drops its calibration


def test_sensitivity_rows_count_the_raised_layers_at_the_release_shape():
    """The 7B column of a sens row: each layer of the counted shape takes the choice
    of the measured layer at the same depth (the last for the last), the embedding
    its own; each raised weight costs 2 more bits (counted here at a small shape)."""
    from bench.precision import release_counts
    from reflex_core.shapes import TINY_TEST
    from reflex_mlx.quantize import Recipe

    recipe = Recipe(bits=4, group_size=64, adapter_bits=4)
    plain = release_counts(recipe, shape=TINY_TEST)
    raised = release_counts(
        recipe, ["model.layers.29.mlp.down_proj", "model.embed_tokens"], 30, shape=TINY_TEST
    )
    down, embed = TINY_TEST.intermediate * TINY_TEST.hidden, TINY_TEST.vocab * TINY_TEST.hidden
    assert raised["resident_bytes"] - plain["resident_bytes"] == (down + embed) // 4
    first = release_counts(recipe, ["model.layers.0.mlp.down_proj"], 30, shape=TINY_TEST)
    assert first["resident_bytes"] - plain["resident_bytes"] == down // 4  # only the 7B's layer 0
