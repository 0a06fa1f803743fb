"""`reflex-mlx demo`: in a real terminal (tmux), rendered by rich, without a terminal,
with a backbone that writes text, and on a thread of its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reflex_app.ui import Demo, Screen
from reflex_core.textmode import judge

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "reflex_app"]
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    """One detached tmux session running a command; keys in, screen text out."""

    def __init__(self, name: str, command: str, width: int = 170, height: int = 50):
        self.name = name
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        size = ["-x", str(width), "-y", str(height)]
        subprocess.run(["tmux", "new-session", "-d", "-s", name, *size, "sh"], check=True)
        # a server started earlier may hold its own default size: size this window, then start
        subprocess.run(["tmux", "resize-window", "-t", name, *size], check=True)
        self.keys(f"unset COLUMNS LINES; {command}", "Enter")  # the pane's own size, not the caller's

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-t", self.name, "-p"], capture_output=True, text=True
        ).stdout

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@needs_tmux
def test_the_demo_in_a_real_terminal():
    demo = f"{' '.join(CLI)} demo --model tiny --backend mlx --passes 6"
    command = f"cd {ROOT} && {demo}; echo DEMO-EXITED; sleep 30"
    tmux = Tmux("reflex-demo-test", command)
    try:
        tmux.wait_for("Enter run  Esc quit")
        tmux.keys("add 7 and 8 and store the result", "Enter")
        tmux.wait_for("pass 6/6")
        screen = tmux.wait_for("Enter run  Esc quit")  # all 6 passes done, waiting for the next task
        assert "outcome: halted after 6 cycles" in screen
        assert "task: add 7 and 8 and store the result" in screen
        assert "0x5000: 15 0 0" in screen  # the data window
        assert "t2         15" in screen and "zero          0" in screen  # the registers, by ABI name
        assert "addi rd=5 rs1=0 imm=7" in screen  # the decoded fields
        assert "text mode: this backbone was trained from scratch" in screen  # the text panel says why not
        assert "peak memory" in screen and "ms/cycle" in screen
        # a long task (6 refinement passes) is stopped with one key, and the model stays loaded
        tmux.keys("count down from 5 to 1 and store each value", "Enter")
        tmux.wait_for("pass 2/6")
        tmux.keys("s")
        screen = tmux.wait_for("(stopped)")
        assert "Enter run  Esc quit" in screen
        tmux.keys("Escape")
        tmux.wait_for("DEMO-EXITED", timeout=300)
    finally:
        tmux.close()


def _loaded(model_dir):
    from reflex_mlx.backend import BACKEND

    return BACKEND.load(model_dir)


def test_rendering_both_sides_with_rich(mlx_float32_dir):
    from rich.console import Console

    loaded = _loaded(None)  # the bundled reflex-tiny
    demo = Demo(loaded, Screen(model="reflex-tiny"))
    demo.run_task("add 7 and 8 and store the result", None, lambda: None)
    screen = demo.screen
    screen.text.note = ""  # show the text side as a model that writes text would
    screen.text.text = "```asm\nli t0, 72\nlui t1, 0x6\nsw t0, 0(t1)\nhalt: j halt\n```"
    screen.text.outcome = judge(screen.text.text)
    console = Console(record=True, width=170, height=50)
    console.print(screen.render())
    out = console.export_text()
    assert "Reflex drives the CPU" in out and "The same backbone writes assembly" in out
    assert "outcome: halted after 6 cycles" in out and "t2         15" in out
    assert "assembled: 4 words; outcome: halted after 4 cycles" in out and "display: 'H'" in out
    screen.text.outcome = judge("li t0, 5\naddi t0\n")
    console = Console(record=True, width=170, height=50)
    console.print(screen.render())
    assert "does not assemble: line 2:" in console.export_text()


def test_without_a_terminal_it_prints_lines(invoke):
    from reflex_app.cli import main

    proc = invoke(
        main, "demo", "--model", "tiny", "--backend", "mlx", "--passes", "2",
        input="add 7 and 8 and store the result\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "task: add 7 and 8 and store the result"
    assert any(line.startswith("[pass 2]") for line in lines)  # the second pass ran on the kept state
    assert "reflex 0x5000: 15 0" in proc.stdout and "text mode: this backbone" in proc.stdout


def test_a_backbone_that_writes_text_streams_assembles_and_runs_it(mlx_float32_dir):
    """The random fixture's backbone writes (meaningless) text: the whole text path runs."""
    loaded = _loaded(mlx_float32_dir)
    assert loaded.text_writer is not None and loaded.text_note == ""
    loaded.text_writer.max_tokens = 24
    demo = Demo(loaded, Screen(model="fixture"), max_cycles=10)
    assert demo.run_task("add 7 and 8 and store the result", None, lambda: None) == "done"
    text = demo.screen.text
    assert text.text and text.outcome is not None
    assert (text.outcome.error is None) == (text.outcome.result is not None)


def test_the_demo_runs_on_a_thread_of_its_own():
    """All model work on one thread (the MLX CPU backend): the demo's loop, run
    from a worker thread, loads and steps the model there."""
    box = {}

    def work():
        loaded = _loaded(None)
        demo = Demo(loaded, Screen(model="reflex-tiny"))
        box["verdict"] = demo.run_task("add 7 and 8 and store the result", None, lambda: None)
        box["outcome"] = demo.screen.reflex.outcome

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=300)
    assert box == {"verdict": "done", "outcome": "halted after 6 cycles"}


def test_eval_text_mode(mlx_float32_dir, invoke):
    from reflex_app.cli import main
    from reflex_core.evaluation import evaluate_text, load_tasks

    proc = invoke(main, "eval", "--text-mode", "--model", "tiny", "--backend", "mlx")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("it cannot write text")

    loaded = _loaded(mlx_float32_dir)
    loaded.text_writer.max_tokens = 16
    tasks = load_tasks()[:3]
    report = evaluate_text(loaded.text_writer, tasks=tasks)
    rows = [row for section in report["sections"].values() for row in section["rows"]]
    assert report["total"] == len(rows) == 3 and report["passed"] == sum(r["pass"] for r in rows)
    for row in rows:  # a random backbone's text: whatever it is, it was judged
        assert row["text"] and (row["outcome"] in ("halted", "error", "limit"))
        if row["error"] and row["error"].startswith("does not assemble"):
            assert not row["pass"] and row["ops"] == 0


def test_the_capture_writes_the_final_screen(tmp_path, capsys):
    """reflex_app/demo_capture.py (docs/demo.md's capture) on the bundled reflex-tiny."""
    from reflex_app import demo_capture

    out = tmp_path / "screen.txt"
    demo_capture.main(["--task", "add 7 and 8 and store the result", "--out", str(out), "--passes", "2"])
    text = out.read_text()
    assert "Reflex drives the CPU" in text and "cycles 12 (pass 2/2)" in text
    assert "outcome: halted after 6 cycles" in text and "0x5000: 15 0" in text
    assert capsys.readouterr().out.strip() == text.strip()
