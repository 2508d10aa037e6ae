"""Snapshot files: ``snapshots/<name>/{vmstate, memory, rootfs.ext4, snapshot.json}``.

Two steps, because Firecracker writes the state and memory files itself:

1. :func:`prepare` publishes ``snapshots/<name>/`` (staging + rename) with
   empty ``vmstate`` and ``memory`` files and ``pending.json``. fcd-vmm links
   the two files into the paused VM's jail, Firecracker fills them (it opens
   them with truncate, so the inodes stay the store's), and fcd-vmm hands the
   inodes back to fcd-storage's user.
2. :func:`commit` (the VM still paused) clones the VM's root disk into the
   snapshot (reflink, else sparse copy, under a temporary name renamed into
   place), makes the state, memory and disk files 0400 and writes
   ``snapshot.json`` last. Nobody else reads them by mode: fcd-vmm (root) gives
   each restored VM's jail uid read access to the state and memory inodes with
   its own POSIX ACL entry while that VM exists; fcd-storage reflinks new disks
   from the snapshot's disk as its owner.

A snapshot without ``snapshot.json`` is pending: reclaimed at start and, on
request, when its VM is gone. A restore is :func:`fcd_storage.disks.provision` with
``snapshot=``: the new VM's disk is its own reflink of the snapshot's disk; the
memory file is shared read-only, so a snapshot cannot be deleted while a VM
restored from it exists (:mod:`fcd_storage.refs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import msgspec

from fcd_common.atomicfile import fsync_dir
from fcd_common.errors import Conflict, FailedPrecondition, FcdError, Internal, NotFound
from fcd_common.ids import check_name, check_vm_id, is_vm_id
from fcd_common.proto.storage import SnapshotOrigin
from fcd_common.storelayout import SNAPSHOT_MANIFEST, SNAPSHOT_PENDING

from . import fileio, plan, refs
from .manifest import MANIFEST_MODE, SnapshotManifest, encode, load, now_rfc3339
from .store import Store

log = logging.getLogger("fcd.storage")

SNAPSHOT_FILE_MODE = 0o660  # while Firecracker writes them (through fcd-vmm's link)
SHARED_MODE = 0o400  # once committed: read-only, and not world-readable (see above)
DIR_MODE = 0o750


def _load(path: Path, what: str) -> SnapshotManifest | None:
    try:
        return load(path, SnapshotManifest)
    except (msgspec.DecodeError, OSError) as e:
        raise Internal(f"unreadable {what} manifest {path}: {e}") from None


def find(store: Store, name: str) -> SnapshotManifest | None:
    """The snapshot ``name``: ready (snapshot.json), pending (pending.json) or None."""
    d = store.layout.snapshot_dir(name)
    ready = _load(d / SNAPSHOT_MANIFEST, "snapshot")
    if ready is not None:
        return ready
    return _load(d / SNAPSHOT_PENDING, "pending snapshot")


def get(store: Store, name: str) -> SnapshotManifest:
    m = find(store, check_name(name, "snapshot"))
    if m is None:
        raise NotFound(f"snapshot {name!r} not found", details={"field": "snapshot"})
    return m


def require_ready(store: Store, name: str) -> SnapshotManifest:
    m = get(store, name)
    if not m.ready:
        raise FailedPrecondition(
            f"snapshot {name!r} is still pending", details={"field": "snapshot"}
        )
    return m


def manifests(store: Store) -> list[SnapshotManifest]:
    out = []
    try:
        entries = sorted(store.layout.snapshots.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        with contextlib.suppress(FcdError):
            m = find(store, entry.name)
            if m is not None:
                out.append(m)
    return out


def users(store: Store) -> dict[str, list[str]]:
    return refs.snapshot_users(store.disks())


def prepare(store: Store, name: str, vm_id: str) -> SnapshotManifest:
    lay = store.layout
    check_name(name, "name")
    disk = store.disk(check_vm_id(vm_id))
    if disk.drives:
        raise FailedPrecondition(
            f"vm {vm_id!r} has extra drives: snapshots cover the root disk only",
            details={"field": "vm_id"},
        )
    if find(store, name) is not None:
        raise Conflict(f"snapshot {name!r} already exists", details={"field": "name"})
    m = SnapshotManifest(
        name=name, vm_id=vm_id, template=disk.template, created_at=now_rfc3339(), ready=False
    )
    staging = fileio.make_staging(lay.tmp, f"snap-{name}-")
    try:
        for leaf in (lay.snapshot_state(name).name, lay.snapshot_memory(name).name):
            os.close(fileio.create_file(staging / leaf, SNAPSHOT_FILE_MODE))
        fileio.write_file(staging / SNAPSHOT_PENDING, encode(m), MANIFEST_MODE)
        os.chmod(staging, DIR_MODE)
        store.adopt(staging)
        fsync_dir(staging)
        if not fileio.publish_dir(staging, lay.snapshot_dir(name)):
            raise Conflict(f"snapshot {name!r} already exists", details={"field": "name"})
    finally:
        fileio.remove_tree(staging)
    log.info("prepared snapshot %s of %s", name, vm_id)
    return m


def commit(store: Store, name: str, origin: SnapshotOrigin | None = None) -> SnapshotManifest:
    lay = store.layout
    pending = get(store, name)
    if pending.ready:
        return pending  # idempotent
    disk = store.disk(pending.vm_id)
    written = 0
    is_diff = origin is not None and origin.type == "diff"
    if origin is not None and is_diff:
        written = _layer_onto_parent(store, name, origin.parent)
    sizes = {}
    for path in (lay.snapshot_state(name), lay.snapshot_memory(name)):
        with _open(path) as fd:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise FailedPrecondition(
                    f"{path.name} of snapshot {name!r} still belongs to uid {st.st_uid}: "
                    "fcd-vmm has not handed it back",
                    details={"field": "name"},
                )
            if st.st_size == 0:
                raise FailedPrecondition(
                    f"{path.name} of snapshot {name!r} is empty: the VM did not write it",
                    details={"field": "name"},
                )
            os.fchmod(fd, SHARED_MODE)
            os.fsync(fd)
            sizes[path.name] = st.st_size
    final = lay.snapshot_disk(name)
    tmp = final.with_name(final.name + ".tmp")
    fileio.remove_tree(tmp)
    with _open(lay.disk_rootfs(disk.vm_id)) as src:
        free = fileio.free_bytes(lay.tmp)
        alloc = fileio.allocated(src)
        plan.check_space(free, plan.RESERVE_BYTES, f"snapshot {name!r}")
        with fileio.owned_fd(fileio.create_file(tmp, SHARED_MODE)) as dst:
            if not fileio.reflink(src, dst):
                plan.check_space(free, alloc + plan.RESERVE_BYTES, f"snapshot {name!r}")
                fileio.copy_sparse(src, dst)
            os.fsync(dst)
            disk_size = os.fstat(dst).st_size
    os.rename(tmp, final)
    m = msgspec.structs.replace(
        pending,
        ready=True,
        state_size=sizes[lay.snapshot_state(name).name],
        memory_size=sizes[lay.snapshot_memory(name).name],
        disk_size=disk_size,
        created_at=now_rfc3339(),
        origin=origin,
        written_bytes=written if is_diff else sizes[lay.snapshot_memory(name).name],
    )
    d = lay.snapshot_dir(name)
    mtmp = d / (SNAPSHOT_MANIFEST + ".tmp")
    fileio.remove_tree(mtmp)
    fileio.write_file(mtmp, encode(m), MANIFEST_MODE)
    os.rename(mtmp, d / SNAPSHOT_MANIFEST)
    fileio.remove_tree(d / SNAPSHOT_PENDING)
    fsync_dir(d)
    log.info("committed snapshot %s of %s (%d bytes of memory)", name, m.vm_id, m.memory_size)
    return m


def _layer_onto_parent(store: Store, name: str, parent: str | None) -> int:
    """Make a diff snapshot's memory restorable on its own: a copy (reflink) of the
    parent's memory with the diff's data runs (the dirty pages Firecracker wrote;
    everything else is a hole) written over it at the same offsets. Returns the bytes
    the diff held. The merged file replaces the diff's under a temporary name."""
    lay = store.layout
    if parent is None:
        raise FailedPrecondition(
            f"diff snapshot {name!r} names no parent", details={"field": "parent"}
        )
    require_ready(store, parent)
    mem = lay.snapshot_memory(name)
    tmp = mem.with_name(mem.name + ".merge")
    fileio.remove_tree(tmp)
    with _open(mem) as diff, _open(lay.snapshot_memory(parent)) as base:
        written = fileio.allocated(diff)
        if os.fstat(diff).st_size != os.fstat(base).st_size:
            raise FailedPrecondition(
                f"diff snapshot {name!r} and its parent {parent!r} differ in memory size",
                details={"field": "parent"},
            )
        with fileio.owned_fd(fileio.create_file(tmp, SNAPSHOT_FILE_MODE)) as out:
            if not fileio.reflink(base, out):
                free = fileio.free_bytes(lay.tmp)
                plan.check_space(free, fileio.allocated(base) + plan.RESERVE_BYTES, name)
                fileio.copy_sparse(base, out)
            fileio.copy_sparse(diff, out)
            os.fsync(out)
    os.rename(tmp, mem)
    log.info("layered diff snapshot %s (%d bytes) onto %s", name, written, parent)
    return written


def delete(store: Store, name: str) -> None:
    """Delete a snapshot nobody uses (a pending one too: that aborts it)."""
    get(store, name)
    used_by = users(store).get(name, [])
    if used_by:
        raise Conflict(
            f"snapshot {name!r} is in use by {', '.join(used_by[:5])}",
            details={"field": "name", "used_by": used_by},
        )
    store.remove_entry(store.layout.snapshot_dir(name), f"snap-del-{name}-")
    log.info("deleted snapshot %s", name)


def pending_to_reclaim(store: Store, live: set[str], as_of: str) -> list[str]:
    cutoff = plan.parse_time(as_of) - plan.RECLAIM_SLACK
    return [
        m.name
        for m in manifests(store)
        if not m.ready
        and is_vm_id(m.vm_id)
        and m.vm_id not in live
        and plan.parse_time(m.created_at) < cutoff
    ]


def _open(path: Path) -> contextlib.AbstractContextManager[int]:
    return fileio.owned_fd(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
