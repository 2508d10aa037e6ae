"""Reading one VM's log lines: journald under systemd, the per-VM file store elsewhere.

Both give :class:`fcd_common.vmlogstore.Entry` (time, source, message, daemon, level,
request_id), oldest first, from every daemon: fcd's own records about the VM,
Firecracker's log (``source=firecracker``) and the guest console (``source=console``).

* :class:`JournalStore`: ``systemd.journal.Reader`` matched on ``FCD_VM_ID``; a follow
  waits with ``Reader.wait()`` (in a worker thread, never on the event loop).
* :class:`FileStore`: ``<state_dir>/logs/<daemon>/<vm_id>.ndjson`` (+ ``.1``) written
  by each daemon (:mod:`fcd_common.vmlogstore`); a follow polls the files' sizes.

A read is a :class:`Query`; :meth:`Store.backlog` returns what is stored (the last
``tail`` matching lines, after ``since``), then :meth:`Store.follow` yields the new
ones as they come until ``stop()`` says the VM is gone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fcd_common import vmlogstore
from fcd_common.vmlogstore import Entry

POLL_S = 0.25
WAIT_S = 1.0
_PRIORITY = {0: "emergency", 1: "alert", 2: "critical", 3: "error", 4: "warning", 5: "notice"}


@dataclass(frozen=True)
class Query:
    vm_id: str
    sources: frozenset[str] = frozenset()
    """Empty: every source."""
    since: float | None = None
    tail: int | None = None

    def wants(self, e: Entry) -> bool:
        return (not self.sources or e.source in self.sources) and (
            self.since is None or e.time >= self.since
        )


class Store(Protocol):
    async def backlog(self, q: Query) -> list[Entry]: ...

    def follow(self, q: Query, stop: Callable[[], bool]) -> AsyncIterator[Entry]: ...

    def release(self, q: Query) -> None:
        """Forget what :meth:`backlog` kept for a follow that will not come."""


def _tail(entries: list[Entry], q: Query) -> list[Entry]:
    out = [e for e in entries if q.wants(e)]
    if q.tail is not None:
        out = out[-q.tail :] if q.tail > 0 else []
    return out


# --- files ------------------------------------------------------------------------------


@dataclass
class _FileCursor:
    tailers: dict[Path, vmlogstore.Tailer] = field(default_factory=dict)

    def poll(self, root: Path, vm_id: str, first: bool) -> list[Entry]:
        out: list[Entry] = []
        for path in vmlogstore.vm_files(root, vm_id):
            t = self.tailers.get(path)
            if t is None:
                t = self.tailers[path] = vmlogstore.Tailer(path)
                if first:  # the rotated file comes before the current one
                    rotated = path.with_name(path.name + ".1")
                    if rotated.exists():
                        out += vmlogstore.parse_lines(rotated.read_bytes())
            out += t.poll()
        out.sort(key=lambda e: e.time)
        return out


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._cursors: dict[int, _FileCursor] = {}

    async def backlog(self, q: Query) -> list[Entry]:
        cur = _FileCursor()
        entries = await asyncio.to_thread(cur.poll, self.root, q.vm_id, True)
        self._cursors[id(q)] = cur
        return _tail(entries, q)

    def release(self, q: Query) -> None:
        self._cursors.pop(id(q), None)

    async def follow(self, q: Query, stop: Callable[[], bool]) -> AsyncIterator[Entry]:
        cur = self._cursors.pop(id(q), None) or _FileCursor()
        while True:
            gone = stop()
            for e in await asyncio.to_thread(cur.poll, self.root, q.vm_id, False):
                if q.wants(e):
                    yield e
            if gone:
                return
            await asyncio.sleep(POLL_S)


# --- journald ---------------------------------------------------------------------------


def _entry(rec: dict[str, Any]) -> Entry:
    ts = rec.get("__REALTIME_TIMESTAMP")
    prio = rec.get("PRIORITY", 6)
    rid = rec.get("FCD_REQUEST_ID")
    return Entry(
        time=ts.timestamp() if isinstance(ts, dt.datetime) else 0.0,
        source=str(rec.get("FCD_SOURCE") or "fcd"),
        message=str(rec.get("MESSAGE", "")),
        daemon=str(rec.get("SYSLOG_IDENTIFIER") or rec.get("FCD_DAEMON") or ""),
        level=_PRIORITY.get(int(prio), "info") if str(prio).isdigit() else "info",
        request_id=None if rid in (None, "-") else str(rid),
    )


class JournalStore:
    """One ``Reader`` per stream, used only from worker threads (one at a time)."""

    def __init__(self) -> None:
        self._readers: dict[int, Any] = {}

    def _open(self, vm_id: str) -> Any:
        from systemd import journal

        r = journal.Reader()
        r.add_match(FCD_VM_ID=vm_id)
        return r

    def _backlog(self, q: Query) -> tuple[Any, list[Entry]]:
        r = self._open(q.vm_id)
        out: list[Entry] = []
        if q.tail is not None:
            r.seek_tail()
            while len(out) < q.tail:
                rec = r.get_previous()
                if not rec:
                    break
                e = _entry(rec)
                if q.since is not None and e.time < q.since:
                    break
                if q.wants(e):
                    out.append(e)
            out.reverse()
            r.seek_tail()
            r.get_previous()  # positioned on the last entry: get_next() gives newer ones
        else:
            if q.since is not None:
                r.seek_realtime(dt.datetime.fromtimestamp(q.since, tz=dt.UTC))
            for rec in r:
                e = _entry(rec)
                if q.wants(e):
                    out.append(e)
        return r, out

    async def backlog(self, q: Query) -> list[Entry]:
        r, out = await asyncio.to_thread(self._backlog, q)
        self._readers[id(q)] = r
        return out

    def release(self, q: Query) -> None:
        r = self._readers.pop(id(q), None)
        if r is not None:
            r.close()

    @staticmethod
    def _next(r: Any) -> list[Entry]:
        out: list[Entry] = []
        for _ in range(1000):
            rec = r.get_next()
            if not rec:
                break
            out.append(_entry(rec))
        if not out:
            r.wait(WAIT_S)
        return out

    async def follow(self, q: Query, stop: Callable[[], bool]) -> AsyncIterator[Entry]:
        r = self._readers.pop(id(q), None)
        if r is None:
            r = self._open(q.vm_id)
            await asyncio.to_thread(r.seek_tail)
        try:
            while True:
                gone = stop()
                for e in await asyncio.to_thread(self._next, r):
                    if q.wants(e):
                        yield e
                if gone:
                    return
        finally:
            r.close()


def open_store(state_dir: str, journal: bool) -> Store:
    if journal:
        return JournalStore()
    return FileStore(Path(state_dir) / "logs")
