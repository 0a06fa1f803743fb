"""Length generalisation: task families with a size parameter, run at multiples of the
size range the training corpus covers.

Each task's expected result comes from the machine: the family's reference program (the
corpus's own program shape, written as assembly) runs on the emulator for that size, and
its memory is the answer; `python_expected` is an independent formula the tests hold it
to. Sizes whose result no longer fits a 32-bit word are left out (the "fits" limit).

At multiplier x1 the sizes span the training range [lo, hi]; at xm (m > 1) they span
(hi * m / 2, hi * m], so each multiplier is longer than every one before it. The cycle
limit of a run is max(the eval's 400, LIMIT_FACTOR x the reference program's cycles).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from .. import spec
from ..assembler import assemble
from ..corpus import CorpusProgram, replay_run
from ..loop import RunResult, check, run_many

MULTIPLIERS = (1, 2, 4, 8, 16, 32)
LIMIT_FACTOR = 2  # a run may take twice the reference program's cycles
PER_FAMILY = 3  # sizes per family and multiplier by default

# The training sizes of each family, (lo, hi), measured once from the corpus
# (/work/shared/corpus, 3,303 programs) by `corpus_ranges` below:
#   python -c "from reflex_core.analysis.length import corpus_ranges; print(corpus_ranges('CORPUS'))"
# (docs/analysis.md has the output; tests/core/test_analysis.py re-measures it where the
# corpus is at hand). The shipped command never reads the corpus.
CORPUS_RANGES = {
    "count_down": (2, 25),
    "count_up": (2, 20),
    "sum": (2, 100),
    "fibonacci": (2, 15),
    "memcpy": (1, 12),
    "multiply": (1, 7),
    "power": (2, 10),
    "factorial": (1, 10),
}

# The published comparison (State-Flow Machine): pass rate at a length multiplier.
PUBLISHED = {
    "citation": "State-Flow Machine, as quoted in the reflex-mlx issue 'What Reflex learned'",
    "rows": [
        {"model": "State-Flow Machine (state slots)", "x4": 0.62, "x8": 0.35},
        {"model": "transformers", "x4": 0.02, "x8": None},
    ],
}
MULTIPLY_BY = 3  # multiply: 3 x B, the loop count B scaled (3 is inside the corpus's 1..5)
POWER_BASE = 2  # power: 2^N, the exponent N scaled (the corpus's commonest base)


def _count_down(n: int) -> str:
    return (
        f"li t0, {n}\nlui t1, 5\nloop: beqz t0, done\nsw t0, 0(t1)\naddi t1, t1, 4\n"
        "addi t0, t0, -1\nj loop\ndone: j done\n"
    )


def _count_up(n: int) -> str:
    return (
        f"li t0, 1\nli t2, {n + 1}\nlui t1, 5\nloop: beq t0, t2, done\nsw t0, 0(t1)\n"
        "addi t1, t1, 4\naddi t0, t0, 1\nj loop\ndone: j done\n"
    )


def _sum(n: int) -> str:
    return (
        f"mv t0, zero\nli t1, 1\nli t2, {n + 1}\nloop: beq t1, t2, done\nadd t0, t0, t1\n"
        "addi t1, t1, 1\nj loop\ndone: lui a0, 5\nsw t0, 0(a0)\nhalt: j halt\n"
    )


def _fibonacci(n: int) -> str:
    return (
        f"mv t0, zero\nli t1, 1\nli t2, {n}\nlui a0, 5\nloop: beqz t2, done\nsw t0, 0(a0)\n"
        "add s0, t0, t1\nadd t0, t1, zero\nadd t1, s0, zero\naddi a0, a0, 4\naddi t2, t2, -1\n"
        "j loop\ndone: j done\n"
    )


def _memcpy(n: int) -> str:
    return (
        f"lui t0, 5\naddi t0, t0, 0x100\nlui t1, 5\naddi t1, t1, 0x200\nmv t2, zero\nli s0, {n}\n"
        "loop: beq t2, s0, done\nlw a0, 0(t0)\nsw a0, 0(t1)\naddi t0, t0, 4\naddi t1, t1, 4\n"
        "addi t2, t2, 1\nj loop\ndone: j done\n"
    )


def _multiply(n: int) -> str:
    return (
        f"li t0, {MULTIPLY_BY}\nli t1, {n}\nmv t2, zero\nloop: beqz t1, done\nadd t2, t2, t0\n"
        "addi t1, t1, -1\nj loop\ndone: lui a0, 5\nsw t2, 0(a0)\nhalt: j halt\n"
    )


def _power(n: int) -> str:
    return (
        f"li t0, {POWER_BASE}\nli t1, {n}\nli t2, 1\nouter: beqz t1, done\nmv s0, zero\nmv s1, zero\n"
        "inner: beq s1, t0, next\nadd s0, s0, t2\naddi s1, s1, 1\nj inner\n"
        "next: add t2, s0, zero\naddi t1, t1, -1\nj outer\ndone: lui a0, 5\nsw t2, 0(a0)\nhalt: j halt\n"
    )


def _factorial(n: int) -> str:
    return (
        f"li t0, {n}\nli t1, 1\nli t2, 2\nouter: blt t0, t2, done\nmv s0, zero\nmv s1, zero\n"
        "inner: bge s1, t2, next\nadd s0, s0, t1\naddi s1, s1, 1\nj inner\n"
        "next: add t1, s0, zero\naddi t2, t2, 1\nj outer\ndone: lui a0, 5\nsw t1, 0(a0)\nhalt: j halt\n"
    )


def _fib_list(n: int) -> list[int]:
    out, a, b = [], 0, 1
    for _ in range(n):
        out.append(a)
        a, b = b, a + b
    return out


def _memcpy_list(n: int) -> list[int]:
    """A forward word copy from 0x5100 to 0x5200 (64 words on): past the 8 seeds the source
    is zero, and past 64 words it reads what the copy itself wrote."""
    gap = (spec.DEST_ADDR - spec.SOURCE_ADDR) // 4
    words = list(spec.SOURCE_SEED) + [0] * (gap + n)
    for i in range(n):
        words[gap + i] = words[i]
    return words[gap : gap + n]


@dataclass(frozen=True)
class Family:
    name: str
    prompt: str  # the eval's phrasing where it has the family, else the corpus's; "{n}" the size
    check: str  # mem | seq | dst (reflex_core.loop.check)
    source: Callable[[int], str]  # the reference program's assembly for size n
    python_expected: Callable[[int], object]  # the same answer by a formula
    fits: int | None = None  # the largest size whose result fits a 32-bit word

    @property
    def trained(self) -> tuple[int, int]:
        return CORPUS_RANGES[self.name]


FAMILIES = {
    f.name: f
    for f in (
        Family(
            "count_down",
            "count down from {n} to 1 and store each value",
            "seq",
            _count_down,
            lambda n: list(range(n, 0, -1)),
        ),
        Family(
            "count_up",
            "count up from 1 to {n} and store each value",
            "seq",
            _count_up,
            lambda n: list(range(1, n + 1)),
        ),
        Family("sum", "compute 1 + 2 + ... + {n} and store the sum", "mem", _sum, lambda n: n * (n + 1) // 2),
        Family("fibonacci", "store the first {n} Fibonacci numbers", "seq", _fibonacci, _fib_list, fits=48),
        Family("memcpy", "copy {n} words from source to destination", "dst", _memcpy, _memcpy_list),
        Family(
            "multiply",
            "multiply " + str(MULTIPLY_BY) + " by {n}",
            "mem",
            _multiply,
            lambda n: MULTIPLY_BY * n,
        ),
        Family("power", str(POWER_BASE) + "^{n}", "mem", _power, lambda n: POWER_BASE**n, fits=31),
        Family(
            "factorial",
            "compute {n} factorial and store it",
            "mem",
            _factorial,
            lambda n: _factorial_value(n),
            fits=12,
        ),
    )
}


def _factorial_value(n: int) -> int:
    out = 1
    for k in range(2, n + 1):
        out *= k
    return out


def band(family: Family, multiplier: int) -> tuple[int, int] | None:
    """The sizes (first, last) of a family at a multiplier; None where none fits 32 bits."""
    lo, hi = family.trained
    first, last = (lo, hi) if multiplier == 1 else (hi * multiplier // 2 + 1, hi * multiplier)
    if family.fits is not None:
        last = min(last, family.fits)
    return (first, last) if first <= last else None


def sizes(family: Family, multiplier: int, count: int) -> list[int]:
    """`count` sizes spread evenly over the band, both ends included (fewer if the band is narrow)."""
    span = band(family, multiplier)
    if span is None or count < 1:
        return []
    first, last = span
    if count == 1:
        return [last]
    return sorted({round(first + (last - first) * i / (count - 1)) for i in range(count)})


@dataclass
class LengthTask:
    family: str
    multiplier: int
    size: int
    prompt: str
    check: str
    expected: object  # what the machine computed with the reference program
    reference_words: list[int]  # the word the reference program executes at each cycle, HALT last
    max_cycles: int

    @property
    def reference_cycles(self) -> int:
        return len(self.reference_words)


def reference_run(family: Family, n: int) -> tuple[RunResult, list[int]]:
    """Run the family's reference program for size n on the machine: (result, word per cycle)."""
    words = assemble(family.source(n))
    program = CorpusProgram("", family.name, "", [], words, {}, len(words))
    result, samples = replay_run(program, max_cycles=10 * _estimate(family, n) + 1000)
    if not result.halted:
        raise RuntimeError(f"the reference program of {family.name} {n} did not halt: {result.summary}")
    return result, [word for _, word in samples]


def _estimate(family: Family, n: int) -> int:
    """An upper bound on the cycles the reference program takes (its loops' work)."""
    if family.name == "factorial":
        return 8 * n * n + 50
    if family.name == "power":
        return 8 * n * POWER_BASE + 50
    return 8 * n + 50


def machine_expected(family: Family, n: int, result: RunResult) -> object:
    """What memory holds where the family's check looks (the check's own terms)."""
    if family.check == "mem":
        return result.words(spec.DATA_ADDR, 1)[0]
    base = spec.DATA_ADDR if family.check == "seq" else spec.DEST_ADDR
    return result.words(base, n)


def make_task(family: Family, multiplier: int, n: int) -> LengthTask:
    result, trace = reference_run(family, n)
    return LengthTask(
        family=family.name,
        multiplier=multiplier,
        size=n,
        prompt=family.prompt.format(n=n),
        check=family.check,
        expected=machine_expected(family, n, result),
        reference_words=trace,
        max_cycles=cycle_limit(len(trace)),
    )


def cycle_limit(reference_cycles: int) -> int:
    return max(spec.EVAL_MAX_CYCLES, LIMIT_FACTOR * reference_cycles)


def make_tasks(
    families: Iterable[str] | None = None,
    multipliers: Sequence[int] = MULTIPLIERS,
    per_family: int = PER_FAMILY,
) -> list[LengthTask]:
    """Every (family, multiplier, size) task, its expected result computed on the machine."""
    names = list(FAMILIES) if families is None else list(families)
    return [
        make_task(FAMILIES[name], m, n)
        for name in names
        for m in multipliers
        for n in sizes(FAMILIES[name], m, per_family)
    ]


def first_wrong(words: Sequence[int], reference: Sequence[int]) -> int | None:
    """The first cycle (0-based) whose word is not the reference program's, None if none is."""
    for i, (word, want) in enumerate(zip(words, reference)):
        if word != want:
            return i
    return None if len(words) == len(reference) else min(len(words), len(reference))


@dataclass
class LengthRun:
    task: LengthTask
    passed: bool
    outcome: str
    cycles: int
    first_wrong: int | None
    in_codebook: bool  # every word of the reference program is a codebook row
    error: str | None = None
    words: list[int] = field(default_factory=list)

    def as_json(self) -> dict:
        task = asdict(self.task)
        task["reference_words"] = [f"{w:08x}" for w in task["reference_words"]]
        return {
            **task,
            "passed": self.passed,
            "outcome": self.outcome,
            "cycles": self.cycles,
            "first_wrong": self.first_wrong,
            "in_codebook": self.in_codebook,
            "error": self.error,
            "words": [f"{w:08x}" for w in self.words],
        }


def run_tasks(
    make_batch_predictor: Callable[[list[str]], Callable],
    tasks: Sequence[LengthTask],
    codebook: Iterable[int],
    progress: bool = False,
) -> list[LengthRun]:
    """All tasks in lock-step (one model call a cycle for every unfinished run, as the eval
    runs), each under its own cycle limit; scored against the machine's expected result."""
    if not tasks:
        return []
    words = set(codebook)
    predict = make_batch_predictor([t.prompt for t in tasks])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max(t.max_cycles for t in tasks), desc="length", unit="cycle", leave=False)

    def counted(indices, states):
        out = predict(indices, states)
        if bar is not None:
            bar.set_postfix(running=len(indices))
            bar.update(1)
        return out

    results = run_many(counted, len(tasks), max_cycles=[t.max_cycles for t in tasks], with_indices=True)
    if bar is not None:
        bar.close()
    runs = []
    for task, result in zip(tasks, results):
        trace = [c.word for c in result.cycles]
        runs.append(
            LengthRun(
                task=task,
                passed=check(result, task.check, task.expected),
                outcome=result.outcome,
                cycles=len(trace),
                first_wrong=first_wrong(trace, task.reference_words),
                in_codebook=all(w in words for w in task.reference_words),
                error=result.error,
                words=trace,
            )
        )
    return runs


def summarise(runs: Sequence[LengthRun], multipliers: Sequence[int]) -> dict:
    """Pass rate per family and multiplier (None where no task ran), overall per
    multiplier, the median cycle of the first wrong word, and how many tasks were
    reachable at all (every reference word in the codebook)."""
    table: dict[str, dict[str, dict]] = {}
    for name in FAMILIES:
        rows = {}
        for m in multipliers:
            mine = [r for r in runs if r.task.family == name and r.task.multiplier == m]
            if mine:
                rows[f"x{m}"] = _cell(mine)
        if rows:
            table[name] = rows
    overall = {f"x{m}": _cell([r for r in runs if r.task.multiplier == m]) for m in multipliers}
    return {"families": table, "overall": {k: v for k, v in overall.items() if v["tasks"]}}


def _cell(runs: Sequence[LengthRun]) -> dict:
    wrong = sorted(r.first_wrong for r in runs if not r.passed and r.first_wrong is not None)
    return {
        "tasks": len(runs),
        "passed": sum(r.passed for r in runs),
        "pass_rate": sum(r.passed for r in runs) / len(runs) if runs else None,
        "reachable": sum(r.in_codebook for r in runs),
        "median_first_wrong": wrong[len(wrong) // 2] if wrong else None,
    }


# --------------------------------------------------------- the training ranges
_SIZE_OF = {
    "count_down": ("count_down", lambda p: _list_length(p.expected_result)),
    "count_up": ("count_up", lambda p: _list_length(p.expected_result)),
    "fibonacci": ("fibonacci", lambda p: _list_length(p.expected_result)),
    "memcpy": ("memcpy", lambda p: _list_length(p.expected_result)),
    "sum": ("sum_range", lambda p: _numbers(p.instruction)[-1] if _numbers(p.instruction)[0] == 1 else None),
    "multiply": ("mul_by_repeated_add", lambda p: _numbers(p.instruction)[-1]),
    "power": ("power", lambda p: _numbers(p.instruction)[-1]),
    "factorial": ("factorial", lambda p: _numbers(p.instruction)[0]),
}


def _list_length(expected: dict) -> int | None:
    """The length of the word list a program's expected result holds (the keys vary)."""
    lists = [v for v in expected.values() if isinstance(v, list)]
    return len(lists[0]) if len(lists) == 1 else None


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def corpus_ranges(root) -> dict[str, tuple[int, int]]:
    """(lo, hi) of each family's size over a corpus folder's programs (sum: the programs
    that start at 1; multiply: the loop count B of "multiply A by B"; power: the exponent)."""
    from ..corpus import load_programs

    programs = load_programs(root)
    out = {}
    for name, (corpus_family, size_of) in _SIZE_OF.items():
        found = [size_of(p) for p in programs if p.family == corpus_family]
        found = [n for n in found if n is not None]
        out[name] = (min(found), max(found))
    return out
