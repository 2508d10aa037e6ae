"""Public API bodies for templates, drives, snapshots and storage reclaim."""

from __future__ import annotations

from typing import Annotated

import msgspec

from fcd_common.ids import Name

from .models import KernelArgs

__all__ = [
    "ReclaimResult",
    "TemplateBuildRequest",
    "TemplateImportRequest",
]

Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
SourcePath = Annotated[str, msgspec.Meta(pattern=r"^/", max_length=4096)]
"""Read by fcd-storage with its own rights; it checks them again (absolute, normalized)."""


class _Body(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pass


class TemplateImportRequest(_Body, kw_only=True, frozen=True):
    """``POST /v1/templates``: copy a kernel and a rootfs image into the store."""

    name: Name
    kernel_path: SourcePath
    rootfs_path: SourcePath
    kernel_args: KernelArgs = ""
    kernel_sha256: Sha256 | None = None
    rootfs_sha256: Sha256 | None = None


class TemplateBuildRequest(_Body, kw_only=True, frozen=True):
    """``POST /v1/templates/build``: an ext4 rootfs made from a directory tree."""

    name: Name
    kernel_path: SourcePath
    source_dir: SourcePath
    size_mib: Annotated[int, msgspec.Meta(ge=1)] | None = None
    kernel_args: KernelArgs = ""
    kernel_sha256: Sha256 | None = None


class ReclaimResult(_Body, kw_only=True, frozen=True):
    removed: list[str]
    live_vms: int
