"""RV32I assembly text -> instruction words, for the text side of the demo and
`eval --text-mode` (and for user programs given as assembly).

The assembler is bronzebeard, a maintained pure-Python RISC-V assembler:
labels, ABI register names and the usual pseudo-instructions (li, la, mv, j,
bnez, ret, ...). This module only prepares what a language model writes
(code fences, assembler directives, `main:`-style labels are fine) and turns
bronzebeard's errors into one line naming the line and the reason.
`tests/core/test_assembler.py` checks it against every program of the
training corpus, bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import rv32i

FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|\Z)", re.S)
# Directives a model writes around its code; bronzebeard needs none of them.
DIRECTIVE = re.compile(r"^\s*\.(text|data|globl|global|section|align|p2align|type|size|option|file)\b.*$")
# `label: instruction` on one line, as models write it; bronzebeard wants the label alone.
LABELLED = re.compile(r"^(\s*[A-Za-z_.$][\w.$]*:)\s*(\S.*)$")


@dataclass
class AssemblyError(Exception):
    """Where and why the text does not assemble."""

    line: int | None
    text: str
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return (
            f"{where}{self.reason} ({self.text.strip()!r})" if self.text.strip() else f"{where}{self.reason}"
        )


def extract_code(answer: str) -> str:
    """The assembly in a model's answer: its first fenced block, else the whole text."""
    match = FENCE.search(answer)
    return match.group(1) if match else answer


def clean(source: str) -> tuple[str, list[int]]:
    """The text bronzebeard takes (directives dropped, `label: instr` split in two),
    and for each of its lines the line of `source` it came from."""
    lines, origin = [], []
    for number, line in enumerate(source.splitlines(), start=1):
        if DIRECTIVE.match(line):
            line = ""
        match = LABELLED.match(line.split("#", 1)[0])
        parts = [match.group(1), match.group(2)] if match else [line]
        lines += parts
        origin += [number] * len(parts)
    return "\n".join(lines), origin


def assemble(source: str) -> list[int]:
    """The words of an RV32I program (no compressed instructions), placed from
    address 0: branches and jumps are pc-relative, so it runs at CODE_START as is."""
    from bronzebeard import asm

    text, origin = clean(source)
    if not text.strip():
        raise AssemblyError(None, "", "no instructions")
    try:
        binary = asm.assemble(text, compress=False)
    except asm.AssemblerError as err:
        line = getattr(err, "line", None)
        number = getattr(line, "number", None) if line is not None else None
        if isinstance(number, int) and 0 < number <= len(origin):
            number = origin[number - 1]
            contents = source.splitlines()[number - 1]
        else:
            contents = getattr(line, "contents", "") if line is not None else ""
        raise AssemblyError(number, contents or "", err.message) from None
    except Exception as err:  # the assembler's own faults on odd text: still one line
        raise AssemblyError(None, "", f"{type(err).__name__}: {err}") from None
    if len(binary) % 4:
        raise AssemblyError(None, "", f"{len(binary)} bytes is not a whole number of 32-bit words")
    return [int.from_bytes(binary[i : i + 4], "little") for i in range(0, len(binary), 4)]


def canonical(word: int) -> str:
    """One instruction word as plain assembly (no aliases, numeric offsets), from
    the project's own decoder: what the corpus check feeds the assembler."""
    op = rv32i.decode(word)
    name = op["op"]
    if name == "illegal":
        raise ValueError(f"0x{word:08x} is not an RV32I instruction")
    reg = lambda key: f"x{op[key]}"
    kind = op["format"]
    if name in ("ecall", "ebreak", "fence"):
        return name
    if kind == "R":
        return f"{name} {reg('rd')}, {reg('rs1')}, {reg('rs2')}"
    if kind == "U":
        return f"{name} {reg('rd')}, {op['imm']}"
    if kind == "J":
        return f"{name} {reg('rd')}, {op['imm']}"
    if kind == "B":
        return f"{name} {reg('rs1')}, {reg('rs2')}, {op['imm']}"
    if kind == "S":
        return f"{name} {reg('rs2')}, {op['imm']}({reg('rs1')})"
    if name in ("lb", "lh", "lw", "lbu", "lhu", "jalr"):
        return f"{name} {reg('rd')}, {op['imm']}({reg('rs1')})"
    return f"{name} {reg('rd')}, {reg('rs1')}, {op['imm']}"
