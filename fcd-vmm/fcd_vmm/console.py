"""The guest's serial console: captured from the first byte of boot, read by fcd-vmm.

Firecracker writes the guest's serial output (and, until ``PUT /logger``, its own
log lines) to its **stdout**. The jailer's ``--daemonize`` points stdout at
``/dev/null``, so fcd-vmm does not pass it: it starts the jailer in a new
session itself (``setsid``, what ``--daemonize`` did besides the ``/dev/null``)
with stdout set to the VM's console FIFO, ``<jail dir>/console.fifo`` (root's,
0600, outside the chroot: Firecracker only inherits the descriptor).

That descriptor is opened **read-write and non-blocking**, like Firecracker's
own log FIFO (fclog.py):

* read-write: the pipe always has a reader (Firecracker's own descriptor), so a
  write never fails with EPIPE while fcd-vmm is down; the pipe (enlarged to
  ``PIPE_SIZE``) keeps what the guest prints meanwhile, and a restarted fcd-vmm
  re-opens the FIFO from the jail directory and reads it;
* non-blocking: when the pipe is full (fcd-vmm gone or stuck for long), the
  write fails with EAGAIN and Firecracker drops the bytes and counts an error
  (``uart.error_count``); the vCPU never blocks on a console nobody reads.

fcd-vmm reads the FIFO on its event loop. Each line is a log record of
``fcd.vmm.console`` with ``FCD_VM_ID`` and ``FCD_SOURCE=console`` (journald
under systemd; the per-VM file store under ``fcd up``), and is kept in a ring
of the last ``RING`` lines per VM that :meth:`Consoles.read` (RPC
``vmm.console``) serves, long-polling for new ones. Lines in Firecracker's log
format (its start-up lines, before the logger is set) go to
``fcd.vmm.firecracker`` with ``FCD_SOURCE=firecracker`` instead.

**Rate limit**: a token bucket per VM of ``RATE_BYTES`` per second with a burst
of ``BURST_BYTES`` (a whole Linux boot log fits the burst). Over it, fcd-vmm
still drains the pipe (so the guest never stalls) but drops the lines: they
reach neither the store nor the ring; the next line that fits is preceded by
``[fcd: N bytes of console output dropped: over R bytes/s]`` (at most one such
notice per ``NOTICE_EVERY_S``; its count covers every drop since the last one).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import fcntl
import logging
import os
import re
import secrets
import stat
import time
from pathlib import Path

from fcd_common import logs
from fcd_common.proto.console import ConsoleLine, ConsoleLines

from .fclog import line_level
from .plan import JailPaths

log = logging.getLogger("fcd.vmm.console")
fc_log = logging.getLogger("fcd.vmm.firecracker")

FIFO_NAME = "console.fifo"
PIPE_SIZE = 1 << 20
"""Bytes the pipe holds while nobody reads (fs.pipe-max-size permitting)."""
RING = 2000
MAX_LINE = 4096
RATE_BYTES = 32 * 1024
BURST_BYTES = 512 * 1024
NOTICE_EVERY_S = 5.0
"""At most one "dropped" notice per VM in this many seconds (a flood stays one line)."""
_F_SETPIPE_SZ = 1031
_FC_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+ \[[^\]]*\] ")


def fifo_path(paths: JailPaths) -> Path:
    return paths.jail_dir / FIFO_NAME


def make_fifo(path: Path) -> None:
    """The VM's console FIFO (root's, 0600); a leftover one is replaced."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.mkfifo(path, 0o600)


def open_for_firecracker(path: Path) -> int:
    """The descriptor to hand to the jailer as stdout (read-write, non-blocking)."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a FIFO")
        with contextlib.suppress(OSError):  # over fs.pipe-max-size: keep the default
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except BaseException:
        os.close(fd)
        raise
    return fd


class RateLimit:
    """Token bucket over bytes; ``now`` is passed in (monotonic seconds)."""

    def __init__(self, rate: float = RATE_BYTES, burst: float = BURST_BYTES) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp: float | None = None
        self.dropped = 0
        """Bytes dropped and not yet reported."""
        self.dropped_total = 0

    def allow(self, size: int, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if size <= self.tokens:
            self.tokens -= size
            return True
        self.dropped += size
        self.dropped_total += size
        return False


class Console:
    """One VM's console: the ring of lines read so far and (while it runs) its reader."""

    def __init__(self, vm_id: str) -> None:
        self.vm_id = vm_id
        self.ring: collections.deque[ConsoleLine] = collections.deque(maxlen=RING)
        self.seq = 0
        self.limit = RateLimit()
        self._partial = b""
        self._noticed = -NOTICE_EVERY_S
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.fd = -1
        self.path: Path | None = None

    # -- reading the FIFO -----------------------------------------------------------------

    def attach(self, path: Path) -> None:
        self.detach(drain=False)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{path} is not a FIFO")
        self.fd, self.path = fd, path
        # a fresh context: the lines are no part of the request that launched the VM
        contextvars.Context().run(self._loop.add_reader, fd, self._readable)
        self.wake()

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("reading the console: %s", e, extra=logs.vm(self.vm_id))
            self.detach(drain=False)
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        buf = self._partial + data
        *lines, self._partial = buf.split(b"\n")
        if len(self._partial) > MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        for raw in lines:
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip("\r")
        if not text:
            return
        if _FC_LINE.match(text):
            extra = logs.vm(self.vm_id, source="firecracker")
            fc_log.log(line_level(text), "%s", text, extra=extra)
            return
        now, mono = time.time(), time.monotonic()
        if not self.limit.allow(len(raw) + 1, mono):
            return
        if self.limit.dropped and mono - self._noticed >= NOTICE_EVERY_S:
            self._noticed = mono
            notice = (
                f"[fcd: {self.limit.dropped} bytes of console output dropped:"
                f" over {int(self.limit.rate)} bytes/s]"
            )
            self.limit.dropped = 0
            self._keep(notice, now, logging.WARNING)
        self._keep(text, now, logging.INFO)

    def _keep(self, text: str, now: float, level: int) -> None:
        self.seq += 1
        self.ring.append(ConsoleLine(seq=self.seq, time=now, text=text))
        log.log(level, "%s", text, extra=logs.vm(self.vm_id, source="console"))
        self.wake()

    def wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def drain(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            while data := os.read(self.fd, 65536):
                self.feed(data)
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def detach(self, *, drain: bool = True) -> None:
        if self.fd < 0:
            return
        if drain:
            self.drain()
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
        self.wake()

    # -- serving lines --------------------------------------------------------------------

    def since(self, after: int, max_lines: int) -> tuple[list[ConsoleLine], int]:
        """Lines after seq ``after`` (at most ``max_lines``) and how many were lost."""
        if not self.ring or self.ring[-1].seq <= after:
            return [], 0
        first = self.ring[0].seq
        missed = max(0, first - after - 1)
        start = max(0, after + 1 - first)
        out = [self.ring[i] for i in range(start, min(len(self.ring), start + max_lines))]
        return out, missed

    async def changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed.wait()), timeout)


class Consoles:
    """Every VM's console, keyed by VM id: the daemon's one registry."""

    def __init__(self) -> None:
        self._by_vm: dict[str, Console] = {}
        self.epoch = secrets.token_hex(8)

    def get(self, vm_id: str) -> Console | None:
        return self._by_vm.get(vm_id)

    def start(self, vm_id: str, path: Path) -> None:
        """Read the VM's console FIFO ``path`` (at launch, or re-adopting after a restart);
        a jail without one (made by an older fcd-vmm) has no console to read."""
        if not path.exists():
            return
        con = self._by_vm.get(vm_id)
        if con is None:
            con = self._by_vm[vm_id] = Console(vm_id)
        try:
            con.attach(path)
        except OSError as e:
            log.warning("cannot read the console: %s", e, extra=logs.vm(vm_id))

    def stop(self, vm_id: str, *, drain: bool = True) -> None:
        """The VM's process is gone: read what is left; its lines stay readable."""
        con = self._by_vm.get(vm_id)
        if con is not None:
            con.detach(drain=drain)

    def forget(self, vm_id: str) -> None:
        """The VM's jail is released: nothing more to serve."""
        con = self._by_vm.pop(vm_id, None)
        if con is not None:
            con.detach(drain=False)
            con.wake()

    def close(self) -> None:
        for con in self._by_vm.values():
            con.detach()

    async def read(
        self, vm_id: str, after: int, epoch: str | None, wait_s: float, max_lines: int
    ) -> ConsoleLines:
        """Lines after ``after``; waits up to ``wait_s`` for one if there are none yet."""
        if epoch is not None and epoch != self.epoch:
            after = 0
        deadline = time.monotonic() + wait_s
        while True:
            con = self._by_vm.get(vm_id)
            lines, missed = con.since(after, max_lines) if con is not None else ([], 0)
            left = deadline - time.monotonic()
            if lines or left <= 0 or con is None:
                break
            await con.changed(left)
            if self._by_vm.get(vm_id) is not con:
                con = None
        return ConsoleLines(
            vm_id=vm_id,
            epoch=self.epoch,
            lines=lines,
            next_after=lines[-1].seq if lines else after,
            missed=missed,
            dropped=con.limit.dropped_total if con is not None else 0,
            capturing=con is not None and con.fd >= 0,
        )


consoles: Consoles | None = None


def registry() -> Consoles:
    """The daemon's consoles (made on first use, inside its event loop)."""
    global consoles
    if consoles is None:
        consoles = Consoles()
    return consoles
