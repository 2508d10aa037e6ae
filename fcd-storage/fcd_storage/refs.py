"""Reference counts, computed from the manifests on disk (pure).

Nothing keeps a counter that a crash could leave wrong: who uses what is read
from the disk and snapshot manifests every time it matters.

- a template is used by every VM disk made from it (root disk or a shared
  read-only drive) and by every snapshot taken of a VM made from it;
- a snapshot is used by every VM disk restored from it (the restored VM maps
  the snapshot's memory file read-only for its whole life).
"""

from __future__ import annotations

from collections.abc import Iterable

from .manifest import DiskManifest, SnapshotManifest


def template_users(
    disks: Iterable[DiskManifest], snapshots: Iterable[SnapshotManifest]
) -> dict[str, list[str]]:
    """``{template: ["vm:<id>", "snapshot:<name>", ...]}`` (sorted, no duplicates)."""
    users: dict[str, set[str]] = {}
    for d in disks:
        users.setdefault(d.template, set()).add(f"vm:{d.vm_id}")
        for drive in d.drives:
            if drive.template is not None:
                users.setdefault(drive.template, set()).add(f"vm:{d.vm_id}")
    for s in snapshots:
        users.setdefault(s.template, set()).add(f"snapshot:{s.name}")
    return {k: sorted(v) for k, v in users.items()}


def snapshot_users(disks: Iterable[DiskManifest]) -> dict[str, list[str]]:
    users: dict[str, set[str]] = {}
    for d in disks:
        if d.snapshot is not None:
            users.setdefault(d.snapshot, set()).add(f"vm:{d.vm_id}")
    return {k: sorted(v) for k, v in users.items()}
