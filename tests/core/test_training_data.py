"""Training data is untrusted: read in bounded memory and time, refused in one line.

Why: `reflex-mlx train --data` reads whatever file or folder it is given. A huge
record, a million records, a FIFO, a deep JSON nesting or bad UTF-8 must be refused
at once and in one line naming the file and line; a record must split on "\\n"
only; an expected result must name an address the machine's memory has.
"""

from __future__ import annotations

import json
import os
import tracemalloc

import pytest

from reflex_core import corpus, files, training
from reflex_core.training import DataError, read_data

OK = {"prompt": "store zero", "program": ["0x0000006f"], "expected_result": {"mem_0x5000": 0}}


def record(**changes) -> bytes:
    return json.dumps({**OK, **changes}, ensure_ascii=False).encode() + b"\n"


def refused(path, **options) -> str:
    """read_data's one-line refusal."""
    with pytest.raises(DataError) as err:
        read_data(path, say=lambda *a: None, **options)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_a_50_mb_record_is_refused_at_once_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(record())
        f.write(b'{"prompt": "' + b"a" * (50 << 20) + b'", "program": "x"}\n')
    tracemalloc.start()
    try:
        message = refused(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message.startswith("huge.jsonl:2: a record longer than 1,048,576 bytes")
    assert peak < 4 * training.MAX_RECORD_BYTES  # the record is never read whole


def test_a_million_records_are_refused_before_any_is_read(tmp_path):
    path = tmp_path / "million.jsonl"
    path.write_bytes(record() * 1_000_000)
    assert "a training file may hold at most 67,108,864" in refused(path)


def test_too_many_records_are_refused_before_any_program_is_replayed(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_bytes(record(program=["0x0000006f"]) * (corpus.MAX_PROGRAMS + 1))
    message = refused(path)
    assert message.startswith(f"many.jsonl:{corpus.MAX_PROGRAMS + 1}: more than 100,000 records")


def test_the_replayed_cycles_of_one_source_are_bounded(tmp_path, monkeypatch):
    """Programs that never halt run to REPLAY_MAX_CYCLES each; the source's total is bounded."""
    monkeypatch.setattr(training, "MAX_REPLAY_CYCLES", 15_000)
    path = tmp_path / "loops.jsonl"
    path.write_bytes(record(program="addi x5, x5, 1\njal x0, -4", prompt="count") * 3)
    message = refused(path, skip_failing=True)  # rejected programs count too
    assert message.startswith("loops.jsonl:2: the programs of ") and "more than 15,000 cycles" in message


def test_a_line_separator_inside_a_string_stays_in_its_record(tmp_path):
    prompt = "store zero\u2028then\u2029halt\x85now\x1c\x1d\x1e"
    path = tmp_path / "separators.jsonl"
    path.write_bytes(record(prompt=prompt) + b"\n" + record(prompt="second"))
    programs = read_data(path, say=lambda *a: None)
    assert [p.instruction for p in programs] == [prompt, "second"]


@pytest.mark.parametrize(
    "key",
    ["mem_0x100005000", "mem_0x100005000_words", "mem_0xFFFFFFFFFFFFFFFFFFFF5000"],
)
def test_an_address_past_32_bits_is_refused(tmp_path, key):
    path = tmp_path / "far.jsonl"
    path.write_bytes(record() + record(expected_result={key: 0}))
    assert refused(path).startswith("far.jsonl:2: ")


def test_an_address_outside_the_checked_memory_is_refused(tmp_path):
    """It would read as 0 and pass whatever the program does."""
    for n, key in enumerate(["mem_0x0", "mem_0x4ffc", "mem_0x11000", "mem_0x10ffc_words"]):
        path = tmp_path / f"outside{n}.jsonl"
        value = [0, 0] if key.endswith("_words") else 0
        path.write_bytes(record(expected_result={key: value}))
        assert "outside the memory a run is checked in" in refused(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prompts": {"a": 1}}, '"prompts" must be a list of strings'),
        ({"prompts": ["ok", 7]}, "a prompt must be a non-empty string, not 7"),
        ({"prompt": ["a"]}, '"prompt" must be a string'),
        ({"prompt": "x" * 5000}, "a prompt of 5,000 characters"),
        ({"prompts": ["p"] * 300}, "301 prompts; at most 256"),
        ({"expected_result": {"mem_0x5000": 2**32}}, "is not a 32-bit integer"),
        ({"expected_result": {"mem_0x5000": True}}, "is not a 32-bit integer"),
        ({"expected_result": {f"mem_0x{0x5000 + 4 * i:x}": 0 for i in range(65)}}, "65 entries"),
        ({"expected_result": []}, 'needs "expected_result"'),
        ({"family": {"a": 1}}, '"family" must be a name'),
        ({"family": "a\nb"}, "holds a control character"),
        ({"program": {"a": 1}}, '"program" must be assembly text'),
        ({"program": ["0x" + "f" * 5000]}, "is not a 32-bit instruction word"),
        ({"program": [111] * 5000}, "do not fit the 4096-word code region"),
        ({"programs": "x"}, "unknown key 'programs'"),
    ],
)
def test_a_schema_error_is_one_line_with_its_line_number(tmp_path, changes, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(record() + b"\n" + record(**changes))
    text = refused(path)
    assert text.startswith("bad.jsonl:3: ") and message in text, text


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"prompt": "caf\xe9"}', "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"prompt": "x", "program": [1' + b"0" * 5000 + b"]}", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"prompt": "x",', "not a JSON object"),
    ],
)
def test_an_unreadable_line_is_one_line_with_its_line_number(tmp_path, line, message):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(record() + line + b"\n")
    text = refused(path)
    assert text.startswith("broken.jsonl:2: ") and message in text, text


def test_a_fifo_is_never_read(tmp_path):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    assert "no training data at" in refused(fifo)
    with pytest.raises(ValueError, match="is not a regular file"):
        files.read_regular(fifo, 100)  # even asked directly: no wait for a writer


def corpus_folder(root, family: dict) -> None:
    (root / "programs" / "cat").mkdir(parents=True)
    (root / "programs" / "cat" / "fam.json").write_text(json.dumps(family))


def test_a_corpus_folder_is_checked_as_a_jsonl_is(tmp_path):
    entry = {"instruction": "store zero", "bytes": [0x6F, 0, 0, 0], "expected_result": {"mem_0x5000": 0}}
    good = tmp_path / "good"
    corpus_folder(good, {"family": "fam", "programs": [entry]})
    assert [p.family for p in read_data(good, say=lambda *a: None)] == ["fam"]
    for name, family, message in [
        ("far", {"programs": [{**entry, "expected_result": {"mem_0x100005000": 0}}]}, "past 32 bits"),
        ("deep", {"programs": [{**entry, "instruction_variants": {"a": 1}}]}, "must be a list of strings"),
        ("bytes", {"programs": [{**entry, "bytes": [256, 0, 0, 0]}]}, "byte values"),
        ("shape", {"programs": {"a": 1}}, "not a family file"),
    ]:
        corpus_folder(tmp_path / name, family)
        text = refused(tmp_path / name)
        assert text.startswith(f"{tmp_path / name}: ") and message in text, text
        assert "programs/cat/fam.json" in text
    big = tmp_path / "big"
    corpus_folder(big, {"programs": [entry]})
    with open(big / "programs" / "cat" / "fam.json", "ab") as f:
        f.truncate(corpus.MAX_CORPUS_FILE_BYTES + 1)
    assert "a corpus file may hold at most" in refused(big)
    fifo = tmp_path / "fifo"
    (fifo / "programs" / "cat").mkdir(parents=True)
    os.mkfifo(fifo / "programs" / "cat" / "fam.json")
    assert "is not a regular file" in refused(fifo)


def test_a_hostile_data_path_is_one_line(tmp_path):
    for name, message in [
        ("~nosuchuser-reflex/d.jsonl", "no home folder"),
        ("d" * 4096, "File name too long"),
        ("", "is empty"),
        ("a\0b", "NUL"),
        (str(tmp_path / "no\nsuch"), "no training data at"),
    ]:
        assert message in refused(name)


def test_a_run_on_a_few_programs_replays_only_those(monkeypatch):
    """--max-programs chooses before anything is replayed, and chooses what the split
    of every program would (the same programs, held-out set and counts; every corpus
    program is kept, tests/core/test_machine.py)."""
    root = corpus.find_corpus()
    if root is None:
        pytest.skip("training corpus absent (../shared/corpus or $REFLEX_CORPUS)")
    programs = training.parse_data(root).programs
    options = dict(heldout_fraction=0.1, seed=4, eval_filter="punctuation", max_programs=30)
    whole = training.split_programs(programs, **options)
    replayed = []
    check = training.check_program
    monkeypatch.setattr(training, "check_program", lambda p: replayed.append(p) or check(p))
    early = training.read_split([root], **options, say=lambda *a: None)
    assert len({tuple(p.words) for p in replayed}) == 30 < len(programs)
    assert [g["program"].words for g in early.train] == [g["program"].words for g in whole.train]
    assert (early.heldout, early.counts["programs"]) == (whole.heldout, len(programs))
    assert {**early.counts, "corpus": ""} == {**whole.counts, "corpus": ""}
    assert len(early.cycles) == len(early.train) and len(early.held_cycles) == len(early.heldout) == 3
