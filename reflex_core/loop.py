"""The cycle loop of docs/design.md §5, independent of the model backend.

A predictor is any callable state (65 words) -> instruction word. `ProgramRun`
holds one machine and advances it one predicted word at a time, so a batched
driver (`run_many`) can ask one model call for the next word of many programs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from capstone import CS_ARCH_RISCV, CS_MODE_RISCV32, Cs

from . import rv32i, spec
from .machine import Machine, MachineError
from .spec import MASK32

# The memory a RunResult keeps: from the data region to the end of the mapping.
SNAPSHOT_START = spec.DATA_ADDR
SNAPSHOT_END = spec.MEMORY_BASE + spec.MEMORY_SIZE

Predictor = Callable[[list[int]], int]
BatchPredictor = Callable[[list[list[int]]], Sequence[int]]

_disassembler = Cs(CS_ARCH_RISCV, CS_MODE_RISCV32)


@functools.lru_cache(maxsize=4096)
def disassemble(word: int) -> str:
    """Assembly text of one word; offsets are relative, so the pc does not matter."""
    word &= MASK32
    for _address, _size, mnemonic, operands in _disassembler.disasm_lite(word.to_bytes(4, "little"), 0):
        return f"{mnemonic} {operands}".strip()
    return f".word 0x{word:08x} (illegal)"


@dataclass(frozen=True)
class Cycle:
    """One step of a run: where the word was written, the word, its assembly."""

    pc: int
    word: int
    asm: str

    @property
    def op(self) -> dict:
        """The decoded instruction, e.g. {"op": "addi", "rd": 10, "rs1": 0, "imm": 5}."""
        return rv32i.decode(self.word)


@dataclass
class RunResult:
    """How a run ended, its trace, and the memory from DATA_ADDR to the end of the mapping.

    The prompt fields and `seconds` are filled in where a prompt was run (reflex_core.runs);
    `memory()` gives the reported windows.
    """

    outcome: str  # "halted" | "error" | "limit"
    error: str | None
    error_pc: int | None
    cycles: list[Cycle]
    registers: list[int] = field(default_factory=list)
    memory_snapshot: bytes = b""
    prompt: str = ""
    prompt_tokens: int = 0  # after truncation to max_instr_tokens
    truncation: str = ""  # one line saying how the prompt was cut, "" when it was not
    seconds: float = 0.0  # wall time of the run (of the whole batch, for a batched run)

    @property
    def halted(self) -> bool:
        return self.outcome == "halted"

    @property
    def truncated(self) -> bool:
        return bool(self.truncation)

    @property
    def summary(self) -> str:
        """How it ended, in the words every command and the demo print after "outcome: "."""
        if self.outcome == "error":
            return f"error ({self.error})"
        if self.outcome == "limit":
            return f"limit (stopped after {len(self.cycles)} cycles)"
        return f"halted after {len(self.cycles)} cycles"

    def words(self, addr: int, n: int) -> list[int]:
        """n words of the final memory from addr; outside the snapshot reads as 0."""
        out = []
        for i in range(n):
            offset = addr + 4 * i - SNAPSHOT_START
            if 0 <= offset and offset + 4 <= len(self.memory_snapshot):
                out.append(int.from_bytes(self.memory_snapshot[offset : offset + 4], "little"))
            else:
                out.append(0)
        return out

    def memory(self) -> dict[str, list[int]]:
        """The reported windows: {"0x5000": 16 words, ...}."""
        return {f"0x{addr:x}": self.words(addr, spec.WINDOW_WORDS) for addr in spec.REPORTED_WINDOWS}


class ProgramRun:
    """One program being driven word by word: call state(), predict, then feed(word)."""

    def __init__(
        self,
        max_cycles: int = spec.DEFAULT_MAX_CYCLES,
        machine: Machine | None = None,
        keep_state: bool = False,
    ):
        """A given machine is reset first, unless keep_state (a refinement pass)."""
        self.machine = machine if machine is not None else Machine()
        if machine is not None and not keep_state:
            self.machine.reset()
        self.max_cycles = max_cycles
        self.cycles: list[Cycle] = []
        self.outcome: str | None = None if max_cycles > 0 else "limit"
        self.error: str | None = None
        self.error_pc: int | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def state(self) -> list[int]:
        return self.machine.state()

    def feed(self, word: int) -> bool:
        """Carry out one cycle with the predicted word; True once the run has ended."""
        if self.finished:
            raise RuntimeError("feed() on a finished run")
        word &= MASK32
        pc = self.machine.pc
        self.cycles.append(Cycle(pc, word, disassemble(word)))
        try:
            self.machine.write_word(pc, word)
            if word == spec.HALT_WORD:
                self.outcome = "halted"
                return True
            if word == 0:
                self._fail(f"zero word at pc 0x{pc:x}", pc)
                return True
            self.machine.step()
        except MachineError as error:
            self._fail(str(error), error.pc)
            return True
        if len(self.cycles) >= self.max_cycles:
            self.outcome = "limit"
        return self.finished

    def _fail(self, message: str, pc: int) -> None:
        self.outcome, self.error, self.error_pc = "error", message, pc

    def result(self) -> RunResult:
        if not self.finished:
            raise RuntimeError("result() before the run has ended")
        return RunResult(
            outcome=self.outcome,
            error=self.error,
            error_pc=self.error_pc,
            cycles=list(self.cycles),
            registers=self.machine.registers(),
            memory_snapshot=self.machine.snapshot(SNAPSHOT_START, SNAPSHOT_END),
        )


def steps(
    predict: Predictor, max_cycles: int = spec.DEFAULT_MAX_CYCLES, program: ProgramRun | None = None
) -> Generator[Cycle, None, RunResult]:
    """Drive one program, yielding each cycle as it happens; returns the RunResult
    (`result = yield from steps(...)`). A given program (a refinement pass) is driven as it is."""
    program = program if program is not None else ProgramRun(max_cycles)
    while not program.finished:
        program.feed(predict(program.state()))
        yield program.cycles[-1]
    return program.result()


def run(
    predict: Predictor,
    max_cycles: int = spec.DEFAULT_MAX_CYCLES,
    on_cycle: Callable[[Cycle], None] | None = None,
) -> RunResult:
    """Drive one program to its end; on_cycle sees each cycle as it happens."""
    return drain(steps(predict, max_cycles), on_cycle)


def drain(
    cycles: Generator[Cycle, None, RunResult], on_cycle: Callable[[Cycle], None] | None = None
) -> RunResult:
    """The RunResult a cycle generator (`steps`, or the API's `stream`) returns once
    exhausted; on_cycle sees each cycle on the way."""
    while True:
        try:
            cycle = next(cycles)
        except StopIteration as end:
            return end.value
        if on_cycle is not None:
            on_cycle(cycle)


def run_many(
    predict_many: BatchPredictor,
    count: int,
    max_cycles: int | Sequence[int] = spec.DEFAULT_MAX_CYCLES,
    with_indices: bool = False,
) -> list[RunResult]:
    """Drive count programs together, one predictor call per cycle for all unfinished ones;
    max_cycles: one limit for all, or each program's own.

    predict_many(states) -> words, states in program order; with with_indices,
    predict_many(indices, states) so a predictor can tell which program (which
    prompt) each state belongs to once some have finished.
    """
    limits = [max_cycles] * count if isinstance(max_cycles, int) else list(max_cycles)
    if len(limits) != count:
        raise ValueError(f"{len(limits)} cycle limits for {count} programs")
    programs = [ProgramRun(limit) for limit in limits]
    active = [i for i, program in enumerate(programs) if not program.finished]
    while active:
        states = [programs[i].state() for i in active]
        words = predict_many(active, states) if with_indices else predict_many(states)
        if len(words) != len(active):
            raise ValueError(f"predictor returned {len(words)} words for {len(active)} states")
        active = [i for i, word in zip(active, words) if not programs[i].feed(int(word))]
    return [program.result() for program in programs]


_CHECK_BASES = {
    "mem": spec.DATA_ADDR,
    "seq": spec.DATA_ADDR,
    "dst": spec.DEST_ADDR,
    "disp": spec.DISPLAY_ADDR,
}


def check(result: RunResult, kind: str, expected) -> bool:
    """The eval's pass test (§5): halted, and memory holds the expected value."""
    if kind not in _CHECK_BASES:
        raise ValueError(f"unknown check kind {kind!r}")
    if kind == "mem":
        wanted = [int(expected)]
    elif kind == "disp":
        wanted = [ord(ch) for ch in expected]
    else:
        wanted = [int(v) for v in expected]
    return result.halted and memory_holds(result, _CHECK_BASES[kind], wanted)


def memory_holds(result: RunResult, addr: int, expected_words: Sequence[int]) -> bool:
    """Consecutive words from addr equal expected_words, compared as unsigned 32-bit."""
    wanted = [v & MASK32 for v in expected_words]
    return result.words(addr, len(wanted)) == wanted
