"""RV32I assembly text -> instruction words: the project's own parser over its own
encoders (reflex_core.rv32i), for the text side of the demo and `eval --text-mode`,
and for training programs given as assembly.

The text is untrusted: it is what a language model wrote or what a data file
holds. So this parser evaluates nothing (no expressions: every operand is a
literal, a register, a label or a constant defined as a literal), reads no file
(no include-like directive; a text that names a path is just text), and is
bounded in text size (checked before anything else), lines, line length,
operands, labels and words. Every refusal is an AssemblyError naming the line
and the reason. Why our own parser, the grammar and the bounds: docs/design.md
§9. The pseudo-instructions expand to the words bronzebeard gives
(`tests/core/test_assembler.py` checks every corpus program bit for bit, and
generated programs against bronzebeard as an oracle).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import rv32i, spec
from .errors import short_repr

# ------------------------------------------------------------------ bounds
# The code region holds this many words; a program that does not fit cannot run.
MAX_WORDS = (spec.CODE_END - spec.CODE_START) // 4
# Room for every word on a line of its own with a label, a comment and a blank line beside it.
MAX_LINES = 4 * MAX_WORDS
# An instruction with a long comment is under 200 characters; five times that for any comment.
MAX_LINE_CHARS = 1024
# Checked first, before any work (in characters: the text is a str): MAX_LINES of 64 on average.
MAX_TEXT_CHARS = MAX_LINES * 64
# One label for each word of the code region is more than any program needs.
MAX_LABELS = MAX_WORDS
# A descriptive name is under 40 characters; longer is no program's need.
MAX_LABEL_CHARS = 128
# The longest operand form, `lw rd, %lo(NAME)(rs1)`, is 8 tokens: more is no instruction.
MAX_OPERAND_TOKENS = 12
# No wall-time guard: each line is at most MAX_LINE_CHARS, read by anchored regexes
# without nested repetition, so the work is linear in the (bounded) text.

FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|\Z)", re.S)

ABI_NAMES = (
    "zero ra sp gp tp t0 t1 t2 s0 s1 a0 a1 a2 a3 a4 a5 a6 a7 s2 s3 s4 s5 s6 s7 s8 s9 s10 s11 t3 t4 t5 t6"
)
REGISTERS = {f"x{i}": i for i in range(32)} | dict(zip(ABI_NAMES.split(), range(32))) | {"fp": 8}

# Directives a model writes around its code; none changes the words, so they are dropped.
IGNORED_DIRECTIVES = {"text", "data", "globl", "global", "section", "align", "p2align", "type"}
IGNORED_DIRECTIVES |= {"size", "option", "file"}
CONSTANT_DIRECTIVES = {"equ", "set"}  # `.equ NAME, 5`: the GNU spelling of `NAME = 5`
# Other assemblers' (bronzebeard's) directives, named in their refusal: no data, files or padding here.
FOREIGN_DIRECTIVES = {"include", "include_bytes", "align", "string", "pack", "error"}
FOREIGN_DIRECTIVES |= {"bytes", "shorts", "ints", "longs", "longlongs", "db", "dh", "dw", "dd"}

NAME = r"[A-Za-z_.$][A-Za-z0-9_.$]*"
LABEL = re.compile(rf"({NAME})[ \t]*:")
CONSTANT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(\S.*)")
DIRECTIVE = re.compile(r"\.([A-Za-z0-9_]+)")
MNEMONIC = re.compile(r"[A-Za-z][A-Za-z0-9_.]*")
IS_NAME = re.compile(NAME)
INTEGER = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|0|[1-9][0-9]*)")
CHAR = r"'(?:\\.|[^\\'])'"
CHAR_LITERAL = re.compile(CHAR)
COMMENT_OR_QUOTE = re.compile(r"[#;']|//")
# One token: a character literal, a parenthesis, or a run of anything else but
# separators (whitespace and commas, as in the assemblers models learned from).
TOKEN = re.compile(rf"[ \t,]*(?:({CHAR})|([()])|([^ \t,()']+)|(\S))")
ESCAPES = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, "'": 39, '"': 34}

WORD_RANGE = (-(1 << 31), (1 << 32) - 1)  # li and %hi/%lo take a 32-bit value, signed or not
IMM12 = (-2048, 2047)
SHAMT = (0, 31)
UPPER = (-(1 << 19), (1 << 20) - 1)  # lui/auipc: the upper 20 bits, signed or not
BRANCH = (-(1 << 12), (1 << 12) - 2)
JUMP = (-(1 << 20), (1 << 20) - 2)

R_OPS = {"add", "sub", "sll", "slt", "sltu", "xor", "srl", "sra", "or", "and"}
I_OPS = {"addi", "slti", "sltiu", "xori", "ori", "andi"}
SHIFT_OPS = {"slli", "srli", "srai"}
LOAD_OPS = {"lb", "lh", "lw", "lbu", "lhu"}
STORE_OPS = {"sb", "sh", "sw"}
BRANCH_OPS = {"beq", "bne", "blt", "bge", "bltu", "bgeu"}
BASE_OPS = R_OPS | I_OPS | SHIFT_OPS | LOAD_OPS | STORE_OPS | BRANCH_OPS | {"lui", "auipc", "jalr"}
ENCODER = {name: getattr(rv32i, name + "_" if name in ("or", "and") else name) for name in BASE_OPS}

# Pseudo-instructions of a destination and a source register, expanded as bronzebeard
# and the RISC-V manual do.
UNARY = {
    "mv": lambda rd, rs: rv32i.addi(rd, rs, 0),
    "not": lambda rd, rs: rv32i.xori(rd, rs, -1),
    "neg": lambda rd, rs: rv32i.sub(rd, 0, rs),
    "seqz": lambda rd, rs: rv32i.sltiu(rd, rs, 1),
    "snez": lambda rd, rs: rv32i.sltu(rd, 0, rs),
    "sltz": lambda rd, rs: rv32i.slt(rd, rs, 0),
    "sgtz": lambda rd, rs: rv32i.slt(rd, 0, rs),
}
# Branches against zero: (branch, whether the register is rs1 (else rs2, with x0 as rs1)).
BRANCH_ZERO = {
    "beqz": ("beq", True), "bnez": ("bne", True), "bgez": ("bge", True),
    "bltz": ("blt", True), "blez": ("bge", False), "bgtz": ("blt", False),
}  # fmt: skip
BRANCH_SWAPPED = {"bgt": "blt", "ble": "bge", "bgtu": "bltu", "bleu": "bgeu"}
JUMPS = {"j": 0, "call": 1, "tail": 0}  # jal with this rd to a target; `jal target` is call's
FENCE_ALL = 0b1111  # `fence` alone orders everything: iorw, iorw
MNEMONICS = (
    BASE_OPS | set(UNARY) | set(BRANCH_ZERO) | set(BRANCH_SWAPPED) | set(JUMPS)
    | {"jal", "jr", "ret", "nop", "li", "fence", "ecall", "ebreak"}
)  # fmt: skip


@dataclass
class AssemblyError(Exception):
    """Where and why the text does not assemble."""

    line: int | None
    text: str
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        shown = self.text.strip()
        return f"{where}{self.reason} ({short_repr(shown)})" if shown else f"{where}{self.reason}"


def extract_code(answer: str) -> str:
    """The assembly in a model's answer: its first fenced block, else the whole text."""
    check_size(answer)
    match = FENCE.search(answer)
    return match.group(1) if match else answer


def check_size(text: str) -> None:
    if not isinstance(text, str):
        raise AssemblyError(None, "", f"assembly must be text, not {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise AssemblyError(None, "", f"{len(text):,} characters is more than {MAX_TEXT_CHARS:,}")


@dataclass
class Statement:
    """One instruction as written: its line, mnemonic and operand tokens."""

    line: int
    text: str
    op: str
    tokens: list[str]
    address: int = 0
    size: int = 1  # in words


class Parser:
    """Two passes: read every line (labels, constants, statements), then place and
    encode. Labels and constants are known everywhere, whatever their order."""

    def __init__(self, source: str):
        check_size(source)
        self.lines = source.split("\n")
        if len(self.lines) > MAX_LINES:
            raise AssemblyError(None, "", f"{len(self.lines):,} lines is more than {MAX_LINES:,}")
        self.labels: dict[str, int] = {}  # name -> index into statements (then: byte address)
        self.constants: dict[str, int] = {}
        self.defined_at: dict[str, int] = {}
        self.statements: list[Statement] = []
        self.here: Statement | None = None

    # ------------------------------------------------------------ errors
    def fail(self, reason: str):
        """Refuse the statement at hand, naming its line."""
        here = self.here
        raise AssemblyError(here.line if here else None, here.text if here else "", reason)

    # ------------------------------------------------------------ pass 1
    def read(self) -> None:
        for number, raw in enumerate(self.lines, start=1):
            if len(raw) > MAX_LINE_CHARS:
                raise AssemblyError(number, raw[:40], f"a line of more than {MAX_LINE_CHARS} characters")
            self.read_line(number, raw.rstrip("\r"))

    def define(self, name: str, number: int, raw: str) -> None:
        if len(name) > MAX_LABEL_CHARS:
            raise AssemblyError(number, raw, f"a name of more than {MAX_LABEL_CHARS} characters")
        if name in self.defined_at:
            raise AssemblyError(number, raw, f"{name!r} is already defined on line {self.defined_at[name]}")
        if len(self.defined_at) >= MAX_LABELS:
            raise AssemblyError(number, raw, f"more than {MAX_LABELS} labels and constants")
        self.defined_at[name] = number

    def read_line(self, number: int, raw: str) -> None:
        text = strip_comment(raw).strip()
        while match := LABEL.match(text):
            name = match.group(1)
            self.define(name, number, raw)
            self.labels[name] = len(self.statements)
            text = text[match.end() :].lstrip()
        if not text:
            return
        if match := DIRECTIVE.match(text):
            name, rest = match.group(1).lower(), text[match.end() :]
            if name in IGNORED_DIRECTIVES:
                return
            if name in CONSTANT_DIRECTIVES:
                parts = [p.strip() for p in rest.split(",")]
                if len(parts) != 2 or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", parts[0]):
                    raise AssemblyError(number, raw, f"{short_repr('.' + name)} takes a name and a value")
                return self.constant(parts[0], parts[1], number, raw)
            raise AssemblyError(number, raw, f"the directive {short_repr('.' + name)} is not supported")
        if match := CONSTANT.fullmatch(text):
            return self.constant(match.group(1), match.group(2).strip(), number, raw)
        match = MNEMONIC.match(text)
        op = match.group(0).lower() if match else ""
        if op in FOREIGN_DIRECTIVES:
            raise AssemblyError(number, raw, f"{op} is not supported (no data, files or alignment)")
        if op not in MNEMONICS:
            word = text.split()[0]
            raise AssemblyError(number, raw, f"unknown instruction {short_repr(word)} (RV32I only)")
        rest = text[match.end() :]
        if rest and rest[0] not in " \t,":
            raise AssemblyError(number, raw, f"unknown instruction {short_repr(text.split()[0])}")
        self.statements.append(Statement(number, raw, op, tokenize(rest, number, raw)))

    def constant(self, name: str, value: str, number: int, raw: str) -> None:
        if name.lower() in REGISTERS:
            raise AssemblyError(number, raw, f"a constant cannot be named like the register {name!r}")
        literal = parse_literal(value)
        if literal is None:
            raise AssemblyError(number, raw, "a constant's value must be one literal (no expressions)")
        self.define(name, number, raw)
        self.constants[name] = literal

    # ------------------------------------------------------------ pass 2
    def place(self) -> None:
        """Give each statement its address (li takes one word or two) and each label its own."""
        address = 0
        for statement in self.statements:
            self.here = statement
            statement.address = address
            if statement.op == "li":
                try:
                    _, value = self.li_operands(statement.tokens)
                    statement.size = 1 if IMM12[0] <= signed32(value) <= IMM12[1] else 2
                except AssemblyError:
                    pass  # said when it is encoded, in line order with the other errors
            address += 4 * statement.size
        self.here = None
        ends = [s.address for s in self.statements] + [address]
        self.labels = {name: ends[index] for name, index in self.labels.items()}

    def encode(self) -> list[int]:
        """The words, statement by statement: the first error met is the first by line."""
        words: list[int] = []
        for statement in self.statements:
            self.here = statement
            if statement.address + 4 * statement.size > 4 * MAX_WORDS:
                self.fail(f"the program passes the {MAX_WORDS}-word code region")
            try:
                encoded = self.encode_one(statement)
            except ValueError as err:  # the encoders' own range checks
                self.fail(str(err))
            words += encoded
        return words

    # ------------------------------------------------------------ operands
    def register(self, tokens: list[str]) -> int:
        if not tokens:
            self.fail("a register is missing")
        token = tokens.pop(0)
        if token.lower() not in REGISTERS:
            self.fail(f"unknown register {short_repr(token)}")
        return REGISTERS[token.lower()]

    def immediate(self, tokens: list[str], bounds: tuple[int, int], what: str = "immediate") -> int:
        """A literal, a constant, or %hi(...)/%lo(...) of one, within bounds."""
        if not tokens:
            self.fail(f"the {what} is missing")
        token = tokens.pop(0)
        relocation = token.lower()
        if relocation in ("%hi", "%lo"):
            if len(tokens) < 3 or tokens[0] != "(" or tokens[2] != ")":
                self.fail(f"{relocation} takes one literal or constant in parentheses")
            tokens.pop(0)
            value = self.value(tokens.pop(0), WORD_RANGE, f"the value of {relocation}")
            tokens.pop(0)
            value = hi20(value) if relocation == "%hi" else lo12(value)
        else:
            value = self.value(token, bounds, what)
        if not bounds[0] <= value <= bounds[1]:
            self.fail(f"{what} {short_repr(value)} is not in {bounds[0]}..{bounds[1]}")
        return value

    def value(self, token: str, bounds: tuple[int, int], what: str) -> int:
        literal = parse_literal(token)
        if literal is None:
            if token in self.constants:
                literal = self.constants[token]
            elif token in self.labels:
                self.fail(f"the label {token!r} is not a value: it runs at CODE_START, not 0")
            elif IS_NAME.fullmatch(token):
                self.fail(f"unknown constant {short_repr(token)}")
            else:
                self.fail(f"{what} {short_repr(token)} is not an integer literal (no expressions)")
        if not bounds[0] <= literal <= bounds[1]:
            self.fail(f"{what} {short_repr(literal)} is not in {bounds[0]}..{bounds[1]}")
        return literal

    def target(self, tokens: list[str], statement: Statement, bounds: tuple[int, int]) -> int:
        """A branch or jump target: a label (pc-relative) or a literal byte offset."""
        if not tokens:
            self.fail("the target is missing")
        token = tokens.pop(0)
        literal = parse_literal(token)
        if literal is None:
            if token not in self.labels:
                self.fail(f"unknown label {short_repr(token)}")
            literal = self.labels[token] - statement.address
        if not bounds[0] <= literal <= bounds[1]:
            self.fail(f"the target is {short_repr(literal)} bytes away, outside {bounds[0]}..{bounds[1]}")
        if literal & 1:
            self.fail(f"the offset {literal} is odd")
        return literal

    def memory(self, tokens: list[str]) -> tuple[int, int]:
        """`offset(reg)` or `(reg)`: (base register, offset)."""
        first = tokens[0].lower() if tokens else ""
        if first not in ("(", "%hi", "%lo") and tokens[1:2] != ["("]:
            self.fail("expected offset(register)")
        offset = 0 if tokens[:1] == ["("] else self.immediate(tokens, IMM12, "offset")
        if len(tokens) < 3 or tokens[0] != "(" or tokens[2] != ")":
            self.fail("expected offset(register)")
        tokens.pop(0)
        base = self.register(tokens)
        tokens.pop(0)
        return base, offset

    def li_operands(self, tokens: list[str]) -> tuple[int, int]:
        tokens = list(tokens)
        rd = self.register(tokens)
        value = self.immediate(tokens, WORD_RANGE, "value")
        self.done(tokens)
        return rd, value

    def done(self, tokens: list[str]) -> None:
        if tokens:
            self.fail(f"unexpected {short_repr(tokens[0])}")

    # ------------------------------------------------------------ instructions
    def encode_one(self, s: Statement) -> list[int]:
        op, t = s.op, list(s.tokens)
        if op == "li":
            rd, value = self.li_operands(t)
            if s.size == 1:
                return [rv32i.addi(rd, 0, signed32(value))]
            return [rv32i.lui(rd, hi20(value)), rv32i.addi(rd, rd, lo12(value))]
        word = self.encode_single(op, t, s)
        self.done(t)
        return [word & spec.MASK32]

    def encode_single(self, op: str, t: list[str], s: Statement) -> int:
        if op in R_OPS:
            return ENCODER[op](self.register(t), self.register(t), self.register(t))
        if op in I_OPS:
            return ENCODER[op](self.register(t), self.register(t), self.immediate(t, IMM12))
        if op in SHIFT_OPS:
            return ENCODER[op](self.register(t), self.register(t), self.immediate(t, SHAMT, "shift"))
        if op in LOAD_OPS:
            rd = self.register(t)
            return ENCODER[op](rd, *self.memory(t))
        if op in STORE_OPS:
            rs2 = self.register(t)
            return ENCODER[op](rs2, *self.memory(t))
        if op in BRANCH_OPS:
            return ENCODER[op](self.register(t), self.register(t), self.target(t, s, BRANCH))
        if op in ("lui", "auipc"):
            return ENCODER[op](self.register(t), self.immediate(t, UPPER) & 0xFFFFF)
        if op == "jal":
            rd = self.register(t) if len(t) > 1 else 1
            return rv32i.jal(rd, self.target(t, s, JUMP))
        if op == "jalr":
            if len(t) == 1:
                return rv32i.jalr(1, self.register(t), 0)
            rd = self.register(t)
            if t[:1] == ["("] or t[1:2] == ["("]:
                return rv32i.jalr(rd, *self.memory(t))
            return rv32i.jalr(rd, self.register(t), self.immediate(t, IMM12))
        if op in UNARY:
            return UNARY[op](self.register(t), self.register(t))
        if op in BRANCH_ZERO:
            branch, first = BRANCH_ZERO[op]
            rs = self.register(t)
            rs1, rs2 = (rs, 0) if first else (0, rs)
            return ENCODER[branch](rs1, rs2, self.target(t, s, BRANCH))
        if op in BRANCH_SWAPPED:
            rs, rt = self.register(t), self.register(t)
            return ENCODER[BRANCH_SWAPPED[op]](rt, rs, self.target(t, s, BRANCH))
        if op in JUMPS:
            return rv32i.jal(JUMPS[op], self.target(t, s, JUMP))
        if op == "jr":
            return rv32i.jalr(0, self.register(t), 0)
        if op == "ret":
            return rv32i.jalr(0, 1, 0)
        if op == "nop":
            return rv32i.addi(0, 0, 0)
        if op == "fence":
            if not t:
                return rv32i.fence(0, 0, (FENCE_ALL << 4) | FENCE_ALL)
            pred, succ = self.fence_set(t), self.fence_set(t)
            return rv32i.fence(0, 0, (pred << 4) | succ)
        if op == "ecall":
            return rv32i.ecall()
        assert op == "ebreak", op
        return rv32i.ebreak()

    def fence_set(self, tokens: list[str]) -> int:
        """`iorw`-style letters of a fence's predecessor or successor set."""
        token = tokens.pop(0).lower() if tokens else ""
        if not token or any(c not in "iorw" for c in token) or len(set(token)) != len(token):
            self.fail("fence takes no operands, or two sets of the letters iorw")
        return sum({"i": 8, "o": 4, "r": 2, "w": 1}[c] for c in token)


def strip_comment(line: str) -> str:
    """The line before its comment (`#`, `//` or `;`), outside character literals."""
    position = 0
    while match := COMMENT_OR_QUOTE.search(line, position):
        if match.group(0) != "'":
            return line[: match.start()]
        literal = CHAR_LITERAL.match(line, match.start())
        position = literal.end() if literal else match.end()
    return line


def tokenize(text: str, number: int, raw: str) -> list[str]:
    tokens, position = [], 0
    text = text.rstrip(" \t,")
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None or match.group(4) is not None:
            rest = match.group(4) if match else text[position:]
            raise AssemblyError(number, raw, f"unexpected {short_repr(rest)}")
        tokens.append(match.group(1) or match.group(2) or match.group(3))
        if len(tokens) > MAX_OPERAND_TOKENS:
            raise AssemblyError(number, raw, f"more than {MAX_OPERAND_TOKENS} operand tokens")
        position = match.end()
    return tokens


def parse_literal(token: str) -> int | None:
    """An integer (decimal, 0x, 0b, 0o; signed) or a character literal; None for anything else."""
    if match := INTEGER.fullmatch(token):
        value = int(match.group(2), 0)
        return -value if match.group(1) == "-" else value
    if len(token) >= 3 and token[0] == token[-1] == "'":
        body = token[1:-1]
        if len(body) == 1 and body != "\\" and " " <= body <= "~":
            return ord(body)
        if len(body) == 2 and body[0] == "\\" and body[1] in ESCAPES:
            return ESCAPES[body[1]]
    return None


def signed32(value: int) -> int:
    value &= spec.MASK32
    return value - (1 << 32) if value >> 31 else value


def hi20(value: int) -> int:
    """The upper 20 bits for lui, rounded so that adding lo12(value) gives value."""
    return ((value + 0x800) >> 12) & 0xFFFFF


def lo12(value: int) -> int:
    """The low 12 bits, sign-extended: what addi adds after lui hi20(value)."""
    low = value & 0xFFF
    return low - 0x1000 if low & 0x800 else low


def assemble(source: str) -> list[int]:
    """The words of an RV32I program (no compressed instructions), placed from
    address 0: branches and jumps are pc-relative, so it runs at CODE_START as is."""
    parser = Parser(source)
    parser.read()
    parser.place()
    words = parser.encode()
    if not words:
        raise AssemblyError(None, "", "no instructions")
    return words


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
