"""The assembler the text side uses (bronzebeard, through reflex_core.assembler):
bit for bit on every corpus program, pseudo-instructions and labels, and errors
that name the line."""

from __future__ import annotations

import pytest

from reflex_core import rv32i
from reflex_core.assembler import AssemblyError, assemble, canonical, extract_code
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
    li t1, 1
loop:
    beqz t0, done
    add t2, t1, zero
    addi t0, t0, -1
    j loop
done:
    lui t3, 0x5
    sw t1, 0(t3)
end:
    j end
```
"""
    words = assemble(extract_code(answer))
    assert words[0] == rv32i.addi(5, 0, 5) and words[1] == rv32i.addi(6, 0, 1)
    assert words[2] == rv32i.beq(5, 0, 16)  # beqz t0, done: four words on
    assert words[-1] == HALT_WORD  # `j end` onto itself is the machine's HALT


def test_errors_name_the_line_and_the_reason():
    with pytest.raises(AssemblyError) as err:
        assemble("li t0, 5\naddi t0, t0\nj 0\n")
    assert err.value.line == 2 and "addi t0, t0" in str(err.value) and str(err.value).startswith("line 2: ")
    with pytest.raises(AssemblyError, match="no instructions"):
        assemble(extract_code("```\n\n```"))
    with pytest.raises(AssemblyError, match="line 1"):
        assemble("frobnicate x1, x2")
