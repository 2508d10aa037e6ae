"""The guest's serial console: what the VM writes to the 16550 UART goes to stdout.

The double cannot run x86 code, but the one guest the tests boot (guest_kernel.py) is a
loop of ``outb`` to port 0x3f8, so the double executes exactly that tiny instruction
subset from the kernel's ELF image at ``e_entry``: ``lea rsi,[rip+d32]``,
``mov ecx,imm32``, ``mov dx,imm16``, ``lodsb``, ``out dx,al``, ``loop``, ``hlt``,
``jmp rel8``. Any other instruction ends the emulation (the guest then runs silently,
as a kernel without ``console=ttyS0`` would).

Like Firecracker v1.7 (vm-superio's ``Serial`` writes and flushes each byte to its
``Stdout``), every byte is written to fd 1 as it comes: blocking if the descriptor
blocks; if it is non-blocking and full, the byte is dropped, ``Failed the write to
serial: ...`` logged and ``uart.error_count`` counted; the guest itself never notices.
"""

from __future__ import annotations

import os
import struct
from typing import Any

COM1 = 0x3F8
MAX_STEPS = 1_000_000


def load_image(fd: int) -> dict[int, bytes]:
    """PT_LOAD segments of the ELF at ``fd``: guest physical address -> bytes."""
    head = os.pread(fd, 64, 0)
    (phoff,) = struct.unpack_from("<Q", head, 32)
    (phentsize, phnum) = struct.unpack_from("<HH", head, 54)
    segs: dict[int, bytes] = {}
    for i in range(phnum):
        ph = os.pread(fd, phentsize, phoff + i * phentsize)
        (p_type,) = struct.unpack_from("<I", ph, 0)
        offset, _vaddr, paddr, filesz, memsz = struct.unpack_from("<QQQQQ", ph, 8)
        if p_type == 1:
            segs[paddr] = os.pread(fd, filesz, offset).ljust(memsz, b"\0")
    return segs


def _byte(segs: dict[int, bytes], addr: int) -> int | None:
    for base, data in segs.items():
        if base <= addr < base + len(data):
            return data[addr - base]
    return None


def _read(segs: dict[int, bytes], addr: int, n: int) -> bytes | None:
    out = bytearray()
    for i in range(n):
        b = _byte(segs, addr + i)
        if b is None:
            return None
        out.append(b)
    return bytes(out)


def uart_output(fd: int, entry: int) -> bytes:
    """The bytes the guest at ``entry`` writes to COM1 before it halts (or does anything
    the double cannot follow)."""
    segs = load_image(fd)
    rip, rsi, rcx, dx, al = entry, 0, 0, 0, 0
    out = bytearray()
    for _ in range(MAX_STEPS):
        code = _read(segs, rip, 8)
        if code is None:
            break
        if code[:3] == b"\x48\x8d\x35":  # lea rsi, [rip + disp32]
            (disp,) = struct.unpack_from("<i", code, 3)
            rip += 7
            rsi = rip + disp
        elif code[0] == 0xB9:  # mov ecx, imm32
            (rcx,) = struct.unpack_from("<I", code, 1)
            rip += 5
        elif code[:2] == b"\x66\xba":  # mov dx, imm16
            (dx,) = struct.unpack_from("<H", code, 2)
            rip += 4
        elif code[0] == 0xAC:  # lodsb
            b = _byte(segs, rsi)
            if b is None:
                break
            al, rsi, rip = b, rsi + 1, rip + 1
        elif code[0] == 0xEE:  # out dx, al
            if dx == COM1:
                out.append(al)
            rip += 1
        elif code[0] == 0xE2:  # loop rel8
            rcx = (rcx - 1) & 0xFFFFFFFFFFFFFFFF
            rel = struct.unpack_from("<b", code, 1)[0]
            rip += 2
            if rcx != 0:
                rip += rel
        else:  # hlt, jmp, or anything else: nothing more on the console
            break
    return bytes(out)


class SerialOut:
    """Firecracker's serial output: each byte to stdout (fd 1)."""

    def __init__(self, logger: Any, metrics: Any) -> None:
        self.log = logger
        self.metrics = metrics

    def write(self, data: bytes) -> None:
        for i in range(len(data)):
            try:
                os.write(1, data[i : i + 1])
            except OSError as e:
                kind = "WouldBlock" if e.errno == 11 else "Other"
                self.log.error(
                    f"Failed the write to serial: IOError(Os {{ code: {e.errno},"
                    f' kind: {kind}, message: "{os.strerror(e.errno or 0)}" }})'
                )
                self.metrics.inc("uart", "error_count")
