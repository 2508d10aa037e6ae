"""Public API bodies for storage that are fcd-api's own (templates and snapshots are
fcd-storage's records, :mod:`fcd_common.proto.storage`, served as they are)."""

from __future__ import annotations

from fcd_common.schema import Record

__all__ = ["StorageReclaimReport"]


class StorageReclaimReport(Record):
    """``POST /v1/storage/reclaim``: what fcd-storage removed, and how many VMs the
    registry held when fcd-api asked."""

    removed: list[str]
    live_vms: int
