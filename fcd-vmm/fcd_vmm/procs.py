"""Process plumbing for jailed Firecrackers: pidfds, the subreaper and reaping
(awaiting files with inotify: :mod:`fcd_vmm.pathwait`).

With ``--daemonize`` the jailer double-forks and exits, so Firecracker is not
our child. fcd-vmm marks itself a *child subreaper*: the orphaned processes of
that chain (the jailer's intermediate forks, and Firecracker itself once its
parent exits) are reparented to fcd-vmm, and it reaps them. It never reaps a
process that shares its session (its direct children, whose status belongs to
asyncio's own child watcher), nor one a caller reaps itself (:func:`owning`:
the jailer, started by :mod:`fcd_vmm.spawn` in a session of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

from fcd_common.errors import Internal

log = logging.getLogger("fcd.vmm.procs")

PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise Internal(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session) of a process from /proc/<pid>/stat, or None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[3])


def reap(pid: int) -> int | None:
    """waitpid(pid, WNOHANG) if it is our (dead) child; its exit code, else None."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if got == 0:
        return None
    return os.waitstatus_to_exitcode(status)


_owned: set[int] = set()
"""Children whose exit status a caller awaits itself (spawn.run): never reaped here."""

_watched: set[int] = set()
"""Processes a :class:`PidWatch` reaps itself when its pidfd fires: ``reap_orphans``,
run for another exit, must not take their status first (two Firecrackers killed
at once would leave the second one's signal unknown)."""


@contextlib.contextmanager
def owning() -> Iterator[Callable[[int], None]]:
    """``with owning() as own: own(pid)``: while the block runs, ``reap_orphans``
    leaves those children alone (their caller reaps them)."""
    mine: list[int] = []

    def own(pid: int) -> None:
        mine.append(pid)
        _owned.add(pid)

    try:
        yield own
    finally:
        _owned.difference_update(mine)


def reap_orphans() -> dict[int, int]:
    """Reap every zombie child adopted through the subreaper; {pid: exit code}.

    Fast path: ``waitid(WNOWAIT)`` names a zombie child without reaping it, so
    the cost is one syscall per zombie instead of a read of every process's
    ``/proc/<pid>/stat`` on the host (3.6 ms with ~100 processes, and O(N) in
    live VMs, each of them our child). A zombie in our own session (a direct
    child whose status asyncio owns) blocks that peek; then every process is
    scanned as before, so the same set is reaped either way.
    """
    my_session = os.getsid(0)
    out: dict[int, int] = {}
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return out
        if info is None or info.si_pid == 0:
            return out
        stat = read_stat(info.si_pid)
        if (
            stat is None
            or stat[2] == my_session
            or info.si_pid in _owned
            or info.si_pid in _watched
        ):
            break
        code = reap(info.si_pid)
        if code is None:
            break
        out[info.si_pid] = code
    out.update(_reap_orphans_scan(my_session))
    return out


def _reap_orphans_scan(my_session: int) -> dict[int, int]:
    me = os.getpid()
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = read_stat(int(entry))
        if info is None:
            continue
        state, ppid, session = info
        if ppid != me or state != "Z" or session == my_session:
            continue
        if int(entry) in _owned or int(entry) in _watched:
            continue
        code = reap(int(entry))
        if code is not None:
            out[int(entry)] = code
    return out


def same_root(pid: int, root: Path) -> bool:
    """True if the process's root directory is ``root`` (same device and inode)."""
    try:
        a = os.stat(f"/proc/{pid}/root")
        b = os.stat(root)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def proc_uid(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


class PidWatch:
    """A pidfd on a process and a future that completes when it exits."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)  # ProcessLookupError if already gone
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(self.fd, self._on_exit)
        self.exit_code: int | None = None
        _watched.add(pid)

    def _on_exit(self) -> None:
        self._loop.remove_reader(self.fd)
        code = reap(self.pid)  # before anyone is told: they read exit_code
        _watched.discard(self.pid)
        if code is not None:
            self.exit_code = code
        if not self.exited.done():
            self.exited.set_result(None)

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    async def wait(self, timeout: float) -> bool:
        """True if the process exited within ``timeout`` seconds."""
        if self.exited.done():
            return True
        done, _ = await asyncio.wait([self.exited], timeout=timeout)
        return bool(done)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.fd < 0 or self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.fd, sig)

    def close(self) -> None:
        if self.fd >= 0:
            if self.alive:  # nobody reaps it here any more: reap_orphans may
                _watched.discard(self.pid)
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
