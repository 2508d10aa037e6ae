"""Persisted address leases: one append-only log, ``<state>/net/leases.log``.

The log is the source of truth for which VM holds which address and host
ports: loaded at start, and each change is one fdatasync'd line
(:mod:`fcd_common.recordlog`), so a setup or teardown costs the same with 10
VMs or 10,000 and a crash leaves either the old or the new lease, never a torn
one. Unlike fcd-vmm's jail records the log fails closed: a corrupt line stops
fcd-net from starting rather than forget a lease and hand its address out
again. The in-memory view refuses to persist an address or host port twice, so
nothing is ever handed out twice -- not even across restarts.

Older layouts are folded into the log at start and removed: one file per VM in
``<state>/net/leases/`` and, before that, one ``leases.json`` for all.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path

import msgspec

from fcd_common.atomicfile import fsync_dir
from fcd_common.errors import Internal
from fcd_common.ids import is_vm_id
from fcd_common.recordlog import RecordLog, read_records

from .lowfree import LowestFree
from .plan import Lease

log = logging.getLogger("fcd.net.leases")

LOG_NAME = "leases.log"
DIR_NAME = "leases"  # one file per VM (before the log)
LEGACY_FILE = "leases.json"  # one file for all leases (before per-VM files)
VERSION = 1


class LeaseRecord(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A per-VM lease file of the older layout, read once to migrate."""

    version: int = VERSION
    lease: Lease


class LeaseFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The legacy single-file format, read once to migrate."""

    version: int = VERSION
    leases: list[Lease] = msgspec.field(default_factory=list)


def _check(out: dict[str, Lease], where: Path) -> dict[str, Lease]:
    ips = [x.addr for x in out.values()]
    if len(set(ips)) != len(ips):
        raise Internal(f"{where}: an address is leased twice")
    return out


def load(directory: Path) -> dict[str, Lease]:
    """Leases by VM id from per-VM files (the older layout); no directory is an empty
    set, a corrupt file is an error."""
    out: dict[str, Lease] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            rec = msgspec.json.decode(path.read_bytes(), type=LeaseRecord)
        except msgspec.DecodeError as e:
            raise Internal(f"{path}: corrupt lease file: {e}") from None
        if rec.version != VERSION:
            raise Internal(f"{path}: unsupported lease file version {rec.version}")
        if rec.lease.vm_id != path.stem or not is_vm_id(path.stem):
            raise Internal(f"{path}: holds the lease of {rec.lease.vm_id!r}")
        out[rec.lease.vm_id] = rec.lease
    return _check(out, directory)


def load_legacy(path: Path) -> dict[str, Lease]:
    try:
        doc = msgspec.json.decode(path.read_bytes(), type=LeaseFile)
    except msgspec.DecodeError as e:
        raise Internal(f"{path}: corrupt lease file: {e}") from None
    out: dict[str, Lease] = {}
    for lease in doc.leases:
        if lease.vm_id in out:
            raise Internal(f"{path}: duplicate lease for {lease.vm_id}")
        out[lease.vm_id] = lease
    return _check(out, path)


def stored(state_dir: Path) -> dict[str, Lease]:
    """The leases on disk, read only (tests, tools): what a restart would load."""
    return read_records(state_dir / LOG_NAME, Lease)


class LeaseStore:
    """In-memory view of the lease log; every mutation is persisted before it returns."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = state_dir / LOG_NAME
        self.log = RecordLog(self.path, Lease, strict=True)
        self._leases = self.log.load()
        for vm_id, lease in self._leases.items():
            if lease.vm_id != vm_id or not is_vm_id(vm_id):
                raise Internal(f"{self.path}: {vm_id!r} holds the lease of {lease.vm_id!r}")
        self._migrate(state_dir)
        _check(self._leases, self.path)
        self._reindex()
        log.info("loaded %d lease(s) from %s", len(self._leases), self.path)

    def _migrate(self, state_dir: Path) -> None:
        """Older layouts into the log, then their files away. A lease the log holds
        already was moved by an earlier, interrupted start: its file is stale."""
        legacy = state_dir / LEGACY_FILE
        directory = state_dir / DIR_NAME
        found: dict[str, Lease] = {}
        if legacy.exists():
            found.update(load_legacy(legacy))
        if directory.is_dir():
            found.update(load(directory))  # per-VM files were written after the single file
        for vm_id, lease in found.items():
            if vm_id not in self._leases:
                self.log.put(vm_id, lease)
                self._leases[vm_id] = lease
        if directory.is_dir():
            for path in directory.glob("*.json"):
                path.unlink()
            directory.rmdir()
        if legacy.exists():
            legacy.unlink()
        if found:
            fsync_dir(state_dir)
            log.info("moved %d lease(s) of an older layout into %s", len(found), self.path)

    # Indexes kept beside the leases, so a setup or teardown looks an address, a TAP
    # or a host port up instead of scanning every lease (O(VMs) per call at scale).
    def _reindex(self) -> None:
        self._pools: dict[tuple[int, int, int], LowestFree] = {}
        self._by_addr: dict[str, str] = {}
        self._by_tap: dict[str, dict[str, None]] = {}  # netns clones share one TAP name
        self._port_owner: dict[tuple[str, int], str] = {}
        for lease in self._leases.values():
            self._index(lease)

    def _index(self, lease: Lease) -> None:
        self._by_addr[lease.addr] = lease.vm_id
        self._by_tap.setdefault(lease.tap, {})[lease.vm_id] = None
        for p in lease.ports:
            self._port_owner[(p.protocol, p.host_port)] = lease.vm_id

    def pool(self, first: int, last: int, step: int) -> LowestFree:
        """The lowest-free index of an address range (made on first use from the
        leases; kept current by every lease that leaves): plan.allocate_ip's ``pools``."""
        key = (first, last, step)
        index = self._pools.get(key)
        if index is None:
            used = (int(ipaddress.IPv4Address(a)) for a in self._by_addr)
            index = self._pools[key] = LowestFree(first, last, step, used)
        return index

    def _unindex(self, lease: Lease) -> None:
        if self._by_addr.get(lease.addr) == lease.vm_id:
            del self._by_addr[lease.addr]
            freed = int(ipaddress.IPv4Address(lease.addr))
            for index in self._pools.values():
                index.release(freed)
        holders = self._by_tap.get(lease.tap, {})
        holders.pop(lease.vm_id, None)
        if not holders:
            self._by_tap.pop(lease.tap, None)
        for p in lease.ports:
            if self._port_owner.get((p.protocol, p.host_port)) == lease.vm_id:
                del self._port_owner[(p.protocol, p.host_port)]

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        return iter(sorted(self._leases.values(), key=lambda x: x.vm_id))

    def get(self, vm_id: str) -> Lease | None:
        return self._leases.get(vm_id)

    def by_tap(self, tap: str) -> Lease | None:
        for vm_id in self._by_tap.get(tap, ()):
            return self._leases[vm_id]
        return None

    def used_ips(self) -> AbstractSet[str]:
        """Unique addresses in use (bridge IPs and netns veth addresses): a live view."""
        return self._by_addr.keys()

    def used_ports(self, except_vm: str | None = None) -> AbstractSet[tuple[str, int]]:
        """(protocol, host port) of every mapping, optionally leaving one VM out."""
        if except_vm is None:
            return self._port_owner.keys()
        return {k for k, owner in self._port_owner.items() if owner != except_vm}

    def put(self, lease: Lease) -> None:
        holder = self._by_addr.get(lease.addr)
        if holder is not None and holder != lease.vm_id:  # a bug upstream; never persist
            raise Internal(f"address {lease.addr} is already leased to {holder}")
        clash = [
            p
            for p in lease.ports
            if self._port_owner.get((p.protocol, p.host_port), lease.vm_id) != lease.vm_id
        ]
        if clash:
            raise Internal(f"host port {clash[0].protocol}/{clash[0].host_port} is mapped twice")
        self.log.put(lease.vm_id, lease)
        old = self._leases.get(lease.vm_id)
        if old is not None:
            self._unindex(old)
        self._leases[lease.vm_id] = lease
        self._index(lease)

    def remove(self, vm_id: str) -> Lease | None:
        if vm_id not in self._leases:
            return None
        self.log.delete(vm_id)
        lease = self._leases.pop(vm_id)
        self._unindex(lease)
        return lease
