"""fcd-api -> fcd-storage."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..ids import Name, VmId
from ..rpc import Protocol, Reply, Request
from .common import MiB, Ping

Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
DriveName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class TemplateImport(Request, tag="storage.template_import", frozen=True):
    """Copy a kernel and a rootfs image into the template store.

    The source paths are read by fcd-storage with its own rights; they must be
    absolute paths to regular files. The store keeps its own copies.
    """

    name: Name
    kernel_path: str
    rootfs_path: str
    kernel_args: str = ""
    kernel_sha256: Sha256 | None = None
    """When given, the copy must hash to this or the import fails and leaves nothing."""
    rootfs_sha256: Sha256 | None = None


class TemplateBuild(Request, tag="storage.template_build", frozen=True):
    """Make a template whose rootfs is a new ext4 image of a directory tree (``mkfs.ext4 -d``).

    ``source_dir`` and ``kernel_path`` are read with fcd-storage's own rights
    (like TemplateImport's paths: the one place a request names a path).
    Without ``size_mib`` the image is the tree's size plus headroom.
    """

    name: Name
    kernel_path: str
    source_dir: str
    size_mib: MiB | None = None
    kernel_args: str = ""
    kernel_sha256: Sha256 | None = None


class TemplateDelete(Request, tag="storage.template_delete", frozen=True):
    """Delete a template; refused (conflict) while a disk or a snapshot uses it."""

    name: Name


class TemplateGet(Request, tag="storage.template_get", frozen=True):
    name: Name


class TemplateList(Request, tag="storage.template_list", frozen=True):
    pass


class TemplateInfo(Reply, frozen=True):
    name: str
    kernel_path: str
    rootfs_path: str
    kernel_size: int
    rootfs_size: int
    kernel_sha256: str
    rootfs_sha256: str
    kernel_args: str
    created_at: str
    source: Literal["import", "build"] = "import"
    used_by: list[str] = []
    """``vm:<id>`` and ``snapshot:<name>`` entries that keep this template alive."""


class TemplateInfoList(Reply, frozen=True):
    items: list[TemplateInfo]


class DriveSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An extra drive: a blank ext4 data drive of ``size_mib`` (the VM's own, read-write),
    or with ``template`` that template's rootfs shared read-only by every VM using it."""

    name: DriveName
    size_mib: MiB | None = None
    template: Name | None = None


class Provision(Request, tag="storage.provision", frozen=True):
    """Make the VM's writable root disk from a template (or, with ``snapshot``, from a
    snapshot's disk) and its extra drives. Idempotent per vm_id."""

    vm_id: VmId
    template: Name
    disk_size_mib: MiB | None = None
    drives: list[DriveSpec] = []
    snapshot: Name | None = None


class Release(Request, tag="storage.release", frozen=True):
    """Delete the VM's disks. Idempotent."""

    vm_id: VmId


class DiskGet(Request, tag="storage.disk_get", frozen=True):
    vm_id: VmId


class DiskList(Request, tag="storage.disk_list", frozen=True):
    pass


class DriveInfo(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    path: str
    size_bytes: int
    read_only: bool
    template: str | None = None
    """Set for a shared read-only drive: the template whose rootfs it is."""


class DiskInfo(Reply, frozen=True):
    vm_id: str
    template: str
    kernel_path: str
    rootfs_path: str
    size_bytes: int
    method: Literal["reflink", "copy"]
    drives: list[DriveInfo] = []
    snapshot: str | None = None


class DiskInfoList(Reply, frozen=True):
    items: list[DiskInfo]


class Reclaim(Request, tag="storage.reclaim", frozen=True):
    """Remove partial entries, and disks of VMs not in ``live_vm_ids``.

    Disks created at or after ``as_of`` (RFC 3339, when the caller took its list)
    are spared: they belong to creates that started after the list was taken.
    """

    live_vm_ids: list[VmId]
    as_of: str


class ReclaimResult(Reply, frozen=True):
    removed: list[str]


class SnapshotPrepare(Request, tag="storage.snapshot_prepare", frozen=True):
    """Reserve ``snapshots/<name>/`` with empty state and memory files for ``vm_id``'s snapshot.

    fcd-vmm links the two files into the jail for Firecracker to fill; a pending
    snapshot has no manifest and is reclaimed at start.
    """

    name: Name
    vm_id: VmId


class SnapshotCommit(Request, tag="storage.snapshot_commit", frozen=True):
    """With the VM paused and its files written: clone its disk, write the manifest."""

    name: Name


class SnapshotGet(Request, tag="storage.snapshot_get", frozen=True):
    name: Name


class SnapshotList(Request, tag="storage.snapshot_list", frozen=True):
    pass


class SnapshotDelete(Request, tag="storage.snapshot_delete", frozen=True):
    """Delete a snapshot (pending or complete); refused while a restored VM's disk uses it."""

    name: Name


class SnapshotInfo(Reply, frozen=True):
    name: str
    vm_id: str
    template: str
    state: Literal["pending", "ready"]
    state_path: str
    memory_path: str
    disk_path: str
    state_size: int = 0
    memory_size: int = 0
    disk_size: int = 0
    created_at: str = ""
    used_by: list[str] = []


class SnapshotInfoList(Reply, frozen=True):
    items: list[SnapshotInfo]


PROTOCOL = Protocol(
    "fcd-storage",
    [
        Ping,
        TemplateImport,
        TemplateGet,
        TemplateList,
        Provision,
        Release,
        DiskGet,
        DiskList,
        TemplateBuild,
        TemplateDelete,
        Reclaim,
        SnapshotPrepare,
        SnapshotCommit,
        SnapshotGet,
        SnapshotList,
        SnapshotDelete,
    ],
)
