"""The Reflex training corpus (docs/design.md §7): loading, checking and replaying programs.

The corpus is a dev and CI resource only; nothing here is needed at run time.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import spec
from .errors import one_line, short_repr, user_path
from .files import parse_json, read_regular
from .loop import SNAPSHOT_END, SNAPSHOT_START, ProgramRun, RunResult, memory_holds

CORPUS_ENV_VAR = "REFLEX_CORPUS"
# Replay runs every program to its HALT: a few corpus programs need more cycles
# than the eval's limit (the longest, "write the decimal digits of 999", 484).
# The limit also bounds a replay's time (about 1 s at 10,000 cycles on a slow CPU).
REPLAY_MAX_CYCLES = 10_000
EXPECTED_KEY = re.compile(r"^mem_(0x[0-9a-fA-F]+)(_words)?$")

# Bounds on what a corpus folder (or a training file, reflex_core.training) may
# hold, each well above the released corpus (3,406 programs in 56 family files
# of at most 1.8 MB; at most 39 phrasings a program, the longest 53 characters;
# at most 25 words checked) and far below what exhausts memory or time.
MAX_CORPUS_FILES = 1_000  # family files in one corpus folder (released: 56)
MAX_CORPUS_FILE_BYTES = 16 << 20  # one family file, read whole (released: 1.8 MB)
MAX_PROGRAMS = 100_000  # programs in one corpus folder or JSONL: each is replayed before training
MAX_PROMPTS = 250_000  # phrasings over all programs of one source: each is tokenized and stored padded
MAX_PROMPTS_PER_PROGRAM = 256  # phrasings of one program (released: at most 39)
MAX_PROMPT_CHARS = 2_000  # one phrasing; the model reads only its first max_instr_tokens tokens anyway
MAX_EXPECTED_ENTRIES = 64  # memory checks of one program (released: 1)
MAX_FAMILY_CHARS = 100  # a family is a name shown in reports (released: at most 19)
MAX_CODE_WORDS = (spec.CODE_END - spec.CODE_START) // 4  # a program fills at most the code region
# The memory a RunResult holds (loop.SNAPSHOT_START/END): a check outside it would read as 0.
_CHECKED_MEMORY = (SNAPSHOT_START, SNAPSHOT_END)


class CorpusError(ValueError):
    """A one-line reason a corpus folder or a program record cannot be used."""


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
        try:
            path = user_path(from_env, f"corpus in ${CORPUS_ENV_VAR}")
        except ValueError:
            return None
        return path if (path / "programs").is_dir() else None
    checkout = Path(__file__).resolve().parent.parent
    for folder in (checkout, *checkout.parents):
        candidate = folder / "shared" / "corpus"
        if (candidate / "programs").is_dir():
            return candidate
    return None


def expected_address(key) -> tuple[int, bool]:
    """(address, whether it names words) of an expected_result key: mem_0xADDR or
    mem_0xADDR_words; ValueError in one line for anything else."""
    match = EXPECTED_KEY.match(key) if isinstance(key, str) and len(key) <= 40 else None
    if match is None:
        raise ValueError(
            f"unknown expected_result key '{one_line(key, 40)}' (mem_0xADDR or mem_0xADDR_words)"
        )
    addr = int(match.group(1), 16)
    if addr > spec.MASK32:
        raise ValueError(f"expected_result key {key}: the address is past 32 bits")
    return addr, bool(match.group(2))


def check_expected(expected) -> None:
    """An expected_result as the machine can check it: 1 to MAX_EXPECTED_ENTRIES keys
    (expected_address), each a 32-bit word or a non-empty list of them, every word
    inside the memory a run's result holds. ValueError in one line."""
    if not isinstance(expected, dict) or not expected:
        raise ValueError('needs "expected_result", an object such as {"mem_0x5000": 6}')
    if len(expected) > MAX_EXPECTED_ENTRIES:
        raise ValueError(f"expected_result has {len(expected)} entries; at most {MAX_EXPECTED_ENTRIES}")
    low, high = _CHECKED_MEMORY
    for key, value in expected.items():
        addr, _ = expected_address(key)
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > (high - low) // 4:
            raise ValueError(f"expected_result {key}: a word or a non-empty list of words")
        for item in values:
            if not isinstance(item, int) or isinstance(item, bool) or not -(2**31) <= item <= spec.MASK32:
                raise ValueError(f"expected_result {key}: {short_repr(item, 40)} is not a 32-bit integer")
        if not (low <= addr and addr + 4 * len(values) <= high):
            raise ValueError(
                f"expected_result {key}: outside the memory a run is checked in (0x{low:x} to 0x{high:x})"
            )


def check_prompts(prompts) -> list[str]:
    """A program's phrasings, without duplicates; ValueError in one line unless each
    is a non-empty string within the bounds."""
    if not isinstance(prompts, list) or not prompts:
        raise ValueError("the prompts must be a non-empty list of strings")
    if len(prompts) > MAX_PROMPTS_PER_PROGRAM:
        raise ValueError(f"{len(prompts)} prompts; at most {MAX_PROMPTS_PER_PROGRAM} a program")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"a prompt must be a non-empty string, not {short_repr(prompt, 40)}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"a prompt of {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,}")
    return _unique(prompts)


def check_family(family) -> str:
    """A family name: a short one-line string."""
    if not isinstance(family, str) or not family.strip() or len(family) > MAX_FAMILY_CHARS:
        raise ValueError(f'"family" must be a name of 1 to {MAX_FAMILY_CHARS} characters')
    if one_line(family, MAX_FAMILY_CHARS) != family:
        raise ValueError(f"the family '{one_line(family, 40)}' holds a control character")
    return family


def _words_of(program_bytes) -> list[int]:
    if not isinstance(program_bytes, list) or not program_bytes:
        raise ValueError('"bytes" must be a non-empty list of byte values')
    if len(program_bytes) > 4 * MAX_CODE_WORDS:
        raise ValueError(f"a program of {len(program_bytes):,} bytes does not fit the code region")
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in program_bytes):
        raise ValueError('"bytes" must hold byte values (0 to 255)')
    data = bytes(program_bytes)
    if len(data) % 4:
        raise ValueError(f"program of {len(data)} bytes is not whole words")
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def load_programs(root: Path | str) -> list[CorpusProgram]:
    """Every program of <root>/programs/<category>/<family>.json, in sorted file order,
    within the bounds above; CorpusError in one line naming the file (and the
    program's index in it) otherwise."""
    root = Path(root)
    files = sorted(itertools.islice(root.glob("programs/*/*.json"), MAX_CORPUS_FILES + 1))
    if len(files) > MAX_CORPUS_FILES:
        raise CorpusError(f"{one_line(root)}: more than {MAX_CORPUS_FILES:,} family files")
    programs: list[CorpusProgram] = []
    prompts = 0
    for path in files:
        name = one_line(path.relative_to(root))
        try:
            data = parse_json(read_regular(path, MAX_CORPUS_FILE_BYTES, "corpus file", CorpusError))
        except ValueError as err:  # CorpusError names the file itself
            raise CorpusError(str(err) if isinstance(err, CorpusError) else f"{name}: {err}") from None
        if not isinstance(data, dict) or not isinstance(data.get("programs"), list):
            raise CorpusError(f'{name}: not a family file (an object with a "programs" list)')
        if len(programs) + len(data["programs"]) > MAX_PROGRAMS:
            raise CorpusError(f"{name}: more than {MAX_PROGRAMS:,} programs in the corpus")
        for index, entry in enumerate(data["programs"]):
            try:
                program = _corpus_program(entry, path, data)
            except ValueError as err:
                raise CorpusError(f"{name}: program {index}: {err}") from None
            prompts += len(program.variants)
            if prompts > MAX_PROMPTS:
                raise CorpusError(f"{name}: more than {MAX_PROMPTS:,} prompts in the corpus")
            programs.append(program)
    return programs


def _corpus_program(entry, path: Path, data: dict) -> CorpusProgram:
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    instruction = entry.get("instruction")
    variants = entry.get("instruction_variants", [])
    if not isinstance(variants, list):
        raise ValueError('"instruction_variants" must be a list of strings')
    num_ops = entry.get("num_ops", 0)
    if not isinstance(num_ops, int) or isinstance(num_ops, bool) or not 0 <= num_ops <= MAX_CODE_WORDS:
        raise ValueError('"num_ops" must be a count of instructions')
    check_expected(entry.get("expected_result"))
    return CorpusProgram(
        category=path.parent.name,
        family=check_family(data.get("family", path.stem)),
        instruction=instruction,
        variants=check_prompts([instruction, *variants]),
        words=_words_of(entry.get("bytes")),
        expected_result=entry["expected_result"],
        num_ops=num_ops,
    )


def expected_ok(result: RunResult, expected_result: dict) -> bool:
    """Halted, and every mem_0xADDR / mem_0xADDR_words expectation holds."""
    if not result.halted:
        return False
    for key, value in expected_result.items():
        addr, _ = expected_address(key)
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
