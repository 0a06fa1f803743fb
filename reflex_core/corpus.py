"""The Reflex training corpus (docs/design.md §7): loading, checking and replaying programs.

The corpus is a dev and CI resource only; nothing here is needed at run time.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import spec
from .loop import ProgramRun, RunResult, memory_holds

CORPUS_ENV_VAR = "REFLEX_CORPUS"
# Replay runs every program to its HALT: a few corpus programs need more cycles
# than the eval's limit (the longest, "write the decimal digits of 999", 484).
REPLAY_MAX_CYCLES = 10_000
EXPECTED_KEY = re.compile(r"^mem_(0x[0-9a-fA-F]+)(_words)?$")


@dataclass(frozen=True)
class CorpusProgram:
    category: str
    family: str
    instruction: str
    variants: list[str]  # prompts, the instruction first, no duplicates
    words: list[int]  # the program, loaded at CODE_START
    expected_result: dict
    num_ops: int


def find_corpus() -> Path | None:
    """$REFLEX_CORPUS, else a shared/corpus folder beside the checkout or any folder above it."""
    from_env = os.environ.get(CORPUS_ENV_VAR)
    if from_env:
        path = Path(from_env).expanduser()
        return path if (path / "programs").is_dir() else None
    checkout = Path(__file__).resolve().parent.parent
    for folder in (checkout, *checkout.parents):
        candidate = folder / "shared" / "corpus"
        if (candidate / "programs").is_dir():
            return candidate
    return None


def _words_of(program_bytes: list[int]) -> list[int]:
    data = bytes(program_bytes)
    if len(data) % 4:
        raise ValueError(f"program of {len(data)} bytes is not whole words")
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def load_programs(root: Path | str) -> list[CorpusProgram]:
    """Every program of <root>/programs/<category>/<family>.json, in sorted file order."""
    programs = []
    for path in sorted(Path(root, "programs").glob("*/*.json")):
        data = json.loads(path.read_text())
        family = data.get("family", path.stem)
        for entry in data["programs"]:
            instruction = entry["instruction"]
            programs.append(
                CorpusProgram(
                    category=path.parent.name,
                    family=family,
                    instruction=instruction,
                    variants=_unique([instruction, *entry.get("instruction_variants", [])]),
                    words=_words_of(entry["bytes"]),
                    expected_result=entry["expected_result"],
                    num_ops=entry.get("num_ops", 0),
                )
            )
    return programs


def expected_ok(result: RunResult, expected_result: dict) -> bool:
    """Halted, and every mem_0xADDR / mem_0xADDR_words expectation holds."""
    if not result.halted:
        return False
    for key, value in expected_result.items():
        match = EXPECTED_KEY.match(key)
        if match is None:
            raise ValueError(f"unknown expected_result key {key!r}")
        addr = int(match.group(1), 16)
        wanted = list(value) if isinstance(value, (list, tuple)) else [value]
        if not memory_holds(result, addr, wanted):
            return False
    return True


def program_word_at(words: list[int], pc: int) -> int:
    """The program's own word at pc, HALT past its end (or outside the code)."""
    index = (pc - spec.CODE_START) // 4
    if 0 <= index < len(words) and (pc - spec.CODE_START) % 4 == 0:
        return words[index]
    return spec.HALT_WORD


def replay_run(
    program: CorpusProgram, max_cycles: int = REPLAY_MAX_CYCLES
) -> tuple[RunResult, list[tuple[list[int], int]]]:
    """Run the program as its own predictor; the result and the (state, word) pairs seen."""
    run = ProgramRun(max_cycles)
    samples = []
    while not run.finished:
        state = run.state()
        word = program_word_at(program.words, run.machine.pc)
        samples.append((state, word))
        run.feed(word)
    return run.result(), samples


def replay(program: CorpusProgram, max_cycles: int = REPLAY_MAX_CYCLES) -> list[tuple[list[int], int]]:
    """Training samples (state, target word) per cycle, the final HALT included."""
    return replay_run(program, max_cycles)[1]
