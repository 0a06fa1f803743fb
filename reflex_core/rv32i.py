"""Tiny RV32I encoders, so tests and fixtures can write programs without an assembler.

Each function returns the 32-bit instruction word. Registers are numbers 0..31;
immediates are signed Python ints (offsets in bytes, relative to the instruction).
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


def to_bytes(words: list[int]) -> bytes:
    """The little-endian program image of a list of words."""
    return b"".join((w & MASK32).to_bytes(4, "little") for w in words)
