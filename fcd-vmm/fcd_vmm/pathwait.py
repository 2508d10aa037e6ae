"""Await files with inotify: one instance per event loop, shared by every wait.

A launch awaits two files in its jail, the jailer's pid file and then the API
socket. With an inotify instance per wait, each wait cost an inotify and an
epoll descriptor (asyncinotify's own selector), two ``epoll_ctl`` on the loop
per event, and a close that waits in the kernel for an SRCU grace period
(fsnotify group teardown, ~12 ms), which had to be handed to worker threads so
the loop would not stall. Here a wait adds a watch to the loop's one instance
and removes it when done (``inotify_rm_watch`` does not wait: the kernel frees
the mark later), and a single reader callback wakes the waits whose directory
saw an event.

A watch is per directory and counted: two waits in one directory share it, and
it goes when the last one ends. A directory removed under a wait ends its watch
(``IN_IGNORED``); the wait wakes, re-checks and watches the deepest directory
still there. A queue overflow wakes every wait. Every wake is only a cue to
re-check, so none of this can make a wait return early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from asyncinotify import Inotify, Mask, Watch

log = logging.getLogger("fcd.vmm.pathwait")

# the jail uid owns the directories below a jail root: never watch through a link
MASK = Mask.CREATE | Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.ONLYDIR | Mask.DONT_FOLLOW


class Aborted(Exception):
    """The process we were waiting for died first."""


class Watcher:
    """One inotify instance serving every wait of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ino = Inotify()
        # asyncinotify's InitFlags.NONBLOCK is O_CLOEXEC's value (0.4.x): set it here,
        # or the read that drains the queue blocks the loop once it is empty
        os.set_blocking(self.ino.fd, False)
        self._waits: dict[int, tuple[Watch, set[asyncio.Event]]] = {}
        """Watch descriptor -> its watch and the events of the waits on that directory."""
        loop.add_reader(self.ino.fd, self._readable)

    def watch(self, directory: Path, wake: asyncio.Event) -> int:
        """Wake ``wake`` on events in ``directory``; the watch descriptor (for :meth:`unwatch`)."""
        w = self.ino.add_watch(directory, MASK)
        self._waits.setdefault(w.wd, (w, set()))[1].add(wake)
        return w.wd

    def unwatch(self, wd: int, wake: asyncio.Event) -> None:
        entry = self._waits.get(wd)
        if entry is None:
            return  # its directory went: the kernel ended the watch already
        w, waits = entry
        waits.discard(wake)
        if waits:
            return
        del self._waits[wd]
        try:
            self.ino.rm_watch(w)
        except OSError as e:  # EINVAL: ended meanwhile (its IN_IGNORED is queued)
            log.debug("inotify_rm_watch(%d): %s", wd, e)

    def live(self, wd: int) -> bool:
        """The watch ``wd`` still stands (its directory was not removed)."""
        return wd in self._waits

    @property
    def watching(self) -> int:
        """Directories watched now (tests)."""
        return len(self._waits)

    def _readable(self) -> None:
        while True:
            try:
                event = self.ino.sync_get()
            except BlockingIOError:
                return
            except OSError as e:  # not expected; never leave a wait asleep on it
                log.warning("reading inotify events: %s", e)
                self._wake_all()
                return
            if event is None:
                return
            if Mask.Q_OVERFLOW in event.mask:
                self._wake_all()
                continue
            w = event.watch
            if w is None:
                continue
            entry = self._waits.get(w.wd)
            if entry is None or entry[0] is not w:
                continue  # a watch removed by unwatch, or of another instance
            for wake in entry[1]:
                wake.set()
            if Mask.IGNORED in event.mask:  # the directory is gone, and the watch with it
                del self._waits[w.wd]

    def _wake_all(self) -> None:
        for _, waits in self._waits.values():
            for wake in waits:
                wake.set()


_current: list[Watcher] = []


def watcher() -> Watcher:
    """The running loop's :class:`Watcher` (made on first use)."""
    loop = asyncio.get_running_loop()
    if _current and _current[0].loop is loop:
        return _current[0]
    w = Watcher(loop)
    _current[:] = [w]  # a loop before this one (tests) closes its instance when collected
    return w


async def wait_for_path(
    target: Path,
    *,
    within: Path,
    ready: Callable[[Path], bool] = lambda p: p.exists(),
    abort: asyncio.Future[None] | None = None,
) -> None:
    """Return once ``ready(target)`` holds, woken by inotify (no polling).

    Watches the deepest existing directory between ``within`` and ``target``
    and re-checks after every event; the check always follows the watch, so a
    creation between "look" and "watch" cannot be missed. Bound it with
    ``asyncio.timeout``. Raises :class:`Aborted` if ``abort`` completes first.
    """
    parts = target.relative_to(within).parts
    w = watcher()
    wake = asyncio.Event()
    watched: dict[Path, int] = {}
    try:
        while True:
            d = within
            for part in parts[:-1]:
                if (d / part).is_symlink() or not (d / part).is_dir():
                    break
                d = d / part
            if d not in watched or not w.live(watched[d]):
                watched[d] = w.watch(d, wake)
            wake.clear()
            if ready(target):
                return
            if abort is not None and abort.done():
                raise Aborted(str(target))
            woken = asyncio.ensure_future(wake.wait())
            waits: list[asyncio.Future[object]] = [woken]  # type: ignore[list-item]
            if abort is not None:
                waits.append(abort)  # type: ignore[arg-type]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not woken.done():
                    woken.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await woken
    finally:
        for wd in watched.values():
            w.unwatch(wd, wake)
