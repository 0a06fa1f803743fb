"""--fit: the measured recipes (held to the precision table), a Mac's size read and
refused, the choice at the released 7B shape (counted from shapes alone), and a
conversion that records what it chose and why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from convert.convert import main
from convert.recipes import REGISTRY, Measured, RecipeError, choose, parse_mac
from reflex_core.shapes import RELEASE, checkpoint_config, decoder_config
from reflex_core.spec import MAC_MEMORY_GB, ReflexArgs, mac_working_set
from reflex_mlx.quantize import DEFAULT_RECIPE, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "results" / "precision_reflex-smol.json"


@pytest.fixture(scope="module")
def release():
    """The released 7B's backbone config and Reflex args: shapes only, no weights."""
    return decoder_config(RELEASE), ReflexArgs.from_config(checkpoint_config(RELEASE), RELEASE.layers)


def test_every_entry_is_its_precision_table_row():
    rows = {row["recipe"]: row for row in json.loads(TABLE.read_text())["rows"]}
    assert sorted(entry.row for entry in REGISTRY) == sorted(rows), "one entry per measured row"
    for entry in REGISTRY:
        row = rows[entry.row]
        lock, free = row["lockstep"], row["free_running"]
        assert (entry.same_word, entry.cycles) == (lock["agree"], lock["cycles"]), entry.row
        assert (entry.runs_identical, entry.same_pass, entry.runs) == (
            free["identical"],
            free["same_pass"],
            free["runs"],
        ), entry.row
        assert entry.calibration == (row.get("calibration") or {}).get("method"), entry.row
        assert entry.recipe.adapter_name == row["adapters"], entry.row
        if entry.calibration is None:
            assert entry.recipe == parse_recipe(entry.row)
            assert entry.recipe.backbone_name == row["backbone"]
        else:  # "gptq 4-bit g64", "sens 4-bit g64 (+6-bit)": the method over the plain layout
            assert row["backbone"].startswith(f"{entry.calibration} {entry.recipe.backbone_name}"), entry.row
            assert entry.recipe.backbone_name.endswith(f"g{entry.recipe.group_size}")


@pytest.mark.parametrize(
    "text, gb",
    [("8GB", 8), ("8gb", 8), ("8", 8), ("16GB", 16), (" 24 GB ", 24), ("32G", 32), ("128gb", 128)],
)
def test_mac_sizes_are_read_as_people_write_them(text, gb):
    assert parse_mac(text) == gb


@pytest.mark.parametrize("text", ["7GB", "8TB", "0", "", "eight", "8.0GB", "-8", "1" * 50])
def test_other_sizes_are_refused_in_one_line(text):
    with pytest.raises(ValueError) as err:
        parse_mac(text)
    assert "\n" not in str(err.value) and "8GB, 16GB" in str(err.value)


def test_the_working_set_is_two_thirds_then_three_quarters():
    assert mac_working_set(8) == pytest.approx(5.333e9, rel=1e-3)  # docs/precision.md's "about 5.3 GB"
    assert mac_working_set(32) == pytest.approx(32e9 * 2 / 3)
    assert mac_working_set(64) == pytest.approx(48e9)
    assert list(MAC_MEMORY_GB) == sorted(MAC_MEMORY_GB)


def test_the_choice_at_the_released_shape(release):
    config, args = release
    small = choose(8, config, args, corpus=ROOT)
    # With calibration data: GPTQ 4-bit g64 + 4-bit adapters, the most runs kept as the
    # reference's among the rows under 5.33 GB (39/41 same pass), text head and all.
    assert small.entry.row == "gptq4-g64/4bit" and small.entry.calibration == "gptq"
    assert small.entry.recipe == parse_recipe("4bit-g64/4bit") and small.text_head
    assert small.resident <= mac_working_set(8) and small.corpus == ROOT
    better, need = small.better
    assert better.row == "6bit-g64/8bit" and need > mac_working_set(8)
    line = small.line()
    assert "\n" not in line and "4-bit g64 backbone + 4-bit adapters, calibrated by gptq" in line
    assert "99.68 %" in line and "39/41 same pass" in line and "next better" in line
    assert small.record()["row"] == "gptq4-g64/4bit" and small.record()["calibration"] == "gptq"
    # Without it: the best plain row, mlx-lm's mixed_4_6, which fits once the untied
    # text head (4-bit: 0.4 GiB) is left out; the calibrated rows that fit are named, not
    # offered as "next better".
    plain = choose(8, config, args)
    assert plain.entry.row == "mixed_4_6-g64/4bit" and plain.passed_over.row == "gptq4-g64/4bit"
    assert not plain.text_head and plain.head_bytes > 300 << 20
    assert plain.resident <= mac_working_set(8) < plain.resident + plain.head_bytes
    assert plain.better[0].calibration is None and plain.better[1] > mac_working_set(8)
    line = plain.line()
    assert "without the untied text head" in line and "needs calibration data" in line
    assert plain.record()["text_head_dropped"] is True and plain.record()["reason"] == line
    for gb in (16, 24):
        fit = choose(gb, config, args, corpus=ROOT)
        assert fit.entry.recipe == DEFAULT_RECIPE and fit.text_head and fit.better is None, gb
        assert 8.6 * 2**30 < fit.resident < 8.8 * 2**30  # the precision table's 8.70 GiB


def test_a_raised_layer_calibration_is_counted_at_its_bits(release):
    config, args = release
    sizes = {e.row: choose(128, config, args, entries=(e,), corpus=ROOT).resident for e in REGISTRY
             if e.row in ("4bit-g64/4bit", "sens4_6-g64/4bit")}  # fmt: skip
    # The precision table's 7B column: 4.64 and 4.86 GiB.
    assert 0.18 * 2**30 < sizes["sens4_6-g64/4bit"] - sizes["4bit-g64/4bit"] < 0.26 * 2**30


def test_a_calibrated_entry_without_data_falls_back_to_the_best_plain_one(release):
    config, args = release
    plain = next(e for e in REGISTRY if e.row == "mixed_4_6-g64/4bit")  # the best plain row that fits
    calibrated = Measured("4bit-g32/4bit+test", plain.recipe, 2188, 2188, 41, 41, 41, calibration="test")
    fit = choose(8, config, args, entries=(*REGISTRY, calibrated), corpus=None)
    assert fit.entry is plain and fit.passed_over is calibrated
    assert "needs calibration data" in fit.line()
    with pytest.raises(RecipeError, match="calibrated by test, which this converter does not know"):
        choose(8, config, args, entries=(*REGISTRY, calibrated), corpus=ROOT)  # data, but no such method


def test_a_size_nothing_fits_is_refused_in_one_line(release):
    config, args = release
    bigger = decoder_config(RELEASE.with_(layers=4 * RELEASE.layers))  # ~18 GiB at 4 bits
    bigger_args = ReflexArgs.from_config(checkpoint_config(RELEASE), 4 * RELEASE.layers)
    smallest = tuple(e for e in REGISTRY if e.row in ("4bit-g64/4bit", "mixed_4_6-g64/4bit"))
    with pytest.raises(RecipeError) as err:
        choose(8, bigger, bigger_args, entries=smallest)
    assert "\n" not in str(err.value) and "no measured recipe fits" in str(err.value)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--fit", "8GB", "--bits", "4"], "--fit chooses the recipe and its memory limit: drop --bits"),
        (["--fit", "16GB", "--no-quantize"], "drop --no-quantize"),
        (["--fit", "8GB", "--adapter-bits", "4", "--recipe", "mixed_4_6"], "drop --recipe, --adapter-bits"),
        (["--fit", "7GB"], "'7GB' is not a Mac's memory size"),
        (["--calibration-data", "/nonexistent"], "--calibration-data is read only by a calibrated recipe"),
    ],
)
def test_fit_with_recipe_options_is_a_usage_error(fixture_dir, tmp_path, options, message):
    out = tmp_path / "out"
    args = ["--checkpoint", str(fixture_dir / "reflex.pt"), "--backbone", str(fixture_dir / "backbone")]
    result = CliRunner().invoke(main, [*args, "--out", str(out), *options])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_fit_conversion_records_its_choice(fixture_dir, tmp_path):
    out = tmp_path / "mac8"
    proc = subprocess.run(
        [sys.executable, "-m", "convert", "--checkpoint", str(fixture_dir / "reflex.pt"),
         "--backbone", str(fixture_dir / "backbone"), "--out", str(out), "--fit", "8gb"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    fit = config["fit"]
    # The fixture is tiny: every row fits, and the best agreement, smallest first, is the default.
    assert fit["mac_memory_gb"] == 8 and fit["row"] == "8bit-g64/8bit" and fit["calibration"] is None
    assert config["recipe"] == DEFAULT_RECIPE.describe()
    assert fit["reason"].startswith("--fit 8GB: 8-bit g64 backbone + 8-bit adapters")
    assert fit["reason"] in proc.stderr and fit["resident_bytes"] == config["memory"]["resident_bytes"]
    assert f"- Chosen for the Mac it fits: {fit['reason']}" in (out / "README.md").read_text()
