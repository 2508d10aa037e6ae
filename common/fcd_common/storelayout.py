"""Where the store keeps things: pure path rules shared by fcd-storage and fcd-vmm.

    <state>/storage/templates/<name>/vmlinux, rootfs.ext4, manifest.json
    <state>/storage/disks/<vm_id>/rootfs.ext4, disk.json
    <state>/storage/disks/<vm_id>/drive-<drive>.ext4    extra data drives of the VM
    <state>/storage/disks/<vm_id>/suspend.{vmstate,memory}[.pending]  a suspended VM's files
    <state>/storage/snapshots/<name>/vmstate, memory, rootfs.ext4, snapshot.json
    <state>/storage/tmp/            staging (same filesystem, so rename is atomic)

Every path is derived from a validated name or VM id; a path that came in a
request is never used as a destination. The ``is_*`` helpers are lexical (no
filesystem access) so fcd-vmm can check the paths it is handed before it
links them into a jail; it must still open them with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fcd_common.config import Config
from fcd_common.errors import InvalidArgument
from fcd_common.ids import check_name, check_vm_id, is_vm_id
from fcd_common.types import DRIVE_NAME_PATTERN

__all__ = [
    "DISK_MANIFEST",
    "DISK_ROOTFS",
    "KERNEL",
    "ROOTFS",
    "SNAPSHOT_MANIFEST",
    "SNAPSHOT_PENDING",
    "SUSPEND_MEMORY",
    "SUSPEND_STATE",
    "TEMPLATE_MANIFEST",
    "StoreLayout",
    "check_drive_name",
    "is_drive_name",
    "is_inside_store",
    "is_template_kernel",
    "is_template_rootfs",
    "is_vm_data_drive",
    "is_vm_disk",
    "layout",
]

KERNEL = "vmlinux"
ROOTFS = "rootfs.ext4"
TEMPLATE_MANIFEST = "manifest.json"
DISK_ROOTFS = "rootfs.ext4"
DISK_MANIFEST = "disk.json"
DRIVE_PREFIX = "drive-"
DRIVE_SUFFIX = ".ext4"
SNAPSHOT_STATE = "vmstate"
SNAPSHOT_MEMORY = "memory"
SNAPSHOT_DISK = "rootfs.ext4"
SNAPSHOT_MANIFEST = "snapshot.json"
SUSPEND_STATE = "suspend.vmstate"
SUSPEND_MEMORY = "suspend.memory"
PENDING_SUFFIX = ".pending"
"""Suspend files being written; renamed over the committed names once handed back."""
SNAPSHOT_PENDING = "pending.json"  # a snapshot between prepare and commit

# Extra drive names (types.DRIVE_NAME_PATTERN) double as Firecracker drive ids
# (``[A-Za-z0-9_]+``); ``rootfs`` is the root drive's.
_DRIVE_NAME_RE = re.compile(DRIVE_NAME_PATTERN)
RESERVED_DRIVE_NAMES = frozenset({"rootfs"})


def is_drive_name(value: str) -> bool:
    return bool(_DRIVE_NAME_RE.fullmatch(value)) and value not in RESERVED_DRIVE_NAMES


def check_drive_name(value: str, field: str = "drives.name") -> str:
    if not isinstance(value, str) or not is_drive_name(value):
        raise InvalidArgument(
            f"invalid drive name {value!r}: 1-32 of [a-z0-9_] starting with a letter, not 'rootfs'",
            details={"field": field},
        )
    return value


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """All store paths, derived from the store root (``cfg.state("storage")``)."""

    root: Path
    # the four top directories, joined once (a Path join costs microseconds, and a
    # create+delete asked for them dozens of times)
    templates: Path = field(init=False, repr=False, compare=False)
    disks: Path = field(init=False, repr=False, compare=False)
    snapshots: Path = field(init=False, repr=False, compare=False)
    tmp: Path = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.root.is_absolute():
            raise ValueError(f"store root must be absolute, got {self.root}")
        for name in ("templates", "disks", "snapshots", "tmp"):
            object.__setattr__(self, name, self.root / name)

    def template_dir(self, name: str) -> Path:
        return self.templates / check_name(name, "template")

    def template_kernel(self, name: str) -> Path:
        return self.template_dir(name) / KERNEL

    def template_rootfs(self, name: str) -> Path:
        return self.template_dir(name) / ROOTFS

    def template_manifest(self, name: str) -> Path:
        return self.template_dir(name) / TEMPLATE_MANIFEST

    def disk_dir(self, vm_id: str) -> Path:
        return self.disks / check_vm_id(vm_id)

    def disk_rootfs(self, vm_id: str) -> Path:
        return self.disk_dir(vm_id) / DISK_ROOTFS

    def disk_manifest(self, vm_id: str) -> Path:
        return self.disk_dir(vm_id) / DISK_MANIFEST

    def suspend_state(self, vm_id: str, *, pending: bool = False) -> Path:
        """A suspended VM's state file, in its own disk directory (released with it)."""
        return self.disk_dir(vm_id) / (SUSPEND_STATE + (PENDING_SUFFIX if pending else ""))

    def suspend_memory(self, vm_id: str, *, pending: bool = False) -> Path:
        return self.disk_dir(vm_id) / (SUSPEND_MEMORY + (PENDING_SUFFIX if pending else ""))

    def data_drive(self, vm_id: str, drive: str) -> Path:
        return self.disk_dir(vm_id) / f"{DRIVE_PREFIX}{check_drive_name(drive)}{DRIVE_SUFFIX}"

    def snapshot_dir(self, name: str) -> Path:
        return self.snapshots / check_name(name, "snapshot")

    def snapshot_state(self, name: str) -> Path:
        return self.snapshot_dir(name) / SNAPSHOT_STATE

    def snapshot_memory(self, name: str) -> Path:
        return self.snapshot_dir(name) / SNAPSHOT_MEMORY

    def snapshot_disk(self, name: str) -> Path:
        return self.snapshot_dir(name) / SNAPSHOT_DISK

    # -- lexical checks -------------------------------------------------------

    def contains(self, path: str | os.PathLike[str]) -> bool:
        """True if ``path`` is absolute, normalized and strictly below the root."""
        p = os.fspath(path)
        if not p.startswith("/") or os.path.normpath(p) != p or "\0" in p:
            return False
        root = os.fspath(self.root)
        return p.startswith(root.rstrip("/") + "/")

    def template_of_kernel(self, path: str | os.PathLike[str]) -> str | None:
        """The template name if ``path`` is exactly some template's kernel, else None."""
        return self._name_of(path, self.templates, KERNEL)

    def template_of_rootfs(self, path: str | os.PathLike[str]) -> str | None:
        return self._name_of(path, self.templates, ROOTFS)

    def drive_of(self, vm_id: str, path: str | os.PathLike[str]) -> str | None:
        """The drive name if ``path`` is exactly one of ``vm_id``'s data drives, else None."""
        if not is_vm_id(vm_id) or not self.contains(path):
            return None
        p = Path(path)
        if p.parent != self.disk_dir(vm_id):
            return None
        leaf = p.name
        if not (leaf.startswith(DRIVE_PREFIX) and leaf.endswith(DRIVE_SUFFIX)):
            return None
        name = leaf[len(DRIVE_PREFIX) : -len(DRIVE_SUFFIX)]
        return name if is_drive_name(name) else None

    def _name_of(self, path: str | os.PathLike[str], parent: Path, leaf: str) -> str | None:
        if not self.contains(path):
            return None
        p = Path(path)
        if p.name != leaf or p.parent.parent != parent:
            return None
        name = p.parent.name
        try:
            return check_name(name)
        except InvalidArgument:
            return None


def layout(cfg: Config) -> StoreLayout:
    return _layout_at(cfg.state("storage"))


@functools.lru_cache(maxsize=16)
def _layout_at(root: Path) -> StoreLayout:
    return StoreLayout(root)


def is_inside_store(cfg: Config, path: str | os.PathLike[str]) -> bool:
    """Lexically inside ``<state>/storage`` (absolute, normalized, no ``..``)."""
    return layout(cfg).contains(path)


def is_template_kernel(cfg: Config, path: str | os.PathLike[str]) -> bool:
    """``path`` is ``<state>/storage/templates/<valid name>/vmlinux``."""
    return layout(cfg).template_of_kernel(path) is not None


def is_template_rootfs(cfg: Config, path: str | os.PathLike[str]) -> bool:
    return layout(cfg).template_of_rootfs(path) is not None


def is_vm_data_drive(cfg: Config, vm_id: str, path: str | os.PathLike[str]) -> bool:
    """``path`` is exactly ``<state>/storage/disks/<vm_id>/drive-<valid name>.ext4``."""
    return layout(cfg).drive_of(vm_id, path) is not None


def is_vm_disk(cfg: Config, vm_id: str, path: str | os.PathLike[str]) -> bool:
    """``path`` is exactly the root disk fcd-storage provisions for ``vm_id``."""
    if not is_vm_id(vm_id):
        return False
    return os.fspath(path) == os.fspath(layout(cfg).disk_rootfs(vm_id))
