"""The demo's terminal UI: Reflex driving the CPU on the left, the same backbone
writing RV32I assembly as text on the right, both run, both outcomes side by side,
rendered by rich (`reflex-mlx demo`, reflex_app/cli/demo.py).

Everything runs on one thread: each turn of the loop advances Reflex one cycle
(the API's `stream`, over a machine the screen reads), takes the next chunk of
text, reads any key pressed, and redraws at most every REFRESH_S. MLX streams are
per thread, so no model array ever crosses threads. Any backend's `Loaded` serves:
it supplies the predictor runner and, where its backbone writes text, a
`text_writer` (reflex_mlx/text.py).

Keys: while a task runs, `s` stops it and `q` quits; between tasks, type the
next task and press Enter, Esc (or Ctrl-D) quits.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Group
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from reflex_core import spec
from reflex_core.loop import Cycle, RunResult
from reflex_core.machine import Machine
from reflex_core.textmode import TextOutcome, judge, write
from reflex_core.timing import human_bytes

from . import api

REFRESH_S = 0.05
STREAM_ROWS = 14
ABI_NAMES = (
    "zero ra sp gp tp t0 t1 t2 s0 s1 a0 a1 a2 a3 a4 a5 a6 a7 s2 s3 s4 s5 s6 s7 s8 s9 s10 s11 t3 t4 t5 t6"
).split()


def fields(op: dict) -> str:
    """The decoded fields of a structured op, as the opcode stream shows them."""
    return " ".join(f"{k}={op[k]}" for k in ("rd", "rs1", "rs2", "imm") if k in op)


def display_text(words: list[int]) -> str:
    """The display buffer (one ASCII character per word) up to its first zero."""
    out = []
    for word in words:
        if word == 0:
            break
        out.append(chr(word) if 32 <= word < 127 else "?")
    return "".join(out)


@dataclass
class ReflexSide:
    rows: deque = field(default_factory=lambda: deque(maxlen=STREAM_ROWS))
    registers: list[int] = field(default_factory=lambda: [0] * spec.NUM_REGS)
    changed: set[int] = field(default_factory=set)
    memory: dict[str, list[int]] = field(default_factory=dict)
    cycles: int = 0
    passes: str = ""
    ms_per_cycle: float = 0.0
    outcome: str = "ready"


@dataclass
class TextSide:
    note: str = ""  # why there is no text side, when there is none
    text: str = ""
    outcome: TextOutcome | None = None
    status: str = ""


@dataclass
class Screen:
    """What the demo shows; `render()` lays it out."""

    model: str
    task: str = ""
    prompt: str = ""
    reflex: ReflexSide = field(default_factory=ReflexSide)
    text: TextSide = field(default_factory=TextSide)
    peak: str = ""
    running: bool = False

    def render(self) -> Layout:
        layout = Layout()
        layout.split_column(
            Layout(self._header(), name="header", size=3),
            Layout(name="body"),
            Layout(self._status(), name="status", size=3),
        )
        layout["body"].split_row(Layout(self._reflex(), name="reflex"), Layout(self._text(), name="text"))
        return layout

    def _header(self) -> Panel:
        task = self.task or "(type a task below)"
        return Panel(Text.assemble(("task: ", "bold"), task), title=f"Reflex demo - {self.model}")

    def _reflex(self) -> Panel:
        stream = Table(expand=True, box=None, padding=(0, 1))
        for name in ("cycle", "pc", "word", "instruction", "fields"):
            stream.add_column(name, no_wrap=True)
        for cycle_no, cycle, op in self.reflex.rows:
            stream.add_row(
                str(cycle_no), f"0x{cycle.pc:04x}", f"{cycle.word:08x}", cycle.asm, f"{op['op']} {fields(op)}"
            )
        registers = Table(expand=True, box=None, show_header=False, padding=(0, 1))
        for _ in range(4):
            registers.add_column(no_wrap=True)
        for row in range(8):
            cells = []
            for col in range(4):
                i = row + 8 * col
                style = "bold yellow" if i in self.reflex.changed else ""
                cells.append(Text(f"{ABI_NAMES[i]:>4} {self.reflex.registers[i]:>10}", style=style))
            registers.add_row(*cells)
        return Panel(
            Group(
                stream,
                Text(""),
                registers,
                Text(""),
                *self._memory_lines(self.reflex.memory),
            ),
            title="Reflex drives the CPU",
        )

    @staticmethod
    def _memory_lines(memory: dict[str, list[int]]) -> list[Text]:
        if not memory:
            return [Text("memory: -")]
        display = display_text(memory.get(f"0x{spec.DISPLAY_ADDR:x}", []))
        return [
            Text(f"display: {display!r}"),
            Text(f"0x{spec.DATA_ADDR:x}: {' '.join(map(str, memory[f'0x{spec.DATA_ADDR:x}'][:8]))}"),
            Text(f"0x{spec.DEST_ADDR:x}: {' '.join(map(str, memory[f'0x{spec.DEST_ADDR:x}'][:8]))}"),
        ]

    def _text(self) -> Panel:
        title = "The same backbone writes assembly"
        if self.text.note:
            return Panel(Text(f"text mode: {self.text.note}"), title=title)
        tail = "\n".join(self.text.text.splitlines()[-(STREAM_ROWS + 6) :])
        parts = [Text(tail or "(waiting for a task)")]
        outcome = self.text.outcome
        if outcome is not None:
            parts.append(Text(""))
            if outcome.error:
                parts.append(Text(f"does not assemble: {outcome.error}", style="red"))
            else:
                parts.append(
                    Text(f"assembled: {len(outcome.words)} words; outcome: {outcome.result.summary}")
                )
                parts += self._memory_lines(outcome.result.memory())
        elif self.text.status:
            parts += [Text(""), Text(self.text.status, style="dim")]
        return Panel(Group(*parts), title=title)

    def _status(self) -> Panel:
        r = self.reflex
        line = (
            f"cycles {r.cycles}{r.passes}  |  {r.ms_per_cycle:.1f} ms/cycle  |  outcome: {r.outcome}"
            f"  |  peak memory {self.peak or '-'}  |  "
        )
        keys = "s stop  q quit" if self.running else "Enter run  Esc quit"
        prompt = Text.assemble((line, ""), (keys, "dim"))
        if not self.running:
            prompt.append(f"\n> {self.prompt}", style="bold")
        return Panel(prompt, height=3 if self.running else 4)


class Keys:
    """Single key presses from a terminal (cbreak mode), read without blocking."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self.saved = None

    def __enter__(self) -> Keys:
        import termios
        import tty

        self.fd = self.stream.fileno()
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc) -> None:
        import termios

        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def read(self, timeout: float = 0.0) -> str | None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(self.fd, 64).decode("utf-8", "replace")
        if data.startswith("\x1b") and len(data) > 1:  # an arrow or function key: ignored
            return ""
        return data


class Demo:
    """The loop of the demo over one loaded model."""

    def __init__(
        self,
        loaded,
        screen: Screen,
        passes: int = 1,
        max_cycles: int = spec.DEFAULT_MAX_CYCLES,
        on_cycle=None,
    ):
        """on_cycle(cycle number, Cycle, pass number) sees every Reflex cycle (the plain output)."""
        self.loaded, self.screen, self.passes, self.max_cycles = loaded, screen, passes, max_cycles
        self.on_cycle = on_cycle
        screen.text.note = "" if loaded.text_writer else (loaded.text_note or "not available")

    def run_task(self, task: str, keys: Keys | None, redraw) -> str:
        """Run one task on both sides; returns "done", "stopped" or "quit"."""
        s = self.screen
        s.task, s.running = task, True
        s.reflex, s.text = ReflexSide(), TextSide(note=s.text.note)
        chunks = iter(write(self.loaded.text_writer, task)) if self.loaded.text_writer else None
        s.text.status = "writing..." if chunks else ""
        machine = Machine()  # the API drives it; the screen reads its registers and memory
        cycles = api.stream(self.loaded, task, self.max_cycles, machine=machine)
        pass_no, spent, last_draw, verdict = 1, 0.0, 0.0, "done"
        while cycles is not None or chunks is not None:
            if cycles is not None:
                before = machine.registers()
                started = time.perf_counter()
                try:
                    cycle = next(cycles)  # one cycle: predict, write, step
                except StopIteration as end:  # this pass has ended: its outcome, maybe the next pass
                    s.reflex.outcome = end.value.summary
                    cycles, pass_no = self._next_pass(end.value, task, machine, pass_no)
                else:
                    spent += time.perf_counter() - started
                    self._show_cycle(cycle, machine, before, spent, pass_no)
            if chunks is not None:
                try:
                    s.text.text += next(chunks)
                except StopIteration:
                    chunks = None
                    s.text.status = "assembling and running..."
                    s.text.outcome = judge(s.text.text, self.max_cycles)
            key = keys.read() if keys is not None else None
            if key and key.lower() in ("s", "q"):
                verdict = "quit" if key.lower() == "q" else "stopped"
                s.reflex.outcome += " (stopped)" if cycles is not None else ""
                if chunks is not None:
                    s.text.status = "stopped"
                break
            if time.perf_counter() - last_draw >= REFRESH_S:
                redraw()
                last_draw = time.perf_counter()
        s.running = False
        redraw()
        return verdict

    def _show_cycle(
        self, cycle: Cycle, machine: Machine, before: list[int], spent: float, pass_no: int
    ) -> None:
        r = self.screen.reflex
        r.cycles += 1
        r.rows.append((r.cycles, cycle, cycle.op))
        r.registers = machine.registers()
        r.changed = {i for i, (a, b) in enumerate(zip(before, r.registers)) if a != b}
        r.memory = {
            f"0x{addr:x}": machine.read_words(addr, spec.WINDOW_WORDS) for addr in spec.REPORTED_WINDOWS
        }
        r.ms_per_cycle = 1e3 * spent / r.cycles
        if self.on_cycle is not None:
            self.on_cycle(r.cycles, cycle, pass_no)
        r.passes = f" (pass {pass_no}/{self.passes})" if self.passes > 1 else ""
        r.outcome = "running"
        if self.loaded.peak_memory:
            self.screen.peak = human_bytes(self.loaded.peak_memory())

    def _next_pass(self, result: RunResult, task: str, machine: Machine, pass_no: int):
        """As the original: a halted pass is refined by another one over the same machine
        (api.stream's refine); (the next pass's cycles or None, its number)."""
        if not result.halted or pass_no >= self.passes:
            return None, pass_no
        return api.stream(self.loaded, task, self.max_cycles, machine=machine, refine=True), pass_no + 1


def interactive(demo: Demo, console, tasks: list[str]) -> None:
    """The full-screen session: the model stays loaded, tasks one after another."""
    from rich.live import Live

    screen = demo.screen
    queue = list(tasks)
    with Keys() as keys, Live(screen.render(), console=console, screen=True, auto_refresh=False) as live:

        def redraw() -> None:
            live.update(screen.render(), refresh=True)

        while True:
            if queue:
                if demo.run_task(queue.pop(0), keys, redraw) == "quit":
                    return
                continue
            key = keys.read(timeout=0.2)
            if key is None or key == "":
                continue
            if key in ("\x1b", "\x04"):
                return
            for ch in key:
                if ch in ("\r", "\n"):
                    task, screen.prompt = screen.prompt.strip(), ""
                    if task:
                        queue.append(task)
                elif ch in ("\x7f", "\b"):
                    screen.prompt = screen.prompt[:-1]
                elif ch.isprintable():
                    screen.prompt += ch
            redraw()
