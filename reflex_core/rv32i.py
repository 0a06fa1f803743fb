"""RV32I encoders (so tests and fixtures can write programs without an assembler)
and the one decoder of a word into a structured op.

Each encoder returns the 32-bit instruction word. Registers are numbers 0..31;
immediates are signed Python ints (offsets in bytes, relative to the
instruction); lui/auipc take the upper 20 bits. `decode(word)` gives
{"op", "format", "rd", "rs1", "rs2", "imm"} with only the fields the format
has, read from the bits (never an alias form: `addi x0, x0, 0` is addi, not
nop); `encode(op)` is its inverse through the encoders below.
"""

from __future__ import annotations

from .spec import MASK32

OP_LUI = 0b0110111
OP_AUIPC = 0b0010111
OP_JAL = 0b1101111
OP_JALR = 0b1100111
OP_BRANCH = 0b1100011
OP_LOAD = 0b0000011
OP_STORE = 0b0100011
OP_IMM = 0b0010011
OP_REG = 0b0110011
OP_FENCE = 0b0001111
OP_SYSTEM = 0b1110011


def _check_range(value: int, bits: int, what: str) -> None:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not low <= value <= high:
        raise ValueError(f"{what} {value} does not fit in {bits} signed bits")


def _r_type(funct7: int, rs2: int, rs1: int, funct3: int, rd: int, opcode: int = OP_REG) -> int:
    return (funct7 << 25) | (rs2 << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | opcode


def _i_type(imm: int, rs1: int, funct3: int, rd: int, opcode: int) -> int:
    _check_range(imm, 12, "immediate")
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | opcode


def _s_type(imm: int, rs2: int, rs1: int, funct3: int) -> int:
    _check_range(imm, 12, "store offset")
    imm &= 0xFFF
    return ((imm >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (funct3 << 12) | ((imm & 0x1F) << 7) | OP_STORE


def _b_type(offset: int, rs2: int, rs1: int, funct3: int) -> int:
    _check_range(offset, 13, "branch offset")
    if offset & 1:
        raise ValueError(f"branch offset {offset} is odd")
    imm = offset & 0x1FFF
    return (
        (((imm >> 12) & 1) << 31)
        | (((imm >> 5) & 0x3F) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (funct3 << 12)
        | (((imm >> 1) & 0xF) << 8)
        | (((imm >> 11) & 1) << 7)
        | OP_BRANCH
    )


def _shift(shamt: int, rs1: int, funct3: int, rd: int, funct7: int) -> int:
    if not 0 <= shamt < 32:
        raise ValueError(f"shift amount {shamt} is not in 0..31")
    return _r_type(funct7, shamt, rs1, funct3, rd, OP_IMM)


def lui(rd: int, imm20: int) -> int:
    """rd = imm20 << 12 (imm20 is the upper 20 bits, 0..0xFFFFF or negative)."""
    return ((imm20 & 0xFFFFF) << 12) | (rd << 7) | OP_LUI


def auipc(rd: int, imm20: int) -> int:
    return ((imm20 & 0xFFFFF) << 12) | (rd << 7) | OP_AUIPC


def addi(rd: int, rs1: int, imm: int) -> int:
    return _i_type(imm, rs1, 0b000, rd, OP_IMM)


def slti(rd: int, rs1: int, imm: int) -> int:
    return _i_type(imm, rs1, 0b010, rd, OP_IMM)


def xori(rd: int, rs1: int, imm: int) -> int:
    return _i_type(imm, rs1, 0b100, rd, OP_IMM)


def ori(rd: int, rs1: int, imm: int) -> int:
    return _i_type(imm, rs1, 0b110, rd, OP_IMM)


def andi(rd: int, rs1: int, imm: int) -> int:
    return _i_type(imm, rs1, 0b111, rd, OP_IMM)


def slli(rd: int, rs1: int, shamt: int) -> int:
    return _shift(shamt, rs1, 0b001, rd, 0b0000000)


def srli(rd: int, rs1: int, shamt: int) -> int:
    return _shift(shamt, rs1, 0b101, rd, 0b0000000)


def srai(rd: int, rs1: int, shamt: int) -> int:
    return _shift(shamt, rs1, 0b101, rd, 0b0100000)


def add(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0b0000000, rs2, rs1, 0b000, rd)


def sub(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0b0100000, rs2, rs1, 0b000, rd)


def sll(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0b0000000, rs2, rs1, 0b001, rd)


def slt(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0b0000000, rs2, rs1, 0b010, rd)


def xor(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0b0000000, rs2, rs1, 0b100, rd)


def srl(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0b0000000, rs2, rs1, 0b101, rd)


def sra(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0b0100000, rs2, rs1, 0b101, rd)


def or_(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0b0000000, rs2, rs1, 0b110, rd)


def and_(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0b0000000, rs2, rs1, 0b111, rd)


def lw(rd: int, rs1: int, offset: int) -> int:
    """rd = mem32[rs1 + offset]."""
    return _i_type(offset, rs1, 0b010, rd, OP_LOAD)


def sw(rs2: int, rs1: int, offset: int) -> int:
    """mem32[rs1 + offset] = rs2 (assembly order: sw rs2, offset(rs1))."""
    return _s_type(offset, rs2, rs1, 0b010)


def beq(rs1: int, rs2: int, offset: int) -> int:
    return _b_type(offset, rs2, rs1, 0b000)


def bne(rs1: int, rs2: int, offset: int) -> int:
    return _b_type(offset, rs2, rs1, 0b001)


def blt(rs1: int, rs2: int, offset: int) -> int:
    return _b_type(offset, rs2, rs1, 0b100)


def bge(rs1: int, rs2: int, offset: int) -> int:
    return _b_type(offset, rs2, rs1, 0b101)


def jal(rd: int, offset: int) -> int:
    _check_range(offset, 21, "jump offset")
    if offset & 1:
        raise ValueError(f"jump offset {offset} is odd")
    imm = offset & 0x1FFFFF
    return (
        (((imm >> 20) & 1) << 31)
        | (((imm >> 1) & 0x3FF) << 21)
        | (((imm >> 11) & 1) << 20)
        | (((imm >> 12) & 0xFF) << 12)
        | (rd << 7)
        | OP_JAL
    )


def jalr(rd: int, rs1: int, offset: int) -> int:
    return _i_type(offset, rs1, 0b000, rd, OP_JALR)


def sltiu(rd: int, rs1: int, imm: int) -> int:
    return _i_type(imm, rs1, 0b011, rd, OP_IMM)


def sltu(rd: int, rs1: int, rs2: int) -> int:
    return _r_type(0, rs2, rs1, 0b011, rd)


def lb(rd: int, rs1: int, offset: int) -> int:
    return _i_type(offset, rs1, 0b000, rd, OP_LOAD)


def lh(rd: int, rs1: int, offset: int) -> int:
    return _i_type(offset, rs1, 0b001, rd, OP_LOAD)


def lbu(rd: int, rs1: int, offset: int) -> int:
    return _i_type(offset, rs1, 0b100, rd, OP_LOAD)


def lhu(rd: int, rs1: int, offset: int) -> int:
    return _i_type(offset, rs1, 0b101, rd, OP_LOAD)


def sb(rs2: int, rs1: int, offset: int) -> int:
    return _s_type(offset, rs2, rs1, 0b000)


def sh(rs2: int, rs1: int, offset: int) -> int:
    return _s_type(offset, rs2, rs1, 0b001)


def bltu(rs1: int, rs2: int, offset: int) -> int:
    return _b_type(offset, rs2, rs1, 0b110)


def bgeu(rs1: int, rs2: int, offset: int) -> int:
    return _b_type(offset, rs2, rs1, 0b111)


def fence(rd: int, rs1: int, imm: int) -> int:
    return _i_type(imm, rs1, 0b000, rd, OP_FENCE)


def ecall() -> int:
    return OP_SYSTEM


def ebreak() -> int:
    return (1 << 20) | OP_SYSTEM


# ----------------------------------------------------------------- decoding
# (opcode, funct3, funct7 or None) -> (op, format); funct7 only where it selects.
_R_OPS = {
    (0b000, 0x00): "add", (0b000, 0x20): "sub", (0b001, 0x00): "sll", (0b010, 0x00): "slt",
    (0b011, 0x00): "sltu", (0b100, 0x00): "xor", (0b101, 0x00): "srl", (0b101, 0x20): "sra",
    (0b110, 0x00): "or", (0b111, 0x00): "and",
}  # fmt: skip
_IMM_OPS = {0b000: "addi", 0b010: "slti", 0b011: "sltiu", 0b100: "xori", 0b110: "ori", 0b111: "andi"}
_SHIFT_OPS = {(0b001, 0x00): "slli", (0b101, 0x00): "srli", (0b101, 0x20): "srai"}
_LOAD_OPS = {0b000: "lb", 0b001: "lh", 0b010: "lw", 0b100: "lbu", 0b101: "lhu"}
_STORE_OPS = {0b000: "sb", 0b001: "sh", 0b010: "sw"}
_BRANCH_OPS = {0b000: "beq", 0b001: "bne", 0b100: "blt", 0b101: "bge", 0b110: "bltu", 0b111: "bgeu"}
ILLEGAL = {"op": "illegal"}


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def decode(word: int) -> dict:
    """The op a word encodes, from its bits; {"op": "illegal"} for anything else."""
    word &= MASK32
    opcode, rd, funct3 = word & 0x7F, (word >> 7) & 0x1F, (word >> 12) & 0x7
    rs1, rs2, funct7 = (word >> 15) & 0x1F, (word >> 20) & 0x1F, word >> 25
    i_imm = _signed(word >> 20, 12)
    if opcode == OP_REG and (op := _R_OPS.get((funct3, funct7))):
        return {"op": op, "format": "R", "rd": rd, "rs1": rs1, "rs2": rs2}
    if opcode == OP_IMM:
        if funct3 in (0b001, 0b101):
            op = _SHIFT_OPS.get((funct3, funct7))
            return {"op": op, "format": "I", "rd": rd, "rs1": rs1, "imm": rs2} if op else dict(ILLEGAL)
        return {"op": _IMM_OPS[funct3], "format": "I", "rd": rd, "rs1": rs1, "imm": i_imm}
    if opcode == OP_LOAD and (op := _LOAD_OPS.get(funct3)):
        return {"op": op, "format": "I", "rd": rd, "rs1": rs1, "imm": i_imm}
    if opcode == OP_JALR and funct3 == 0:
        return {"op": "jalr", "format": "I", "rd": rd, "rs1": rs1, "imm": i_imm}
    if opcode == OP_STORE and (op := _STORE_OPS.get(funct3)):
        imm = _signed((funct7 << 5) | rd, 12)
        return {"op": op, "format": "S", "rs1": rs1, "rs2": rs2, "imm": imm}
    if opcode == OP_BRANCH and (op := _BRANCH_OPS.get(funct3)):
        imm = (
            (((word >> 31) & 1) << 12)
            | (((word >> 7) & 1) << 11)
            | (((word >> 25) & 0x3F) << 5)
            | (((word >> 8) & 0xF) << 1)
        )
        return {"op": op, "format": "B", "rs1": rs1, "rs2": rs2, "imm": _signed(imm, 13)}
    if opcode in (OP_LUI, OP_AUIPC):
        return {"op": "lui" if opcode == OP_LUI else "auipc", "format": "U", "rd": rd, "imm": word >> 12}
    if opcode == OP_JAL:
        imm = (
            (((word >> 31) & 1) << 20)
            | (((word >> 12) & 0xFF) << 12)
            | (((word >> 20) & 1) << 11)
            | (((word >> 21) & 0x3FF) << 1)
        )
        return {"op": "jal", "format": "J", "rd": rd, "imm": _signed(imm, 21)}
    if opcode == OP_FENCE and funct3 == 0:
        return {"op": "fence", "format": "I", "rd": rd, "rs1": rs1, "imm": i_imm}
    if opcode == OP_SYSTEM and word in (ecall(), ebreak()):
        return {"op": "ecall" if word == ecall() else "ebreak", "format": "I"}
    return dict(ILLEGAL)


# op -> (encoder, the decoded fields it takes, in its argument order)
_RD_RS1_RS2 = ("rd", "rs1", "rs2")
_RD_RS1_IMM = ("rd", "rs1", "imm")
_RS2_RS1_IMM = ("rs2", "rs1", "imm")
_RS1_RS2_IMM = ("rs1", "rs2", "imm")
_ENCODERS = {
    "add": (add, _RD_RS1_RS2), "sub": (sub, _RD_RS1_RS2), "sll": (sll, _RD_RS1_RS2),
    "slt": (slt, _RD_RS1_RS2), "sltu": (sltu, _RD_RS1_RS2), "xor": (xor, _RD_RS1_RS2),
    "srl": (srl, _RD_RS1_RS2), "sra": (sra, _RD_RS1_RS2), "or": (or_, _RD_RS1_RS2),
    "and": (and_, _RD_RS1_RS2),
    "addi": (addi, _RD_RS1_IMM), "slti": (slti, _RD_RS1_IMM), "sltiu": (sltiu, _RD_RS1_IMM),
    "xori": (xori, _RD_RS1_IMM), "ori": (ori, _RD_RS1_IMM), "andi": (andi, _RD_RS1_IMM),
    "slli": (slli, _RD_RS1_IMM), "srli": (srli, _RD_RS1_IMM), "srai": (srai, _RD_RS1_IMM),
    "lb": (lb, _RD_RS1_IMM), "lh": (lh, _RD_RS1_IMM), "lw": (lw, _RD_RS1_IMM),
    "lbu": (lbu, _RD_RS1_IMM), "lhu": (lhu, _RD_RS1_IMM), "jalr": (jalr, _RD_RS1_IMM),
    "fence": (fence, _RD_RS1_IMM),
    "sb": (sb, _RS2_RS1_IMM), "sh": (sh, _RS2_RS1_IMM), "sw": (sw, _RS2_RS1_IMM),
    "beq": (beq, _RS1_RS2_IMM), "bne": (bne, _RS1_RS2_IMM), "blt": (blt, _RS1_RS2_IMM),
    "bge": (bge, _RS1_RS2_IMM), "bltu": (bltu, _RS1_RS2_IMM), "bgeu": (bgeu, _RS1_RS2_IMM),
    "lui": (lui, ("rd", "imm")), "auipc": (auipc, ("rd", "imm")), "jal": (jal, ("rd", "imm")),
    "ecall": (ecall, ()), "ebreak": (ebreak, ()),
}  # fmt: skip


def encode(op: dict) -> int:
    """The word of a decoded op, through this module's encoders (decode's inverse)."""
    if op.get("op") not in _ENCODERS:
        raise ValueError(f"cannot encode {op.get('op')!r}")
    encoder, fields = _ENCODERS[op["op"]]
    return encoder(*(op[f] for f in fields)) & MASK32


def to_bytes(words: list[int]) -> bytes:
    """The little-endian program image of a list of words."""
    return b"".join((w & MASK32).to_bytes(4, "little") for w in words)
