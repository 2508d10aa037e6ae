"""Extra drives of a VM, made inside the disk's staging directory.

A data drive is a sparse file of the asked size holding a fresh ext4
filesystem; it lives next to the root disk (``drive-<name>.ext4``) and is
released with it. A shared drive is a template's rootfs, attached read-only:
nothing is written for it, only a record in the disk manifest (which also
keeps the template from being deleted while the VM exists).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fcd_common.storelayout import DRIVE_PREFIX, DRIVE_SUFFIX

from . import extfs, fileio
from .manifest import DriveRecord
from .plan import DrivePlan

DRIVE_FILE_MODE = 0o660  # like the root disk: fcd-vmm chowns its link to the jail uid


def drive_file(disk_dir: Path, name: str) -> Path:
    return disk_dir / f"{DRIVE_PREFIX}{name}{DRIVE_SUFFIX}"


def make_drives(staging: Path, plans: Sequence[DrivePlan]) -> list[DriveRecord]:
    """Create the blank data drives in ``staging``; return the records for the manifest."""
    records = []
    for d in plans:
        if d.template is None:
            path = drive_file(staging, d.name)
            fd = fileio.create_file(path, DRIVE_FILE_MODE)
            try:
                os.ftruncate(fd, d.size_bytes)
            finally:
                os.close(fd)
            extfs.make_blank(path, d.name)
            fd = fileio.open_store_file(path)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        records.append(DriveRecord(name=d.name, size_bytes=d.size_bytes, template=d.template))
    return records
