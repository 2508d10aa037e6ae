"""Firecracker's own log lines, forwarded to fcd-vmm's log (the journal) with FCD_VM_ID.

The jail's ``/firecracker.log`` is a FIFO (owned by the jail uid, 0600), which
Firecracker v1.7 opens read-write and non-blocking (``FcLineWriter``): it
never blocks on a slow reader, and a full pipe drops lines and counts them in
``logger.missed_log_count``. fcd-vmm reads the other end from its event loop
and logs each line with ``extra=logs.vm(vm_id, source="firecracker")``, so
``journalctl FCD_VM_ID=<id>`` shows Firecracker's lines next to fcd's own.

Across an fcd-vmm restart the FIFO stays in the jail; the pipe buffer (64 KiB)
keeps what Firecracker writes meanwhile, and the new instance reopens the FIFO
when it re-adopts the VM. The forwarder holds a write end of its own, so the
pipe never reads as end-of-file while Firecracker is still starting (or gone);
it stops when the VM's process exits (after draining what is left).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import os
import re
import stat
from pathlib import Path

from fcd_common import logs

log = logging.getLogger("fcd.vmm.firecracker")

TAIL_LINES = 20
MAX_LINE = 4096
_LEVEL = re.compile(r"^\S+ \[[^\]]*:(ERROR|WARN|INFO|DEBUG|TRACE)[:\]]")
_LEVELS = {
    "ERROR": logging.ERROR,
    "WARN": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "TRACE": logging.DEBUG,
}


def make_fifo(path: Path, uid: int, gid: int) -> None:
    """Create the jail's log FIFO (0600, owned by the jail uid); it must not exist yet."""
    os.mkfifo(path, 0o600)
    os.chown(path, uid, gid, follow_symlinks=False)


def is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(os.lstat(path).st_mode)
    except OSError:
        return False


def line_level(line: str) -> int:
    """The logging level of a Firecracker line (``show_level`` tag), INFO without one."""
    m = _LEVEL.match(line)
    return _LEVELS[m.group(1)] if m else logging.INFO


class Forwarder:
    """One VM's FIFO: read on the event loop, one log record per line."""

    def __init__(self, vm_id: str, path: Path) -> None:
        self.vm_id = vm_id
        self.path = path
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._partial = b""
        self._loop = asyncio.get_running_loop()
        self.rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if not stat.S_ISFIFO(os.fstat(self.rfd).st_mode):
                raise OSError(f"{path} is not a FIFO")
            self.wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except BaseException:
            os.close(self.rfd)
            raise
        # a fresh context: the lines are no part of the request that launched the VM
        contextvars.Context().run(self._loop.add_reader, self.rfd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.rfd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("reading %s: %s", self.path, e, extra=logs.vm(self.vm_id))
            self.close()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        buf = self._partial + data
        *lines, self._partial = buf.split(b"\n")
        if len(self._partial) > MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        for raw in lines:
            self._emit(raw)

    def _emit(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        if not line:
            return
        self.tail.append(line)
        log.log(line_level(line), "%s", line, extra=logs.vm(self.vm_id, source="firecracker"))

    def drain(self) -> None:
        """Forward whatever is still in the pipe (and a last unterminated line)."""
        if self.rfd < 0:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            while data := os.read(self.rfd, 65536):
                self._feed(data)
        if self._partial:
            self._emit(self._partial)
            self._partial = b""

    def close(self) -> None:
        if self.rfd >= 0:
            self._loop.remove_reader(self.rfd)
            os.close(self.rfd)
            self.rfd = -1
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1


class Forwarders:
    """Every VM's forwarder, keyed by VM id."""

    def __init__(self) -> None:
        self._by_vm: dict[str, Forwarder] = {}

    def start(self, vm_id: str, path: Path) -> None:
        """Forward ``path`` if it is a FIFO (jails made before FIFOs have a plain file)."""
        self.stop(vm_id, drain=False)
        if not is_fifo(path):
            return
        try:
            self._by_vm[vm_id] = Forwarder(vm_id, path)
        except OSError as e:
            log.warning("cannot forward Firecracker's log: %s", e, extra=logs.vm(vm_id))

    def stop(self, vm_id: str, *, drain: bool = True) -> None:
        fw = self._by_vm.pop(vm_id, None)
        if fw is not None:
            if drain:
                fw.drain()
            fw.close()

    def tail(self, path: Path) -> str:
        """The last lines forwarded from the FIFO at ``path`` (for error details)."""
        for fw in self._by_vm.values():
            if fw.path == path:
                fw.drain()
                return "\n".join(fw.tail)
        return ""

    def close(self) -> None:
        for vm_id in list(self._by_vm):
            self.stop(vm_id)


forwarders = Forwarders()
"""The daemon's one registry: the launcher starts a VM's forwarder, teardown stops it."""
