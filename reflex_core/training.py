"""Training, written once for both backends (reflex_mlx/train.py, reflex_torch/train.py
hold only their model, optimizer, gradients and files).

* Data: a corpus folder in the released format (docs/design.md §7) or a user's
  JSONL of (prompt, program); a program as assembly text or as words. Every
  program is replayed on the machine before training, and one that does not
  halt with its expected result is refused, naming it.
* The split: programs grouped by their words, a fraction of the groups held
  out, and no training prompt equal to an evaluation prompt (EVAL_FILTERS).
* The sample format: (state, target row) cycles, each drawn under a random
  prompt of its program; `SampleTable.draw` gives the same batches to any
  backend for the same seed (so MLX and torch can be compared step for step,
  and data-parallel ranks take their shard of one global batch).
* The learning-rate schedule, the held-out (cycle, prompt) pairs and their
  top-1 through any backend's runner, and how a codebook grows to new words.
* The options (TrainDefaults, MLXOptions, TorchOptions: each default once),
  their ranges, and the one resume rule.
* The loop (`fit`): steps, schedule, logging, evaluation, checkpoints, clean
  stops and resume, over a backend's `Steps`.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np

from . import rv32i, spec
from .corpus import (
    MAX_CODE_WORDS,
    MAX_PROGRAMS,
    MAX_PROMPTS,
    CorpusError,
    CorpusProgram,
    check_expected,
    check_family,
    check_prompts,
    expected_address,
    expected_ok,
    load_programs,
    replay,
    replay_run,
)
from .errors import one_line, short_repr, user_path
from .evaluation import EVAL_FILTERS, eval_prompts
from .files import (
    OutputError,
    append_record,
    keep_records,
    open_regular,
    output_lock,
    parse_json,
    read_regular,
    remove_temporaries,
    write_atomically,
)
from .prompt import encode_prompt
from .shapes import TINY

HELDOUT_FILE = "heldout.json"
CURVE_FILE = "curve.jsonl"  # one JSON record a line: losses and evaluations by step
HELDOUT_LIMIT = 64 << 20  # bytes of a heldout.json read (reflex-smol's: 0.6 MB)
EVAL_SEED = 0  # the fixed sample of held-out (cycle, prompt) pairs every eval uses


class DataError(ValueError):
    """A one-line reason training data cannot be used, naming the file, line or program."""


class TrainError(Exception):
    """A one-line reason training cannot go on (either trainer)."""


# ------------------------------------------------------------------------ data


# Bounds on a training source, besides the per-program ones of reflex_core.corpus
# (programs, prompts, prompt length, expected_result entries, family names).
# One JSONL line: a full code region as hex words is ~50 kB, with 256 long prompts ~600 kB.
MAX_RECORD_BYTES = 1 << 20
# One JSONL file, streamed; its records are held until checked (the released corpus is 4.8 MB).
MAX_DATA_BYTES = 64 << 20
# Cycles replayed for one source, kept or rejected: each replay is at most
# REPLAY_MAX_CYCLES, and each kept cycle is a 65-word state held for training
# (about 1 kB each). The released corpus is about 66,000 cycles; a million
# replay in about 90 s on a slow CPU and hold about 1 GB.
MAX_REPLAY_CYCLES = 1_000_000
JSONL_KEYS = ("prompt", "prompts", "program", "expected_result", "family")


def read_data(
    path: str | Path,
    families: Sequence[str] = (),
    exclude: Sequence[str] = (),
    skip_failing: bool = False,
    say=print,
    replays: dict | None = None,
) -> list[CorpusProgram]:
    """The programs of a corpus folder (<path>/programs/<category>/<family>.json) or a
    JSONL file, each replayed on the machine first (`replays`, when given, keeps each
    kept program's (state, word) cycles under its words, so no one replays it again).

    A JSONL program must halt with its expected result: one that does not stops
    the run with one line naming its line and the reason (with skip_failing it
    is left out and the reason said). A corpus program must halt; the released
    corpus records, for 159 programs of its source-buffer families, results that
    assume source data the machine does not seed (tests/core/test_machine.py,
    SOURCE_DATA_FAMILIES): their traces are right and the release trained on
    them, so they are kept and counted. The cycles replayed for one source are
    bounded (MAX_REPLAY_CYCLES)."""
    return check_data(parse_data(path, families, exclude), skip_failing, say, replays)


@dataclass
class Source:
    """One training path's programs, parsed and filtered, not yet replayed."""

    path: Path
    programs: list[CorpusProgram]
    where: list[str]  # each program's place, for messages (file:line, or folder: family)

    def only(self, words: set[tuple[int, ...]]) -> Source:
        chosen = [i for i, p in enumerate(self.programs) if tuple(p.words) in words]
        return Source(self.path, [self.programs[i] for i in chosen], [self.where[i] for i in chosen])


def parse_data(path: str | Path, families: Sequence[str] = (), exclude: Sequence[str] = ()) -> Source:
    """A corpus folder's or JSONL file's programs, read and filtered by family (read_data's first half)."""
    try:
        path = user_path(path, "training data path")
    except ValueError as err:
        raise DataError(str(err)) from None
    shown = one_line(path)
    if path.is_dir():
        if not (path / "programs").is_dir():
            raise DataError(f"{shown} is not a corpus folder (no programs/ inside)")
        try:
            programs = load_programs(path)
        except CorpusError as err:
            raise DataError(f"{shown}: {err}") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            reason = f"{type(err).__name__}: {one_line(err)}"
            raise DataError(f"{shown}: not in the corpus format ({reason})") from None
        where = [f"{one_line(path.name)}: {p.family}" for p in programs]
    elif path.is_file():
        programs, where = read_jsonl(path)
    else:
        raise DataError(f"no training data at {shown}")
    if path.is_file():  # the families filters choose from a corpus; a JSONL is the user's own choice
        families, exclude = (), ()
    chosen = [
        i
        for i, p in enumerate(programs)
        if (not families or p.family in set(families)) and p.family not in set(exclude)
    ]
    if not chosen:
        raise DataError(f"{shown}: no programs" + (f" in families {sorted(families)}" if families else ""))
    return Source(path, [programs[i] for i in chosen], [where[i] for i in chosen])


def check_data(
    source: Source, skip_failing: bool = False, say=print, replays: dict | None = None
) -> list[CorpusProgram]:
    """The programs of `source` that pass, each replayed on the machine (read_data's second half)."""
    path, shown = source.path, one_line(source.path)
    kept, unexpected, replayed = [], 0, 0
    for program, where in zip(source.programs, source.where):
        halts, reason, cycles = check_program(program)
        replayed += len(cycles)
        if replayed > MAX_REPLAY_CYCLES:
            raise DataError(
                f"{where}: the programs of {shown} run more than {MAX_REPLAY_CYCLES:,} cycles "
                "in all; split the data"
            )
        if reason is None or (path.is_dir() and halts):
            kept.append(program)
            unexpected += reason is not None
            if replays is not None:
                replays[tuple(program.words)] = cycles
            continue
        message = f"{where}: {describe(program)} {reason}"
        if not skip_failing:
            raise DataError(message)
        say(f"rejected {message}")
    if unexpected:
        say(
            f"{one_line(path.name)}: {unexpected} programs halt without their recorded result "
            "(source-buffer data the machine does not seed); kept, as released"
        )
    if not kept:
        raise DataError(f"{shown}: every program was rejected")
    return kept


def read_jsonl(path: Path) -> tuple[list[CorpusProgram], list[str]]:
    """(programs, where each is: file:line). One program per line:

        {"prompt": "gcd of 12 and 18", "prompts": [more phrasings],        # prompt or prompts
         "program": "li t0, 12\\n..." | ["0x00c00293", ...] | [12583571, ...],
         "expected_result": {"mem_0x5000": 6}, "family": "gcd"}             # family optional

    expected_result uses the corpus's keys (mem_0xADDR, mem_0xADDR_words).

    The file is streamed, split on "\\n" only (a U+2028 inside a string is text),
    each line decoded as UTF-8; every bound (MAX_DATA_BYTES, MAX_RECORD_BYTES,
    corpus.MAX_PROGRAMS, corpus.MAX_PROMPTS and the per-program ones) and every
    schema error is one line naming the file and line. All records are checked
    before any program is assembled, so a file too large is refused at once."""
    name = one_line(path.name)
    records = []
    prompts_total = 0
    try:
        f, _ = open_regular(path, MAX_DATA_BYTES, "training file", DataError)
        with f:
            for number, line in enumerate(_lines(f, name), start=1):
                where = f"{name}:{number}"
                try:
                    text = line.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{where}: not UTF-8 text (byte {err.start + 1} of the line)") from None
                if not text.strip():
                    continue
                if len(records) == MAX_PROGRAMS:
                    raise DataError(f"{where}: more than {MAX_PROGRAMS:,} records in one file; split it")
                try:
                    parsed = parse_json(text)
                except ValueError as err:
                    raise DataError(f"{where}: not a JSON object ({err})") from None
                try:
                    record = _record(parsed)
                except ValueError as err:
                    raise DataError(f"{where}: {err}") from None
                prompts_total += len(record[0])
                if prompts_total > MAX_PROMPTS:
                    raise DataError(f"{where}: more than {MAX_PROMPTS:,} prompts in one file; split it")
                records.append((where, record))
    except CorpusError as err:
        raise DataError(str(err)) from None
    except OSError as err:
        raise DataError(f"cannot read {one_line(path)}: {err.strerror or type(err).__name__}") from None
    programs, where_of = [], []
    for where, (prompts, program, expected, family) in records:
        words = program_words(program, where)
        programs.append(
            CorpusProgram(
                category="jsonl",
                family=family if family is not None else path.stem,
                instruction=prompts[0],
                variants=prompts,
                words=words,
                expected_result=expected,
                num_ops=len(words),
            )
        )
        where_of.append(where)
    if not programs:
        raise DataError(f"{one_line(path)}: no programs")
    return programs, where_of


def _lines(f, name: str):
    """The file's lines as bytes, split on b"\\n" only, each at most MAX_RECORD_BYTES
    and all together at most MAX_DATA_BYTES (checked as read: the file may grow)."""
    total = 0
    for number in itertools.count(1):
        line = f.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        total += len(line)
        if total > MAX_DATA_BYTES:
            raise DataError(f"{name}:{number}: the file grew past {MAX_DATA_BYTES:,} bytes while read")
        body = line[:-1] if line.endswith(b"\n") else line
        if len(body) > MAX_RECORD_BYTES:
            raise DataError(
                f"{name}:{number}: a record longer than {MAX_RECORD_BYTES:,} bytes; at most that a line"
            )
        yield body


def _record(record) -> tuple[list[str], object, dict, str | None]:
    """(prompts, program, expected_result, family) of one JSONL record, its schema
    checked (ValueError in one line); the program is turned into words later."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    unknown = [key for key in record if key not in JSONL_KEYS]
    if unknown:
        raise ValueError(f"unknown key '{one_line(unknown[0], 40)}' (the keys are {', '.join(JSONL_KEYS)})")
    prompts = []
    if "prompt" in record:
        if not isinstance(record["prompt"], str):
            raise ValueError(f'"prompt" must be a string, not {short_repr(record["prompt"], 40)}')
        prompts.append(record["prompt"])
    if "prompts" in record:
        if not isinstance(record["prompts"], list):
            raise ValueError(f'"prompts" must be a list of strings, not {short_repr(record["prompts"], 40)}')
        prompts += record["prompts"]
    if not prompts:
        raise ValueError('needs "prompt" (a non-empty string) or "prompts" (a list of them)')
    prompts = check_prompts(prompts)
    check_expected(record.get("expected_result"))
    program = record.get("program")
    if isinstance(program, list) and len(program) > MAX_CODE_WORDS:
        raise ValueError(f"{len(program):,} words do not fit the {MAX_CODE_WORDS}-word code region")
    if not (isinstance(program, str) or (isinstance(program, list) and program)):
        raise ValueError('"program" must be assembly text or a list of instruction words')
    family = check_family(record["family"]) if "family" in record else None
    return prompts, program, record["expected_result"], family


def program_words(program, where: str) -> list[int]:
    """A program given as assembly text or as a list of words (ints or hex strings)."""
    from .assembler import AssemblyError, assemble

    if isinstance(program, str):
        try:
            words = assemble(program)
        except AssemblyError as err:
            raise DataError(f"{where}: the program does not assemble: {one_line(err, 200)}") from None
    elif isinstance(program, list) and program:
        if len(program) > MAX_CODE_WORDS:
            raise DataError(f"{where}: {len(program)} words do not fit the {MAX_CODE_WORDS}-word code region")
        words = []
        for index, word in enumerate(program):
            value = None
            if isinstance(word, str) and len(word) <= 10:
                try:
                    value = int(word, 16)
                except ValueError:
                    pass
            elif isinstance(word, int) and not isinstance(word, bool):
                value = word
            if value is None or not 0 <= value <= spec.MASK32:
                raise DataError(
                    f"{where}: word {index} ({short_repr(word, 40)}) is not a 32-bit instruction word"
                )
            words.append(value)
    else:
        raise DataError(f'{where}: "program" must be assembly text or a list of instruction words')
    for index, word in enumerate(words):
        if rv32i.decode(word)["op"] == "illegal":
            raise DataError(f"{where}: word {index} (0x{word:08x}) is not an RV32I instruction")
    if len(words) > MAX_CODE_WORDS:
        raise DataError(f"{where}: {len(words)} words do not fit the {MAX_CODE_WORDS}-word code region")
    return words


def describe(program: CorpusProgram) -> str:
    return f"('{one_line(program.instruction, 80)}')"


def check_program(program: CorpusProgram) -> tuple[bool, str | None, list]:
    """(whether it halts, why it fails verification or None, its (state, word)
    cycles): replayed on the machine, for at most REPLAY_MAX_CYCLES cycles."""
    result, cycles = replay_run(program)
    if result.outcome == "error":
        return False, f"fails on the machine: {result.error}", cycles
    if not result.halted:
        return False, f"does not halt within {len(cycles)} cycles", cycles
    try:
        ok = expected_ok(result, program.expected_result)
    except (ValueError, TypeError) as err:
        return True, f"has a bad expected_result: {one_line(err)}", cycles
    if not ok:
        got = {key: _observed(result, key, value) for key, value in program.expected_result.items()}
        return (
            True,
            f"halts without its expected result {short_repr(program.expected_result, 200)} "
            f"(got {short_repr(got, 200)})",
            cycles,
        )
    return True, None, cycles


def _observed(result, key: str, value):
    try:
        addr, _ = expected_address(key)
    except ValueError:
        return None
    return result.words(addr, len(value) if isinstance(value, list) else 1)


# ----------------------------------------------------------------------- split


@dataclass
class Split:
    train: list[dict]  # distinct programs: {"program": CorpusProgram, "prompts": [...]}
    heldout: list[dict]  # the heldout.json entries: words as hex, all prompts
    counts: dict
    cycles: list = field(default_factory=list)  # train[i]'s (state, word) cycles (read_split)
    held_cycles: list = field(default_factory=list)  # heldout[i]'s (read_split)


def read_split(
    paths: Sequence[str | Path],
    *,
    heldout_fraction: float,
    seed: int,
    eval_filter: str,
    max_programs: int | None = None,
    families: Sequence[str] = (),
    exclude: Sequence[str] = (),
    skip_failing: bool = False,
    say=print,
) -> Split:
    """Both trainers' way in: the programs of every path, split (split_programs), with
    each used program's cycles from its one replay. With max_programs the programs are
    chosen before any is replayed (check_data), so a run on a few of the corpus's
    thousands of programs replays only those."""
    sources = [parse_data(path, families, exclude) for path in paths]
    parsed = [program for source in sources for program in source.programs]
    distinct = list(dict.fromkeys(tuple(program.words) for program in parsed))  # as _groups orders them
    if max_programs:  # the sample split_programs takes with this seed, taken before the replay
        chosen = {distinct[i] for i in _sample(len(distinct), max_programs, seed)}
        sources = [source.only(chosen) for source in sources]
    replays: dict = {}
    programs = []
    for source in sources:
        if source.programs:  # a source none of whose programs was chosen
            programs += check_data(source, skip_failing, say, replays)
    split = split_programs(
        programs,
        heldout_fraction=heldout_fraction,
        seed=seed,
        eval_filter=eval_filter,
        max_programs=max_programs,
        source=", ".join(str(p) for p in paths),
    )
    if max_programs:  # counted over every program read, as without the early choice
        split.counts["programs"] = len(parsed)
        split.counts["distinct_programs"] = len(distinct)
    split.cycles = [replays[tuple(group["program"].words)] for group in split.train]
    split.held_cycles = [replays[tuple(int(w, 16) for w in entry["words"])] for entry in split.heldout]
    return split


def _groups(programs: list[CorpusProgram]) -> dict[tuple, dict]:
    """The distinct programs by their words, in order of appearance, with their prompts."""
    groups: dict[tuple, dict] = {}
    for program in programs:
        group = groups.setdefault(tuple(program.words), {"program": program, "prompts": {}})
        group["prompts"].update(dict.fromkeys(program.variants))  # ordered union
    return groups


def _sample(count: int, max_programs: int | None, seed: int) -> list[int]:
    """The indices of the distinct programs a run uses: all, or max_programs of them."""
    if max_programs and count > max_programs:
        return sorted(random.Random(seed).sample(range(count), max_programs))
    return list(range(count))


def split_programs(
    programs: list[CorpusProgram],
    *,
    heldout_fraction: float,
    seed: int,
    eval_filter: str,
    max_programs: int | None = None,
    source: str = "",
) -> Split:
    """Group programs by their words, hold out a fraction of the groups, drop eval prompts."""
    groups = _groups(programs)
    every = list(groups.values())
    distinct = [every[i] for i in _sample(len(every), max_programs, seed)]

    n_held = max(1, round(heldout_fraction * len(distinct))) if len(distinct) > 1 and heldout_fraction else 0
    held = set(random.Random(seed + 1).sample(range(len(distinct)), n_held))
    key = EVAL_FILTERS[eval_filter]
    forbidden = eval_prompts(key)
    train, heldout, removed, removed_distinct = [], [], 0, set()
    for index, group in enumerate(distinct):
        program, prompts = group["program"], list(group["prompts"])
        if index in held:
            heldout.append(heldout_entry(program, prompts))
            continue
        kept = [p for p in prompts if key(p) not in forbidden]
        removed += len(prompts) - len(kept)
        removed_distinct |= {key(p) for p in prompts} & forbidden
        if kept:
            train.append({"program": program, "prompts": kept})
    counts = {
        "corpus": source,
        "programs": len(programs),
        "distinct_programs": len(groups),
        "used_programs": len(distinct),
        "heldout_programs": len(heldout),
        "train_programs": len(train),
        "removed_eval_prompt_pairs": removed,
        "removed_eval_prompts_distinct": len(removed_distinct),
        "eval_prompts_distinct": len(forbidden),
        "eval_filter": eval_filter,
    }
    return Split(train, heldout, counts)


def heldout_entry(program: CorpusProgram, prompts: list[str]) -> dict:
    return {
        "family": program.family,
        "category": program.category,
        "words": [f"{w:08x}" for w in program.words],
        "prompts": prompts,
        "expected_result": program.expected_result,
    }


def split_report(counts: dict, heldout: list[dict], held_cycles) -> list[str]:
    """The lines both trainers print about their data."""
    c = counts
    return [
        f"data {c['corpus']}: {c['programs']} programs, {c['distinct_programs']} distinct by words"
        + (f", {c['used_programs']} used" if c["used_programs"] != c["distinct_programs"] else ""),
        f"held out {c['heldout_programs']} programs ({sum(map(len, held_cycles))} cycles, "
        f"{sum(len(e['prompts']) for e in heldout)} prompts)",
        f"removed {c['removed_eval_prompt_pairs']} (program, prompt) pairs matching "
        f"{c['removed_eval_prompts_distinct']} of the {c['eval_prompts_distinct']} distinct eval prompts",
    ]


# --------------------------------------------------------------------- samples


@dataclass
class Batch:
    """One training batch as host arrays: prompts right-padded to the longest."""

    input_ids: np.ndarray  # [B, T] int64
    attention_mask: np.ndarray  # [B, T] int64
    states: np.ndarray  # [B, 65] int64 (unsigned 32-bit words)
    targets: np.ndarray  # [B] int64 codebook rows

    def shard(self, rank: int, world: int) -> Batch:
        """Rank `rank`'s contiguous 1/world of the batch (data-parallel training)."""
        size = len(self.targets)
        if size % world:
            raise ValueError(f"a global batch of {size} does not split over {world} ranks")
        part = slice(rank * size // world, (rank + 1) * size // world)
        ids, mask = self.input_ids[part], self.attention_mask[part]
        width = int(mask.sum(axis=1).max())
        return Batch(ids[:, :width], mask[:, :width], self.states[part], self.targets[part])


class SampleTable:
    """Every training cycle and every pre-tokenized prompt, as numpy arrays.

    `groups` are the split's training programs; `cycles[i]` the (state, word)
    cycles of groups[i]. With `sources` (a source index per group) and
    `weights` (one per source), a batch draws each row's source with those
    probabilities, then a cycle of that source uniformly: new data can be mixed
    with replayed old data at a fixed rate however small either is.
    """

    def __init__(
        self,
        groups: list[dict],
        cycles: list,
        codebook: Sequence[int],
        tokenizer,
        config: dict,
        sources: Sequence[int] | None = None,
        weights: Sequence[float] | None = None,
    ):
        row_of = {word: row for row, word in enumerate(codebook)}
        sources = list(sources) if sources is not None else [0] * len(groups)
        order = sorted(range(len(groups)), key=lambda i: sources[i])  # each source's cycles contiguous
        states, targets, owners, source_of = [], [], [], []
        for index in order:
            for state, word in cycles[index]:
                states.append(state)
                targets.append(row_of[word])
                owners.append(index)
                source_of.append(sources[index])
        prompt_ids: dict[str, int] = {}
        flat, start, count = [], [], []
        for group in groups:
            start.append(len(flat))
            count.append(len(group["prompts"]))
            flat += [prompt_ids.setdefault(p, len(prompt_ids)) for p in group["prompts"]]
        tokens = [encode_prompt(tokenizer, p, config) for p in prompt_ids]
        self.truncated = sum(t.truncated for t in tokens)
        length = max(len(t.ids) for t in tokens)
        pad = tokenizer.pad_token_id or 0
        self.prompt_ids = np.array([t.ids + [pad] * (length - len(t.ids)) for t in tokens], dtype=np.int64)
        self.prompt_len = np.array([len(t.ids) for t in tokens], dtype=np.int64)
        self.states = np.array(states, dtype=np.int64).reshape(-1, spec.STATE_WORDS)
        self.targets = np.array(targets, dtype=np.int64)
        self.owner = np.array(owners, dtype=np.int64)
        self.start, self.count = np.array(start, dtype=np.int64), np.array(count, dtype=np.int64)
        self.flat = np.array(flat, dtype=np.int64)
        self.num_prompts, self.max_prompt_len = len(tokens), length
        source_of = np.array(source_of, dtype=np.int64)
        self.num_sources = max(sources, default=0) + 1
        self.source_start = np.searchsorted(source_of, np.arange(self.num_sources))
        self.source_count = np.bincount(source_of, minlength=self.num_sources)
        if weights is None:
            weights = [1.0] * self.num_sources
        if len(weights) != self.num_sources or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"need {self.num_sources} non-negative source weights, got {list(weights)}")
        if any(w > 0 and n == 0 for w, n in zip(weights, self.source_count)):
            raise ValueError("a data source with a weight has no training cycles")
        self.weights = np.array(weights, dtype=np.float64) / sum(weights)

    def __len__(self) -> int:
        return len(self.targets)

    def draw(self, size: int, rng: np.random.Generator) -> Batch:
        """Random cycles, each under a random prompt of its program."""
        if self.num_sources == 1:
            idx = rng.integers(len(self), size=size)
        else:
            source = rng.choice(self.num_sources, size=size, p=self.weights)
            idx = self.source_start[source] + (rng.random(size) * self.source_count[source]).astype(np.int64)
        owner = self.owner[idx]
        pick = (rng.random(size) * self.count[owner]).astype(np.int64)
        prompt = self.flat[self.start[owner] + pick]
        lengths = self.prompt_len[prompt]
        width = int(lengths.max())
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        return Batch(self.prompt_ids[prompt, :width], mask, self.states[idx], self.targets[idx])


def sampler(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def sampler_state(rng: np.random.Generator) -> dict:
    """JSON-able; restored with `restore_sampler`."""
    return rng.bit_generator.state


def restore_sampler(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


# -------------------------------------------------------------------- schedule


def lr_at(step: int, *, lr: float, min_lr: float, warmup: int, steps: int) -> float:
    """Linear warmup, then cosine from lr to min_lr over the remaining steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def stop_reason(started: float, step: int, time_limit: float | None, stop_at: int | None) -> str | None:
    """Why a run stops cleanly before its next step: its time limit or --stop-at."""
    if time_limit is not None and time.time() - started > time_limit:
        return f"time limit {time_limit:g}s"
    if stop_at is not None and step >= stop_at:
        return f"--stop-at {stop_at}"
    return None


# ------------------------------------------------------------------- options


def option(default, help: str = "", **kw):
    """A training option: its one default, and what the command lines show for it
    (help; `choices`; `at_least`, the smallest value it takes; `cli`: False where a
    command line does not offer it)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass(kw_only=True)
class TrainDefaults:
    """The options both trainers take, each with its one default: `reflex-mlx train`
    and `python -m reflex_torch.train` build their options from these fields."""

    data: tuple[str, ...] = option(
        (),
        "Training data: a corpus folder (released format) or a JSONL of {prompt, program, "
        "expected_result}; repeatable.",
    )
    families: tuple[str, ...] = option((), "Only these families of corpus folders (comma-separated).")
    exclude_families: tuple[str, ...] = option(
        (), "Leave these families of corpus folders out: never trained on nor held out (comma-separated)."
    )
    skip_failing: bool = option(False, "Leave out JSONL programs that fail verification.")
    heldout_fraction: float = option(0.05, "Share of the distinct programs held out.", rule="in [0, 1)")
    seed: int = option(0, at_least=0)
    eval_filter: str = option(
        "punctuation",
        "Which training prompts count as an evaluation prompt and are dropped: equal up to case and "
        "spacing (exact), or also up to punctuation and quotes (punctuation).",
        choices=tuple(EVAL_FILTERS),
    )
    max_programs: int | None = option(
        None, "A random subset of distinct programs (only those are replayed).", at_least=1
    )
    steps: int = option(500, at_least=1)
    batch: int = option(16, "The global batch (split over torchrun's ranks).", at_least=1)
    lr: float = option(
        1e-4, "Peak learning rate (the torch trainer without --backbone: 1e-3 unless given).", rule="above 0"
    )
    min_lr: float | None = option(
        None, "Learning rate the cosine ends at (default: lr / 100).", rule="of at least 0"
    )
    warmup: int = option(20, at_least=0)
    weight_decay: float = option(0.01, rule="of at least 0")
    grad_clip: float = option(1.0, rule="above 0")
    temperature: float = option(spec.INFONCE_TEMPERATURE, "InfoNCE temperature.", rule="above 0")
    log_every: int = option(10, at_least=1)
    eval_every: int = option(100, at_least=1)
    eval_samples: int = option(1000, "Held-out (cycle, prompt) pairs each evaluation scores.", at_least=1)
    eval_batch: int = option(64, at_least=1)
    save_every: int = option(100, at_least=1)
    time_limit: float | None = option(
        None, "Stop cleanly (saving) after this many seconds.", rule="of at least 0"
    )  # 0: stop at once, saving what the model is
    stop_at: int | None = option(None, "Stop cleanly (saving) after this step.")


@dataclass(kw_only=True)
class MLXOptions:
    """The options only the MLX trainer takes: it teaches a converted model new programs."""

    model: str | None = option(None, "The model to start from: a directory, tiny, smol or a hub id.")
    rehearse: tuple[str, ...] = option((), "Old data replayed beside the new, so the model keeps it.")
    rehearse_fraction: float = option(0.5, "Share of each batch drawn from --rehearse.", rule="in [0, 1)")
    mode: str = option("full", "Train every Reflex weight, or a LoRA.", choices=("full", "lora"))
    lora_rank: int = option(16, at_least=1)
    lora_alpha: float = option(32.0, "Scale alpha / rank.", rule="above 0")
    lora_targets: str = option(
        "all",
        "Linear layers: all, or some of value_proj, q_proj, k_proj, v_proj, out_proj, mlp.fc1, "
        "mlp.fc2, head_mlp.fc1, head_mlp.fc2, embed_head.",
    )
    lora_output: str = option(
        "keep",
        "Keep the LoRA beside the model (lora.safetensors) or merge it into the layers.",
        choices=("keep", "fuse"),
    )
    backbone_dtype: str = option(
        "auto",
        "What an unquantized backbone computes in (auto: float32 for a half-precision one on a CPU).",
        choices=("auto", "as-stored", "float32", "float16", "bfloat16"),
    )
    progress: bool = option(True, cli=False)


# Without --backbone a new backbone learns at this rate unless --lr is given (TorchOptions).
FROM_SCRATCH_LR = 1e-3
# A from-scratch backbone bigger than this is saved in bfloat16 (--save-backbone-dtype auto).
MAX_FLOAT32_BACKBONE_BYTES = 16 << 20


@dataclass(kw_only=True)
class TorchOptions:
    """The options only the torch trainer takes: it trains a new model, its backbone
    from scratch or a pretrained one frozen, data-parallel under torchrun."""

    backbone: str | None = option(
        None,
        "Pretrained decoder, frozen (hub id, folder, or a named local backbone such as "
        "SmolLM2-135M-Instruct-Q4_1); default: a new one trained from scratch.",
    )
    hidden: int = option(TINY.hidden, "From scratch: the backbone's width.", at_least=1)
    layers: int = option(TINY.layers, at_least=1)
    heads: int = option(TINY.heads, at_least=1)
    kv_heads: int = option(TINY.kv_heads, at_least=1)
    intermediate: int = option(TINY.intermediate, at_least=1)
    vocab: int = option(TINY.vocab, "From scratch: the tokenizer's vocabulary.", at_least=1)
    rope_theta: float = option(TINY.rope_theta)
    embed_dim: int | None = option(None, "Default 128 from scratch, 256 pretrained.", at_least=1)
    adapter_mlp_ratio: int = option(TINY.mlp_ratio, at_least=1)
    inject_every: int = option(TINY.inject_every, at_least=1)
    max_instr_tokens: int = option(spec.MAX_INSTR_TOKENS, at_least=1)
    bf16: str = option(
        "auto", "bf16 autocast of the forward (auto: on with CUDA).", choices=("auto", "on", "off")
    )
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda where there is one).")
    threads: int | None = option(None, "CPU threads (1 avoids stalls on a busy small CPU).", at_least=1)
    save_backbone_dtype: str = option(
        "auto",
        f"From scratch: auto is float32 unless that exceeds {MAX_FLOAT32_BACKBONE_BYTES >> 20} MiB.",
        choices=("auto", "float32", "bfloat16"),
    )
    save_dtype: str = option(
        "float32",
        "dtype of reflex.pt's float tensors (bfloat16 halves the file; the loaders cast it back).",
        choices=("float32", "bfloat16"),
    )


# Each backend's own options; an option of one given to the other is refused in one line.
BACKEND_OPTIONS = {"mlx": MLXOptions, "torch": TorchOptions}


def options_of(cls) -> dict:
    """name -> dataclasses.Field of a class's options."""
    return {f.name: f for f in fields(cls) if f.init}


def check_backend_options(backend: str, given) -> None:
    """An option of another backend given for this one: TrainError in one line."""
    own = options_of(BACKEND_OPTIONS[backend])
    for other, cls in BACKEND_OPTIONS.items():
        wrong = sorted(n for n in given if n in options_of(cls) and n not in own)
        if wrong:
            flags = ", ".join("--" + n.replace("_", "-") for n in wrong)
            raise TrainError(f"{flags} applies to --backend {other} only, not {backend}")


# The numeric options' ranges (an option's `rule`): a value outside them cannot train
# (a NaN rate, no programs left to train on) and would otherwise fail deep inside a run.
_RULES = {
    "above 0": lambda v: v > 0,
    "of at least 0": lambda v: v >= 0,
    "in [0, 1)": lambda v: 0 <= v < 1,
}


def check_values(values: dict, *classes) -> None:
    """The options in `values` that the classes define, each in its range and choices:
    TrainError in one line naming the option otherwise."""
    for cls in classes:
        for name, f in options_of(cls).items():
            value, meta = values.get(name), f.metadata
            if value is None:
                continue
            flag = "--" + name.replace("_", "-")
            if "choices" in meta and value not in meta["choices"]:
                raise TrainError(f"{flag} must be one of {', '.join(meta['choices'])}, not {value!r}")
            if "at_least" in meta and value < meta["at_least"]:
                raise TrainError(f"{flag} must be at least {meta['at_least']}, not {value}")
            if "rule" in meta and not (math.isfinite(value) and _RULES[meta["rule"]](value)):
                raise TrainError(f"{flag} must be a finite number {meta['rule']}, not {value}")


# What a saved run's options may hold, by the type of their field (integers within 64
# bits, numbers finite: a value past them cannot be computed with).
_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) < v < 2**63
_OPTION_TYPES = {
    "int": (_is_int, "an integer"),
    "float": (lambda v: _is_int(v) or (isinstance(v, float) and math.isfinite(v)), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "Path": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "tuple[str, ...]": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "a list of strings",
    ),
}


def saved_options(saved, cls, shown: str) -> dict:
    """The options a saved run recorded, each a field of `cls` of its type, range and
    choices; TrainError in one line naming `shown` (the file) and the option otherwise."""
    if not isinstance(saved, dict):
        raise TrainError(f"{shown}: its options are not a JSON object")
    known = options_of(cls)
    for name, value in saved.items():
        if name not in known:
            raise TrainError(f"{shown}: unknown option '{one_line(name, 60)}'")
        kind = known[name].type
        if value is None and kind.endswith(" | None"):
            continue
        check, words = _OPTION_TYPES[kind.removesuffix(" | None")]
        if not check(value):
            raise TrainError(f"{shown}: option '{name}' must be {words}")
        try:
            check_values({name: value}, cls)
        except TrainError as err:
            raise TrainError(f"{shown}: option '{name}' {str(err).split(' ', 1)[1]}") from None
    return saved


# On --resume every option comes from the saved run, so that it trains on to the model
# it would have become, but for these: how far and how often to log, evaluate and save
# (given again to change them) ...
RESUMABLE = ("steps", "log_every", "eval_every", "save_every")
# ... and what each invocation says anew: where, on which device, when to stop this time.
PER_INVOCATION = ("out", "resume", "time_limit", "stop_at", "progress", "device", "threads")


def resumed_options(saved: dict, fresh: dict, given) -> dict:
    """A resumed run's options: the saved run's, with the RESUMABLE ones given again and
    the PER_INVOCATION ones from this invocation; any other option given is refused."""
    refused = sorted(set(given) - set(RESUMABLE) - set(PER_INVOCATION))
    if refused:
        names = ", ".join("--" + n.replace("_", "-") for n in refused)
        raise TrainError(
            "--resume takes its settings from the saved run; only --steps, --time-limit, --stop-at "
            f"and the --*-every options may be given again (got {names})"
        )
    merged = dict(saved)
    for name, value in fresh.items():
        if name in PER_INVOCATION or (name in RESUMABLE and name in given):
            merged[name] = value
    return merged


# ------------------------------------------------------------------- the loop


class Steps(Protocol):
    """What the one training loop (`fit`) asks of a backend's trainer: its model,
    optimizer, gradients and files stay the backend's."""

    rank: int  # this process's place among data-parallel ranks (0 of 1 without them)
    world: int

    def step(self, batch: Batch, lr: float):
        """One optimisation step on this rank's shard of the global batch; the loss,
        as the backend holds it."""

    def mean(self, loss) -> float:
        """The loss averaged over the ranks, as a number (every rank calls it at the same steps)."""

    def evaluate(self) -> dict | None:
        """Held-out scores ({"heldout_top1", "n", ...} through `top1`); None with
        nothing held out. Rank 0 only."""

    def save(self, step: int, rng: np.random.Generator) -> None:
        """A checkpoint: the model and the state to resume from, each file written
        atomically in the backend's order. Rank 0 only."""

    def barrier(self) -> None:
        """Wait for every rank (nothing without data parallelism)."""


@contextmanager
def holding(out: Path):
    """OUT held by this run, one process at a time (reflex_core.files.output_lock), and
    cleared of the half-written files a killed run left; TrainError naming the holder."""
    try:
        with output_lock(out, "train"):
            remove_temporaries(Path(out))
            yield
    except OutputError as err:
        raise TrainError(str(err)) from None


def write_heldout(out: Path, seed: int, fraction: float, counts: dict, programs: list[dict]) -> None:
    """OUT/heldout.json: the programs a run holds out, with how it chose them."""
    record = {"seed": seed, "fraction": fraction, "counts": counts, "programs": programs}
    write_atomically(Path(out, HELDOUT_FILE), json.dumps(record, indent=1))


def fit(
    steps: Steps,
    samples: SampleTable,
    opts: TrainDefaults,
    out: Path,
    *,
    step: int = 0,
    rng: np.random.Generator | None = None,
    started: float | None = None,
    say=print,
    progress: bool = False,
    written: str = "",
) -> dict:
    """The training loop both trainers run: from `step` (a resumed run's, whose
    curve is cut back to it) to opts.steps or a clean stop (the time limit,
    --stop-at), each step on the global batch `samples` draws (the same for
    every rank and backend for one seed), learning rate `lr_at`; the loss
    logged every log_every steps (and the first), held-out top-1 at the start
    and every eval_every steps, a checkpoint every save_every steps; at the end
    an evaluation if the last step had none, and a checkpoint. Rank 0 alone
    evaluates, writes and speaks. Returns {"step", "stop", "last_eval"}."""
    started = time.time() if started is None else started
    main = steps.rank == 0
    say = say if main else (lambda *a, **k: None)
    min_lr = opts.min_lr if opts.min_lr is not None else opts.lr / 100
    curve = Path(out, CURVE_FILE)
    if step:
        if main:
            keep_records(curve, lambda record: type(record.get("step")) is int and record["step"] <= step)
        say(f"resumed at step {step}")
    rng = rng if rng is not None else sampler(opts.seed)
    bar = None
    if progress and main and steps.world == 1 and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=opts.steps, initial=step, desc="train", unit="step", leave=False)
        say = lambda *a, _say=say: bar.write(" ".join(str(x) for x in a), file=sys.stderr)

    def evaluate() -> dict | None:
        result = steps.evaluate() if main else None
        if result is not None:
            result = {"step": step, **result, "elapsed": time.time() - started}
            append_record(curve, result)
            line = f"step {step} | held-out top-1 {100 * result['heldout_top1']:.2f}% ({result['n']} pairs)"
            if "rehearse_top1" in result:
                line += f" | rehearsed data {100 * result['rehearse_top1']:.2f}%"
            say(line)
        return result

    last, stop = evaluate() if step == 0 else None, "done"
    window = (time.time(), step)
    try:
        while step < opts.steps:
            if reason := stop_reason(started, step, opts.time_limit, opts.stop_at):
                stop = reason
                break
            lr = lr_at(step, lr=opts.lr, min_lr=min_lr, warmup=opts.warmup, steps=opts.steps)
            batch = samples.draw(opts.batch, rng)
            loss = steps.step(batch.shard(steps.rank, steps.world) if steps.world > 1 else batch, lr)
            step += 1
            logs = step % opts.log_every == 0 or step == 1
            if bar is not None or logs:
                value = steps.mean(loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if logs:
                rate = (step - window[1]) / max(time.time() - window[0], 1e-9)
                elapsed = time.time() - started
                if main:
                    record = {"step": step, "loss": value, "lr": lr, "steps_per_s": rate, "elapsed": elapsed}
                    append_record(curve, record)
                say(
                    f"step {step}/{opts.steps} | loss {value:.4f} | lr {lr:.2e} | {rate:.2f} steps/s | "
                    f"{elapsed:.0f}s"
                )
                window = (time.time(), step)
            if step % opts.eval_every == 0:
                last = evaluate() or last
            if step % opts.save_every == 0 and main:
                steps.save(step, rng)
            if step % opts.eval_every == 0 or step % opts.save_every == 0:
                steps.barrier()
                window = (time.time(), step)  # steps/s counts training steps only
    finally:
        if bar is not None:
            bar.close()
    if last is None or last["step"] != step:
        last = evaluate() or last
    if main:
        steps.save(step, rng)
    steps.barrier()
    say(
        f"stopped at step {step}/{opts.steps} ({stop}); wrote {written or out} ({time.time() - started:.0f}s)"
    )
    return {"step": step, "stop": stop, "last_eval": last}


# ------------------------------------------------------------------- held out


@dataclass(frozen=True)
class Pair:
    """One held-out cycle under one prompt: the state, the word the program wants, the prompt."""

    state: list[int]
    word: int
    prompt: str
    program: int  # index into the held-out list


def read_heldout(out_dir: Path | str, error=ValueError) -> list[dict]:
    """The held-out programs a model or run folder lists (its HELDOUT_FILE)."""
    return read_heldout_file(Path(out_dir, HELDOUT_FILE), error)


def read_heldout_file(path: Path | str, error=ValueError) -> list[dict]:
    """The programs of a held-out list, read bounded; a malformed one is `error` in one line."""
    try:
        programs = parse_json(read_regular(path, HELDOUT_LIMIT, "heldout file", error))["programs"]
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, error):
            raise
        raise error(f"{path}: not a heldout.json ({one_line(err, 120)})") from None
    if not isinstance(programs, list):
        raise error(f"{path}: not a heldout.json (its programs are not a list)")
    return programs


def heldout_program(entry: dict) -> CorpusProgram:
    return CorpusProgram(
        category=entry.get("category", ""),
        family=entry.get("family", ""),
        instruction=entry["prompts"][0],
        variants=list(entry["prompts"]),
        words=[int(w, 16) for w in entry["words"]],
        expected_result=entry.get("expected_result", {}),
        num_ops=0,
    )


def heldout_cycles(entries: list[dict]) -> list[list[tuple[list[int], int]]]:
    """Replay each held-out program (words as hex strings) into its (state, word) cycles."""
    return [replay(heldout_program(entry)) for entry in entries]


def make_pairs(
    entries: list[dict],
    cycles: list[list[tuple[list[int], int]]],
    all_prompts: bool = False,
    max_samples: int | None = None,
    seed: int = EVAL_SEED,
) -> list[Pair]:
    """Every cycle with its program's first prompt (or with every prompt), optionally a fixed subsample."""
    pairs = []
    for index, (entry, program_cycles) in enumerate(zip(entries, cycles)):
        prompts = entry["prompts"] if all_prompts else entry["prompts"][:1]
        for prompt in prompts:
            pairs += [Pair(state, word, prompt, index) for state, word in program_cycles]
    if max_samples is not None and len(pairs) > max_samples:
        chosen = sorted(random.Random(seed).sample(range(len(pairs)), max_samples))
        pairs = [pairs[i] for i in chosen]
    return pairs


def predict_pairs(runner, tokenizer, config: dict, pairs: Sequence[Pair], batch: int = 64) -> list[int]:
    """Teacher-forced: the word a backend's runner (reflex_core.predict.Runner) picks
    for each held-out (state, prompt), `batch` pairs at a time, each prompt its own row."""
    tokens: dict[str, list[int]] = {}
    words: list[int] = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        for pair in chunk:
            if pair.prompt not in tokens:
                tokens[pair.prompt] = encode_prompt(tokenizer, pair.prompt, config).ids
        prompts = runner.prefix([tokens[p.prompt] for p in chunk])
        words += runner.words(prompts, [p.state for p in chunk])
    return words


def top1(runner, tokenizer, config: dict, pairs: Sequence[Pair], batch: int = 64) -> tuple[int, list[int]]:
    """Held-out per-step top-1, the one definition both trainers and the held-out
    tools use: (how many pairs' predicted word is the program's word, the predictions)."""
    predicted = predict_pairs(runner, tokenizer, config, pairs, batch)
    return sum(p == pair.word for p, pair in zip(predicted, pairs)), predicted


# -------------------------------------------------------------------- codebook


def grow_codebook(codebook: Sequence[int], words) -> tuple[list[int], list[list[int]]]:
    """(the codebook with every new word appended, and for each appended row the
    old rows its embedding starts from).

    Old rows keep their place. A new word starts at the mean of the old rows
    that are the same instruction with other operands, nearest first: the same
    opcode, funct3/funct7 and registers (only the immediate differs), else the
    same operation and destination, else the same operation, else the same
    instruction format. A word with none of those starts from every row (the mean)."""
    old = list(codebook)
    known = set(old)
    new = sorted({int(w) for w in words} - known)
    fields = [rv32i.decode(w) for w in old]
    sources = []
    for word in new:
        op = rv32i.decode(word)
        closeness = [_closeness(f, op) for f in fields]
        best = max(closeness, default=0)
        sources.append(
            [row for row, c in enumerate(closeness) if c == best] if best else list(range(len(old)))
        )
    return old + new, sources


def _closeness(f: dict, op: dict) -> int:
    """4: the same instruction but for the immediate; 3: same operation and destination;
    2: same operation; 1: same format; 0: nothing in common."""
    if f["op"] == op["op"]:
        if all(f.get(k) == op.get(k) for k in ("rd", "rs1", "rs2")):
            return 4
        return 3 if f.get("rd") == op.get("rd") else 2
    return 1 if f["format"] == op["format"] else 0


# ------------------------------------------------------------- closed loop


def run_heldout(runner, tokenizer, config: dict, entries: list[dict], all_prompts: bool = True) -> list[dict]:
    """Drive the machine with the model for each held-out program's prompts (in
    lockstep, as the eval does) and check each run against the program's expected
    result: {"program", "prompt", "passed", "words"} per run."""
    from .predict import run_batch

    runs = [
        (i, p) for i, e in enumerate(entries) for p in (e["prompts"] if all_prompts else e["prompts"][:1])
    ]
    if not runs:
        return []
    results = run_batch(runner, tokenizer, [p for _, p in runs], config, max_cycles=spec.EVAL_MAX_CYCLES)
    return [
        {
            "program": i,
            "prompt": prompt,
            "passed": result.halted and expected_ok(result, entries[i]["expected_result"]),
            "words": [cycle.word for cycle in result.cycles],
        }
        for (i, prompt), result in zip(runs, results)
    ]
