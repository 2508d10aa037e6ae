"""Persisted address leases: ``<state>/net/leases.json``.

The file is the source of truth for which VM holds which address: it is
loaded at start and rewritten atomically (temp file, fsync, rename, fsync of
the directory) on every change, so a crash leaves either the old or the new
set of leases, never a torn file, and an address is never handed out twice
-- not even across restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import msgspec

from fcd_common.atomicfile import write_atomic
from fcd_common.errors import Internal

from .plan import Lease

log = logging.getLogger("fcd.net.leases")

FILE_NAME = "leases.json"
VERSION = 1


class LeaseFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: int = VERSION
    leases: list[Lease] = msgspec.field(default_factory=list)


def load(path: Path) -> dict[str, Lease]:
    """Leases by VM id; an absent file is an empty set, a corrupt one is an error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        doc = msgspec.json.decode(data, type=LeaseFile)
    except msgspec.DecodeError as e:
        raise Internal(f"{path}: corrupt lease file: {e}") from None
    if doc.version != VERSION:
        raise Internal(f"{path}: unsupported lease file version {doc.version}")
    out: dict[str, Lease] = {}
    for lease in doc.leases:
        if lease.vm_id in out:
            raise Internal(f"{path}: duplicate lease for {lease.vm_id}")
        out[lease.vm_id] = lease
    ips = [x.addr for x in out.values()]
    if len(set(ips)) != len(ips):
        raise Internal(f"{path}: an address is leased twice")
    return out


def save(path: Path, leases: dict[str, Lease]) -> None:
    """Write all leases atomically (sorted by VM id, so the file is stable)."""
    doc = LeaseFile(leases=[leases[k] for k in sorted(leases)])
    data = msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"
    write_atomic(path, data)


class LeaseStore:
    """In-memory view of the lease file; every mutation is persisted before it returns."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = state_dir / FILE_NAME
        self._leases = load(self.path)
        log.info("loaded %d lease(s) from %s", len(self._leases), self.path)

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        return iter(sorted(self._leases.values(), key=lambda x: x.vm_id))

    def get(self, vm_id: str) -> Lease | None:
        return self._leases.get(vm_id)

    def by_tap(self, tap: str) -> Lease | None:
        return next((x for x in self._leases.values() if x.tap == tap), None)

    def used_ips(self) -> set[str]:
        """Unique addresses in use (bridge IPs and netns veth addresses)."""
        return {x.addr for x in self._leases.values()}

    def used_ports(self, except_vm: str | None = None) -> set[tuple[str, int]]:
        """(protocol, host port) of every mapping, optionally leaving one VM out."""
        return {
            (p.protocol, p.host_port)
            for x in self._leases.values()
            if x.vm_id != except_vm
            for p in x.ports
        }

    def put(self, lease: Lease) -> None:
        other = next(
            (x for x in self._leases.values() if x.addr == lease.addr and x.vm_id != lease.vm_id),
            None,
        )
        if other is not None:  # a bug upstream; never persist a double lease
            raise Internal(f"address {lease.addr} is already leased to {other.vm_id}")
        taken = self.used_ports(except_vm=lease.vm_id)
        clash = [p for p in lease.ports if (p.protocol, p.host_port) in taken]
        if clash:
            raise Internal(f"host port {clash[0].protocol}/{clash[0].host_port} is mapped twice")
        new = dict(self._leases)
        new[lease.vm_id] = lease
        save(self.path, new)
        self._leases = new

    def remove(self, vm_id: str) -> Lease | None:
        if vm_id not in self._leases:
            return None
        new = dict(self._leases)
        old = new.pop(vm_id)
        save(self.path, new)
        self._leases = new
        return old
