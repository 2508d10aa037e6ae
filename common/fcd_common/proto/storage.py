"""fcd-api -> fcd-storage."""

from __future__ import annotations

from typing import Literal

from ..rpc import Caller, Done, Protocol, Reply, Request
from ..schema import Record
from ..types import (
    DriveName,
    KernelArgs,
    MiB,
    Name,
    NetMode,
    Sha256,
    SourcePath,
    VcpuCount,
    VmId,
)
from .common import Ping, PortMapping

# --- records and replies --------------------------------------------------------------


class DriveSpec(Record):
    """An extra drive: a blank ext4 data drive of ``size_mib`` (the VM's own, read-write),
    or with ``template`` that template's rootfs shared read-only by every VM using it."""

    name: DriveName
    size_mib: MiB | None = None
    template: Name | None = None


class DriveInfo(Record):
    name: str
    path: str
    size_bytes: int
    read_only: bool
    template: str | None = None
    """Set for a shared read-only drive: the template whose rootfs it is."""


class TemplateInfo(Reply):
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


class TemplateInfoList(Reply):
    items: list[TemplateInfo]


class DiskInfo(Reply):
    vm_id: str
    template: str
    kernel_path: str
    rootfs_path: str
    size_bytes: int
    method: Literal["reflink", "copy"]
    drives: list[DriveInfo] = []
    snapshot: str | None = None


class DiskInfoList(Reply):
    items: list[DiskInfo]


class ReclaimResult(Reply):
    removed: list[str]


class SnapshotOrigin(Record):
    """What a restore needs and checks, recorded by fcd-api when it commits a snapshot
    (fcd-storage keeps it in ``snapshot.json`` and does not interpret it)."""

    vm_id: VmId
    type: Literal["full", "diff"] = "full"
    parent: Name | None = None
    """diff: the snapshot whose memory this one's dirty pages were layered onto."""
    vcpu_count: VcpuCount
    mem_size_mib: MiB
    template: Name
    kernel_args: KernelArgs = ""
    """The whole command line the guest booted with (template + request)."""
    network_mode: NetMode
    guest_ip: str
    guest_mac: str
    tap: str
    port_mappings: list[PortMapping] = []
    track_dirty_pages: bool = False
    firecracker_version: str
    snapshot_version: str
    """Firecracker's snapshot format (``--snapshot-version``): a restore needs the same
    major and a minor no newer than the binary's."""


class SnapshotInfo(Reply):
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
    origin: SnapshotOrigin | None = None
    written_bytes: int = 0
    """Bytes of memory Firecracker wrote: all of it for a full snapshot, only the dirty
    pages for a diff (whose ``memory_size`` is the whole, layered file)."""


class SuspendInfo(Reply):
    """A VM's suspend files, in its own disk directory: ``pending`` while Firecracker
    writes them (``*.pending``), committed once fcd-vmm handed them back. They go with
    the VM's disks (``storage.release``); a new suspend replaces them (the old inodes
    live on while a woken VM still maps them)."""

    vm_id: str
    state_path: str
    memory_path: str
    pending: bool
    state_size: int = 0
    memory_size: int = 0


class SnapshotInfoList(Reply):
    items: list[SnapshotInfo]


# --- requests -------------------------------------------------------------------------


class TemplateSource(Record):
    """A kernel and a rootfs image to copy into the template store (the API's
    ``POST /v1/templates`` body, and the RPC that carries it).

    The source paths are read by fcd-storage with its own rights; they must be
    absolute paths to regular files below one of the operator's ``storage.import_dirs``,
    reached without a symlink (fcd-storage checks; any refusal of what is there reads
    the same). The store keeps its own copies.
    """

    name: Name
    kernel_path: SourcePath
    rootfs_path: SourcePath
    kernel_args: KernelArgs = ""
    kernel_sha256: Sha256 | None = None
    """When given, the copy must hash to this or the import fails and leaves nothing."""
    rootfs_sha256: Sha256 | None = None


class TemplateTree(Record):
    """A template whose rootfs is a new ext4 image of a directory tree (``mkfs.ext4 -d``)
    (the API's ``POST /v1/templates/build`` body, and the RPC that carries it).

    ``source_dir`` and ``kernel_path`` are read with fcd-storage's own rights, below
    ``storage.import_dirs`` only (like TemplateSource's paths: the one place a request
    names a path).
    Without ``size_mib`` the image is the tree's size plus headroom.
    """

    name: Name
    kernel_path: SourcePath
    source_dir: SourcePath
    size_mib: MiB | None = None
    kernel_args: KernelArgs = ""
    kernel_sha256: Sha256 | None = None


class TemplateImport(TemplateSource, Request[TemplateInfo], tag="storage.template_import"):
    """Copy a template's kernel and rootfs into the store."""


class TemplateBuild(TemplateTree, Request[TemplateInfo], tag="storage.template_build"):
    """Build a template's rootfs from a directory tree."""


class TemplateDelete(Request[Done], tag="storage.template_delete"):
    """Delete a template; refused (conflict) while a disk or a snapshot uses it."""

    name: Name


class TemplateGet(Request[TemplateInfo], tag="storage.template_get"):
    name: Name
    users: bool = True
    """Fill ``used_by``: a read of every disk and snapshot manifest (O(VMs)); a create,
    which needs only the template's own fields, asks without."""


class TemplateList(Request[TemplateInfoList], tag="storage.template_list"):
    pass


class Provision(Request[DiskInfo], tag="storage.provision"):
    """Make the VM's writable root disk from a template (or, with ``snapshot``, from a
    snapshot's disk) and its extra drives. Idempotent per vm_id."""

    vm_id: VmId
    template: Name
    disk_size_mib: MiB | None = None
    drives: list[DriveSpec] = []
    snapshot: Name | None = None


class Release(Request[Done], tag="storage.release"):
    """Delete the VM's disks. Idempotent."""

    vm_id: VmId


class DiskGet(Request[DiskInfo], tag="storage.disk_get"):
    vm_id: VmId


class DiskList(Request[DiskInfoList], tag="storage.disk_list"):
    pass


class Reclaim(Request[ReclaimResult], tag="storage.reclaim"):
    """Remove partial entries, and disks of VMs not in ``live_vm_ids``.

    Disks created at or after ``as_of`` (RFC 3339, when the caller took its list)
    are spared: they belong to creates that started after the list was taken.
    """

    access = Caller.API
    live_vm_ids: list[VmId]
    as_of: str


class SnapshotPrepare(Request[SnapshotInfo], tag="storage.snapshot_prepare"):
    """Reserve ``snapshots/<name>/`` with empty state and memory files for ``vm_id``'s snapshot.

    fcd-vmm links the two files into the jail for Firecracker to fill; a pending
    snapshot has no manifest and is reclaimed at start.
    """

    name: Name
    vm_id: VmId


class SnapshotCommit(Request[SnapshotInfo], tag="storage.snapshot_commit"):
    """With the VM paused and its files written: clone its disk, write the manifest
    (with ``origin``, what a restore of it needs)."""

    name: Name
    origin: SnapshotOrigin | None = None


class SnapshotGet(Request[SnapshotInfo], tag="storage.snapshot_get"):
    name: Name
    users: bool = True
    """Fill ``used_by`` (a read of every disk manifest, O(VMs)); a restore asks without."""


class SnapshotList(Request[SnapshotInfoList], tag="storage.snapshot_list"):
    pass


class SnapshotDelete(Request[Done], tag="storage.snapshot_delete"):
    """Delete a snapshot (pending or complete); refused while a restored VM's disk uses it."""

    name: Name


class SuspendPrepare(Request[SuspendInfo], tag="storage.suspend_prepare"):
    """Empty pending suspend files for ``vm_id`` (replacing stale pending ones)."""

    vm_id: VmId


class SuspendCommit(Request[SuspendInfo], tag="storage.suspend_commit"):
    """The pending files were written and handed back: check them, rename them over the
    committed names. Idempotent once committed."""

    vm_id: VmId


class SuspendAbort(Request[Done], tag="storage.suspend_abort"):
    """Remove pending suspend files (a suspend that failed). Idempotent."""

    vm_id: VmId


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
        SuspendPrepare,
        SuspendCommit,
        SuspendAbort,
    ],
)
