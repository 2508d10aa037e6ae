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
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from fcd_common import logs
from fcd_common.atomicfile import fsync_dir
from fcd_common.config import Config
from fcd_common.errors import Conflict, Internal, NotFound
from fcd_common.ids import check_name, check_vm_id, is_vm_id
from fcd_common.storelayout import (
    DISK_MANIFEST,
    DISK_ROOTFS,
    KERNEL,
    ROOTFS,
    TEMPLATE_MANIFEST,
    StoreLayout,
)
from fcd_common.storelayout import layout as layout_of

from . import extfs, fileio, plan
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
    def __init__(self, lay: StoreLayout, *, max_disk_mib: int) -> None:
        self.layout = lay
        self.max_disk_mib = max_disk_mib

    @classmethod
    def from_config(cls, cfg: Config) -> Store:
        return cls(layout_of(cfg), max_disk_mib=cfg.limits.max_disk_mib)

    # -- start-up ---------------------------------------------------------------

    def ensure_dirs(self) -> None:
        lay = self.layout
        lay.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        for d, mode in ((lay.templates, 0o755), (lay.disks, 0o750), (lay.tmp, TMP_DIR_MODE)):
            d.mkdir(exist_ok=True, mode=mode)
            os.chmod(d, mode)

    def reclaim(self) -> list[Path]:
        """Remove staging leftovers and entries without a manifest; return what was removed."""
        lay = self.layout
        removed: list[Path] = []
        for entry in _entries(lay.tmp):
            fileio.remove_tree(entry)
            removed.append(entry)
        for parent, manifest in ((lay.templates, TEMPLATE_MANIFEST), (lay.disks, DISK_MANIFEST)):
            for entry in _entries(parent):
                if entry.is_symlink() or not entry.is_dir() or not (entry / manifest).is_file():
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
        self, name: str, kernel_path: str, rootfs_path: str, kernel_args: str = ""
    ) -> TemplateManifest:
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
                new = _template(name, kernel, rootfs, kernel_args)
                plan.decide_import(existing, new)  # raises Conflict if different
                return existing
            needed = fileio.allocated(kfd) + fileio.allocated(rfd) + plan.RESERVE_BYTES
            plan.check_space(fileio.free_bytes(lay.tmp), needed, f"template {name!r}")
            staging = fileio.make_staging(lay.tmp, f"tpl-{name}-")
            try:
                kernel = _copy_into(kfd, staging / KERNEL, TEMPLATE_FILE_MODE)
                rootfs = _copy_into(rfd, staging / ROOTFS, TEMPLATE_FILE_MODE)
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
        self, vm_id: str, template: str, disk_size_mib: int | None = None
    ) -> DiskManifest:
        lay = self.layout
        check_vm_id(vm_id)
        tm = self.template(template)
        size = plan.disk_size(tm.rootfs_size, disk_size_mib, self.max_disk_mib)
        existing = plan.existing_disk(self._disk_manifest(vm_id), vm_id, template, size)
        if existing is not None:
            return existing
        final = lay.disk_dir(vm_id)
        fileio.remove_tree(final)  # no manifest: a leftover, never handed out
        with _fds(fileio.open_store_file(lay.template_rootfs(template))) as src:
            if os.fstat(src).st_size != tm.rootfs_size:
                raise Internal(f"template {template!r} rootfs does not match its manifest")
            staging = fileio.make_staging(lay.tmp, f"disk-{vm_id}-")
            try:
                method = self._clone(src, staging / DISK_ROOTFS, tm, size, vm_id)
                resized = size > tm.rootfs_size and self._grow_if_extfs(staging / DISK_ROOTFS)
                new = DiskManifest(
                    vm_id=vm_id,
                    template=template,
                    template_rootfs_sha256=tm.rootfs_sha256,
                    size_bytes=size,
                    method=method,
                    resized=resized,
                    created_at=now_rfc3339(),
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
        lay = self.layout
        final = lay.disk_dir(check_vm_id(vm_id))
        if not final.exists() and not final.is_symlink():
            return False
        # Move it out of sight first: an interrupted delete leaves only tmp/ junk.
        doomed = fileio.make_staging(lay.tmp, f"rel-{vm_id}-")
        try:
            os.rename(final, doomed / "d")
        except FileNotFoundError:
            fileio.remove_tree(doomed)
            return False
        fileio.remove_tree(doomed)
        log.info("released disk", extra=logs.vm(vm_id))
        return True

    # -- helpers ----------------------------------------------------------------

    def _clone(
        self, src: int, dst_path: Path, tm: TemplateManifest, size: int, vm_id: str
    ) -> Method:
        free = fileio.free_bytes(self.layout.tmp)
        what = f"the disk of vm {vm_id!r}"
        alloc = fileio.allocated(src)
        plan.check_space(free, plan.space_needed(tm.rootfs_size, alloc, size, "reflink"), what)
        with _fds(fileio.create_file(dst_path, DISK_FILE_MODE)) as dst:
            method: Method = "reflink"
            if not fileio.reflink(src, dst):
                method = "copy"
                plan.check_space(free, plan.space_needed(tm.rootfs_size, alloc, size, "copy"), what)
                fileio.copy_sparse(src, dst)
            if size > tm.rootfs_size:
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
