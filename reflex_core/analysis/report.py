"""The analysis report: JSON, the markdown page and the figures (matplotlib, an optional
extra: without it the JSON and markdown are written and one line says what to install)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..files import write_atomically
from ..spec import NUM_REGS, WINDOW_WORDS
from .length import FAMILIES, PUBLISHED

PLOTS_HINT = "the figures need matplotlib: pip install 'reflex-mlx[analysis]'"
REPORT_FILE = "README.md"  # the page a folder view shows first


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def have_umap() -> bool:
    return importlib.util.find_spec("umap") is not None


def write_json(path: Path, data) -> None:
    write_atomically(path, json.dumps(data, indent=1) + "\n")


PART_LIMIT = 256 << 20  # a part's JSON: every run's words included, far below this


def read_part(folder: Path, part: str, model: str) -> dict | None:
    """A part an earlier run wrote into the folder for the same model, or None (absent,
    unreadable, or another model's)."""
    from ..files import parse_json, read_regular

    path = Path(folder, f"{part}.json")
    if not path.is_file():
        return None
    try:
        data = parse_json(read_regular(path, PART_LIMIT, f"{part}.json"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("model") == model else None


def state_labels() -> list[str]:
    """The 65 state tokens, in the encoder's order."""
    return (
        [f"x{i}" for i in range(NUM_REGS)]
        + ["pc"]
        + [f"pc{i - WINDOW_WORDS // 2:+d}" for i in range(WINDOW_WORDS)]
        + [f"sp{i - WINDOW_WORDS // 2:+d}" for i in range(WINDOW_WORDS)]
    )


STATE_GROUPS = {
    "registers": slice(0, NUM_REGS),
    "pc": slice(NUM_REGS, NUM_REGS + 1),
    "pc window": slice(NUM_REGS + 1, NUM_REGS + 1 + WINDOW_WORDS),
    "sp window": slice(NUM_REGS + 1 + WINDOW_WORDS, NUM_REGS + 1 + 2 * WINDOW_WORDS),
}


def attention_groups(mean: np.ndarray) -> list[dict]:
    """Each adapter's attention summed over the state's parts (registers, pc, the windows)."""
    return [{name: float(row[part].sum()) for name, part in STATE_GROUPS.items()} for row in np.asarray(mean)]


# ------------------------------------------------------------------ figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))
    fig.clear()
    _pyplot().close(fig)


def plot_length(summary: dict, multipliers: Sequence[int], model: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, cells in summary["families"].items():
        xs = [m for m in multipliers if f"x{m}" in cells]
        ys = [100 * cells[f"x{m}"]["pass_rate"] for m in xs]
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1, alpha=0.75, label=name)
    overall = summary["overall"]
    xs = [m for m in multipliers if f"x{m}" in overall]
    ax.plot(
        xs,
        [100 * overall[f"x{m}"]["pass_rate"] for m in xs],
        color="black",
        linewidth=2.5,
        linestyle="--",
        marker="s",
        label="all families",
    )
    for row in PUBLISHED["rows"]:
        pts = [(m, row[f"x{m}"]) for m in (4, 8) if row.get(f"x{m}") is not None]
        ax.scatter([m for m, _ in pts], [100 * v for _, v in pts], marker="x", s=60, color="grey", zorder=5)
        for m, v in pts:
            ax.annotate(row["model"], (m, 100 * v), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(multipliers), [f"x{m}" for m in multipliers])
    ax.set_ylim(-3, 103)
    ax.set_xlabel("size multiplier over the training range (log scale)")
    ax.set_ylabel("tasks passed (%)")
    ax.set_title(f"{model}: pass rate against program size (x = published, other tasks)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_map(coords: np.ndarray, ops: Sequence[str], marked: Sequence[int], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6))
    names = sorted(set(ops))
    cmap = plt.get_cmap("tab20", max(len(names), 1))
    for k, name in enumerate(names):
        idx = [i for i, op in enumerate(ops) if op == name]
        ax.scatter(coords[idx, 0], coords[idx, 1], s=10, color=cmap(k), label=name)
    if len(marked):
        ax.scatter(
            coords[list(marked), 0],
            coords[list(marked), 1],
            s=70,
            facecolors="none",
            edgecolors="black",
            linewidths=1.0,
            label="in a held-out miss",
        )
    ax.set_title(title)
    ax.set_xlabel("axis 1")
    ax.set_ylabel("axis 2")
    ax.legend(fontsize=6, ncol=2, markerscale=1.5, loc="best")
    _save(fig, path)


def plot_ablation(base: int, total: int, rows: Sequence[dict], model: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = [f"adapter {r['adapter']}\n(after layer {r['layer']})" for r in rows]
    drops = [base - r["passed"] for r in rows]
    ax.bar(labels, drops, color="tab:red")
    ax.yaxis.get_major_locator().set_params(integer=True)  # whole tasks
    ax.set_ylabel(f"tasks lost (of {total}; all adapters on: {base})")
    ax.set_title(f"{model}: the eval with one adapter's gates at zero")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_attention(mean: np.ndarray, layers: Sequence[int], model: str, path: Path) -> None:
    plt = _pyplot()
    mean = np.asarray(mean)
    fig, ax = plt.subplots(figsize=(13, 1.2 + 0.45 * len(layers)))
    image = ax.imshow(mean, aspect="auto", cmap="viridis")
    labels = state_labels()
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(
        range(len(layers)), [f"adapter {i} (layer {layer})" for i, layer in enumerate(layers)], fontsize=7
    )
    for edge in (NUM_REGS, NUM_REGS + 1, NUM_REGS + 1 + WINDOW_WORDS):
        ax.axvline(edge - 0.5, color="white", linewidth=1)
    ax.set_xlabel("state token (registers | pc | pc window | sp window)")
    ax.set_title(
        f"{model}: each adapter's attention over the state\n"
        "(last prompt token, mean over heads and eval cycles)"
    )
    fig.colorbar(image, ax=ax, label="attention weight")
    _save(fig, path)


# ------------------------------------------------------------------ markdown
def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def length_markdown(data: dict) -> list[str]:
    mults = data["multipliers"]
    s = data["summary"]
    lines = [
        "## Length generalisation",
        "",
        f"{data['tasks']} tasks: {', '.join(FAMILIES)}, "
        f"{data['per_family']} sizes per family and multiplier. "
        "At x1 the sizes span the range the training corpus holds for the family; at xm the range "
        "(hi·m/2, hi·m]. Each expected result is computed by running the family's reference program on the "
        "machine; a run may take max(400, 2 × the reference program's cycles), and no more than the cycle "
        "cap (--max-cycles). Cells: tasks passed / run "
        "(- where the result no longer fits 32 bits, or the cycle cap left the tasks out).",
        "",
        "| family | " + " | ".join(f"x{m}" for m in mults) + " |",
        "|---|" + "---|" * len(mults),
    ]
    for name in FAMILIES:
        cells = s["families"].get(name, {})
        row = [f"{c['passed']}/{c['tasks']}" if (c := cells.get(f"x{m}")) else "-" for m in mults]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines.append(
        "| **all** | "
        + " | ".join(
            f"**{_pct(c['pass_rate'])}**" if (c := s["overall"].get(f"x{m}")) else "-" for m in mults
        )
        + " |"
    )
    lines += [
        "",
        "Published, for comparison ("
        + PUBLISHED["citation"]
        + "): "
        + "; ".join(
            f"{r['model']} {_pct(r['x4'])} at x4"
            + (f", {_pct(r['x8'])} at x8" if r["x8"] is not None else "")
            for r in PUBLISHED["rows"]
        )
        + ". The tasks differ: there the model carries the state in its own activations as the sequence "
        "grows; in Reflex the prompt stays the same short sentence while the execution grows, and the state "
        "lives in the machine, which the model reads afresh every cycle. What grows for Reflex is the number "
        "of cycles it must keep choosing the right word, and the constants it must write (an immediate "
        "outside the codebook cannot be written at all).",
        "",
        "| multiplier | tasks | reachable (every reference word in the codebook) | median cycle of the first "
        "word off the reference program, failed runs |",
        "|---|---|---|---|",
    ]
    for m in mults:
        if c := s["overall"].get(f"x{m}"):
            lines.append(
                f"| x{m} | {c['tasks']} | {c['reachable']} | "
                f"{'-' if c['median_first_wrong'] is None else c['median_first_wrong']} |"
            )
    if data.get("skipped"):
        left = ", ".join(f"{t['family']} {t['size']} (x{t['multiplier']})" for t in data["skipped_tasks"])
        lines += ["", f"Left out by the cycle cap of {data['max_cycles']}: {data['skipped']} tasks ({left})."]
    if data.get("figure"):
        lines += ["", f"![pass rate against multiplier]({data['figure']})"]
    lines += ["", reading_length(data), ""]
    return lines


def reading_length(data: dict) -> str:
    s = data["summary"]["overall"]
    parts = [f"x{k[1:]}: {_pct(v['pass_rate'])}" for k, v in s.items()]
    reach = {k: v["reachable"] for k, v in s.items()}
    text = "Reading: overall pass rate " + ", ".join(parts) + "."
    out_of_book = [k for k, v in s.items() if reach[k] < v["tasks"]]
    if out_of_book:
        text += (
            " From " + out_of_book[0] + " on, some tasks need an instruction word the codebook does not hold "
            "(a larger immediate than training showed), so those cannot pass whatever the model has learned."
        )
    return text


def codebook_markdown(data: dict) -> list[str]:
    n = data["neighbours"]
    g = data["geometry"]
    lines = [
        "## The codebook",
        "",
        f"{n['rows']} rows of {g['shape'][1]} dimensions.",
        "",
        "**Nearest neighbours** (cosine; [neighbours.md](neighbours.md) lists every row's "
        f"{data['neighbours_listed']}): the nearest neighbour shares the opcode for "
        f"{n['same_op']}/{n['rows']} "
        f"rows ({_pct(n['share_same_op'])}; another row at random: {_pct(n.get('chance_same_op'))}), "
        f"the format for {n['same_format']}/{n['rows']} "
        f"({_pct(n['share_same_format'])}; random {_pct(n.get('chance_same_format'))}), and rd for "
        f"{n['same_rd']}/{n['rows_with_rd']} of the rows where both have one ({_pct(n['share_same_rd'])}; "
        f"random {_pct(n.get('chance_same_rd'))}); opcode, format and rd all three: "
        f"{n['same_op_format_rd']}/{n['rows_with_rd']}.",
        "",
        f"**Geometry**: effective rank {g['effective_rank']:.1f} of {min(g['shape'])} "
        f"(exp of the entropy of the normalised singular values); {g['rank_90_energy']} singular "
        f"directions hold 90 % of the energy, {g['rank_99_energy']} hold 99 %.",
        "",
    ]
    for fig in data.get("figures", []):
        lines += [f"![{fig['title']}]({fig['file']})", ""]
    fa = data["field_algebra"]
    lines += [
        "**Field algebra** (unit(word) − unit(u) + unit(u′) for another pair u → u′ that makes the same "
        "change of one field; does the nearest row, the three inputs left out, equal the word with "
        "that field changed?):",
        "",
        "| field | pairs differing only there | analogies | first-ranked right |",
        "|---|---|---|---|",
    ]
    for name, f in fa["fields"].items():
        lines.append(f"| {name} | {f['pairs']} | {f['analogies']} | {f['hits']} ({_pct(f['share'])}) |")
    ops = sorted(fa["ops"].items(), key=lambda kv: -kv[1]["analogies"])[:12]
    lines += [
        "",
        "By opcode (the 12 with most analogies): "
        + ", ".join(f"{op} {_pct(v['share'])} of {v['analogies']}" for op, v in ops)
        + ".",
        "",
    ]
    if fa["examples"]:
        lines += ["| field | word | − | + | expected | nearest |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {e['field']} | `{e['word']}` | `{e['minus']}` | `{e['plus']}` | "
            f"`{e['expected']}` | `{e['got']}` |"
            for e in fa["examples"]
        ]
        lines.append("")
    c = data.get("confusions")
    if c is None:
        lines += [f"**Confusions**: skipped: {data['confusions_skipped']}", ""]
    else:
        lines += [
            f"**Confusions** on {c['cycles']} held-out cycles ({data['heldout_source']}), teacher-forced: "
            f"per-step top-1 {c['top1']}/{c['cycles']} ({_pct(c['top1_share'])}); of the "
            f"{c['misses']} misses, {c['misses_within_op']} chose a word of the expected opcode. "
            "The release's published finding is that every miss stays within its opcode "
            "(96.0 % top-1 on 500 held-out cycles).",
            "",
            "| opcode | top-1 |",
            "|---|---|",
        ]
        lines += [
            f"| {op} | {v['top1']}/{v['cycles']} ({_pct(v['share'])}) |" for op, v in c["by_op"].items()
        ]
        if c["miss_table"]:
            lines += ["", "| expected opcode | chosen opcode | misses |", "|---|---|---|"]
            lines += [
                f"| {m['expected_op']} | {m['chosen_op']} | {m['count']} |" for m in c["miss_table"][:20]
            ]
        if c["miss_words"]:
            lines += ["", "| expected word | chosen word | misses |", "|---|---|---|"]
            lines += [f"| `{m['expected']}` | `{m['chosen']}` | {m['count']} |" for m in c["miss_words"][:15]]
        lines.append("")
    return lines


def adapters_markdown(data: dict) -> list[str]:
    lines = [
        "## The adapters",
        "",
        "| adapter | after layer | tanh(attn gate) | tanh(mlp gate) | eval passed with it off | lost |",
        "|---|---|---|---|---|---|",
    ]
    base, total = data["eval"]["passed"], data["eval"]["total"]
    for g, a in zip(data["gates"], data["ablation"]):
        lines.append(
            f"| {a['adapter']} | {g['layer']} | {g['attn_gate']:+.3f} | {g['mlp_gate']:+.3f} | "
            f"{a['passed']}/{total} | {base - a['passed']} |"
        )
    cap = "" if data["max_cycles"] is None else f", under a cap of {data['max_cycles']} cycles a run"
    if data.get("eval_tasks"):
        cap += f", on the tasks {', '.join(data['eval_tasks'])} only"
    lines += [
        "",
        f"With every adapter on, the eval passes {base}/{total}{cap} (the runner here is the "
        "uncompiled one, so that a gate set to zero takes effect).",
        "",
        "Attention to the parts of the state (last prompt token, mean over heads and "
        f"{data['attention_cycles']} eval cycles):",
        "",
        "| adapter | " + " | ".join(STATE_GROUPS) + " |",
        "|---|" + "---|" * len(STATE_GROUPS),
    ]
    for i, row in enumerate(data["attention_groups"]):
        lines.append(f"| {i} | " + " | ".join(f"{100 * row[k]:.1f} %" for k in STATE_GROUPS) + " |")
    lines.append("")
    for fig in data.get("figures", []):
        lines += [f"![{fig['title']}]({fig['file']})", ""]
    lines += [reading_adapters(data), ""]
    return lines


def reading_adapters(data: dict) -> str:
    base = data["eval"]["passed"]
    worst = max(data["ablation"], key=lambda a: base - a["passed"])
    share = {k: 1 / 65 * (s.stop - s.start) for k, s in STATE_GROUPS.items()}
    parts = []
    for i, row in enumerate(data["attention_groups"]):
        top = max(row, key=lambda k: row[k] / share[k])
        parts.append(
            f"adapter {i} reads the {top} most for its size ({100 * row[top]:.0f} % of its attention)"
        )
    return (
        f"Reading: switching off adapter {worst['adapter']} (after layer {worst['layer']}) costs the most, "
        f"{base - worst['passed']} tasks; " + "; ".join(parts) + "."
    )


def page(model: str, parts: dict) -> str:
    made: dict[str, list[str]] = {}
    for name, data in parts.items():
        made.setdefault(data.get("command", "?"), []).append(name)
    by = "; ".join(f"`{command}` ({', '.join(names)})" for command, names in made.items())
    lines = [
        f"# What {model} learned",
        "",
        f"Made by {by}. docs/analysis.md explains each part; the JSON beside this page holds every number.",
        "",
    ]
    if "length" in parts:
        lines += length_markdown(parts["length"])
    if "codebook" in parts:
        lines += codebook_markdown(parts["codebook"])
    if "adapters" in parts:
        lines += adapters_markdown(parts["adapters"])
    return "\n".join(lines).rstrip() + "\n"


def neighbours_page(model: str, table: list[dict]) -> str:
    k = len(table[0]["neighbours"]) if table else 0
    lines = [
        f"# {model}: each codebook row's {k} nearest rows (cosine)",
        "",
        "| row | word | " + " | ".join(f"{i + 1}" for i in range(k)) + " |",
        "|---|---|" + "---|" * k,
    ]
    for row in table:
        cells = [f"`{n['asm']}` {n['cosine']:.2f}" for n in row["neighbours"]]
        lines.append(f"| {row['row']} | `{row['asm']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
