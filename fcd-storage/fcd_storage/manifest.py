"""On-disk manifests: the last file written, so their presence marks a complete entry.

Manifests never store paths: paths are always derived from the layout, so an
edited manifest cannot point fcd-vmm anywhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from fcd_common.proto.storage import DiskInfo, TemplateInfo
from fcd_common.storelayout import StoreLayout

Method = Literal["reflink", "copy"]
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

    def info(self, lay: StoreLayout) -> TemplateInfo:
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

    def info(self, lay: StoreLayout) -> DiskInfo:
        return DiskInfo(
            vm_id=self.vm_id,
            template=self.template,
            kernel_path=str(lay.template_kernel(self.template)),
            rootfs_path=str(lay.disk_rootfs(self.vm_id)),
            size_bytes=self.size_bytes,
            method=self.method,
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
