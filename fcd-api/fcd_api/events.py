"""VM events: one publishing function, a bounded persisted store, live subscribers.

``publish(kind, vm_id, **data)`` is what every flow calls when something happened to a
VM (``created``, ``started``, ``paused``, ``resumed``, ``stopped``, ``died``,
``deleted``, ``snapshot_created``, ``restored``, ``suspended``, ``woken``; other
modules add their own kinds, e.g. ``health`` or ``resources``: any ``[a-z][a-z0-9_]*``).
It is synchronous and cheap (one SQLite insert) and never raises: a failure to store
an event is logged, the operation it describes has happened anyway. Each event:

* gets the next **id** (SQLite ``INTEGER PRIMARY KEY AUTOINCREMENT``: increasing,
  never reused, also across restarts) — the cursor of ``GET /v1/events?since=``;
* is stored in ``<state>/api/events.db`` (its own database: the registry's writes
  never wait for it); the oldest beyond ``KEEP`` are pruned, so a client that
  reconnects with ``since`` misses nothing still in the store, and learns from
  ``first_id`` when it did miss some;
* is logged (journald under systemd) with ``MESSAGE_ID`` = :func:`message_id` of its
  kind (a fixed UUID per kind: ``uuid5(EVENTS_NS, kind)``, listed in ``MESSAGE_IDS``),
  ``FCD_EVENT``, ``FCD_EVENT_ID``, ``FCD_VM_ID`` and the request id;
* is handed to every live subscriber (``follow`` streams) through a bounded queue:
  a subscriber that does not keep up is cut off (its stream ends; it reconnects with
  ``since`` and loses nothing still stored) and nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from fcd_common import logs, reqid
from fcd_common.errors import InvalidArgument
from fcd_common.schema import Record

__all__ = [
    "KINDS",
    "MESSAGE_IDS",
    "Event",
    "EventStore",
    "Subscription",
    "install",
    "message_id",
    "publish",
    "store",
]

log = logging.getLogger("fcd.api.events")

EVENTS_NS = uuid.UUID("6f1d2b4e-0c1a-4d7e-9b53-2a6c3f0e8d41")
KINDS = (
    "created",
    "started",
    "paused",
    "resumed",
    "stopped",
    "died",
    "deleted",
    "snapshot_created",
    "restored",
    "suspended",
    "woken",
    "resources",
)
KEEP = 10_000
QUEUE = 1_000
_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


@functools.cache
def message_id(kind: str) -> str:
    """The journal ``MESSAGE_ID`` of events of ``kind`` (fixed: a name-based UUID,
    computed once per kind: every event's log record carries it)."""
    return uuid.uuid5(EVENTS_NS, f"fcd.event.{kind}").hex


MESSAGE_IDS = {k: message_id(k) for k in KINDS}


class Event(Record, omit_defaults=True):
    id: int
    time: float
    """Seconds since the epoch (UTC)."""
    type: str
    vm_id: str | None = None
    request_id: str | None = None
    data: dict[str, Any] = {}


_enc = msgspec.json.Encoder()
_data_dec = msgspec.json.Decoder(dict[str, Any])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    time       REAL NOT NULL,
    type       TEXT NOT NULL,
    vm_id      TEXT,
    request_id TEXT,
    data       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_vm ON events (vm_id, id);
"""


class Subscription:
    """One follower's bounded queue; ``None`` in it means "you were cut off"."""

    def __init__(self, owner: EventStore, size: int = QUEUE) -> None:
        self.owner = owner
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(size + 1)
        self.size = size
        self.cut = False

    def offer(self, ev: Event) -> None:
        if self.cut:
            return
        if self.queue.qsize() >= self.size:
            self.cut = True
            self.queue.put_nowait(None)
            self.owner.unsubscribe(self)
            return
        self.queue.put_nowait(ev)

    def close(self) -> None:
        if not self.cut:
            self.cut = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)
        self.owner.unsubscribe(self)


class EventStore:
    def __init__(self, conn: sqlite3.Connection, keep: int = KEEP) -> None:
        self._conn = conn
        self.keep = keep
        self._subs: set[Subscription] = set()
        self._since_prune = 0

    @classmethod
    def open(cls, path: str | Path, keep: int = KEEP) -> EventStore:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        return cls(conn, keep)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
        self._conn.close()

    # -- writing --------------------------------------------------------------------------

    def add(self, kind: str, vm_id: str | None, data: dict[str, Any]) -> Event:
        if not _KIND_RE.fullmatch(kind):
            raise ValueError(f"bad event kind {kind!r}")
        rid = reqid.current()
        ts = time.time()
        raw = _enc.encode(data).decode()
        cur = self._conn.execute(
            "INSERT INTO events (time, type, vm_id, request_id, data) VALUES (?, ?, ?, ?, ?)",
            (ts, kind, vm_id, rid, raw),
        )
        assert cur.lastrowid is not None
        ev = Event(id=cur.lastrowid, time=ts, type=kind, vm_id=vm_id, request_id=rid, data=data)
        self._since_prune += 1
        if self._since_prune >= max(1, self.keep // 10):
            self._since_prune = 0
            self._conn.execute("DELETE FROM events WHERE id <= ?", (ev.id - self.keep,))
        for sub in list(self._subs):
            sub.offer(ev)
        return ev

    # -- reading --------------------------------------------------------------------------

    def first_id(self) -> int:
        row = self._conn.execute("SELECT MIN(id) FROM events").fetchone()
        return int(row[0] or 0)

    def last_id(self) -> int:
        row = self._conn.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def query(
        self,
        since: int = 0,
        vm_id: str | None = None,
        types: frozenset[str] = frozenset(),
        limit: int = 1000,
    ) -> list[Event]:
        """Stored events with id > ``since``, oldest first (at most ``limit``)."""
        sql = "SELECT id, time, type, vm_id, request_id, data FROM events WHERE id > ?"
        args: list[Any] = [since]
        if vm_id is not None:
            sql += " AND vm_id = ?"
            args.append(vm_id)
        if types:
            sql += f" AND type IN ({','.join('?' * len(types))})"
            args += sorted(types)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [
            Event(
                id=r[0],
                time=r[1],
                type=r[2],
                vm_id=r[3],
                request_id=r[4],
                data=_data_dec.decode(r[5]),
            )
            for r in self._conn.execute(sql, args)
        ]

    def subscribe(self, size: int = QUEUE) -> Subscription:
        sub = Subscription(self, size)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)


_store: list[EventStore] = []


def install(s: EventStore | None) -> None:
    """Make ``s`` the store :func:`publish` writes to (fcd-api's start-up; None: none)."""
    _store.clear()
    if s is not None:
        _store.append(s)


def store() -> EventStore | None:
    return _store[0] if _store else None


def publish(kind: str, vm_id: str | None, **data: Any) -> Event | None:
    """Record that ``kind`` happened to ``vm_id`` (``data``: JSON-able details).

    Stored (if a store is installed), logged with the kind's ``MESSAGE_ID``, and
    handed to every follower. Never raises; returns the stored event (None if not
    stored).
    """
    ev: Event | None = None
    s = store()
    if s is not None:
        try:
            ev = s.add(kind, vm_id, data)
        except (sqlite3.Error, ValueError, TypeError, msgspec.EncodeError) as e:
            log.error("cannot store event %s of %s: %s", kind, vm_id, e)
    extra: dict[str, Any] = {"MESSAGE_ID": message_id(kind), "FCD_EVENT": kind}
    if vm_id is not None:
        extra.update(logs.vm(vm_id))
    if ev is not None:
        extra["FCD_EVENT_ID"] = ev.id
    details = " ".join(f"{k}={v}" for k, v in data.items())
    log.info("event %s%s", kind, f": {details}" if details else "", extra=extra)
    return ev


def parse_types(values: list[str] | None) -> frozenset[str]:
    """``?type=a&type=b`` or ``?type=a,b`` -> the set; bad names are a 400."""
    out: set[str] = set()
    for v in values or []:
        for raw in v.split(","):
            t = raw.strip()
            if not t:
                continue
            if not _KIND_RE.fullmatch(t):
                raise InvalidArgument(f"invalid event type {t!r}", details={"field": "type"})
            out.add(t)
    return frozenset(out)


def lines(evs: list[Event]) -> Iterator[bytes]:
    for ev in evs:
        yield _enc.encode(ev) + b"\n"


def encode_line(ev: Event) -> bytes:
    return _enc.encode(ev) + b"\n"
