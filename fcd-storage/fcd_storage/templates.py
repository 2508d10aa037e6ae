"""Templates: imported, built from a directory tree, deleted, and who uses them.

Import copies a kernel and a rootfs into a staging directory, hashing as it
copies; the manifest is written last and the directory renamed into place.
Building runs ``mkfs.ext4 -d`` on the tree into a staging file; the tree is
measured first (size given, or computed with headroom) and pinned by a
directory fd that mkfs reads through ``/proc/self/fd/N``, so swapping the path
for a symlink after the check changes nothing. The source paths are read with
fcd-storage's own rights: they are the one place a request names a path, so
they are opened only below the configured import directories, never through a
symlink, and only once proven regular files (:mod:`fcd_storage.sources`);
nothing is ever written there.
"""

from __future__ import annotations

import logging
import os
import stat

from fcd_common.atomicfile import fsync_dir
from fcd_common.errors import Conflict, NotFound
from fcd_common.ids import check_name
from fcd_common.storelayout import KERNEL, ROOTFS, TEMPLATE_MANIFEST

from . import extfs, fileio, plan, refs, snapshots, sources
from .fileio import copy_into, owned_fd
from .manifest import MANIFEST_MODE, TemplateManifest, encode, now_rfc3339
from .store import Store

log = logging.getLogger("fcd.storage")

# not world-readable (#9 finding 6): a jailed Firecracker reads its link through its own
# ACL entry, which fcd-vmm adds at launch and removes at release (fcd_vmm.jailfs)
TEMPLATE_FILE_MODE = 0o640
TEMPLATE_DIR_MODE = 0o750


def import_template(
    store: Store,
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
    lay = store.layout
    check_name(name, "name")
    plan.check_source_path(kernel_path, "kernel_path")
    plan.check_source_path(rootfs_path, "rootfs_path")
    plan.check_kernel_args(kernel_args)
    existing = store.template_manifest(name)
    with (
        owned_fd(_open_source(store, kernel_path, "kernel_path")) as kfd,
        owned_fd(_open_source(store, rootfs_path, "rootfs_path")) as rfd,
    ):
        if existing is not None:  # decide from the hashes alone, without copying
            kernel = fileio.copy_hashed(kfd, None)
            rootfs = fileio.copy_hashed(rfd, None)
            plan.check_sha256(kernel_sha256, kernel[1], "kernel_sha256")
            plan.check_sha256(rootfs_sha256, rootfs[1], "rootfs_sha256")
            new = _manifest(name, kernel, rootfs, kernel_args)
            plan.decide_import(existing, new)  # raises Conflict if different
            return existing
        needed = fileio.allocated(kfd) + fileio.allocated(rfd) + plan.RESERVE_BYTES
        plan.check_space(fileio.free_bytes(lay.tmp), needed, f"template {name!r}")
        staging = fileio.make_staging(lay.tmp, f"tpl-{name}-")
        try:
            kernel = copy_into(kfd, staging / KERNEL, TEMPLATE_FILE_MODE)
            rootfs = copy_into(rfd, staging / ROOTFS, TEMPLATE_FILE_MODE)
            plan.check_sha256(kernel_sha256, kernel[1], "kernel_sha256")
            plan.check_sha256(rootfs_sha256, rootfs[1], "rootfs_sha256")
            new = _manifest(name, kernel, rootfs, kernel_args)
            fileio.write_file(staging / TEMPLATE_MANIFEST, encode(new), MANIFEST_MODE)
            os.chmod(staging, TEMPLATE_DIR_MODE)
            store.adopt(staging)
            fsync_dir(staging)
            final = lay.template_dir(name)
            if not fileio.publish_dir(staging, final):
                raced = store.template_manifest(name)
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


def _open_source(store: Store, path: str, field: str, *, directory: bool = False) -> int:
    return sources.open_source(
        path, field, store.import_dirs, directory=directory, store_root=str(store.layout.root)
    )


def _manifest(
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


def measure_tree(dir_fd: int) -> plan.TreeSize:
    """Bytes (whole blocks) and entries of the tree below ``dir_fd``; symlinks not followed."""
    total, entries = 0, 1
    for _root, dirs, files, rfd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        total += plan.BLOCK  # the directory itself
        for name in files + dirs:
            entries += 1
            if name in dirs:
                continue
            st = os.stat(name, dir_fd=rfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                total += -(-st.st_size // plan.BLOCK) * plan.BLOCK
            else:
                total += plan.BLOCK if stat.S_ISLNK(st.st_mode) else 0
    return plan.TreeSize(total, entries)


def build_template(
    store: Store,
    name: str,
    kernel_path: str,
    source_dir: str,
    *,
    size_mib: int | None = None,
    kernel_args: str = "",
    kernel_sha256: str | None = None,
) -> TemplateManifest:
    lay = store.layout
    check_name(name, "name")
    plan.check_source_path(kernel_path, "kernel_path")
    plan.check_kernel_args(kernel_args)
    if store.template_manifest(name) is not None:
        raise Conflict(f"template {name!r} already exists", details={"field": "name"})
    with (
        owned_fd(_open_source(store, kernel_path, "kernel_path")) as kfd,
        owned_fd(_open_source(store, source_dir, "source_dir", directory=True)) as dfd,
    ):
        tree = measure_tree(dfd)
        size, inodes = plan.build_geometry(tree, size_mib, store.max_disk_mib)
        # the image is sparse: its data is the tree plus ext4's metadata (~5 % of the size)
        needed = fileio.allocated(kfd) + tree.bytes + size // 20 + plan.RESERVE_BYTES
        plan.check_space(fileio.free_bytes(lay.tmp), needed, f"template {name!r}")
        staging = fileio.make_staging(lay.tmp, f"tpl-{name}-")
        try:
            kernel = copy_into(kfd, staging / KERNEL, TEMPLATE_FILE_MODE)
            plan.check_sha256(kernel_sha256, kernel[1], "kernel_sha256")
            image = staging / ROOTFS
            with owned_fd(fileio.create_file(image, TEMPLATE_FILE_MODE)) as ifd:
                os.ftruncate(ifd, size)
            extfs.make_from_dir(image, f"/proc/self/fd/{dfd}", inodes, pass_fds=(dfd,))
            with owned_fd(fileio.open_store_file(image)) as ifd:
                os.fsync(ifd)
                rootfs = fileio.copy_hashed(ifd, None)
            new = TemplateManifest(
                name=name,
                kernel_size=kernel[0],
                rootfs_size=rootfs[0],
                kernel_sha256=kernel[1],
                rootfs_sha256=rootfs[1],
                kernel_args=kernel_args,
                created_at=now_rfc3339(),
                source="build",
            )
            fileio.write_file(staging / TEMPLATE_MANIFEST, encode(new), MANIFEST_MODE)
            os.chmod(staging, TEMPLATE_DIR_MODE)
            store.adopt(staging)
            fsync_dir(staging)
            if not fileio.publish_dir(staging, lay.template_dir(name)):
                raise Conflict(f"template {name!r} already exists", details={"field": "name"})
        finally:
            fileio.remove_tree(staging)
    log.info(
        "built template %s from a tree of %d entries (%d MiB image)", name, tree.entries, size >> 20
    )
    return new


def users(store: Store) -> dict[str, list[str]]:
    return refs.template_users(store.disks(), snapshots.manifests(store))


def delete_template(store: Store, name: str) -> None:
    """Delete a template nobody uses. Callers exclude concurrent provisions (catalog lock)."""
    store.template(name)  # NotFound first
    used_by = users(store).get(name, [])
    if used_by:
        raise Conflict(
            f"template {name!r} is in use by {', '.join(used_by[:5])}"
            + (f" and {len(used_by) - 5} more" if len(used_by) > 5 else ""),
            details={"field": "name", "used_by": used_by},
        )
    if not store.remove_entry(store.layout.template_dir(name), f"tpl-del-{name}-"):
        raise NotFound(f"template {name!r} not found", details={"field": "template"})
    log.info("deleted template %s", name)
