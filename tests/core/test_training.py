"""What both trainers share (reflex_core/training.py), without mlx or torch.

Why: the codebook must open without moving a row; a user's program must be
the same whether written as assembly or as words; mixed sources must be drawn
at the rates asked; and the schedule both trainers follow must be the one
written down.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from reflex_core import rv32i
from reflex_core.assembler import assemble
from reflex_core.training import DataError, SampleTable, grow_codebook, lr_at, read_data

GCD = "addi x5, x0, 12\naddi x6, x0, 18\nbeq x5, x6, 24\nblt x5, x6, 12\nsub x5, x5, x6\njal x0, -12\n"
GCD += "sub x6, x6, x5\njal x0, -20\nlui x10, 5\nsw x5, 0(x10)\njal x0, 0"


def test_the_codebook_grows_without_moving_a_row():
    old = assemble("addi x5, x0, 1\naddi x5, x0, 2\naddi x6, x0, 2\nadd x7, x5, x6\nsw x5, 0(x10)\njal x0, 0")
    new_words = assemble("addi x5, x0, 9\nadd x8, x5, x6\nsub x7, x5, x6\naddi x5, x0, 1")
    codebook, sources = grow_codebook(old, new_words)
    assert codebook[: len(old)] == old
    added = codebook[len(old) :]
    assert set(added) == set(new_words) - set(old) and len(added) == 3
    start = dict(zip(added, sources))
    # addi x5, x0, 9 starts from the addi x5, x0, _ rows (only the immediate differs)
    assert [rv32i.decode(old[r]) for r in start[assemble("addi x5, x0, 9")[0]]] == [
        rv32i.decode(w) for w in old[:2]
    ]
    # add x8 (a new destination) from the other add; sub (a new operation) from the R-format rows
    assert start[assemble("add x8, x5, x6")[0]] == [3]
    assert start[assemble("sub x7, x5, x6")[0]] == [3]


def test_a_program_as_assembly_or_as_words_is_the_same(tmp_path):
    words = assemble(GCD)
    six = {"expected_result": {"mem_0x5000": 6}}
    lines = [
        {"prompt": "gcd of 12 and 18", "program": GCD, **six},
        {"prompts": ["gcd(12, 18)"], "program": [f"0x{w:08x}" for w in words], **six},
        {"prompt": "gcd 12 18", "prompts": ["hcf 12 18"], "program": words, **six},
    ]
    path = tmp_path / "gcd.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    programs = read_data(path, say=lambda *a: None)
    assert [p.words for p in programs] == [words] * 3
    assert programs[2].variants == ["gcd 12 18", "hcf 12 18"] and programs[0].family == "gcd"


@pytest.mark.parametrize(
    "record, message",
    [
        (
            {"prompt": "", "program": "jal x0, 0", "expected_result": {"mem_0x5000": 0}},
            "a prompt must be a non-empty string",
        ),
        ({"prompt": "x", "program": [2**32], "expected_result": {"mem_0x5000": 0}}, "not a 32-bit"),
        ({"prompt": "x", "program": 7, "expected_result": {"mem_0x5000": 0}}, "must be assembly text"),
        (
            {"prompt": "x", "program": "jal x0, 0", "expected_result": {"bogus": 0}},
            "unknown expected_result key",
        ),
        (
            {"prompt": "x", "program": "jal x0, 0", "expected_result": {"mem_0x5000": 5}},
            "got {'mem_0x5000': [0]}",
        ),
    ],
)
def test_a_bad_record_names_its_line(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"prompt": "ok", "program": "jal x0, 0", "expected_result": {"mem_0x5000": 0}}) + "\n"
    )
    path.write_text(path.read_text() + json.dumps(record) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:2") as err:
        read_data(path, say=lambda *a: None)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sources_are_drawn_at_the_rates_asked():
    class Tokenizer:
        pad_token_id = 0

        def encode(self, text):
            return [1 + (ord(c) % 50) for c in text]

    config = {"chat_template": False, "context_prefix": False, "max_instr_tokens": 96}
    groups = [{"prompts": [f"new {i}"]} for i in range(2)] + [{"prompts": [f"old {i}"]} for i in range(50)]
    cycles = [[([i] * 65, i % 3)] * 5 for i in range(52)]
    table = SampleTable(groups, cycles, [0, 1, 2], Tokenizer(), config, [0, 0] + [1] * 50, [0.25, 0.75])
    batch = table.draw(20000, np.random.default_rng(1))
    share_new = np.isin(batch.states[:, 0], [0, 1]).mean()
    assert abs(share_new - 0.25) < 0.02  # 10 of 260 cycles, drawn a quarter of the time
    same = table.draw(64, np.random.default_rng(5)), table.draw(64, np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(vars(same[0]).values(), vars(same[1]).values()))


def test_the_schedule_warms_up_then_decays_to_min_lr():
    lr = lambda step: lr_at(step, lr=1e-3, min_lr=1e-5, warmup=10, steps=110)
    assert lr(0) == pytest.approx(1e-4) and lr(9) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert lr(110) == pytest.approx(1e-5) and lr(500) == pytest.approx(1e-5)
