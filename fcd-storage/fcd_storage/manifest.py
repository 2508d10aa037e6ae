"""On-disk manifests: the last file written, so their presence marks a complete entry.

Manifests never store paths: paths are always derived from the layout, so an
edited manifest cannot point fcd-vmm anywhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from fcd_common.proto.storage import (
    DiskInfo,
    DriveInfo,
    SnapshotInfo,
    SnapshotOrigin,
    TemplateInfo,
)
from fcd_common.storelayout import StoreLayout

Method = Literal["reflink", "copy"]
MANIFEST_MODE = 0o640
_T = TypeVar("_T", bound=msgspec.Struct)


class TemplateManifest(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    kernel_size: int
    rootfs_size: int
    kernel_sha256: str
    rootfs_sha256: str
    kernel_args: str
    created_at: str
    format: int = 1
    source: Literal["import", "build"] = "import"

    def same_content(self, other: TemplateManifest) -> bool:
        return (
            self.kernel_sha256,
            self.rootfs_sha256,
            self.kernel_size,
            self.rootfs_size,
            self.kernel_args,
        ) == (
            other.kernel_sha256,
            other.rootfs_sha256,
            other.kernel_size,
            other.rootfs_size,
            other.kernel_args,
        )

    def info(self, lay: StoreLayout, used_by: list[str] | None = None) -> TemplateInfo:
        return TemplateInfo(
            name=self.name,
            kernel_path=str(lay.template_kernel(self.name)),
            rootfs_path=str(lay.template_rootfs(self.name)),
            kernel_size=self.kernel_size,
            rootfs_size=self.rootfs_size,
            kernel_sha256=self.kernel_sha256,
            rootfs_sha256=self.rootfs_sha256,
            kernel_args=self.kernel_args,
            created_at=self.created_at,
            source=self.source,
            used_by=list(used_by or []),
        )


class DriveRecord(msgspec.Struct, kw_only=True, frozen=True):
    """An extra drive of a VM: its own blank data drive, or a template's rootfs read-only."""

    name: str
    size_bytes: int
    template: str | None = None

    @property
    def read_only(self) -> bool:
        return self.template is not None

    def info(self, lay: StoreLayout, vm_id: str) -> DriveInfo:
        path = (
            lay.template_rootfs(self.template)
            if self.template is not None
            else lay.data_drive(vm_id, self.name)
        )
        return DriveInfo(
            name=self.name,
            path=str(path),
            size_bytes=self.size_bytes,
            read_only=self.read_only,
            template=self.template,
        )


class DiskManifest(msgspec.Struct, kw_only=True, frozen=True):
    vm_id: str
    template: str
    template_rootfs_sha256: str
    size_bytes: int
    method: Method
    resized: bool
    created_at: str
    format: int = 1
    drives: list[DriveRecord] = []
    snapshot: str | None = None
    """The snapshot this disk was restored from (it shares that snapshot's memory file)."""

    def info(self, lay: StoreLayout) -> DiskInfo:
        return DiskInfo(
            vm_id=self.vm_id,
            template=self.template,
            kernel_path=str(lay.template_kernel(self.template)),
            rootfs_path=str(lay.disk_rootfs(self.vm_id)),
            size_bytes=self.size_bytes,
            method=self.method,
            drives=[d.info(lay, self.vm_id) for d in self.drives],
            snapshot=self.snapshot,
        )


class SnapshotManifest(msgspec.Struct, kw_only=True, frozen=True):
    """``snapshot.json``: written last, by SnapshotCommit. Without it a snapshot is pending."""

    name: str
    vm_id: str
    template: str
    created_at: str
    state_size: int = 0
    memory_size: int = 0
    disk_size: int = 0
    ready: bool = True
    format: int = 1
    origin: SnapshotOrigin | None = None
    """What a restore needs (fcd-api's record, given at commit)."""
    written_bytes: int = 0
    """Bytes of memory Firecracker wrote (a diff: only the dirty pages)."""

    def info(self, lay: StoreLayout, used_by: list[str] | None = None) -> SnapshotInfo:
        return SnapshotInfo(
            name=self.name,
            vm_id=self.vm_id,
            template=self.template,
            state="ready" if self.ready else "pending",
            state_path=str(lay.snapshot_state(self.name)),
            memory_path=str(lay.snapshot_memory(self.name)),
            disk_path=str(lay.snapshot_disk(self.name)),
            state_size=self.state_size,
            memory_size=self.memory_size,
            disk_size=self.disk_size,
            created_at=self.created_at,
            used_by=list(used_by or []),
            origin=self.origin,
            written_bytes=self.written_bytes,
        )


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def encode(m: msgspec.Struct) -> bytes:
    return msgspec.json.format(msgspec.json.encode(m), indent=2) + b"\n"


def decode(data: bytes, typ: type[_T]) -> _T:
    return msgspec.json.decode(data, type=typ)


def load(path: Path, typ: type[_T]) -> _T | None:
    """The manifest at ``path``; None if absent. A corrupt one raises msgspec.DecodeError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return decode(data, typ)
