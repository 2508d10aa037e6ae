"""Close inotify instances off the event loop.

Closing an inotify descriptor that had a watch waits in the kernel for an SRCU
grace period (fsnotify group teardown): 12 ms median here, 24 ms at worst, for
0.06 ms of CPU. A launch waits on two of them (the pid file, then the API
socket), so closing them in place cost ~24 ms per launch and stalled the event
loop, and every other VM's call with it, for as long (py-spy under 32
concurrent creates: ``_InotifyResources.close`` the largest self time of the
loop thread). Here the close is handed to a few worker threads of its own,
which the loop never waits for.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from asyncinotify import Inotify

log = logging.getLogger("fcd.vmm.closer")

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="fcd-vmm-close")


def _done(f: concurrent.futures.Future[None]) -> None:
    if (e := f.exception()) is not None:
        log.warning("closing an inotify descriptor failed: %s", e)


@contextmanager
def closed_later(ino: Inotify) -> Iterator[Inotify]:
    """``with closed_later(Inotify()) as ino:``; the caller must be done with ``ino``
    (no pending ``get``) when the block ends."""
    try:
        yield ino
    finally:
        _pool.submit(ino.close).add_done_callback(_done)
