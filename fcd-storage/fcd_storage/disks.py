"""Per-VM disks: the root disk (a clone of a template's rootfs or of a snapshot's
disk, grown to the asked size) and the extra drives, provisioned and released.

The clone is a reflink where the filesystem can, else a sparse copy; the space
check (data drives included) comes before the first byte is written. Like every
entry, a disk is built in a staging directory, manifest last, and renamed into
place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from fcd_common import logs
from fcd_common.atomicfile import fsync_dir
from fcd_common.errors import Conflict, Internal, InvalidArgument
from fcd_common.ids import check_vm_id
from fcd_common.proto.storage import DriveSpec
from fcd_common.storelayout import DISK_MANIFEST, DISK_ROOTFS

from . import drives as drives_mod
from . import extfs, fileio, plan, snapshots
from .fileio import owned_fd
from .manifest import MANIFEST_MODE, DiskManifest, Method, encode, now_rfc3339
from .store import Store

log = logging.getLogger("fcd.storage")

DISK_FILE_MODE = 0o660  # fcd-vmm chowns its hard link's inode to the jail uid
DISK_DIR_MODE = 0o750


def provision(
    store: Store,
    vm_id: str,
    template: str,
    disk_size_mib: int | None = None,
    drives: Sequence[DriveSpec] = (),
    *,
    snapshot: str | None = None,
) -> DiskManifest:
    """The VM's root disk (from the template, or from ``snapshot``'s disk) and drives."""
    lay = store.layout
    check_vm_id(vm_id)
    tm = store.template(template)
    base_size, base_path = tm.rootfs_size, lay.template_rootfs(template)
    if snapshot is not None:
        sm = snapshots.require_ready(store, snapshot)
        if sm.template != template:
            raise InvalidArgument(
                f"snapshot {snapshot!r} was taken from template {sm.template!r}",
                details={"field": "template", "snapshot_template": sm.template},
            )
        base_size, base_path = sm.disk_size, lay.snapshot_disk(snapshot)
    size = plan.disk_size(base_size, disk_size_mib, store.max_disk_mib)
    sizes = {t: store.template(t).rootfs_size for t in {d.template for d in drives} if t}
    extra = plan.plan_drives(drives, sizes, store.max_drives)
    plan.check_quota(size, extra, store.max_vm_disk_mib)
    existing = plan.existing_disk(store.disk_manifest(vm_id), vm_id, template, size)
    if existing is not None:
        if not plan.same_drives(existing, extra) or existing.snapshot != snapshot:
            raise Conflict(
                f"vm {vm_id!r} already has disks with other drives or another snapshot",
                details={"field": "drives"},
            )
        return existing
    final = lay.disk_dir(vm_id)
    fileio.remove_tree(final)  # no manifest: a leftover, never handed out
    with owned_fd(fileio.open_store_file(base_path)) as src:
        if os.fstat(src).st_size != base_size:
            raise Internal(f"{base_path} does not match its manifest")
        staging = fileio.make_staging(lay.tmp, f"disk-{vm_id}-")
        try:
            blank = sum(d.size_bytes for d in extra if d.template is None)
            method = _clone(
                store, src, staging / DISK_ROOTFS, base_size, size, vm_id=vm_id, blank=blank
            )
            resized = size > base_size and _grow_if_extfs(staging / DISK_ROOTFS)
            records = drives_mod.make_drives(staging, extra)
            new = DiskManifest(
                vm_id=vm_id,
                template=template,
                template_rootfs_sha256=tm.rootfs_sha256,
                size_bytes=size,
                method=method,
                resized=resized,
                created_at=now_rfc3339(),
                drives=records,
                snapshot=snapshot,
            )
            fileio.write_file(staging / DISK_MANIFEST, encode(new), MANIFEST_MODE)
            os.chmod(staging, DISK_DIR_MODE)
            store.adopt(staging)
            fsync_dir(staging)
            if not fileio.publish_dir(staging, final):
                raise Conflict(f"vm {vm_id!r} disk is being provisioned concurrently")
        finally:
            fileio.remove_tree(staging)
    log.info(
        "provisioned disk from %s (%s, %d bytes)", template, method, size, extra=logs.vm(vm_id)
    )
    return new


def release(store: Store, vm_id: str) -> bool:
    """Delete the VM's disk directory; False if there was none."""
    if not store.remove_entry(store.layout.disk_dir(check_vm_id(vm_id)), f"rel-{vm_id}-"):
        return False
    log.info("released disk", extra=logs.vm(vm_id))
    return True


def _clone(
    store: Store,
    src: int,
    dst_path: Path,
    base_size: int,
    size: int,
    *,
    vm_id: str,
    blank: int = 0,
) -> Method:
    """Reflink (else sparse-copy) ``src``; the space check (data drives included) comes
    before the first byte is written."""
    free = fileio.free_bytes(store.layout.tmp)
    what = f"the disks of vm {vm_id!r}"
    alloc = fileio.allocated(src)
    need = plan.space_needed(base_size, alloc, size, "reflink") + blank
    plan.check_space(free, need, what)
    with owned_fd(fileio.create_file(dst_path, DISK_FILE_MODE)) as dst:
        method: Method = "reflink"
        if not fileio.reflink(src, dst):
            method = "copy"
            need = plan.space_needed(base_size, alloc, size, "copy") + blank
            plan.check_space(free, need, what)
            fileio.copy_sparse(src, dst)
        if size > base_size:
            os.ftruncate(dst, size)
        os.fsync(dst)
    return method


def _grow_if_extfs(image: Path) -> bool:
    with owned_fd(fileio.open_store_file(image)) as fd:
        header = fileio.read_header(fd)
    if not extfs.is_extfs(header):
        return False
    extfs.grow(image)
    return True
