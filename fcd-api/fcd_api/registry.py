"""The VM registry: one SQLite database in WAL mode, owned by fcd-api.

``vms`` holds one row per VM: the spec (the create request, JSON), the state,
the runtime fields the helpers handed out (JSON), the last error and the
timestamps. Every write is one transaction. ``PRAGMA user_version`` carries
the schema version; a database from a newer fcd is refused.

Calls are synchronous: each is a sub-millisecond local transaction, cheaper
than a hop to a thread. Only fcd-api's event loop thread uses the connection.

Reads keep the record decoded from each row (:class:`_Decoded`): a row whose
columns read back unchanged gives the same (frozen) :class:`VmRecord` without
decoding its JSON again. ``GET /v1/vms`` with 1,000 VMs spent most of its time
decoding specs and runtimes that had not changed since the last call; now it
pays only for the rows that did. The row itself is still read every time, so
nothing is ever served that the database does not hold.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec

from fcd_common.errors import Conflict, Internal, InvalidArgument, NotFound

from .models import VM, CreateVMRequest, Runtime, VmRecord, VMState, now
from .registry_migrate import runtime_from_v1
from .spec_check import checked_spec
from .supervision_models import HealthCheck

__all__ = ["SCHEMA_VERSION", "Registry", "parse_label_filters"]

log = logging.getLogger("fcd.api.registry")

SCHEMA_VERSION = 2
"""2: ``runtime`` embeds the helpers' records (:mod:`fcd_api.registry_migrate`)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    id          TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL,
    runtime     TEXT NOT NULL DEFAULT '{}',
    error       TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    stopped_at  TEXT,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS vms_state ON vms (state);
"""

_COLUMNS = "id, spec, state, runtime, error, created_at, started_at, stopped_at, updated_at"

_spec_dec = msgspec.json.Decoder(CreateVMRequest)
_check_dec = msgspec.json.Decoder(HealthCheck)


class HealthRow(NamedTuple):
    id: str
    state: VMState
    check: HealthCheck | None
    pid: int | None
    has_health: bool


_runtime_dec = msgspec.json.Decoder(Runtime)
_enc = msgspec.json.Encoder()


def parse_label_filters(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{k: v}``; the value may contain ``=``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"label filter {item!r} is not k=v", details={"field": "label"})
        out[key] = value
    return out


class _Decoded:
    """Each VM's last row as read, the record decoded from it, and its public view."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[tuple[object, ...], VmRecord]] = {}
        self._public: dict[str, tuple[VmRecord, VM]] = {}

    def public(self, rec: VmRecord) -> VM:
        hit = self._public.get(rec.id)
        if hit is not None and hit[0] is rec:
            return hit[1]
        vm = rec.to_public()
        if self._rows.get(rec.id, (None, None))[1] is rec:  # only what the table holds
            self._public[rec.id] = (rec, vm)
        return vm

    def record(self, row: tuple[object, ...]) -> VmRecord:
        vm_id = str(row[0])
        hit = self._rows.get(vm_id)
        if hit is not None and hit[0] == row:
            return hit[1]
        rec = _record(row)
        self._rows[vm_id] = (row, rec)
        return rec

    def keep_only(self, ids: set[str]) -> None:
        """Forget VMs no longer in the table (after a read of every row)."""
        for vm_id in [k for k in self._rows if k not in ids]:
            del self._rows[vm_id]
            self._public.pop(vm_id, None)

    def forget(self, vm_id: str) -> None:
        self._rows.pop(vm_id, None)
        self._public.pop(vm_id, None)


class Registry:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._decoded = _Decoded()

    @classmethod
    def open(cls, path: str | Path) -> Registry:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise Internal(f"{path}: cannot switch SQLite to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise Internal(
                    f"{path}: registry schema version {version} is newer than this fcd-api "
                    f"({SCHEMA_VERSION}); refusing to touch it"
                )
            with _tx(conn):
                for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    conn.execute(stmt)
                if version == 1:
                    _migrate_v1(conn)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    @property
    def journal_mode(self) -> str:
        return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # --- reads -----------------------------------------------------------------
    def get(self, vm_id: str) -> VmRecord | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM vms WHERE id = ?", (vm_id,)).fetchone()
        if row is None:
            self._decoded.forget(vm_id)
            return None
        return self._decoded.record(row)

    def require(self, vm_id: str) -> VmRecord:
        rec = self.get(vm_id)
        if rec is None:
            raise NotFound(f"no VM {vm_id!r}", details={"id": vm_id})
        return rec

    def list_vms(
        self, *, state: VMState | None = None, labels: Mapping[str, str] | None = None
    ) -> list[VmRecord]:
        if state is None:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM vms ORDER BY created_at, id")
        else:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM vms WHERE state = ? ORDER BY created_at, id",
                (state.value,),
            )
        records = [self._decoded.record(r) for r in rows]
        if state is None:
            self._decoded.keep_only({r.id for r in records})
        if labels:
            records = [
                r for r in records if all(r.spec.labels.get(k) == v for k, v in labels.items())
            ]
        return records

    def public(self, rec: VmRecord) -> VM:
        """``rec.to_public()``, built once for each version of a row this registry read."""
        return self._decoded.public(rec)

    def health_rows(self, *, everyone: bool = True) -> list[HealthRow]:
        """What the health scan uses of every VM -- id, state, the spec's check, pid, and
        whether health is set -- extracted by SQLite instead of decoding whole records.

        ``everyone=False`` (no default check configured): only the VMs with a check of
        their own or a health to clear; SQLite filters, so 1,000 VMs without checks
        cost no Python object each."""
        where = (
            ""
            if everyone
            else " WHERE json_extract(spec, '$.health_check') IS NOT NULL"
            " OR json_extract(runtime, '$.health') IS NOT NULL"
        )
        rows = self._conn.execute(
            "SELECT id, state, json_extract(spec, '$.health_check'),"
            " json_extract(runtime, '$.pid'), json_extract(runtime, '$.health') IS NOT NULL"
            f" FROM vms{where} ORDER BY created_at, id"
        )
        return [
            HealthRow(
                id=str(vm_id),
                state=VMState(str(state)),
                check=None if check is None else _check_dec.decode(str(check)),
                pid=None if pid is None else int(pid),
                has_health=bool(has_health),
            )
            for vm_id, state, check, pid, has_health in rows
        ]

    def generation(self) -> tuple[int, int]:
        """Changes when any record may have: rows this connection changed, and SQLite's
        ``data_version`` (bumped by another connection's commit). Cheap: no row is read."""
        other = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        return self._conn.total_changes, other

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM vms").fetchone()[0])

    def counts(self) -> dict[VMState, int]:
        rows = self._conn.execute("SELECT state, count(*) FROM vms GROUP BY state")
        return {VMState(state): n for state, n in rows}

    # --- writes ----------------------------------------------------------------
    # Each write is one statement, which SQLite runs as a transaction of its own in
    # autocommit mode (the connection's isolation_level=None): as atomic and as durable
    # as inside BEGIN IMMEDIATE ... COMMIT, without two more statements per write.
    def insert(self, rec: VmRecord) -> None:
        try:
            self._conn.execute(
                f"INSERT INTO vms ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(rec)
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"VM {rec.id!r} already exists", details={"id": rec.id}) from None

    def update(self, rec: VmRecord) -> VmRecord:
        """Replace the row of ``rec.id`` (updated_at is set here); NotFound if gone."""
        rec = msgspec.structs.replace(rec, updated_at=now())
        row = _row(rec)
        cur = self._conn.execute(
            "UPDATE vms SET spec = ?, state = ?, runtime = ?, error = ?, created_at = ?,"
            " started_at = ?, stopped_at = ?, updated_at = ? WHERE id = ?",
            (*row[1:], row[0]),
        )
        if cur.rowcount != 1:
            raise NotFound(f"no VM {rec.id!r}", details={"id": rec.id})
        return rec

    def delete(self, vm_id: str) -> bool:
        cur = self._conn.execute("DELETE FROM vms WHERE id = ?", (vm_id,))
        self._decoded.forget(vm_id)
        return cur.rowcount == 1


@contextlib.contextmanager
def _tx(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate_v1(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT id, spec, runtime FROM vms").fetchall()
    for vm_id, spec, runtime in rows:
        old = msgspec.json.decode(str(runtime))
        new = runtime_from_v1(str(vm_id), old, _spec_dec.decode(str(spec)))
        conn.execute("UPDATE vms SET runtime = ? WHERE id = ?", (_enc.encode(new).decode(), vm_id))
    if rows:
        log.info("registry: %d VM record(s) migrated to schema 2", len(rows))


def _row(rec: VmRecord) -> tuple[object, ...]:
    return (
        rec.id,
        _enc.encode(checked_spec(rec.spec)).decode(),
        rec.state.value,
        _enc.encode(rec.runtime).decode(),
        rec.error,
        rec.created_at,
        rec.started_at,
        rec.stopped_at,
        rec.updated_at,
    )


def _record(row: tuple[object, ...]) -> VmRecord:
    vm_id, spec, state, runtime, error, created, started, stopped, updated = row
    return VmRecord(
        id=str(vm_id),
        spec=_spec_dec.decode(str(spec)),
        state=VMState(str(state)),
        runtime=_runtime_dec.decode(str(runtime)),
        error=None if error is None else str(error),
        created_at=str(created),
        started_at=None if started is None else str(started),
        stopped_at=None if stopped is None else str(stopped),
        updated_at=str(updated),
    )
