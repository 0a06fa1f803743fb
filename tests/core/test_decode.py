"""One decoder of instruction words into structured ops (reflex_core.rv32i.decode),
checked bit for bit by re-encoding with the project's own encoders."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflex_core import rv32i

TINY_ADAPTERS = (
    Path(__file__).resolve().parents[2] / "reflex_mlx" / "models" / "reflex-tiny" / "adapters.safetensors"
)
FIELDS = {"R": {"rd", "rs1", "rs2"}, "I": {"rd", "rs1", "imm"}, "S": {"rs1", "rs2", "imm"},
          "B": {"rs1", "rs2", "imm"}, "U": {"rd", "imm"}, "J": {"rd", "imm"}}  # fmt: skip


def _round_trip(words) -> dict:
    ops = {}
    for word in words:
        op = rv32i.decode(word)
        assert op["op"] != "illegal", hex(word)
        if op["op"] not in ("ecall", "ebreak"):
            assert set(op) - {"op", "format"} == FIELDS[op["format"]], op
        assert rv32i.encode(op) == word, (hex(word), op)
        ops[op["op"]] = ops.get(op["op"], 0) + 1
    return ops


def test_every_codebook_word_of_reflex_tiny():
    from safetensors.numpy import load_file

    words = [int(w) for w in load_file(str(TINY_ADAPTERS))["instr_words"]]
    ops = _round_trip(words)
    print(f"{len(words)} codebook words, ops: {dict(sorted(ops.items()))}")
    assert len(words) == 695 and len(ops) > 10


def test_every_word_of_the_corpus():
    from reflex_core.corpus import find_corpus, load_programs

    root = find_corpus()
    if root is None:
        pytest.skip("corpus not found: set REFLEX_CORPUS or place it at ../shared/corpus")
    words = {w for program in load_programs(root) for w in program.words}
    ops = _round_trip(sorted(words))
    print(f"{len(words)} distinct corpus words, {len(ops)} ops")


def test_fields_follow_the_bits_not_the_alias():
    assert rv32i.decode(0x00000013) == {"op": "addi", "format": "I", "rd": 0, "rs1": 0, "imm": 0}  # nop
    assert rv32i.decode(rv32i.addi(5, 6, 0)) == {"op": "addi", "format": "I", "rd": 5, "rs1": 6, "imm": 0}
    assert rv32i.decode(rv32i.jalr(0, 1, 0))["op"] == "jalr"  # ret
    assert rv32i.decode(rv32i.bne(5, 0, -8)) == {"op": "bne", "format": "B", "rs1": 5, "rs2": 0, "imm": -8}
    assert rv32i.decode(rv32i.sw(7, 6, -4)) == {"op": "sw", "format": "S", "rs1": 6, "rs2": 7, "imm": -4}
    assert rv32i.decode(rv32i.lui(6, 0xFFFFF)) == {"op": "lui", "format": "U", "rd": 6, "imm": 0xFFFFF}
    assert rv32i.decode(rv32i.jal(1, -2048))["imm"] == -2048
    assert rv32i.decode(rv32i.srai(5, 5, 31)) == {"op": "srai", "format": "I", "rd": 5, "rs1": 5, "imm": 31}
    assert rv32i.decode(0x0000006F) == {"op": "jal", "format": "J", "rd": 0, "imm": 0}  # HALT


@pytest.mark.parametrize(
    "word",
    [0x00000000, 0xFFFFFFFF, 0x02B50533, 0x0000707F, 0x40001013, 0x00003003, 0x00100073 | (1 << 7)],
)
def test_illegal_words(word):
    """All zeros, all ones, mul (M extension), an unknown funct3, a bad shift funct7,
    ld (RV64), a malformed ebreak."""
    assert rv32i.decode(word) == {"op": "illegal"}
