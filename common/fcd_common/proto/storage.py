"""fcd-api -> fcd-storage."""

from __future__ import annotations

from typing import Literal

from ..ids import Name, VmId
from ..rpc import Protocol, Reply, Request
from .common import MiB, Ping


class TemplateImport(Request, tag="storage.template_import", frozen=True):
    """Copy a kernel and a rootfs image into the template store.

    The source paths are read by fcd-storage with its own rights; they must be
    absolute paths to regular files. The store keeps its own copies.
    """

    name: Name
    kernel_path: str
    rootfs_path: str
    kernel_args: str = ""


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


class TemplateInfoList(Reply, frozen=True):
    items: list[TemplateInfo]


class Provision(Request, tag="storage.provision", frozen=True):
    """Make the VM's writable root disk from a template. Idempotent per vm_id."""

    vm_id: VmId
    template: Name
    disk_size_mib: MiB | None = None


class Release(Request, tag="storage.release", frozen=True):
    """Delete the VM's disks. Idempotent."""

    vm_id: VmId


class DiskGet(Request, tag="storage.disk_get", frozen=True):
    vm_id: VmId


class DiskList(Request, tag="storage.disk_list", frozen=True):
    pass


class DiskInfo(Reply, frozen=True):
    vm_id: str
    template: str
    kernel_path: str
    rootfs_path: str
    size_bytes: int
    method: Literal["reflink", "copy"]


class DiskInfoList(Reply, frozen=True):
    items: list[DiskInfo]


PROTOCOL = Protocol(
    "fcd-storage",
    [Ping, TemplateImport, TemplateGet, TemplateList, Provision, Release, DiskGet, DiskList],
)
