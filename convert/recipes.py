"""The measured recipes, and `--fit`: the best of them a given Mac can hold.

`REGISTRY` lists every recipe whose quality was measured on reflex-smol
(docs/precision.md; the numbers are docs/results/precision_reflex-smol.json's,
and tests/mlx/test_fit.py holds each entry to its row). An entry is a
`reflex_mlx.quantize.Recipe`, its measured agreement with the reference, and
the name of a calibration method when its values are chosen on data (None for
a plain quantization). Adding a measured recipe is adding an entry here and its
row to the table.

`choose` ranks the entries by quality (the reference's pass set kept, then the
runs that pass or fail as the reference's, the runs identical, same-word
agreement, then the smaller) and takes the first whose resident size
fits the Mac's working set (`reflex_core.spec.mac_working_set`). Sizes are
counted at the checkpoint's own shape from a lazily built model (array shapes
only, nothing allocated). A Reflex load never holds the backbone's untied text
head (`lm_head`), so an entry that fits only without it is taken with the head
dropped from the folder, and the line says so.

A calibrated entry runs its method from `convert/calibrate.py` inside the
conversion (see `calibrate`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from reflex_core.spec import MAC_MEMORY_GB, mac_working_set
from reflex_core.timing import human_bytes
from reflex_mlx.quantize import Recipe, parse_recipe


class RecipeError(Exception):
    """A one-line reason no recipe can be chosen or calibrated."""


@dataclass(frozen=True)
class Measured:
    """A recipe and what it kept of the reference on reflex-smol's 41-task eval."""

    row: str  # the precision table's "recipe" key
    recipe: Recipe
    same_word: int  # lock-step cycles with the reference's word
    cycles: int
    runs_identical: int
    same_pass: int  # runs that pass or fail as the reference's
    runs: int
    calibration: str | None = None  # a convert/calibrate.py method; None: plain quantization
    extra_bits: float = 0.0  # bits per quantized weight the method adds to the layout (sens)

    @property
    def same_word_rate(self) -> float:
        return self.same_word / self.cycles

    @property
    def same_pass_set(self) -> bool:
        return self.same_pass == self.runs

    @property
    def quality(self) -> tuple[bool, int, int, float]:
        """What ranks entries before their size: the reference's pass set kept, then
        the runs that pass or fail as its, the runs identical, and same-word agreement."""
        return self.same_pass_set, self.same_pass, self.runs_identical, self.same_word_rate

    @property
    def name(self) -> str:
        r = self.recipe
        via = f", calibrated by {self.calibration}" if self.calibration else ""
        return f"{r.backbone_name} backbone + {r.adapter_name} adapters{via}"

    def quality_line(self) -> str:
        return (
            f"{self.same_word}/{self.cycles} same word ({100 * self.same_word_rate:.2f} %), "
            f"{self.runs_identical}/{self.runs} runs identical, {self.same_pass}/{self.runs} same pass"
        )


def _plain(spec: str, same_word: int, cycles: int, identical: int, same_pass: int, runs: int) -> Measured:
    return Measured(spec, parse_recipe(spec), same_word, cycles, identical, same_pass, runs)


def _calibrated(spec: str, same_word: int, cycles: int, ident: int, same_pass: int, runs: int) -> Measured:
    """A row `METHOD<bits>-g<group>/ADAPTERS` (bench/precision.py's spelling): the
    plain layout of those bits, its values chosen by METHOD on corpus data."""
    from .calibrate import SENS_EXTRA_BPW

    match = re.fullmatch(r"([a-z]+)(\d)(?:_\d)?-g(\d+)/(.+)", spec)
    method, bits, group, adapters = match.groups()
    recipe = parse_recipe(f"{bits}bit-g{group}/{adapters}")
    extra = SENS_EXTRA_BPW if method == "sens" else 0.0
    return Measured(spec, recipe, same_word, cycles, ident, same_pass, runs, method, extra)


# docs/results/precision_reflex-smol.json, row by row (float16 before bfloat16 where
# they tie: an M1 has no bfloat16).
REGISTRY: tuple[Measured, ...] = (
    _plain("float16/float32", 2188, 2188, 41, 41, 41),
    _plain("bfloat16/float32", 2187, 2188, 41, 41, 41),
    _plain("8bit-g64/float32", 2188, 2188, 41, 41, 41),
    _plain("6bit-g64/float32", 2185, 2188, 39, 39, 41),
    _plain("4bit-g64/float32", 2165, 2188, 35, 35, 41),
    _plain("4bit-g32/float32", 2181, 2188, 37, 37, 41),
    _plain("mixed_4_6-g64/float32", 2170, 2188, 37, 37, 41),
    _plain("4bit-g64/float16", 2165, 2188, 35, 35, 41),
    _plain("4bit-g64/bfloat16", 2165, 2188, 35, 35, 41),
    _plain("4bit-g64/8bit", 2165, 2188, 35, 35, 41),
    _plain("4bit-g32/bfloat16", 2181, 2188, 37, 37, 41),
    _plain("4bit-g32/8bit", 2181, 2188, 37, 37, 41),
    _plain("float16/float16", 2188, 2188, 41, 41, 41),
    _plain("float16/8bit", 2188, 2188, 41, 41, 41),
    _plain("mixed_4_6-g64/bfloat16", 2170, 2188, 37, 37, 41),
    _plain("mixed_4_6-g64/8bit", 2170, 2188, 37, 37, 41),
    _plain("8bit-g64/bfloat16", 2188, 2188, 41, 41, 41),
    _plain("8bit-g64/8bit", 2188, 2188, 41, 41, 41),
    _plain("6bit-g64/bfloat16", 2184, 2188, 38, 38, 41),
    _plain("6bit-g64/8bit", 2185, 2188, 39, 39, 41),
    _plain("4bit-g64/4bit", 2166, 2188, 36, 36, 41),
    _plain("4bit-g32/4bit", 2179, 2188, 35, 35, 41),
    _plain("float16/4bit", 2186, 2188, 40, 40, 41),
    _plain("bfloat16/bfloat16", 2187, 2188, 41, 41, 41),
    _plain("mixed_4_6-g64/4bit", 2169, 2188, 37, 37, 41),
    _calibrated("gptq4-g64/4bit", 2181, 2188, 38, 39, 41),
    _calibrated("awq4-g64/4bit", 2169, 2188, 36, 36, 41),
    _calibrated("gptq4-g32/4bit", 2181, 2188, 37, 38, 41),
    _calibrated("sens4_6-g64/4bit", 2169, 2188, 36, 36, 41),
    _calibrated("dwq4-g64/4bit", 2170, 2188, 37, 37, 41),
    _calibrated("awq4-g32/4bit", 2181, 2188, 37, 38, 41),
    _calibrated("dwq4-g32/4bit", 2182, 2188, 37, 37, 41),
    _calibrated("distill4-g64/4bit", 2166, 2188, 36, 36, 41),
    _calibrated("distill4-g32/4bit", 2179, 2188, 35, 35, 41),
)


SAME_WORD_FLOOR = 0.995  # docs/precision.md's rule for the default


def default_entry(entries: tuple[Measured, ...] = REGISTRY) -> Measured:
    """The converter's default by docs/precision.md's rule: the smallest plain
    entry at the released 7B shape whose same-word agreement is >= SAME_WORD_FLOOR
    and whose runs pass and fail as the reference's (no calibration: the default
    conversion needs no corpus)."""
    from reflex_core.shapes import RELEASE, checkpoint_config, decoder_config
    from reflex_core.spec import ReflexArgs

    config = decoder_config(RELEASE)
    args = ReflexArgs.from_config(checkpoint_config(RELEASE), RELEASE.layers)
    kept = [
        e
        for e in entries
        if e.calibration is None and e.same_pass_set and e.same_word_rate >= SAME_WORD_FLOOR
    ]
    return min(kept, key=lambda e: recipe_sizes(config, args, e.recipe, _SIZES.setdefault("release", {}))[0])


def parse_mac(text: str) -> int:
    """A Mac's memory size as people write it ("8GB", "8gb", "8", "16 GB") -> 8, 16;
    ValueError in one line for a size no Mac is sold with."""
    match = re.fullmatch(r"\s*(\d{1,4})\s*(?:gb?)?\s*", str(text)[:20], re.IGNORECASE)
    if match is None or int(match[1]) not in MAC_MEMORY_GB:
        sizes = ", ".join(f"{gb}GB" for gb in MAC_MEMORY_GB)
        raise ValueError(f"{str(text)[:20]!r} is not a Mac's memory size: one of {sizes}")
    return int(match[1])


def recipe_sizes(
    backbone_config: dict, args, recipe: Recipe, _cache: dict | None = None, extra_bits: float = 0.0
) -> tuple[int, int]:
    """(resident bytes of a Reflex model under `recipe` with the backbone's text head,
    the untied head's bytes or 0), counted on a lazily built model of this shape
    (reflex_mlx.quantize.resident_bytes; nothing allocated). `extra_bits` per
    quantized backbone weight are added (a calibration that raises some layers)."""
    cache = {} if _cache is None else _cache
    b_key = ("backbone", recipe.backbone_dtype, recipe.bits, recipe.group_size, recipe.mixed)
    a_key = ("adapters", recipe.adapter_dtype, recipe.adapter_bits)
    if b_key not in cache:
        import mlx.nn as nn
        from mlx_lm.utils import _get_classes

        from reflex_mlx.quantize import nbytes, quantize_backbone

        model_class, args_class = _get_classes(backbone_config)
        model = model_class(args_class.from_dict(backbone_config))
        quantize_backbone(model, recipe)
        head = nbytes(model["lm_head"]) if "lm_head" in model else 0
        quantized = sum(
            m.weight.size * 32 // m.bits
            for _, m in model.named_modules()
            if isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding)
        )
        cache[b_key] = (nbytes(model), head, quantized)
    if a_key not in cache:
        from reflex_mlx.model import Reflex
        from reflex_mlx.quantize import nbytes, quantize_adapters

        reflex = Reflex(args)
        quantize_adapters(reflex, recipe)
        cache[a_key] = nbytes(reflex)
    (backbone, head, quantized), adapters = cache[b_key], cache[a_key]
    return backbone + adapters + int(extra_bits * quantized / 8), head


_SIZES: dict = {}  # counted sizes by shape: a shape is counted once per process


def mac_for(size: float) -> int | None:
    """The smallest Mac whose working set holds `size` bytes."""
    return next((gb for gb in MAC_MEMORY_GB if size <= mac_working_set(gb)), None)


@dataclass
class Fit:
    """The recipe --fit chose, and why."""

    mac_gb: int
    entry: Measured
    resident: int  # bytes after a Reflex load (text head kept only when it fits too)
    text_head: bool  # False: the untied lm_head is dropped to fit
    head_bytes: int
    better: tuple[Measured, int] | None  # the next better entry and the bytes it needs
    passed_over: Measured | None = None  # a calibrated entry not taken: no calibration data
    corpus: Path | None = None  # what a calibrated entry calibrates on

    @property
    def working_set(self) -> float:
        return mac_working_set(self.mac_gb)

    def line(self) -> str:
        """One line: which recipe, its size against the working set, its measured
        agreement, and what the next better recipe would need."""
        head = ""
        if not self.text_head and self.head_bytes:
            head = (
                f" without the untied text head (lm_head: {human_bytes(self.head_bytes)}; "
                "Reflex never reads it, the demo's text mode does)"
            )
        parts = [
            f"--fit {self.mac_gb}GB: {self.entry.name}{head}: {human_bytes(self.resident)} resident "
            f"of the {human_bytes(self.working_set)} ({self.working_set / 1e9:.2f} GB) working set; "
            f"on reflex-smol {self.entry.quality_line()}"
        ]
        if self.passed_over is not None:
            parts.append(
                f"{self.passed_over.name} would agree better but needs calibration data "
                "(--calibration-data DIR, or $REFLEX_CORPUS)"
            )
        if self.better is None:
            parts.append("no measured recipe agrees better")
        else:
            entry, need = self.better
            mac = mac_for(need)
            parts.append(
                f"the next better, {entry.name} ({100 * entry.same_word_rate:.2f} % same word), needs "
                f"{human_bytes(need)}" + (f" ({mac} GB Mac)" if mac else "")
            )
        return "; ".join(parts)

    def record(self) -> dict:
        """What config.json keeps of the choice."""
        return {
            "mac_memory_gb": self.mac_gb,
            "working_set_bytes": int(self.working_set),
            "resident_bytes": self.resident,
            "row": self.entry.row,
            "calibration": self.entry.calibration,
            "text_head_dropped": not self.text_head and bool(self.head_bytes),
            "reason": self.line(),
        }


def choose(
    mac_gb: int,
    backbone_config: dict,
    args,
    text_head: bool = True,
    corpus: Path | None = None,
    entries: tuple[Measured, ...] = REGISTRY,
) -> Fit:
    """The best entry whose model at this shape fits a `mac_gb` Mac (see the module doc).
    text_head False: the head is dropped whatever fits. A calibrated entry is passed
    over for the best plain one when there is no corpus to calibrate on."""
    limit = mac_working_set(mac_gb)
    cache = _SIZES.setdefault((json.dumps(backbone_config, sort_keys=True, default=str), repr(args)), {})
    sizes = {e.row: recipe_sizes(backbone_config, args, e.recipe, cache, e.extra_bits) for e in entries}

    def need(entry: Measured) -> tuple[int, bool]:
        """(bytes after a Reflex load, whether the head is kept)."""
        whole, head = sizes[entry.row]
        keep = text_head and whole <= limit
        return (whole if keep else whole - head), keep

    ranked = sorted(entries, key=lambda e: (e.quality, -need(e)[0]), reverse=True)  # stable: first wins ties
    fitting = [entry for entry in ranked if need(entry)[0] <= limit]
    if not fitting:
        smallest = min(entries, key=lambda e: need(e)[0])
        raise RecipeError(
            f"--fit {mac_gb}GB: no measured recipe fits this Mac's {human_bytes(limit)} working set at "
            f"this checkpoint's shape; the smallest, {smallest.name}, needs {human_bytes(need(smallest)[0])}"
        )
    best, passed_over = fitting[0], None
    if best.calibration is not None and corpus is None:
        passed_over = best
        plain = [entry for entry in fitting if entry.calibration is None]
        if not plain:
            raise RecipeError(
                f"--fit {mac_gb}GB: only calibrated recipes fit, and there is no calibration data "
                "(--calibration-data DIR, or $REFLEX_CORPUS)"
            )
        best = plain[0]
    if best.calibration is not None:
        calibration_available(best.calibration)
    resident, keep = need(best)
    needs_data = {e.row for e in fitting if e.calibration is not None} if passed_over else set()
    better = [e for e in ranked if e.quality > best.quality and e.row not in needs_data]
    nearest = min(better, key=lambda e: (e.quality, need(e)[0])) if better else None
    return Fit(
        mac_gb,
        best,
        resident,
        keep or not sizes[best.row][1],
        sizes[best.row][1],
        (nearest, need(nearest)[0]) if nearest else None,
        passed_over,
        corpus if best.calibration else None,
    )


def calibration_available(name: str) -> None:
    """RecipeError in one line when `name` is not a calibration this converter runs."""
    from .calibrate import METHODS

    if name not in METHODS:
        raise RecipeError(f"the chosen recipe is calibrated by {name}, which this converter does not know")


def calibrate(
    name: str,
    model,
    reflex,
    recipe: Recipe,
    corpus: Path,
    progress: bool,
    tokenizer,
    config: dict,
    heldout: Path | None = None,
):
    """Quantize the float backbone `model` and the float Reflex modules `reflex` in
    place as `recipe` says, the backbone's values chosen by the calibration method
    `name` on the training corpus at `corpus` (never the evaluation prompts, nor the
    programs the checkpoint's `heldout` file holds out), with progress bars when
    `progress`. Returns (the backbone config's quantization entry, the adapter
    quantization, the record for config.json)."""
    from .calibrate import for_conversion

    calibration_available(name)
    try:
        return for_conversion(
            name, model, reflex, recipe, corpus, progress, tokenizer, config, heldout=heldout
        )
    except ValueError as err:
        from reflex_core.errors import first_line

        raise RecipeError(f"calibration by {name}: {first_line(err)}") from None
