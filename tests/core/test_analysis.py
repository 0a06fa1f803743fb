"""reflex_core.analysis on fixtures: the length tasks' expected results, the bands and cycle
limits, the neighbour statistics against a brute-force count, effective rank on known
matrices, field algebra on a constructed codebook, and the confusion table."""

from __future__ import annotations

import numpy as np
import pytest

from reflex_core import rv32i, spec
from reflex_core.analysis import codebook as cb
from reflex_core.analysis import length as ln
from reflex_core.analysis import report
from reflex_core.corpus import find_corpus
from reflex_core.loop import run_many


def _brute(name: str, n: int):
    """The answer by stepping through the task in Python, word by word."""
    if name == "count_down":
        out, k = [], n
        while k:
            out.append(k)
            k -= 1
        return out
    if name == "count_up":
        return [k for k in range(1, n + 1)]
    if name == "sum":
        return sum(range(1, n + 1))
    if name == "fibonacci":
        seq = [0, 1]
        while len(seq) < n:
            seq.append(seq[-1] + seq[-2])
        return seq[:n]
    if name == "memcpy":  # byte addresses, as the machine sees them
        mem = {spec.SOURCE_ADDR + 4 * i: v for i, v in enumerate(spec.SOURCE_SEED)}
        for i in range(n):
            mem[spec.DEST_ADDR + 4 * i] = mem.get(spec.SOURCE_ADDR + 4 * i, 0)
        return [mem[spec.DEST_ADDR + 4 * i] for i in range(n)]
    if name == "multiply":
        return sum(ln.MULTIPLY_BY for _ in range(n))
    if name == "power":
        value = 1
        for _ in range(n):
            value *= ln.POWER_BASE
        return value
    if name == "factorial":
        value = 1
        for k in range(1, n + 1):
            value *= k
        return value
    raise AssertionError(name)


CASES = [
    ("count_down", 7),
    ("count_up", 9),
    ("sum", 100),
    ("fibonacci", 48),  # F(47) = 2971215073: the last that fits 32 bits
    ("memcpy", 70),  # past the 64-word gap the copy reads what it wrote
    ("multiply", 29),
    ("power", 31),
    ("factorial", 12),
]


@pytest.mark.parametrize(("name", "n"), CASES)
def test_expected_results_from_the_machine_match_brute_force(name, n):
    task = ln.make_task(ln.FAMILIES[name], 1, n)
    assert task.expected == _brute(name, n) == ln.FAMILIES[name].python_expected(n)
    assert task.reference_words[-1] == spec.HALT_WORD
    assert task.max_cycles == max(spec.EVAL_MAX_CYCLES, ln.LIMIT_FACTOR * len(task.reference_words))


def test_reference_programs_halt_with_their_result_and_fit_32_bits():
    for name, family in ln.FAMILIES.items():
        if family.fits is not None:
            assert _brute(name, family.fits) < 2**32 if family.check == "mem" else True
            over = _brute(name, family.fits + 1)
            assert (over if family.check == "mem" else over[-1]) >= 2**32
    result, trace = ln.reference_run(ln.FAMILIES["count_down"], 3)
    assert result.halted and result.words(spec.DATA_ADDR, 4) == [3, 2, 1, 0]
    assert len(trace) == len(result.cycles)


def test_bands_grow_past_the_training_range():
    family = ln.FAMILIES["count_down"]
    lo, hi = family.trained
    assert ln.band(family, 1) == (lo, hi)
    assert ln.band(family, 2) == (hi + 1, 2 * hi)
    assert ln.band(family, 32) == (16 * hi + 1, 32 * hi)
    assert ln.sizes(family, 1, 3) == [lo, round((lo + hi) / 2), hi]
    assert ln.band(ln.FAMILIES["factorial"], 2) == (11, 12)  # 13! does not fit
    assert ln.band(ln.FAMILIES["factorial"], 4) is None
    assert ln.sizes(ln.FAMILIES["factorial"], 8, 3) == []


def test_first_wrong_and_per_program_limits():
    assert ln.first_wrong([1, 2, 3], [1, 2, 3]) is None
    assert ln.first_wrong([1, 9, 3], [1, 2, 3]) == 1
    assert ln.first_wrong([1, 2], [1, 2, 3]) == 2
    results = run_many(lambda states: [0x00100293] * len(states), 3, max_cycles=[2, 5, 1])  # addi t0, zero, 1
    assert [len(r.cycles) for r in results] == [2, 5, 1]
    assert all(r.outcome == "limit" for r in results)
    with pytest.raises(ValueError):
        run_many(lambda states: [0] * len(states), 2, max_cycles=[1])


def test_run_tasks_scores_the_reference_program_as_passing():
    tasks = [ln.make_task(ln.FAMILIES["multiply"], 1, 4), ln.make_task(ln.FAMILIES["count_up"], 2, 21)]
    codebook = set(tasks[0].reference_words)  # the second task's li of 22 is not in it

    def make(prompts):
        def predict(indices, states):  # the reference program's own word at each pc
            return [_word_at(tasks[i], state[spec.NUM_REGS]) for i, state in zip(indices, states)]

        return predict

    runs = ln.run_tasks(make, tasks, codebook)
    assert [r.passed for r in runs] == [True, True]
    assert [r.first_wrong for r in runs] == [None, None]
    assert [r.in_codebook for r in runs] == [True, False]
    summary = ln.summarise(runs, [1, 2])
    assert summary["overall"]["x1"]["pass_rate"] == 1.0 and summary["overall"]["x2"]["reachable"] == 0


def _word_at(task, pc):
    from reflex_core.assembler import assemble

    words = assemble(ln.FAMILIES[task.family].source(task.size))
    index = (pc - spec.CODE_START) // 4
    return words[index] if index < len(words) else spec.HALT_WORD


@pytest.mark.skipif(find_corpus() is None, reason="the training corpus is not at hand")
def test_training_ranges_are_the_corpus_measurement():
    assert ln.corpus_ranges(find_corpus()) == ln.CORPUS_RANGES


# ------------------------------------------------------------------ codebook
def _fixture_codebook(seed=0):
    words = [
        rv32i.addi(5, 0, 1),
        rv32i.addi(6, 0, 1),
        rv32i.addi(5, 0, 2),
        rv32i.addi(6, 0, 2),
        rv32i.add(5, 5, 6),
        rv32i.add(7, 5, 6),
        spec.HALT_WORD,
        rv32i.addi(7, 0, 3),
        rv32i.add(6, 5, 6),
    ]
    rows = np.random.default_rng(seed).normal(size=(len(words), 6))
    return rows, words


def test_neighbour_statistics_match_a_brute_force_count():
    for seed in range(5):
        rows, words = _fixture_codebook(seed)
        ops = [rv32i.decode(w) for w in words]
        best = []
        for i in range(len(rows)):
            sims = {
                j: float(rows[i] @ rows[j] / np.linalg.norm(rows[i]) / np.linalg.norm(rows[j]))
                for j in range(len(rows))
                if j != i
            }
            best.append(max(sims, key=lambda j: (sims[j], -j)))
        stats = cb.neighbour_stats(rows, words)
        assert stats["same_op"] == sum(ops[i]["op"] == ops[j]["op"] for i, j in enumerate(best))
        assert stats["same_format"] == sum(ops[i]["format"] == ops[j]["format"] for i, j in enumerate(best))
        with_rd = [(i, j) for i, j in enumerate(best) if "rd" in ops[i] and "rd" in ops[j]]
        assert stats["rows_with_rd"] == len(with_rd)
        assert stats["same_rd"] == sum(ops[i]["rd"] == ops[j]["rd"] for i, j in with_rd)
        assert [r["neighbours"][0]["row"] for r in cb.neighbour_table(rows, words, 2)] == best


def test_effective_rank_of_known_matrices():
    assert cb.effective_rank(cb.singular_values(np.eye(5))) == pytest.approx(5)
    assert cb.effective_rank(cb.singular_values(np.outer([1, 2, 3], [4, 5]))) == pytest.approx(1)
    assert cb.effective_rank(np.array([1.0, 1.0, 0.0])) == pytest.approx(2)
    geometry = cb.geometry(np.diag([3.0, 1.0, 0.0]))
    assert geometry["rank_90_energy"] == 1 and geometry["rank_99_energy"] == 2


def test_field_algebra_on_a_codebook_built_from_field_vectors():
    """Rows that are exactly op + rd + imm vectors: every analogy must land."""
    rng = np.random.default_rng(1)
    op_vec, rd_vec, imm_vec = rng.normal(size=(1, 64)), rng.normal(size=(3, 64)), rng.normal(size=(3, 64))
    words, rows = [], []
    for r, rd in enumerate((5, 6, 7)):
        for k, imm in enumerate((1, 2, 3)):
            words.append(rv32i.addi(rd, 0, imm))
            rows.append(op_vec[0] + rd_vec[r] + imm_vec[k])
    rows = np.array(rows)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)  # unit rows: the test adds unit vectors
    result = cb.field_algebra(rows, words)
    assert result["fields"]["rd"]["pairs"] == 18 and result["fields"]["imm"]["pairs"] == 18
    assert result["fields"]["rd"]["share"] == 1.0 and result["fields"]["imm"]["share"] == 1.0
    assert result["fields"]["rs1"]["analogies"] == 0
    shuffled = rows[np.random.default_rng(2).permutation(len(rows))]  # the fields' structure broken
    assert cb.field_algebra(shuffled, words)["fields"]["rd"]["share"] < 1.0


def test_confusions_count_misses_within_the_opcode():
    a, b, c = rv32i.addi(5, 0, 1), rv32i.addi(5, 0, 2), rv32i.add(5, 5, 6)
    result = cb.confusions([a, a, b, c, c], [a, b, b, c, a])
    assert result["top1"] == 3 and result["misses"] == 2 and result["misses_within_op"] == 1
    assert result["by_op"]["addi"] == {"top1": 2, "cycles": 3, "share": 2 / 3}
    assert {(m["expected_op"], m["chosen_op"]) for m in result["miss_table"]} == {
        ("addi", "addi"),
        ("add", "addi"),
    }


def test_state_labels_and_groups_cover_the_65_tokens():
    labels = report.state_labels()
    assert len(labels) == spec.STATE_WORDS and labels[32] == "pc"
    groups = report.attention_groups(np.full((2, spec.STATE_WORDS), 1 / spec.STATE_WORDS))
    assert all(sum(g.values()) == pytest.approx(1) for g in groups)


def test_chance_of_a_random_neighbour_sharing_a_value():
    assert cb.chance(["addi", "addi", "add"]) == pytest.approx(2 / 6)
    assert cb.chance(["x"]) is None


def test_a_part_made_earlier_is_read_back_only_for_the_same_model(tmp_path):
    assert report.read_part(tmp_path, "length", "m") is None
    report.write_json(tmp_path / "length.json", {"model": "m", "tasks": 3})
    assert report.read_part(tmp_path, "length", "m") == {"model": "m", "tasks": 3}
    assert report.read_part(tmp_path, "length", "other") is None
    (tmp_path / "codebook.json").write_text("{not json")
    assert report.read_part(tmp_path, "codebook", "m") is None
