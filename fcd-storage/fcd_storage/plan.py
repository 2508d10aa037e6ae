"""Pure decisions of the store: sizes, space, idempotency. No file I/O here."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from fcd_common.errors import Conflict, InvalidArgument, ResourceExhausted
from fcd_common.proto.storage import DriveSpec
from fcd_common.storelayout import check_drive_name

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


def check_sha256(expected: str | None, actual: str, field: str) -> None:
    """The copy must hash to what the caller said it would (when they said anything)."""
    if expected is not None and expected != actual:
        raise InvalidArgument(
            f"{field} mismatch: expected {expected}, the file hashes to {actual}",
            details={"field": field, "expected": expected, "actual": actual},
        )


# --- extra drives and the per-VM quota ---------------------------------------------------


class DrivePlan(NamedTuple):
    name: str
    size_bytes: int
    template: str | None
    """A shared read-only drive (that template's rootfs); None for a blank data drive."""


def plan_drives(
    specs: Sequence[DriveSpec], template_sizes: dict[str, int], max_drives: int
) -> list[DrivePlan]:
    """Validate the extra drives: unique names, exactly one of size_mib/template, a bound."""
    if len(specs) > max_drives:
        raise InvalidArgument(
            f"{len(specs)} drives asked for, at most {max_drives} allowed",
            details={"field": "drives", "max": max_drives},
        )
    out: list[DrivePlan] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        field = f"drives[{i}]"
        check_drive_name(spec.name, f"{field}.name")
        if spec.name in seen:
            raise InvalidArgument(
                f"drive name {spec.name!r} is used twice", details={"field": f"{field}.name"}
            )
        seen.add(spec.name)
        if (spec.size_mib is None) == (spec.template is None):
            raise InvalidArgument(
                f"{field}: give either size_mib (a blank data drive) or template "
                "(a shared read-only drive)",
                details={"field": field},
            )
        if spec.template is not None:
            out.append(DrivePlan(spec.name, template_sizes[spec.template], spec.template))
        else:
            assert spec.size_mib is not None
            if spec.size_mib < MIN_DATA_DRIVE_MIB:
                raise InvalidArgument(
                    f"{field}.size_mib must be at least {MIN_DATA_DRIVE_MIB}",
                    details={"field": f"{field}.size_mib", "min": MIN_DATA_DRIVE_MIB},
                )
            out.append(DrivePlan(spec.name, spec.size_mib * MiB, None))
    return out


MIN_DATA_DRIVE_MIB = 8
"""mkfs.ext4 needs room for its journal and metadata."""


def check_quota(root_bytes: int, drives: Sequence[DrivePlan], quota_mib: int) -> int:
    """Root disk plus own data drives must fit the per-VM quota; returns that total."""
    total = root_bytes + sum(d.size_bytes for d in drives if d.template is None)
    if total > quota_mib * MiB:
        raise ResourceExhausted(
            f"the VM's disks need {-(-total // MiB)} MiB, over the per-VM quota of {quota_mib} MiB",
            details={"field": "drives", "needed_mib": -(-total // MiB), "quota_mib": quota_mib},
        )
    return total


def same_drives(existing: DiskManifest, drives: Sequence[DrivePlan]) -> bool:
    return [(d.name, d.size_bytes, d.template) for d in existing.drives] == [
        (d.name, d.size_bytes, d.template) for d in drives
    ]


# --- images built from a directory tree ---------------------------------------------------

BLOCK = 4096
MIN_BUILD_MIB = 16
BUILD_HEADROOM = 0.25
BUILD_EXTRA_BYTES = 16 * MiB


class TreeSize(NamedTuple):
    bytes: int
    """Data rounded up to whole blocks, plus one block per directory entry."""
    entries: int


def build_geometry(tree: TreeSize, size_mib: int | None, max_mib: int) -> tuple[int, int]:
    """``(image bytes, inode count)`` for ``mkfs.ext4 -d`` of a tree.

    Without ``size_mib`` the image is the tree plus 25 % and 16 MiB (journal,
    metadata, room to boot), at least 16 MiB, rounded up to a MiB. Inodes: twice
    the entries, at least 1024, so a tree of many small files does not run out.
    """
    if size_mib is None:
        want = int(tree.bytes * (1 + BUILD_HEADROOM)) + BUILD_EXTRA_BYTES
        size = max(MIN_BUILD_MIB * MiB, -(-want // MiB) * MiB)
    else:
        size = size_mib * MiB
        if size < MIN_BUILD_MIB * MiB:
            raise InvalidArgument(
                f"size_mib must be at least {MIN_BUILD_MIB}",
                details={"field": "size_mib", "min": MIN_BUILD_MIB},
            )
        if size < tree.bytes:
            raise InvalidArgument(
                f"size_mib {size_mib} is smaller than the tree ({-(-tree.bytes // MiB)} MiB)",
                details={"field": "size_mib", "min": -(-tree.bytes // MiB)},
            )
    if size > max_mib * MiB:
        raise InvalidArgument(
            f"the image would be {size // MiB} MiB, over the limit of {max_mib} MiB",
            details={"field": "size_mib", "max": max_mib},
        )
    inodes = max(1024, 2 * tree.entries)
    return size, inodes


# --- reclaim ------------------------------------------------------------------------------


def disks_to_reclaim(disks: Iterable[DiskManifest], live: Collection[str], as_of: str) -> list[str]:
    """VM ids whose disks no live VM owns; disks made at/after ``as_of`` are spared
    (their create started after the caller listed its VMs)."""
    cutoff = parse_time(as_of)
    return sorted(
        d.vm_id
        for d in disks
        if d.vm_id not in live and parse_time(d.created_at) < cutoff - RECLAIM_SLACK
    )


RECLAIM_SLACK = timedelta(seconds=2)
"""Manifests keep whole seconds; clocks of two daemons on one host agree well within this."""


def parse_time(ts: str) -> datetime:
    try:
        t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{ts!r} is not an RFC 3339 time", details={"field": "as_of"}
        ) from None
    if t.tzinfo is None:
        raise InvalidArgument(f"{ts!r} has no time zone", details={"field": "as_of"})
    return t
