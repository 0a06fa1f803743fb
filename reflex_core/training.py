"""What both trainers share (reflex_torch/train.py, reflex_mlx/train.py), written once.

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
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
from .files import open_regular, parse_json, read_regular
from .prompt import encode_prompt

HELDOUT_FILE = "heldout.json"
HELDOUT_LIMIT = 64 << 20  # bytes of a heldout.json read (reflex-smol's: 0.6 MB)
EVAL_SEED = 0  # the fixed sample of held-out (cycle, prompt) pairs every eval uses


class DataError(ValueError):
    """A one-line reason training data cannot be used, naming the file, line or program."""


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
    kept, unexpected, replayed = [], 0, 0
    for i in chosen:
        program = programs[i]
        halts, reason, cycles = check_program(program)
        replayed += len(cycles)
        if replayed > MAX_REPLAY_CYCLES:
            raise DataError(
                f"{where[i]}: the programs of {shown} run more than {MAX_REPLAY_CYCLES:,} cycles "
                "in all; split the data"
            )
        if reason is None or (path.is_dir() and halts):
            kept.append(program)
            unexpected += reason is not None
            if replays is not None:
                replays[tuple(program.words)] = cycles
            continue
        message = f"{where[i]}: {describe(program)} {reason}"
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
    """Both trainers' way in: the programs of every path (read_data), split
    (split_programs), with each program's cycles from its one replay."""
    replays: dict = {}
    programs = []
    for path in paths:
        programs += read_data(path, families, exclude, skip_failing, say, replays)
    split = split_programs(
        programs,
        heldout_fraction=heldout_fraction,
        seed=seed,
        eval_filter=eval_filter,
        max_programs=max_programs,
        source=", ".join(str(p) for p in paths),
    )
    split.cycles = [replays[tuple(group["program"].words)] for group in split.train]
    split.held_cycles = [replays[tuple(int(w, 16) for w in entry["words"])] for entry in split.heldout]
    return split


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
    groups: dict[tuple, dict] = {}
    for program in programs:
        group = groups.setdefault(tuple(program.words), {"program": program, "prompts": {}})
        group["prompts"].update(dict.fromkeys(program.variants))  # ordered union
    distinct = list(groups.values())
    if max_programs and len(distinct) > max_programs:
        chosen = random.Random(seed).sample(range(len(distinct)), max_programs)
        distinct = [distinct[i] for i in sorted(chosen)]

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
    """Why a run stops cleanly before its next step (both trainers): its time limit or --stop-at."""
    import time

    if time_limit is not None and time.time() - started > time_limit:
        return f"time limit {time_limit:g}s"
    if stop_at is not None and step >= stop_at:
        return f"--stop-at {stop_at}"
    return None


# ------------------------------------------------------------------- options


@dataclass
class TrainDefaults:
    """The options both trainers take, each with its one default (`reflex-mlx train`'s):
    reflex_mlx.train.TrainOptions extends this class, and reflex_torch.train's
    command line takes its defaults from it."""

    heldout_fraction: float = 0.05
    seed: int = 0
    eval_filter: str = "punctuation"
    max_programs: int | None = None
    steps: int = 500
    batch: int = 16
    lr: float = 1e-4
    min_lr: float | None = None  # None: lr / 100
    warmup: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    temperature: float = spec.INFONCE_TEMPERATURE
    log_every: int = 10
    eval_every: int = 100
    eval_samples: int = 1000
    eval_batch: int = 64
    save_every: int = 100
    time_limit: float | None = None
    stop_at: int | None = None


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
