"""Start a short-lived child (the jailer) with vfork and await its exit through a pidfd.

uvloop's ``create_subprocess_exec`` forks the whole daemon (page tables and
all) and holds the event loop until the child has exec'd: 3.6 ms of CPU and
16-25 ms of a stalled loop per spawn on a loaded two-core host, against 0.2-0.3
ms of CPU and 2-3 ms for :class:`subprocess.Popen`, which uses vfork (issue
#14, bench in the commit message). The exit is awaited on a pidfd registered
with the loop, and the child is reaped here with ``waitpid`` on its own pid, so
no child watcher and no other code ever sees its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from typing import IO

from . import procs

__all__ = ["run"]


async def run(
    argv: list[str],
    *,
    stderr: IO[bytes] | int,
    stdout: int | None = None,
    new_session: bool = False,
) -> int:
    """Run ``argv`` (no stdin, stdout to ``stdout`` or /dev/null, empty environment,
    cwd /) to its end; its exit status. Cancelled: the child is killed and reaped
    before the cancellation goes on. OSError if it cannot be started.

    While it runs its pid is :func:`procs.own`-ed, so the subreaper's
    :func:`procs.reap_orphans` never takes its exit status from us (with
    ``new_session`` it is not in our session, the test that spared it before)."""
    with procs.owning() as own:
        proc = subprocess.Popen(  # vfork+exec: returns as soon as the child has exec'd
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if stdout is None else stdout,
            stderr=stderr,
            env={},
            cwd="/",
            close_fds=True,
            start_new_session=new_session,
        )
        own(proc.pid)  # before any await: reap_orphans runs on this loop
        try:
            await _exited(proc.pid)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await asyncio.shield(_exited(proc.pid))
            proc.wait()
            raise
        return proc.wait()  # it has exited: reaps without blocking


async def _exited(pid: int) -> None:
    """Return once ``pid`` (our unreaped child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # cannot happen before we reap it, but do not wait forever
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
