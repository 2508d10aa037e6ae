"""Pure decisions of the store: sizes, space, idempotency. No file I/O here."""

from __future__ import annotations

import os

from fcd_common.errors import Conflict, InvalidArgument, ResourceExhausted

from .manifest import DiskManifest, Method, TemplateManifest

MiB = 1 << 20
RESERVE_BYTES = 64 * MiB
"""Free space left over after any write, so the store never fills its filesystem to the brim."""


def check_source_path(path: str, field: str) -> str:
    """A source file for an import: absolute and normalized (no ``..``, no ``//``)."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise InvalidArgument(
            f"{field} must be an absolute path, got {path!r}", details={"field": field}
        )
    if os.path.normpath(path) != path:
        raise InvalidArgument(
            f"{field} must be a normalized path (no '..', '.', '//'), got {path!r}",
            details={"field": field},
        )
    return path


def decide_import(existing: TemplateManifest | None, new: TemplateManifest) -> bool:
    """True if ``new`` must be published; False if an identical template exists.

    A template with the same name and other content (or kernel args) is a Conflict:
    templates are immutable, disks already made from one must keep meaning the same.
    """
    if existing is None:
        return True
    if existing.same_content(new):
        return False
    raise Conflict(
        f"template {new.name!r} already exists with different content",
        details={"field": "name", "existing_rootfs_sha256": existing.rootfs_sha256},
    )


def disk_size(image_size: int, disk_size_mib: int | None, max_disk_mib: int) -> int:
    """Size in bytes of a VM disk made from an image of ``image_size`` bytes."""
    if disk_size_mib is None:
        return image_size
    if disk_size_mib > max_disk_mib:
        raise InvalidArgument(
            f"disk_size_mib {disk_size_mib} exceeds the limit of {max_disk_mib}",
            details={"field": "disk_size_mib"},
        )
    size = disk_size_mib * MiB
    if size < image_size:
        need = -(-image_size // MiB)
        raise InvalidArgument(
            f"disk_size_mib {disk_size_mib} is smaller than the template image ({need} MiB)",
            details={"field": "disk_size_mib", "min": need},
        )
    return size


def existing_disk(
    existing: DiskManifest | None, vm_id: str, template: str, size_bytes: int
) -> DiskManifest | None:
    """Idempotency of Provision: the existing disk if it matches, None if there is none."""
    if existing is None:
        return None
    if existing.template != template:
        raise Conflict(
            f"vm {vm_id!r} already has a disk from template {existing.template!r}",
            details={"field": "template", "existing": existing.template},
        )
    if existing.size_bytes != size_bytes:
        raise Conflict(
            f"vm {vm_id!r} already has a disk of {existing.size_bytes} bytes, "
            f"asked for {size_bytes}",
            details={"field": "disk_size_mib", "existing_bytes": existing.size_bytes},
        )
    return existing


def space_needed(image_size: int, image_allocated: int, size_bytes: int, method: Method) -> int:
    """Bytes a new disk may take: its data (none for a reflink) plus growth, plus a reserve.

    The growth counts in full: a guest may fill its disk, and a store that cannot
    hold the disks it promised fails writes inside guests later, far from the cause.
    """
    copied = image_allocated if method == "copy" else 0
    growth = max(0, size_bytes - image_size)
    return copied + growth + RESERVE_BYTES


def check_space(free: int, needed: int, what: str) -> None:
    if needed > free:
        raise ResourceExhausted(
            f"not enough space in the store for {what}: need {needed // MiB} MiB, "
            f"{free // MiB} MiB free",
            details={"needed_bytes": needed, "free_bytes": free},
        )


MAX_KERNEL_ARGS = 1024
"""The same bound fcd-vmm applies at launch, so a template never imports what cannot boot."""


def check_kernel_args(args: str) -> str:
    """Printable ASCII, at most MAX_KERNEL_ARGS characters (fcd-vmm's rule for boot_args)."""
    if len(args) > MAX_KERNEL_ARGS or not all(" " <= c <= "~" for c in args):
        raise InvalidArgument(
            f"kernel_args must be printable ASCII of at most {MAX_KERNEL_ARGS} characters",
            details={"field": "kernel_args"},
        )
    return args
