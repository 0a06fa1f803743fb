"""`reflex-mlx analyze`: what a converted model learned (length generalisation, the
codebook, the adapters), as JSON, figures and one markdown page in a folder. A thin layer
over reflex_core.analysis (the statistics) and reflex_mlx.analysis (the MLX model's parts);
docs/analysis.md explains each number."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click
import numpy as np

from reflex_core.errors import one_line
from reflex_core.spec import EVAL_MAX_CYCLES

from .common import checked_path, load, model_option, peak_line, say

PARTS = ("length", "codebook", "adapters")
MAX_MULTIPLIER = 64  # x64 of sum 1..100 is a 25,000-cycle reference program, run to make the task

out_option = click.option(
    "--out", required=True, type=str, help="The folder to write the report to (made if absent)."
)
length_options = [
    click.option(
        "--multipliers",
        default="1,2,4,8,16,32",
        show_default=True,
        help="Size multipliers over the training range, comma-separated.",
    ),
    click.option(
        "--per-family",
        default=2,
        show_default=True,
        type=click.IntRange(1, 50),
        help="Sizes per family and multiplier.",
    ),
    click.option(
        "--families", default=None, help="Only these families, comma-separated (default: all eight)."
    ),
]
cap_option = click.option(
    "--max-cycles",
    default=2000,
    show_default=True,
    type=click.IntRange(1, None),
    help="Bound the work: no run takes more cycles than this (length tasks whose reference program "
    f"needs more are left out and listed; the eval runs under min(this, {EVAL_MAX_CYCLES}) cycles).",
)
eval_option = click.option(
    "--eval-task",
    "eval_tasks",
    multiple=True,
    help="Bound the work: only the eval task with this tag (repeat for more; default: all 41 runs).",
)
codebook_options = [
    click.option(
        "--heldout",
        default=None,
        type=str,
        help="A heldout.json of held-out programs for the confusion table "
        "(default: the model folder's, if it has one).",
    ),
    click.option(
        "--heldout-cycles",
        default=500,
        show_default=True,
        type=click.IntRange(1, None),
        help="Held-out cycles scored (a fixed sample).",
    ),
]


def _apply(options):
    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


@click.group(
    name="analyze", help="What a converted model learned: length generalisation, the codebook, the adapters."
)
def command() -> None:
    pass


@command.command(name="length", help="Pass rate on task families at x1..x32 of their training sizes.")
@model_option
@out_option
@_apply(length_options)
@cap_option
def length(model, out, multipliers, per_family, families, max_cycles):
    _analyze(("length",), model, out, locals())


@command.command(
    name="codebook", help="Neighbours, geometry, map, field algebra and held-out confusions of the codebook."
)
@model_option
@out_option
@_apply(codebook_options)
def codebook(model, out, heldout, heldout_cycles):
    _analyze(("codebook",), model, out, locals())


@command.command(
    name="adapters", help="Gate values, single-adapter ablation on the eval, attention over the state."
)
@model_option
@out_option
@cap_option
@eval_option
def adapters(model, out, max_cycles, eval_tasks):
    _analyze(("adapters",), model, out, locals())


@command.command(name="all", help="length, codebook and adapters, with one markdown page linking them.")
@model_option
@out_option
@_apply(length_options)
@cap_option
@eval_option
@_apply(codebook_options)
def all_parts(model, out, multipliers, per_family, families, max_cycles, eval_tasks, heldout, heldout_cycles):
    _analyze(PARTS, model, out, locals())


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.ClickException(
            f"--{what} takes whole numbers separated by commas, not {one_line(text)!r}"
        ) from None
    if not values or min(values) < 1 or max(values) > MAX_MULTIPLIER:
        raise click.ClickException(f"--{what} takes whole numbers from 1 to {MAX_MULTIPLIER}")
    return sorted(set(values))


def _out_folder(out: str) -> Path:
    folder = checked_path(out, "output folder")
    if folder.exists() and not folder.is_dir():
        raise click.ClickException(f"--out '{one_line(out)}' is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise click.ClickException(
            f"cannot make the output folder '{one_line(out)}': {err.strerror}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise click.ClickException(f"the output folder '{one_line(out)}' is not writable")
    return folder


def _analyze(parts: tuple[str, ...], model: str | None, out: str, options: dict) -> None:
    from reflex_core.analysis import length as ln
    from reflex_core.analysis import report

    multipliers = families = heldout_file = None
    if "length" in parts:
        multipliers = _ints(options["multipliers"], "multipliers")
        if options["families"]:
            families = [f.strip() for f in options["families"].split(",") if f.strip()]
            unknown = [f for f in families if f not in ln.FAMILIES]
            if unknown or not families:
                raise click.ClickException(
                    f"unknown family {one_line(unknown[0] if unknown else options['families'])!r}: "
                    f"{', '.join(ln.FAMILIES)}"
                )
    eval_tasks = None
    if "adapters" in parts and options["eval_tasks"]:
        from reflex_core.evaluation import load_tasks

        tags = set(options["eval_tasks"])
        eval_tasks = [t for t in load_tasks() if t.tag in tags]
        unknown = sorted(tags - {t.tag for t in eval_tasks})
        if unknown:
            raise click.ClickException(f"no eval task tagged {one_line(unknown[0])!r}")
    if "codebook" in parts and options["heldout"] is not None:
        heldout_file = checked_path(options["heldout"], "heldout file")
        if not heldout_file.is_file():
            raise click.ClickException(f"no heldout file at '{one_line(options['heldout'])}'")
    args = sys.argv[sys.argv.index("analyze") + 1 :] if "analyze" in sys.argv else list(parts)
    options = {**options, "command": "reflex-mlx analyze " + shlex.join(args)}  # recorded in each part
    folder = _out_folder(out)
    loaded = load("mlx", model)
    name = Path(loaded.source).name
    plots = report.have_matplotlib()
    results = {}
    if "length" in parts:
        results["length"] = _length(loaded, folder, name, multipliers, options, families, plots)
    if "codebook" in parts:
        results["codebook"] = _codebook(loaded, folder, name, heldout_file, options, plots)
    if "adapters" in parts:
        results["adapters"] = _adapters(loaded, folder, name, options, eval_tasks, plots)
    for part in PARTS:  # parts of this model made by an earlier run into the same folder stay on the page
        if part not in results and (earlier := report.read_part(folder, part, name)) is not None:
            results[part] = earlier
    report.write_atomically(folder / report.REPORT_FILE, report.page(name, results))
    click.echo(f"wrote {folder / report.REPORT_FILE}")
    if not plots:
        say(report.PLOTS_HINT)
    peak_line(loaded)


def _length(loaded, folder, name, multipliers, options, families, plots) -> dict:
    from reflex_core.analysis import report
    from reflex_core.analysis.parts import length_part
    from reflex_core.predict import BatchPredictor
    from reflex_mlx import analysis

    words = analysis.codebook(analysis.reflex_model(loaded.runner))[1]
    data = length_part(
        lambda prompts: BatchPredictor(loaded.runner, loaded.tokenizer, prompts, loaded.config),
        words,
        multipliers,
        options["per_family"],
        families,
        options["max_cycles"],
        progress=True,
    )
    if plots:
        report.plot_length(data["summary"], multipliers, name, folder / "length.png")
        data["figure"] = "length.png"
    data["model"], data["command"] = name, options["command"]
    report.write_json(folder / "length.json", data)
    click.echo(report.reading_length(data))
    return data


def _codebook(loaded, folder, name, heldout_file, options, plots) -> dict:
    from reflex_core.analysis import report
    from reflex_core.analysis.parts import codebook_part, missed_rows
    from reflex_core.errors import ReflexError
    from reflex_core.training import (
        HELDOUT_FILE,
        heldout_cycles,
        make_pairs,
        predict_pairs,
        read_heldout_file,
    )
    from reflex_mlx import analysis

    rows, words = analysis.codebook(analysis.reflex_model(loaded.runner))
    if heldout_file is None and Path(loaded.source, HELDOUT_FILE).is_file():
        heldout_file = Path(loaded.source, HELDOUT_FILE)
    heldout, source = None, f"no {HELDOUT_FILE} in the model folder and no --heldout given"
    if heldout_file is not None:
        entries = read_heldout_file(heldout_file, ReflexError)
        pairs = make_pairs(entries, heldout_cycles(entries), max_samples=options["heldout_cycles"])
        chosen = predict_pairs(loaded.runner, loaded.tokenizer, loaded.config, pairs)
        heldout = ([p.word for p in pairs], chosen)
        source = f"{len(entries)} programs of {heldout_file.name}, {len(pairs)} cycles sampled"
    data = codebook_part(rows, words, heldout, source)
    data["figures"] = []
    if plots:
        coords = np.asarray(data["pca"]["coords"])
        marked = missed_rows(data)
        v = data["pca"]["explained_variance"]
        title = (
            f"{name}: codebook rows, PCA of the unit rows "
            f"({100 * v[0]:.0f} % + {100 * v[1]:.0f} % of variance)"
        )
        report.plot_map(coords, data["ops"], marked, title, folder / "codebook_pca.png")
        data["figures"].append({"file": "codebook_pca.png", "title": title})
        if report.have_umap():
            import umap

            embedded = umap.UMAP(n_components=2, metric="cosine", random_state=0).fit_transform(rows)
            title = f"{name}: codebook rows, UMAP (cosine)"
            report.plot_map(np.asarray(embedded), data["ops"], marked, title, folder / "codebook_umap.png")
            data["figures"].append({"file": "codebook_umap.png", "title": title})
    data["model"], data["command"] = name, options["command"]
    report.write_json(folder / "codebook.json", data)
    report.write_atomically(folder / "neighbours.md", report.neighbours_page(name, data["neighbour_table"]))
    n = data["neighbours"]
    click.echo(
        f"codebook: nearest neighbour shares the opcode for {n['same_op']}/{n['rows']} rows; "
        f"effective rank {data['geometry']['effective_rank']:.1f}"
    )
    return data


def _adapters(loaded, folder, name, options, tasks, plots) -> dict:
    from reflex_core.analysis import report
    from reflex_core.analysis.parts import adapters_part
    from reflex_core.evaluation import evaluate
    from reflex_core.predict import BatchPredictor
    from reflex_mlx import analysis

    model = analysis.reflex_model(loaded.runner)
    runner, recorder = analysis.recording_runner(model)
    cap = min(options["max_cycles"], EVAL_MAX_CYCLES)

    def run_eval(off: int | None) -> dict:
        recorder.recording = off is None
        make = lambda prompts: BatchPredictor(runner, loaded.tokenizer, prompts, loaded.config)
        if off is None:
            return evaluate(make_batch_predictor=make, max_cycles=cap, progress=True, tasks=tasks)
        with analysis.gates_zeroed(model, off):
            return evaluate(make_batch_predictor=make, max_cycles=cap, progress=True, tasks=tasks)

    data = adapters_part(
        analysis.gates(model),
        run_eval,
        lambda: (recorder.mean(), recorder.counts),
        None if cap == EVAL_MAX_CYCLES else cap,
    )
    data["eval_tasks"] = None if tasks is None else [t.tag for t in tasks]
    data["figures"] = []
    if plots:
        report.plot_ablation(
            data["eval"]["passed"], data["eval"]["total"], data["ablation"], name, folder / "ablation.png"
        )
        data["figures"].append({"file": "ablation.png", "title": "tasks lost with one adapter off"})
        layers = [g["layer"] for g in data["gates"]]
        report.plot_attention(np.asarray(data["attention"]), layers, name, folder / "attention.png")
        data["figures"].append({"file": "attention.png", "title": "attention over the 65 state tokens"})
    data["model"], data["command"] = name, options["command"]
    report.write_json(folder / "adapters.json", data)
    click.echo(report.reading_adapters(data))
    return data
