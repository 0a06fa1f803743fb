"""Reflex-objective distillation (convert/distill.py): on the random fixture it
lowers the student's distance to the float model on programs it never trained
on, changes only the backbone's quantized scales and biases, and its result
saves and loads as the converter's folder; its data hold no evaluation prompt
and no held-out program."""

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
from mlx.utils import tree_flatten  # noqa: E402

from convert import calibrate as calib  # noqa: E402
from convert import distill as dist  # noqa: E402
from reflex_core.evaluation import bare, load_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_HELDOUT = ROOT / "reflex_torch" / "models" / "reflex-tiny" / "heldout.json"
SAMPLES = 40
STEPS = 10
# float32 scales: MLX's CPU emulates float16, slowly
RECIPE = dict(bits=4, group_size=64, backbone_dtype="float32", adapter_bits=4)


def _predict(model, data, index) -> mx.array:
    (ids, mask, states), *_ = dist._batches(data, index, len(index))
    return model(ids, mask, states)


def _distance(pred, reference) -> float:
    return float((1 - (dist.unit(pred) * dist.unit(reference)).sum(axis=-1)).mean())


@pytest.fixture(scope="module")
def run(mlx_float32_dir, tmp_path_factory):
    """Float model, plain 4-bit model, distilled model (through calibrate's registry), data, record."""
    from reflex_mlx.loader import load_with_language_model
    from reflex_mlx.model import ReflexModel
    from reflex_mlx.quantize import Recipe, quantize_adapters, quantize_backbone

    recipe = Recipe(**RECIPE)
    float_model, tokenizer, config, _ = load_with_language_model(mlx_float32_dir)
    data = calib.calibration_data(CORPUS, tokenizer, config, SAMPLES, heldout=TINY_HELDOUT)
    plain, _, _, plain_backbone = load_with_language_model(mlx_float32_dir)
    quantize_backbone(plain_backbone, recipe)
    quantize_adapters(plain.reflex, recipe)
    fresh, _, _, backbone = load_with_language_model(mlx_float32_dir)
    mp = pytest.MonkeyPatch()
    mp.setattr(dist, "DEFAULT_STEPS", STEPS)
    mp.setattr(dist, "DEFAULT_BATCH", 8)
    record = calib.calibrate("distill", backbone, fresh.reflex, recipe, data)
    mp.undo()
    quantize_adapters(fresh.reflex, recipe)
    distilled = ReflexModel(backbone, fresh.reflex)
    return float_model, plain, plain_backbone, distilled, backbone, data, record


def test_distillation_lowers_the_distance_on_programs_it_never_trained_on(run):
    float_model, plain, _, distilled, _, data, record = run
    fit, check = dist.split_by_program(data)
    assert check and not {data.programs[i] for i in fit} & {data.programs[i] for i in check}
    reference = _predict(float_model, data, check)
    before, after = (
        _distance(_predict(plain, data, check), reference),
        _distance(_predict(distilled, data, check), reference),
    )
    assert after < 0.9 * before, (before, after)
    assert record["method"] == "distill" and record["steps"] == STEPS
    assert record["loss_after"] < record["loss_before"]


def test_overflowing_gradients_skip_the_step_and_halve_the_loss_scale(mlx_float32_dir, run):
    """A loss factor beyond float32's range overflows every gradient: those steps are
    skipped, the factor halves until the gradients are finite, and training goes on."""
    from reflex_mlx.loader import load_with_language_model
    from reflex_mlx.quantize import Recipe

    data = run[5]
    fresh, _, _, backbone = load_with_language_model(mlx_float32_dir)
    mp = pytest.MonkeyPatch()
    mp.setattr(dist, "LOSS_SCALE", 2.0**140)  # the scaled loss and its gradients are inf in float32
    try:
        record = dist.distill(backbone, fresh.reflex, Recipe(**RECIPE), data, steps=24, batch=8)
    finally:
        mp.undo()
    assert record["skipped_steps"] >= 12 and record["loss_scale"] < 2.0**128
    assert record["skipped_steps"] < 24 and np.isfinite(record["train_loss_last"])
    assert record["loss_after"] < record["loss_before"]


def test_only_the_backbone_scales_and_biases_change(run):
    _, plain, plain_backbone, distilled, backbone, _, _ = run
    mine, theirs = dict(tree_flatten(backbone.parameters())), dict(tree_flatten(plain_backbone.parameters()))
    assert mine.keys() == theirs.keys()
    changed = {k for k in mine if not mx.array_equal(mine[k], theirs[k]).item()}
    assert changed and all(k.endswith((".scales", ".biases")) for k in changed), sorted(changed)[:5]
    assert any(k.endswith(".scales") for k in changed) and any(k.endswith(".biases") for k in changed)
    for k in mine:  # the same layout: dtypes and shapes
        assert mine[k].dtype == theirs[k].dtype and mine[k].shape == theirs[k].shape, k
    adapters = dict(tree_flatten(distilled.reflex.parameters()))
    for k, v in tree_flatten(plain.reflex.parameters()):
        assert mx.array_equal(v, adapters[k]).item(), k


def test_the_result_saves_and_loads_as_a_converted_model(run, mlx_float32_dir, tmp_path):
    from mlx_lm.utils import save_config, save_model

    from reflex_core.folder import write_manifest
    from reflex_core.spec import ADAPTERS_FILE, MODEL_FORMAT
    from reflex_mlx.loader import load_model

    _, _, _, distilled, backbone, data, record = run
    out = tmp_path / "distilled"
    shutil.copytree(mlx_float32_dir, out)
    for f in (out / "backbone").glob("model*.safetensors*"):
        f.unlink()
    bconfig = json.loads((out / "backbone" / "config.json").read_text())
    bconfig["quantization"] = record["quantization"]
    save_model(out / "backbone", backbone)  # the converter's own calls
    save_config(bconfig, config_path=out / "backbone" / "config.json")
    weights = dict(tree_flatten(distilled.reflex.parameters()))
    mx.save_safetensors(str(out / ADAPTERS_FILE), weights, metadata={"format": MODEL_FORMAT})
    config = json.loads((out / "config.json").read_text())
    config.update(
        adapter_quantization={"bits": 4, "group_size": 64}, quantization={"bits": 4, "group_size": 64}
    )
    (out / "config.json").write_text(json.dumps(config))
    write_manifest(out)
    loaded, _, _ = load_model(out)
    index = list(range(8))
    assert np.array_equal(np.array(_predict(loaded, data, index)), np.array(_predict(distilled, data, index)))


def test_its_data_hold_no_eval_prompt_and_no_heldout_program(run):
    *_, data, record = run
    held = calib.heldout_words(TINY_HELDOUT)
    forbidden = {bare(task.prompt) for task in load_tasks()}
    assert held and not set(data.programs) & held
    assert not {bare(p) for p in data.prompts} & forbidden
    assert record["samples"] + record["check_samples"] == SAMPLES


def test_bad_options_are_one_line_errors(run):
    *_, data, _ = run
    from reflex_mlx.quantize import Recipe

    with pytest.raises(dist.DistillError, match="quantizes none"):
        dist.distill(None, None, Recipe(backbone_dtype="float32"), data)
    with pytest.raises(dist.DistillError, match="steps must be a positive integer"):
        dist.distill(None, None, Recipe(**RECIPE), data, steps=0)


def test_the_precision_bench_names_the_distill_rows_and_projects_their_cost():
    from bench.precision import parse_spec
    from reflex_core.shapes import RELEASE, SMOL

    recipe, method = parse_spec("distill4-g32/4bit")
    assert method == "distill" and (recipe.bits, recipe.group_size, recipe.adapter_bits) == (4, 32, 4)
    assert calib.DEFAULT_SAMPLES["distill"] == dist.DEFAULT_SAMPLES
    small = calib.projected_seconds("distill", SMOL, dist.DEFAULT_SAMPLES, 96)
    assert 0 < small < calib.projected_seconds("distill", RELEASE, dist.DEFAULT_SAMPLES, 96)
