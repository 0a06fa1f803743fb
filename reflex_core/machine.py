"""The RV32I machine the model drives (docs/design.md §5), over Unicorn.

The whole address space is one mapping backed by a buffer this module owns, so
the state windows are read straight from host memory (no Unicorn call per read);
writes go through Unicorn so that its self-modifying-code bookkeeping sees them.
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import UC_ARCH_RISCV, UC_MODE_RISCV32, UC_PROT_ALL, Uc, UcError
from unicorn import unicorn_const as uc_const
from unicorn.riscv_const import UC_RISCV_REG_PC, UC_RISCV_REG_X0

from . import spec
from .spec import MASK32

_ADDRESS_SPACE = 1 << 32
_MEMORY_END = spec.MEMORY_BASE + spec.MEMORY_SIZE
_WINDOW_BYTES = 4 * spec.WINDOW_WORDS
_WINDOW_FORMAT = f"<{spec.WINDOW_WORDS}I"
_WORD = struct.Struct("<I")
_REGISTER_IDS = [UC_RISCV_REG_X0 + i for i in range(spec.NUM_REGS)] + [UC_RISCV_REG_PC]
_ZERO_REGISTERS = [(reg, 0) for reg in _REGISTER_IDS]
_ECALL_WORD = 0x00000073
# Unicorn reserves 1 GiB of translation buffer per instance by default; programs
# here are at most 16 KiB of code, and batched runs hold many machines at once.
_TCG_BUFFER_BYTES = 4 << 20

# Unicorn's error codes in words a person reading a run's trace understands.
_UC_ERROR_TEXT = {
    uc_const.UC_ERR_READ_UNMAPPED: "read from unmapped memory",
    uc_const.UC_ERR_WRITE_UNMAPPED: "write to unmapped memory",
    uc_const.UC_ERR_FETCH_UNMAPPED: "jump to unmapped memory",
    uc_const.UC_ERR_READ_PROT: "read from protected memory",
    uc_const.UC_ERR_WRITE_PROT: "write to protected memory",
    uc_const.UC_ERR_FETCH_PROT: "jump to non-executable memory",
    uc_const.UC_ERR_READ_UNALIGNED: "unaligned read",
    uc_const.UC_ERR_WRITE_UNALIGNED: "unaligned write",
    uc_const.UC_ERR_FETCH_UNALIGNED: "unaligned instruction fetch",
    uc_const.UC_ERR_INSN_INVALID: "invalid instruction",
    # Unicorn reports an illegal RISC-V opcode as an unhandled CPU exception.
    uc_const.UC_ERR_EXCEPTION: "illegal instruction",
}


class MachineError(Exception):
    """A cycle could not be carried out; the message names the pc."""

    def __init__(self, message: str, pc: int):
        super().__init__(message)
        self.pc = pc


def _hex(addr: int) -> str:
    return f"0x{addr:x}"


def _describe(error: UcError, word: int | None) -> str:
    if error.errno == uc_const.UC_ERR_EXCEPTION and word == _ECALL_WORD:
        return "environment call (ecall)"
    return _UC_ERROR_TEXT.get(error.errno, f"emulator error ({error})")


def _is_mapped(addr: int, size: int = 4) -> bool:
    return spec.MEMORY_BASE <= addr and addr + size <= _MEMORY_END


class Machine:
    """One RV32I CPU with the §5 memory layout, stepped one instruction at a time."""

    def __init__(self) -> None:
        self._uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV32)
        self._uc.ctl_set_tcg_buffer_size(_TCG_BUFFER_BYTES)
        self._memory = ctypes.create_string_buffer(spec.MEMORY_SIZE)
        self._uc.mem_map_ptr(spec.MEMORY_BASE, spec.MEMORY_SIZE, UC_PROT_ALL, ctypes.addressof(self._memory))
        self._pc = spec.CODE_START
        # Every CPU register of a new machine, control and status registers and the
        # privilege mode included, so that reset() returns to exactly this state.
        self._new_cpu = self._uc.context_save()
        self.reset()

    def reset(self) -> None:
        """Return to the state of a new machine: the CPU as created (registers, CSRs,
        privilege mode), memory zeroed, the code region filled with HALT, the source
        buffer seeded. (rdcycle and rdtime read the host clock through Unicorn, as
        in the original implementation, so they are the one thing that differs.)"""
        self._uc.context_restore(self._new_cpu)
        ctypes.memset(self._memory, 0, spec.MEMORY_SIZE)
        halt_fill = _WORD.pack(spec.HALT_WORD) * ((spec.CODE_END - spec.CODE_START) // 4)
        self._uc.mem_write(spec.CODE_START, halt_fill)
        seed = struct.pack(f"<{len(spec.SOURCE_SEED)}I", *spec.SOURCE_SEED)
        self._uc.mem_write(spec.SOURCE_ADDR, seed)
        self._uc.ctl_remove_cache(spec.MEMORY_BASE, _MEMORY_END)
        self._uc.reg_write_batch(_ZERO_REGISTERS)
        self._uc.reg_write(UC_RISCV_REG_PC, spec.CODE_START)
        self._pc = spec.CODE_START

    def new_pass(self) -> None:
        """A refinement pass, as the original's demo runs them: registers and data
        kept, the code region filled with HALT again, pc back at CODE_START."""
        halt_fill = _WORD.pack(spec.HALT_WORD) * ((spec.CODE_END - spec.CODE_START) // 4)
        self._uc.mem_write(spec.CODE_START, halt_fill)
        self._uc.ctl_remove_cache(spec.CODE_START, spec.CODE_END)
        self._uc.reg_write(UC_RISCV_REG_PC, spec.CODE_START)
        self._pc = spec.CODE_START

    @property
    def pc(self) -> int:
        return self._pc

    def registers(self) -> list[int]:
        """x0..x31 as unsigned words."""
        return [v & MASK32 for v in self._uc.reg_read_batch(_REGISTER_IDS[: spec.NUM_REGS])]

    def state(self) -> list[int]:
        """The 65-word state vector of §5: registers, pc, pc window, sp window."""
        values = self._uc.reg_read_batch(_REGISTER_IDS)
        state = [v & MASK32 for v in values[: spec.NUM_REGS]]
        state.append(self._pc)
        state.extend(self._window(self._pc))
        state.extend(self._window(state[spec.SP_REG]))
        return state

    def _window(self, center: int) -> list[int]:
        start = ((center - spec.WINDOW_BACK_BYTES) & ~3) % _ADDRESS_SPACE
        if _is_mapped(start, _WINDOW_BYTES):
            return list(struct.unpack_from(_WINDOW_FORMAT, self._memory, start - spec.MEMORY_BASE))
        # Partly or wholly outside the mapping (or wrapping around 2**32): word by word.
        words = []
        for i in range(spec.WINDOW_WORDS):
            addr = (start + 4 * i) % _ADDRESS_SPACE
            words.append(
                _WORD.unpack_from(self._memory, addr - spec.MEMORY_BASE)[0] if _is_mapped(addr) else 0
            )
        return words

    def read_words(self, addr: int, n: int) -> list[int]:
        """n little-endian words from addr; unmapped words read as 0."""
        if _is_mapped(addr, 4 * n):
            return list(struct.unpack_from(f"<{n}I", self._memory, addr - spec.MEMORY_BASE))
        return [
            _WORD.unpack_from(self._memory, a - spec.MEMORY_BASE)[0] if _is_mapped(a) else 0
            for a in ((addr + 4 * i) % _ADDRESS_SPACE for i in range(n))
        ]

    def snapshot(self, start: int, end: int) -> bytes:
        """A copy of mapped memory [start, end)."""
        return bytes(self._memory[start - spec.MEMORY_BASE : end - spec.MEMORY_BASE])

    def write_word(self, addr: int, word: int) -> None:
        """Store a word and drop Unicorn's stale translation of those bytes."""
        if not _is_mapped(addr):
            raise MachineError(f"write of instruction to unmapped memory at pc {_hex(addr)}", addr)
        self._uc.mem_write(addr, _WORD.pack(word & MASK32))
        self._uc.ctl_remove_cache(addr, addr + 4)

    def step(self) -> None:
        """Execute exactly the one instruction at pc."""
        pc = self._pc
        try:
            self._uc.emu_start(pc, MASK32, count=1)
        except UcError as error:
            word = self.read_words(pc, 1)[0] if _is_mapped(pc) else None
            raise MachineError(f"{_describe(error, word)} at pc {_hex(pc)}", pc) from None
        self._pc = self._uc.reg_read(UC_RISCV_REG_PC) & MASK32
