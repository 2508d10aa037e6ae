"""The per-VM uid/gid pool and its on-disk records.

Each VM gets ``uid = gid`` from ``[uid_min, uid_max]``; no two VMs ever share
one. The allocation itself is a pure function (:func:`pick_uid`); the
:class:`UidPool` keeps one JSON record per VM in ``<state>/jails.log``
(:mod:`fcd_common.recordlog`: one fdatasync'd line per change), reloads them
at start and refuses a record that would reuse a uid already taken. Records of
an older fcd (one file per VM in ``<state>/vms/``) are folded into the log at
load and their files removed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import msgspec

from fcd_common import logs
from fcd_common.errors import Internal, ResourceExhausted
from fcd_common.ids import check_vm_id, is_vm_id
from fcd_common.recordlog import RecordLog, read_records

log = logging.getLogger("fcd.vmm.uidpool")

RecordState = Literal["allocated", "running", "exited"]


class JailRecord(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """What fcd-vmm remembers about one VM across restarts."""

    vm_id: str
    uid: int
    gid: int
    pid: int | None = None
    state: RecordState = "allocated"
    """allocated: jail reserved, never launched; running: a Firecracker was
    launched (its pid is ``pid``); exited: it is gone (``exit_code`` if known)."""
    exit_code: int | None = None
    acl_files: list[str] = msgspec.field(default_factory=list)
    """Snapshot files (of a restore) whose ACL names this VM's uid: recorded before
    the entry is added, cleared once it is removed, so a crash leaves none behind
    for the next holder of the uid."""
    mem_size_mib: int | None = None
    """The last launch's guest memory: a balloon may not ask for more."""
    drives: list[str] = msgspec.field(default_factory=list)
    """The last launch's extra drive ids: the only ones whose rate limits may change."""
    balloon: bool = False
    """The last launch configured a balloon."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(JailRecord)


def pick_uid(used: Iterable[int], lo: int, hi: int, start: int | None = None) -> int | None:
    """The first uid in ``[lo, hi]`` not in ``used``, searching from ``start`` and wrapping.

    Starting after the last allocation (instead of always at ``lo``) keeps a
    just-released uid out of use for as long as possible, so that nothing still
    owned by the previous VM (a TAP not yet deleted) meets the next one. ``used``
    may be a set (the pool passes its own, kept up to date): it is then not copied,
    and a pick costs O(1) while the uids after ``start`` are free.
    """
    taken = used if isinstance(used, (set, frozenset)) else set(used)
    if start is None or not lo <= start <= hi:
        start = lo
    for uid in range(start, hi + 1):
        if uid not in taken:
            return uid
    for uid in range(lo, start):
        if uid not in taken:
            return uid
    return None


class UidPool:
    """Records of every VM that holds a jail uid, persisted in one append-only log."""

    def __init__(self, state_dir: Path, uid_min: int, uid_max: int, max_vms: int) -> None:
        self.dir = state_dir / "vms"
        """Where an older fcd kept one file per VM (migrated at load)."""
        self.log = RecordLog(log_path(state_dir), JailRecord)
        self.uid_min = uid_min
        self.uid_max = uid_max
        self.max_vms = max_vms
        self._records: dict[str, JailRecord] = {}
        self._uids: set[int] = set()
        """The uids of ``_records``: a pick must not build it from 1,000 records."""
        self._next: int | None = None

    # --- persistence -----------------------------------------------------------------
    def load(self) -> list[JailRecord]:
        """(Re)read every record; returns the records kept."""
        stored = self.log.load()
        self._migrate(stored)
        self._records.clear()
        self._uids.clear()
        by_uid: dict[int, str] = {}
        for vm_id in sorted(stored):
            rec = stored[vm_id]
            if not is_vm_id(vm_id) or rec.vm_id != vm_id:
                log.error("ignoring VM record %s: id mismatch (%r)", vm_id, rec.vm_id)
                continue
            if not (self.uid_min <= rec.uid <= self.uid_max) or rec.gid != rec.uid:
                log.error(
                    "VM record %s has uid %d/gid %d outside the pool [%d, %d]; keeping it reserved",
                    vm_id,
                    rec.uid,
                    rec.gid,
                    self.uid_min,
                    self.uid_max,
                    extra=logs.vm(vm_id),
                )
            if rec.uid in by_uid:
                log.error(
                    "VM record %s reuses uid %d of %s; ignoring it",
                    vm_id,
                    rec.uid,
                    by_uid[rec.uid],
                    extra=logs.vm(vm_id),
                )
                continue
            by_uid[rec.uid] = vm_id
            self._records[vm_id] = rec
            self._uids.add(rec.uid)
        return list(self._records.values())

    def _migrate(self, stored: dict[str, JailRecord]) -> None:
        """Fold an older fcd's per-VM files into the log, then remove them. A file
        whose VM the log knows already was folded in by an earlier, interrupted load."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.json")):
            vm_id = path.stem
            if vm_id not in stored:
                try:
                    rec = _decoder.decode(path.read_bytes())
                except (OSError, msgspec.DecodeError) as e:
                    log.error("ignoring unreadable VM record %s: %s", path, e)
                    continue  # kept on disk: a failure never deletes state
                if not is_vm_id(vm_id):
                    log.error("ignoring VM record %s: not a VM id", path)
                    continue
                self.log.put(vm_id, rec)
                stored[vm_id] = rec
            path.unlink()
            log.info("VM record %s moved into %s", path.name, self.log.path)

    def save(self, rec: JailRecord) -> None:
        if self._records.get(rec.vm_id) is not rec:
            raise Internal(f"saving a record that is not in the pool: {rec.vm_id}")
        self.log.put(check_vm_id(rec.vm_id), rec)

    # --- queries ---------------------------------------------------------------------
    def get(self, vm_id: str) -> JailRecord | None:
        return self._records.get(vm_id)

    def __iter__(self) -> Iterator[JailRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    # --- changes ---------------------------------------------------------------------
    def allocate(self, vm_id: str) -> JailRecord:
        """The VM's record, creating it with a fresh uid if needed (idempotent)."""
        check_vm_id(vm_id)
        rec = self._records.get(vm_id)
        if rec is not None:
            return rec
        if len(self._records) >= self.max_vms:
            raise ResourceExhausted(f"VM limit reached ({self.max_vms} jails allocated)")
        uid = pick_uid(self._uids, self.uid_min, self.uid_max, self._next)
        if uid is None:
            raise ResourceExhausted(f"uid pool [{self.uid_min}, {self.uid_max}] is exhausted")
        rec = JailRecord(vm_id=vm_id, uid=uid, gid=uid)
        self._records[vm_id] = rec
        self._uids.add(uid)
        try:
            self.save(rec)
        except OSError:
            del self._records[vm_id]
            self._uids.discard(uid)
            raise
        self._next = uid + 1
        log.debug("allocated uid/gid %d", uid, extra=logs.vm(vm_id))
        return rec

    def release(self, vm_id: str) -> JailRecord | None:
        """Forget the VM and free its uid (idempotent); returns the old record."""
        rec = self._records.pop(check_vm_id(vm_id), None)
        self.log.delete(vm_id)
        if rec is not None:
            self._uids.discard(rec.uid)
            log.debug("freed uid/gid %d", rec.uid, extra=logs.vm(vm_id))
        return rec


def log_path(state_dir: Path) -> Path:
    return state_dir / "jails.log"


def stored_records(state_dir: Path) -> dict[str, JailRecord]:
    """The records on disk, read only (tests, tools): what a restart would load."""
    return read_records(log_path(state_dir), JailRecord)
