"""The store: templates and per-VM disks on the filesystem (synchronous, thread-safe per key).

Each operation validates its names, asks ``plan`` what to do, and does it
with ``fileio``: build everything in a staging directory under ``tmp/``,
manifest last, then rename the directory into place. A failure at any point
removes the staging directory, so nothing half-made is ever visible; a crash
leaves only ``tmp/`` entries, which :meth:`Store.reclaim` removes at start.

Callers serialize operations on the same template name or VM id.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec

from fcd_common import logs
from fcd_common.atomicfile import fsync_dir
from fcd_common.config import Config
from fcd_common.errors import Conflict, Internal, InvalidArgument, NotFound
from fcd_common.ids import check_name, check_vm_id, is_vm_id
from fcd_common.proto.storage import DriveSpec
from fcd_common.storelayout import (
    DISK_MANIFEST,
    DISK_ROOTFS,
    KERNEL,
    ROOTFS,
    SNAPSHOT_MANIFEST,
    TEMPLATE_MANIFEST,
    StoreLayout,
)
from fcd_common.storelayout import layout as layout_of

from . import drives as drives_mod
from . import extfs, fileio, plan, snapshots
from .manifest import DiskManifest, Method, TemplateManifest, encode, load, now_rfc3339

log = logging.getLogger("fcd.storage")
_T = TypeVar("_T", bound=msgspec.Struct)

TEMPLATE_FILE_MODE = 0o644  # a jailed Firecracker (any pool uid) reads it through a hard link
DISK_FILE_MODE = 0o660  # fcd-vmm chowns its hard link's inode to the jail uid
MANIFEST_MODE = 0o644
TEMPLATE_DIR_MODE = 0o755
DISK_DIR_MODE = 0o750
TMP_DIR_MODE = 0o700


class Store:
    def __init__(
        self,
        lay: StoreLayout,
        *,
        max_disk_mib: int,
        max_vm_disk_mib: int = 2_097_152,
        max_drives: int = 8,
    ) -> None:
        self.layout = lay
        self.max_disk_mib = max_disk_mib
        self.max_vm_disk_mib = max_vm_disk_mib
        self.max_drives = max_drives

    @classmethod
    def from_config(cls, cfg: Config) -> Store:
        lim = cfg.limits
        return cls(
            layout_of(cfg),
            max_disk_mib=lim.max_disk_mib,
            max_vm_disk_mib=lim.max_vm_disk_mib,
            max_drives=lim.max_drives,
        )

    # -- start-up ---------------------------------------------------------------

    def ensure_dirs(self) -> None:
        lay = self.layout
        lay.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        dirs = (
            (lay.templates, 0o755),
            (lay.disks, 0o750),
            (lay.snapshots, 0o755),
            (lay.tmp, TMP_DIR_MODE),
        )
        for d, mode in dirs:
            d.mkdir(exist_ok=True, mode=mode)
            os.chmod(d, mode)

    def reclaim(self, *, keep_pending: bool = False) -> list[Path]:
        """Remove staging leftovers and entries without a manifest; return what was removed.

        At start nothing is in flight, so pending snapshots go too; on request
        (``keep_pending``, with every other operation excluded by the caller)
        they stay, and :mod:`fcd_storage.reclaim` decides about them by VM.
        """
        lay = self.layout
        removed: list[Path] = []
        for entry in _entries(lay.tmp):
            fileio.remove_tree(entry)
            removed.append(entry)
        complete = (
            (lay.templates, TEMPLATE_MANIFEST),
            (lay.disks, DISK_MANIFEST),
            (lay.snapshots, SNAPSHOT_MANIFEST),  # a pending snapshot dies with the daemon
        )
        for parent, manifest in complete:
            for entry in _entries(parent):
                if entry.is_symlink() or not entry.is_dir():
                    partial = True
                else:
                    partial = not (entry / manifest).is_file()
                    if keep_pending and parent == lay.snapshots:
                        partial = partial and not (entry / snapshots.PENDING).is_file()
                if partial:
                    fileio.remove_tree(entry)
                    removed.append(entry)
        for path in removed:
            log.info("reclaimed partial entry %s", path)
        return removed

    def counts(self) -> tuple[int, int]:
        t = sum(1 for e in _entries(self.layout.templates) if (e / TEMPLATE_MANIFEST).is_file())
        d = sum(1 for e in _entries(self.layout.disks) if (e / DISK_MANIFEST).is_file())
        return t, d

    # -- templates --------------------------------------------------------------

    def template(self, name: str) -> TemplateManifest:
        m = self._template_manifest(check_name(name, "template"))
        if m is None:
            raise NotFound(f"template {name!r} not found", details={"field": "template"})
        return m

    def templates(self) -> list[TemplateManifest]:
        out = []
        for entry in _entries(self.layout.templates):
            with contextlib.suppress(NotFound, Internal):
                out.append(self.template(entry.name))
        return sorted(out, key=lambda m: m.name)

    def import_template(
        self,
        name: str,
        kernel_path: str,
        rootfs_path: str,
        kernel_args: str = "",
        *,
        kernel_sha256: str | None = None,
        rootfs_sha256: str | None = None,
    ) -> TemplateManifest:
        """Copy a kernel and a rootfs in, hashing as they are copied; with the expected
        sha256 values given, a mismatch fails the import and leaves nothing."""
        lay = self.layout
        check_name(name, "name")
        plan.check_source_path(kernel_path, "kernel_path")
        plan.check_source_path(rootfs_path, "rootfs_path")
        plan.check_kernel_args(kernel_args)
        existing = self._template_manifest(name)
        with (
            _fds(fileio.open_source(kernel_path, "kernel_path")) as kfd,
            _fds(fileio.open_source(rootfs_path, "rootfs_path")) as rfd,
        ):
            if existing is not None:  # decide from the hashes alone, without copying
                kernel = fileio.copy_hashed(kfd, None)
                rootfs = fileio.copy_hashed(rfd, None)
                plan.check_sha256(kernel_sha256, kernel[1], "kernel_sha256")
                plan.check_sha256(rootfs_sha256, rootfs[1], "rootfs_sha256")
                new = _template(name, kernel, rootfs, kernel_args)
                plan.decide_import(existing, new)  # raises Conflict if different
                return existing
            needed = fileio.allocated(kfd) + fileio.allocated(rfd) + plan.RESERVE_BYTES
            plan.check_space(fileio.free_bytes(lay.tmp), needed, f"template {name!r}")
            staging = fileio.make_staging(lay.tmp, f"tpl-{name}-")
            try:
                kernel = _copy_into(kfd, staging / KERNEL, TEMPLATE_FILE_MODE)
                rootfs = _copy_into(rfd, staging / ROOTFS, TEMPLATE_FILE_MODE)
                plan.check_sha256(kernel_sha256, kernel[1], "kernel_sha256")
                plan.check_sha256(rootfs_sha256, rootfs[1], "rootfs_sha256")
                new = _template(name, kernel, rootfs, kernel_args)
                fileio.write_file(staging / TEMPLATE_MANIFEST, encode(new), MANIFEST_MODE)
                os.chmod(staging, TEMPLATE_DIR_MODE)
                self._adopt(staging)
                fsync_dir(staging)
                final = lay.template_dir(name)
                if not fileio.publish_dir(staging, final):
                    raced = self._template_manifest(name)
                    if raced is None:  # a directory without manifest: not a template
                        fileio.remove_tree(final)
                        if fileio.publish_dir(staging, final):
                            return new
                        raise Conflict(f"template {name!r} is being imported concurrently")
                    plan.decide_import(raced, new)
                    return raced
            finally:
                fileio.remove_tree(staging)
        log.info("imported template %s (rootfs %d bytes, sha256 %s)", name, *rootfs)
        return new

    # -- disks ------------------------------------------------------------------

    def disk(self, vm_id: str) -> DiskManifest:
        m = self._disk_manifest(check_vm_id(vm_id))
        if m is None:
            raise NotFound(f"no disk for vm {vm_id!r}", details={"field": "vm_id"})
        return m

    def disks(self) -> list[DiskManifest]:
        out = []
        for entry in _entries(self.layout.disks):
            if is_vm_id(entry.name):
                with contextlib.suppress(NotFound, Internal):
                    out.append(self.disk(entry.name))
        return sorted(out, key=lambda m: m.vm_id)

    def provision(
        self,
        vm_id: str,
        template: str,
        disk_size_mib: int | None = None,
        drives: Sequence[DriveSpec] = (),
        snapshot: str | None = None,
    ) -> DiskManifest:
        """The VM's root disk (from the template, or from ``snapshot``'s disk) and drives."""
        lay = self.layout
        check_vm_id(vm_id)
        tm = self.template(template)
        base_size, base_path = tm.rootfs_size, lay.template_rootfs(template)
        if snapshot is not None:
            sm = snapshots.require_ready(self, snapshot)
            if sm.template != template:
                raise InvalidArgument(
                    f"snapshot {snapshot!r} was taken from template {sm.template!r}",
                    details={"field": "template", "snapshot_template": sm.template},
                )
            base_size, base_path = sm.disk_size, lay.snapshot_disk(snapshot)
        size = plan.disk_size(base_size, disk_size_mib, self.max_disk_mib)
        sizes = {t: self.template(t).rootfs_size for t in {d.template for d in drives} if t}
        extra = plan.plan_drives(drives, sizes, self.max_drives)
        plan.check_quota(size, extra, self.max_vm_disk_mib)
        existing = plan.existing_disk(self._disk_manifest(vm_id), vm_id, template, size)
        if existing is not None:
            if not plan.same_drives(existing, extra) or existing.snapshot != snapshot:
                raise Conflict(
                    f"vm {vm_id!r} already has disks with other drives or another snapshot",
                    details={"field": "drives"},
                )
            return existing
        final = lay.disk_dir(vm_id)
        fileio.remove_tree(final)  # no manifest: a leftover, never handed out
        with _fds(fileio.open_store_file(base_path)) as src:
            if os.fstat(src).st_size != base_size:
                raise Internal(f"{base_path} does not match its manifest")
            staging = fileio.make_staging(lay.tmp, f"disk-{vm_id}-")
            try:
                blank = sum(d.size_bytes for d in extra if d.template is None)
                method = self._clone(
                    src, staging / DISK_ROOTFS, base_size, size, vm_id, blank=blank
                )
                resized = size > base_size and self._grow_if_extfs(staging / DISK_ROOTFS)
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
                self._adopt(staging)
                fsync_dir(staging)
                if not fileio.publish_dir(staging, final):
                    raise Conflict(f"vm {vm_id!r} disk is being provisioned concurrently")
            finally:
                fileio.remove_tree(staging)
        log.info(
            "provisioned disk from %s (%s, %d bytes)", template, method, size, extra=logs.vm(vm_id)
        )
        return new

    def release(self, vm_id: str) -> bool:
        """Delete the VM's disk directory; False if there was none."""
        if not self.remove_entry(self.layout.disk_dir(check_vm_id(vm_id)), f"rel-{vm_id}-"):
            return False
        log.info("released disk", extra=logs.vm(vm_id))
        return True

    def remove_entry(self, final: Path, prefix: str) -> bool:
        """Remove a published directory; False if there was none.

        It is renamed into ``tmp/`` first, so an interrupted delete leaves only
        staging junk (reclaimed at start), never a half-deleted entry.
        """
        if not final.exists() and not final.is_symlink():
            return False
        doomed = fileio.make_staging(self.layout.tmp, prefix)
        try:
            os.rename(final, doomed / "d")
        except FileNotFoundError:
            fileio.remove_tree(doomed)
            return False
        fileio.remove_tree(doomed)
        return True

    # -- helpers ----------------------------------------------------------------

    def _clone(
        self, src: int, dst_path: Path, base_size: int, size: int, vm_id: str, *, blank: int = 0
    ) -> Method:
        """Reflink (else sparse-copy) ``src``; the space check (data drives included) comes
        before the first byte is written."""
        free = fileio.free_bytes(self.layout.tmp)
        what = f"the disks of vm {vm_id!r}"
        alloc = fileio.allocated(src)
        need = plan.space_needed(base_size, alloc, size, "reflink") + blank
        plan.check_space(free, need, what)
        with _fds(fileio.create_file(dst_path, DISK_FILE_MODE)) as dst:
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

    def _grow_if_extfs(self, image: Path) -> bool:
        with _fds(fileio.open_store_file(image)) as fd:
            header = fileio.read_header(fd)
        if not extfs.is_extfs(header):
            return False
        extfs.grow(image)
        return True

    def _template_manifest(self, name: str) -> TemplateManifest | None:
        return _load(self.layout.template_manifest(name), TemplateManifest)

    def _disk_manifest(self, vm_id: str) -> DiskManifest | None:
        return _load(self.layout.disk_manifest(vm_id), DiskManifest)

    def _adopt(self, staging: Path) -> None:
        """When run as root (the import command), give new files to the store's owner."""
        if os.geteuid() != 0:
            return
        st = os.stat(self.layout.root)
        if st.st_uid == 0 and st.st_gid == 0:
            return
        for p in [staging, *staging.iterdir()]:
            os.lchown(p, st.st_uid, st.st_gid)


def _template(
    name: str, kernel: tuple[int, str], rootfs: tuple[int, str], args: str
) -> TemplateManifest:
    """A manifest from the ``(size, sha256)`` of the kernel and of the rootfs."""
    return TemplateManifest(
        name=name,
        kernel_size=kernel[0],
        rootfs_size=rootfs[0],
        kernel_sha256=kernel[1],
        rootfs_sha256=rootfs[1],
        kernel_args=args,
        created_at=now_rfc3339(),
    )


def _copy_into(src: int, path: Path, mode: int) -> tuple[int, str]:
    with _fds(fileio.create_file(path, mode)) as dst:
        result = fileio.copy_hashed(src, dst)
        os.fsync(dst)
    return result


def _load(path: Path, typ: type[_T]) -> _T | None:
    try:
        return load(path, typ)
    except (msgspec.DecodeError, OSError) as e:
        raise Internal(f"unreadable manifest {path}: {e}") from None


def _entries(d: Path) -> list[Path]:
    try:
        return sorted(d.iterdir())
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def _fds(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)
