"""The assembler the text side uses (reflex_core.assembler, the project's own parser):
bit for bit on every corpus program, the same words as bronzebeard on generated
programs with pseudo-instructions, labels and constants, what a model writes, and
errors that name the line."""

from __future__ import annotations

import random

import pytest

from reflex_core import rv32i, spec
from reflex_core.assembler import MAX_WORDS, AssemblyError, assemble, canonical, extract_code
from reflex_core.spec import HALT_WORD


def test_every_corpus_program_reassembles_bit_for_bit():
    from reflex_core.corpus import find_corpus, load_programs

    root = find_corpus()
    if root is None:
        pytest.skip("corpus not found: set REFLEX_CORPUS or place it at ../shared/corpus")
    programs = load_programs(root)
    for program in programs:
        text = "\n".join(canonical(word) for word in program.words)
        assert assemble(text) == program.words, program.family
    print(f"{len(programs)} programs, {sum(len(p.words) for p in programs)} words")


def test_what_a_model_writes_assembles():
    answer = """Here is the program:
```asm
.text
.globl main
main:
    li t0, 5          # n
    li t1, 1          // one
loop: beqz t0, done   ; a label and an instruction on one line
    add t2, t1, zero
    addi t0, t0, -1
    j loop
done:
    lui t3, 0x5
    sw t1, 0(t3)
    sw t1, (t3)
end:
    j end
```
"""
    words = assemble(extract_code(answer))
    assert words[0] == rv32i.addi(5, 0, 5) and words[1] == rv32i.addi(6, 0, 1)
    assert words[2] == rv32i.beq(5, 0, 16)  # beqz t0, done: four words on
    assert words[5] == rv32i.jal(0, -12)  # j loop: three words back
    assert words[7] == words[8] == rv32i.sw(6, 28, 0)
    assert words[-1] == HALT_WORD  # `j end` onto itself is the machine's HALT


def test_literals_constants_and_relocations():
    text = """
    DISPLAY = 0x6000
    .equ COUNT, 0b101
    li a0, DISPLAY
    li a1, 'H'
    li a2, ' '
    li a3, '\\n'
    addi a4, x0, COUNT
    addi a5, x0, -0x10
    lui a6, %hi(0x12345FFF)
    addi a6, a6, %lo(0x12345FFF)
    sw a1, %lo(DISPLAY)(a0)
    LUI T0, 0xFFFFF
    li s0, 0xFFFFFFFF
    li s1, -2147483648
    mv fp, s1
    fence rw, w
    """
    words = assemble(text)
    assert words[:2] == [rv32i.lui(10, 6), rv32i.addi(10, 10, 0)]
    assert words[2:5] == [rv32i.addi(11, 0, 72), rv32i.addi(12, 0, 32), rv32i.addi(13, 0, 10)]
    assert words[5:7] == [rv32i.addi(14, 0, 5), rv32i.addi(15, 0, -16)]
    # %hi rounds up when %lo is negative, so that lui + addi gives the value back
    assert words[7:9] == [rv32i.lui(16, 0x12346), rv32i.addi(16, 16, -1)]
    assert words[9] == rv32i.sw(11, 10, 0) and words[10] == rv32i.lui(5, 0xFFFFF)
    assert words[11] == rv32i.addi(8, 0, -1)  # a 32-bit value in 12 signed bits: one word
    assert words[12:14] == [rv32i.lui(9, 0x80000), rv32i.addi(9, 9, 0)]
    assert words[14] == rv32i.addi(8, 9, 0)
    assert rv32i.decode(words[15]) == {"op": "fence", "format": "I", "rd": 0, "rs1": 0, "imm": 0x31}


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("li t0, 5\naddi t0, t0\nj 0\n", 2, "the immediate is missing"),
        ("frobnicate x1, x2", 1, "unknown instruction 'frobnicate'"),
        ("nop\n\nmul a0, a1, a2", 3, "RV32I only"),
        ("addi x5, x0, 2048", 1, "immediate 2048 is not in -2048..2047"),
        ("slli x5, x5, 32", 1, "shift 32 is not in 0..31"),
        ("lui x5, 0x100000", 1, "is not in -524288..1048575"),
        ("li x5, 0x10000000000000000", 1, "is not in -2147483648..4294967295"),
        ("li x5, -2147483649", 1, "is not in -2147483648..4294967295"),
        ("nop\nj nowhere", 2, "unknown label 'nowhere'"),
        ("a:\nnop\na: nop", 3, "'a' is already defined on line 1"),
        ("N = 1\nN: nop", 2, "'N' is already defined on line 1"),
        ("add x5, x6, x32", 1, "unknown register 'x32'"),
        ("add x5, x6", 1, "a register is missing"),
        ("add x5, x6, x7, x8", 1, "unexpected 'x8'"),
        ("lw x5, x6, 4", 1, "expected offset(register)"),
        ("beq x0, x0, 3", 1, "the offset 3 is odd"),
        ("addi x5, x0, 1+1", 1, "not an integer literal (no expressions)"),
        ("N = 2 * 3", 1, "one literal (no expressions)"),
        ("x5 = 3", 1, "cannot be named like the register"),
        ("li t0, here\nhere: nop", 1, "is not a value"),
        ("nop\n.word 5", 2, "the directive '.word' is not supported"),
        ("include prog.s", 1, "include is not supported"),
        ("li t0, 'ab'", 1, "unexpected"),
        ("addi x5, x0, 010", 1, "not an integer literal"),
    ],
)
def test_errors_name_the_line_and_the_reason(text, line, reason):
    with pytest.raises(AssemblyError) as err:
        assemble(text)
    message = str(err.value)
    assert err.value.line == line and message.startswith(f"line {line}: ") and reason in message
    assert "\n" not in message


def test_what_is_not_a_program():
    for text in ("", "\n\n", extract_code("```\n\n```"), "main:\n.text\n# nothing"):
        with pytest.raises(AssemblyError, match="no instructions"):
            assemble(text)
    with pytest.raises(AssemblyError, match="assembly must be text"):
        assemble(b"nop")


def test_branches_past_their_reach_and_the_code_region():
    far = "beqz t0, far\n" + "nop\n" * 1100 + "far: nop"
    with pytest.raises(AssemblyError, match="line 1: the target is 4404 bytes away"):
        assemble(far)
    assert len(assemble("j far\n" + "nop\n" * 1100 + "far: nop")) == 1102  # jal reaches
    assemble("nop\n" * MAX_WORDS)
    with pytest.raises(AssemblyError, match=f"line {MAX_WORDS}: the program passes the {MAX_WORDS}-word"):
        assemble("nop\n" * (MAX_WORDS - 1) + "li t0, 0x12345")
    assert MAX_WORDS == (spec.CODE_END - spec.CODE_START) // 4


# ------------------------------------------------------------------ against bronzebeard
REGS = ["zero", "ra", "sp", "t0", "t1", "t2", "s0", "fp", "a0", "a5", "s11", "t6"] + [
    f"x{i}" for i in (0, 1, 5, 9, 17, 31)
]


def _imm(rng, low, high):
    value = rng.randint(low, high)
    form = rng.randrange(4)
    if form == 1 and value >= 0:
        return hex(value)
    if form == 2 and value >= 0:
        return bin(value)
    if form == 3 and value < 0:
        return "-" + hex(-value)
    return str(value)


def _li_value(rng):
    return rng.choice(
        [
            rng.randint(-2048, 2047),
            rng.choice([-2049, -2048, 2047, 2048, 0x800, 0xFFF, 0x1000, 0x7FFFF800, 0x7FFFF7FF]),
            rng.randint(-(1 << 31), (1 << 31) - 1),
            rng.randint(1 << 31, (1 << 32) - 1),
            rng.choice([-(1 << 31), (1 << 32) - 1, 0xFFFFF800, 0xFFFFF7FF, 0x80000000]),
        ]
    )


def generated_program(rng: random.Random) -> str:
    """A random program of every RV32I instruction and pseudo-instruction, in the
    forms both assemblers take (labels on lines of their own, even jalr offsets)."""
    count = rng.randint(5, 40)
    labels = [f"L{i}" for i in range(rng.randint(1, 5))]
    at = {rng.randint(0, count): name for name in labels}
    labels = list(at.values())
    lines = [f"C{i} = {_imm(rng, -2048, 2047)}" for i in range(rng.randint(0, 2))]
    constants = [line.split()[0] for line in lines]
    reg = lambda: rng.choice(REGS)
    label = lambda: rng.choice(labels)
    for index in range(count + 1):
        if index in at:
            lines.append(f"{at[index]}:")
        if index == count:
            break
        kind = rng.randrange(16)
        if kind == 0:
            name = rng.choice(["add", "sub", "sll", "slt", "sltu", "xor", "srl", "sra", "or", "and"])
            op = f"{name} {reg()}, {reg()}, {reg()}"
        elif kind == 1:
            imm = rng.choice(constants) if constants and rng.random() < 0.3 else _imm(rng, -2048, 2047)
            op = f"{rng.choice(['addi', 'slti', 'sltiu', 'xori', 'ori', 'andi'])} {reg()}, {reg()}, {imm}"
        elif kind == 2:
            op = f"{rng.choice(['slli', 'srli', 'srai'])} {reg()}, {reg()}, {rng.randint(0, 31)}"
        elif kind == 3:
            op = f"{rng.choice(['lb', 'lh', 'lw', 'lbu', 'lhu'])} {reg()}, {_imm(rng, -2048, 2047)}({reg()})"
        elif kind == 4:
            op = f"{rng.choice(['sb', 'sh', 'sw'])} {reg()}, {_imm(rng, -2048, 2047)}({reg()})"
        elif kind == 5:
            target = label() if rng.random() < 0.8 else str(2 * rng.randint(-2048, 2047))
            op = f"{rng.choice(['beq', 'bne', 'blt', 'bge', 'bltu', 'bgeu'])} {reg()}, {reg()}, {target}"
        elif kind == 6:
            op = f"{rng.choice(['lui', 'auipc'])} {reg()}, {_imm(rng, -(1 << 19), (1 << 20) - 1)}"
        elif kind == 7:
            op = rng.choice([f"jal {reg()}, {label()}", f"jal {label()}", f"j {label()}", f"call {label()}"])
            op = rng.choice([op, f"tail {label()}", f"jal {reg()}, {2 * rng.randint(-1000, 1000)}"])
        elif kind == 8:
            offset = 2 * rng.randint(-1024, 1023)
            op = rng.choice([f"jalr {reg()}", f"jalr {reg()}, {offset}({reg()})", f"jr {reg()}", "ret"])
        elif kind in (9, 10):
            op = f"li {reg()}, {_li_value(rng)}"
        elif kind == 11:
            op = f"{rng.choice(['mv', 'not', 'neg', 'seqz', 'snez', 'sltz', 'sgtz'])} {reg()}, {reg()}"
        elif kind == 12:
            op = f"{rng.choice(['beqz', 'bnez', 'blez', 'bgez', 'bltz', 'bgtz'])} {reg()}, {label()}"
        elif kind == 13:
            op = f"{rng.choice(['bgt', 'ble', 'bgtu', 'bleu'])} {reg()}, {reg()}, {label()}"
        elif kind == 14:
            value = rng.randint(0, (1 << 32) - 1)
            r = reg()
            op = f"lui {r}, %hi({hex(value)})\naddi {r}, {r}, %lo({hex(value)})"
        else:
            op = rng.choice(["nop", "fence", "ecall", "ebreak", f"li {reg()}, '{rng.choice('AZaz09!~')}'"])
        if rng.random() < 0.2:
            op += "  # a comment"
        lines.append(("    " if rng.random() < 0.5 else "") + op)
    return "\n".join(lines) + "\n"


def test_the_same_words_as_bronzebeard_on_generated_programs():
    """bronzebeard (a test dependency only) as the oracle, on text this test wrote."""
    asm = pytest.importorskip("bronzebeard.asm")
    rng = random.Random(21)
    for case in range(300):
        text = generated_program(rng)
        binary = asm.assemble(text, compress=False)
        expected = [int.from_bytes(binary[i : i + 4], "little") for i in range(0, len(binary), 4)]
        assert assemble(text) == expected, (case, text)


def test_label_and_instruction_on_one_line_is_the_same_program():
    rng = random.Random(7)
    for _ in range(50):
        text = generated_program(rng)
        joined = text.replace(":\n    ", ": ").replace(":\n", ": ")
        assert joined != text or ":" not in text
        assert assemble(joined) == assemble(text)


def test_call_and_tail_reach_past_2k():
    """bronzebeard kept only the low 12 bits of a call's offset (a wrong jump past
    2 KiB); here call and tail are one jal to the label, however far in the region."""
    text = "call far\ntail far\n" + "nop\n" * 600 + "far: ret"
    words = assemble(text)
    assert words[:2] == [rv32i.jal(1, 4 * 602), rv32i.jal(0, 4 * 601)]
