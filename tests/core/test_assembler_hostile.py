"""Assembly text as a hostile user or a model writes it: nothing in it runs, no file is
opened, and every bound is met quickly, through the assembler and its callers
(the text side's judge, training data). A fuzz test mutates programs and throws
random tokens; REFLEX_FUZZ_CASES sets its count (`make fuzz` runs thousands)."""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import random
import reprlib  # noqa: F401  (errors.short_repr imports it; imported here before open is forbidden)
import subprocess
import sys
import time

import pytest

from reflex_core import assembler, rv32i, spec
from reflex_core.assembler import (
    MAX_LABEL_CHARS,
    MAX_LABELS,
    MAX_LINE_CHARS,
    MAX_LINES,
    MAX_TEXT_CHARS,
    MAX_WORDS,
    AssemblyError,
    assemble,
    canonical,
)
from reflex_core.textmode import judge
from reflex_core.training import DataError, program_words, read_data


def escape(marker) -> str:
    """The walk out of an eval without builtins, to a file write: it made `marker` under
    the assembler this project used before (test_the_payload_is_live shows it)."""
    return (
        "[c for c in ().__class__.__base__.__subclasses__() if c.__name__=='catch_warnings'][0]()"
        f"._module.__builtins__['__import__']('pathlib').Path('{marker}').touch()"
    )


@contextlib.contextmanager
def no_files():
    """Within it, any open or stat raises (and not as an AssemblyError): for the
    assembler's calls only, so that pytest itself can still write its reports."""

    def tripwire(*args, **kwargs):
        raise RuntimeError(f"the assembler touched the filesystem: {args!r}")

    saved = [
        (m, n, getattr(m, n)) for m in (builtins, io, os) for n in ("open", "stat", "lstat") if hasattr(m, n)
    ]
    for module, name, _ in saved:
        setattr(module, name, tripwire)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def refused(text, match: str | None = None) -> AssemblyError:
    with no_files():
        try:
            words = assemble(text)
        except AssemblyError as err:
            error = err
        else:
            error = None
    assert error is not None, f"assembled to {len(words)} words"
    message = str(error)
    assert "\n" not in message and len(message) < 400, message
    if match:
        assert match in message, message
    return error


def test_the_payload_is_live(tmp_path):
    """bronzebeard (when installed, as a test oracle) runs the escape: so the payloads
    below are real, and test_no_code_runs shows this assembler does not run them."""
    pytest.importorskip("bronzebeard.asm")
    for text in (f"X = {escape('as_constant')}", f"addi x5, x0, {escape('as_immediate')}"):
        code = (
            "import sys; from bronzebeard import asm\ntry: asm.assemble(sys.argv[1])\nexcept Exception: pass"
        )
        subprocess.run([sys.executable, "-c", code, text], cwd=tmp_path, timeout=600, check=True)
    assert (tmp_path / "as_constant").exists() and (tmp_path / "as_immediate").exists()


def test_no_code_runs(tmp_path):
    marker = tmp_path / "ran"
    for text in (
        f"X = {escape(marker)}\nli t0, X",
        f"addi x5, x0, {escape(marker)}",
        f"li t0, {escape(marker)}",
        f"lui t0, %hi({escape(marker)})",
        f"lw t0, {escape(marker)}(t1)",
        f".equ X, {escape(marker)}",
        "li t0, __import__('os').system('touch " + str(marker) + "')",
        "li t0, open('/etc/hostname').read()[0]",
    ):
        refused(text)
        with no_files():
            outcome = judge(f"Here it is:\n```asm\n{text}\nhalt: j halt\n```\n")
            try:
                program_words(text, "data.jsonl:3")
            except DataError as err:
                data_error = str(err)
        assert outcome.words is None and outcome.error.startswith("line ") and "\n" not in outcome.error
        assert data_error.startswith("data.jsonl:3: the program does not assemble: line 1: ")
        assert "\n" not in data_error
    assert not marker.exists()


def test_a_training_record_with_a_payload_stops_on_its_line(tmp_path):
    marker = tmp_path / "ran"
    good = {"prompt": "store 1", "program": "li t0, 1\nlui t1, 5\nsw t0, 0(t1)\nhalt: j halt"}
    bad = dict(good, program=f"X = {escape(marker)}\nli t0, X\nhalt: j halt")
    data = tmp_path / "data.jsonl"
    lines = [dict(r, expected_result={"mem_0x5000": 1}) for r in (good, bad)]
    data.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(DataError, match=r"data.jsonl:2: the program does not assemble: line 1: "):
        read_data(data, say=lambda *_: None)
    assert not marker.exists()


def test_no_file_is_read(tmp_path, monkeypatch):
    """Not an existing file, a FIFO (opening it would hang), nor a device, by any name."""
    program = tmp_path / "prog.s"
    program.write_text("addi x5, x0, 1\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block: a read would hang the test
    monkeypatch.chdir(tmp_path)
    for path in (program, fifo, "prog.s", "/dev/zero"):
        refused(f"include {path}", "include is not supported")
        refused(f"include_bytes {path}", "include_bytes is not supported")
        refused(f'include "{path}"\nnop', "line 1: include is not supported")
        refused(str(path), "line 1: ")  # a text that names a file is text, not the file
    refused(str(program) + "\n", "unknown instruction")


def test_unbounded_assembly_is_refused_quickly():
    refused("X = 9**9**9**9\nli t0, X", "line 1: a constant's value must be one literal")
    refused("li t0, 9**9**9**9", "line 1: value '9**9**9**9' is not an integer literal")
    refused("align 1073741824\nnop", "line 1: align is not supported")
    assert assemble(".align 30\nnop") == [rv32i.addi(0, 0, 0)]  # a model's .align moves no word
    refused("li x5, 0x10000000000000000", "is not in -2147483648..4294967295")
    refused("li x5, 1" + "0" * 900, "line 1: value")
    refused("addi x5, x0, " + "(" * 900, "line 1: ")
    refused("nop\n" * (10 << 20 >> 2), f"10,485,760 characters is more than {MAX_TEXT_CHARS:,}")
    refused("nop\n" * 100_000, f"100,001 lines is more than {MAX_LINES:,}")
    refused("".join(f"L{i}:\n" for i in range(100_000)), f"lines is more than {MAX_LINES:,}")
    many = [" ".join(f"L{row}_{i}:" for i in range(100)) for row in range(100)]
    refused("\n".join(many) + "\nnop", f"more than {MAX_LABELS} labels and constants")
    refused("nop # " + "x" * 100_000, f"line 1: a line of more than {MAX_LINE_CHARS} characters")
    refused("a" * (MAX_LABEL_CHARS + 1) + ": nop", f"a name of more than {MAX_LABEL_CHARS} characters")
    refused("j a\n" + "nop\n" * MAX_WORDS + "a: nop", f"passes the {MAX_WORDS}-word code region")
    refused("x" * (MAX_TEXT_CHARS + 1), "characters is more than")
    with pytest.raises(AssemblyError, match="characters is more than"):
        assembler.extract_code("```asm\n" + "nop\n" * 300_000 + "```")


def test_odd_characters_are_one_line():
    for text in (
        "li t0, 'é'",
        "li t0, '\\x41'",
        "nop\u2028nop",
        "nop\x00",
        "li t0, '''",
    ):
        refused(text)
    assert assemble("nop\r\nnop\r\n") == [rv32i.addi(0, 0, 0)] * 2


# ------------------------------------------------------------------ fuzz
VOCABULARY = [
    *sorted(assembler.MNEMONICS), *sorted(assembler.REGISTERS), *sorted(assembler.FOREIGN_DIRECTIVES),
    ".text", ".globl", ".word", ".equ", ".align", ".section", "%hi", "%lo", "(", ")", ",", ":", "=", "#",
    "//", ";", "'", "'A'", "'\\n'", "0", "-1", "2047", "-2048", "0x7ff", "0xFFFFFFFF", "0x100000000",
    "0b1", "0o7", "4096", "-4096", "1e9", "9**9", "__import__", "().__class__", "eval", "/etc/passwd",
    "/dev/zero", "é", "\u2028", "\x00", "\t", " ", "\n", "L0", "L0:", "loop", "loop:", "X", "X =", "```",
]  # fmt: skip


def fuzz_sources() -> list[str]:
    from reflex_core.corpus import find_corpus, load_programs

    texts = [
        "li t0, 5\nli t1, 1\nloop:\nbeqz t0, done\nadd t1, t1, t1\naddi t0, t0, -1\nj loop\n"
        "done:\nlui t3, 0x5\nsw t1, 0(t3)\nhalt: j halt\n",
        "X = 0x5000\n.text\nmain: li a0, X\n  li a1, 'H'\n  sw a1, %lo(X)(a0)  # store\n  call f\n"
        "  ret\nf: mv t0, a1\n  bgt t0, a1, f\n  jr ra\n",
    ]
    root = find_corpus()
    if root is not None:
        programs = load_programs(root)
        texts += ["\n".join(canonical(w) for w in p.words) for p in random.Random(0).sample(programs, 40)]
    return texts


def mutate(rng: random.Random, text: str, sources: list[str]) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        i = rng.randrange(len(lines))
        if kind == 0 and len(lines[i]):  # drop, double or replace a character
            j = rng.randrange(len(lines[i]))
            c = rng.choice([lines[i][j] * 2, "", rng.choice("0189afx-+,()#:;'\\ %._$\t")])
            lines[i] = lines[i][:j] + c + lines[i][j + 1 :]
        elif kind == 1:  # insert a token
            j = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:j] + rng.choice(VOCABULARY) + lines[i][j:]
        elif kind == 2:  # replace a token
            parts = lines[i].split(" ")
            parts[rng.randrange(len(parts))] = rng.choice(VOCABULARY)
            lines[i] = " ".join(parts)
        elif kind == 3:  # a line of random tokens
            lines.insert(i, " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, 8))))
        elif kind == 4:  # a line from another program
            other = rng.choice(sources).split("\n")
            lines.insert(i, rng.choice(other))
        elif kind == 5:  # drop or repeat lines
            lines[i : i + 1] = [] if rng.random() < 0.5 else [lines[i]] * rng.randint(2, 50)
        elif kind == 6:  # a number at an edge
            edge = rng.choice(
                [2047, 2048, -2049, 1 << 19, 1 << 20, 1 << 31, 1 << 32, -(1 << 31) - 1, 1 << 70]
            )
            lines[i] = lines[i].rsplit(" ", 1)[0] + " " + rng.choice([str(edge), hex(edge)])
        elif lines:  # two lines swapped
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        if not lines:
            lines = [""]
    return "\n".join(lines)


def test_fuzzed_text_assembles_to_legal_words_or_is_refused_in_one_line():
    count = int(os.environ.get("REFLEX_FUZZ_CASES", "300"))
    rng = random.Random(2121)
    sources = fuzz_sources()
    outcomes = {"words": 0, "refused": 0}
    slowest = 0.0
    for case in range(count):
        if rng.random() < 0.1:
            text = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, 40)))
        else:
            text = mutate(rng, rng.choice(sources), sources)
        started = time.perf_counter()
        try:
            with no_files():
                words = assemble(text)
        except AssemblyError as err:
            message = str(err)
            assert message and "\n" not in message and len(message) < 400, (case, text, message)
            outcomes["refused"] += 1
        else:
            assert 0 < len(words) <= MAX_WORDS, (case, text)
            for word in words:
                assert 0 <= word <= spec.MASK32 and rv32i.decode(word)["op"] != "illegal", (case, text)
            outcomes["words"] += 1
        slowest = max(slowest, time.perf_counter() - started)
    print(f"{count} cases: {outcomes}, slowest {slowest * 1000:.1f} ms")
    assert outcomes["words"] and outcomes["refused"]  # both sides of the line were reached
