"""The text side: the same backbone writes RV32I assembly as ordinary text, which is
assembled (reflex_core.assembler) and run on a machine of its own, with the same
memory map, seed, HALT fill and step limit as Reflex's. Backend-neutral: a
backend supplies `stream(messages) -> text chunks` (reflex_mlx/text.py).

This is the comparison the demo shows side by side and `eval --text-mode`
scores: a plain LLM writing a program against Reflex driving the CPU itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from . import spec
from .assembler import AssemblyError, assemble, extract_code
from .corpus import program_word_at
from .loop import ProgramRun, RunResult

MAX_NEW_TOKENS = 400

# What the text side is told: the same machine Reflex drives, in words a code model knows.
TEXT_SYSTEM_PROMPT = (
    "You write RISC-V RV32I assembly (base integer instructions only: no mul or div) for a bare "
    f"machine. Code is loaded at 0x{spec.CODE_START:x} and runs from there. Registers x5-x15 are free "
    "to use. Memory: store results as 32-bit words from "
    f"0x{spec.DATA_ADDR:x}; a source buffer at 0x{spec.SOURCE_ADDR:x} holds the words "
    f"{', '.join(map(str, spec.SOURCE_SEED))}; the destination buffer is at 0x{spec.DEST_ADDR:x}; the "
    f"display is at 0x{spec.DISPLAY_ADDR:x}, one ASCII character per 32-bit word. End the program "
    "with `halt: j halt`. Answer with the assembly only, in one ```asm code block."
)

Stream = Callable[[list[dict]], Iterable[str]]


def text_messages(task: str) -> list[dict]:
    return [{"role": "system", "content": TEXT_SYSTEM_PROMPT}, {"role": "user", "content": task}]


@dataclass
class TextOutcome:
    """What became of the text: its program's run, or why it did not assemble."""

    text: str
    words: list[int] | None
    error: str | None  # "line 3: ... ('...')" when it did not assemble
    result: RunResult | None


def run_words(words: list[int], max_cycles: int = spec.EVAL_MAX_CYCLES) -> RunResult:
    """A program of words at CODE_START on a fresh machine (HALT past its end)."""
    run = ProgramRun(max_cycles)
    while not run.finished:
        run.feed(program_word_at(words, run.machine.pc))
    return run.result()


def judge(text: str, max_cycles: int = spec.EVAL_MAX_CYCLES) -> TextOutcome:
    """Assemble what the model wrote and run it."""
    try:
        words = assemble(extract_code(text))
    except AssemblyError as err:
        return TextOutcome(text, None, str(err), None)
    if len(words) > (spec.CODE_END - spec.CODE_START) // 4:
        return TextOutcome(text, words, f"{len(words)} words do not fit the code region", None)
    return TextOutcome(text, words, None, run_words(words, max_cycles))


def write(stream: Stream, task: str) -> Iterator[str]:
    """The text chunks the backend streams for a task."""
    yield from stream(text_messages(task))
