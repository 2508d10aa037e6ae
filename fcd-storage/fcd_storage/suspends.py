"""Suspend files: ``disks/<vm_id>/suspend.vmstate`` and ``suspend.memory``.

A suspended VM keeps its id and disks; its state and memory live in its own disk
directory, so they go with it (:func:`fcd_storage.disks.release` removes the
directory) and nothing else ever refers to them: no manifest, no reference count.
Their stage is in their names:

1. :func:`prepare` (re)creates empty ``*.pending`` files, 0660 and fcd-storage's
   own. fcd-vmm links them into the paused VM's jail, lends them to the jail uid
   while Firecracker writes them, and hands them back.
2. :func:`commit` checks they were handed back and written, makes them 0400, and
   renames each over its committed name. Never in place: a VM woken from the
   previous suspend maps the previous memory file (``MAP_PRIVATE``, which must not
   change under it), and the rename keeps that inode alive for as long as it does.
3. :func:`abort` removes the pending files of a suspend that failed.

A commit renames the state first, then the memory; an abort removes the memory
first, then the state. A pending memory file alone is thus an interrupted commit
(finished by the next one), a pending state file alone an interrupted abort
(refused: its memory is gone).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

from fcd_common import logs
from fcd_common.atomicfile import fsync_dir
from fcd_common.errors import FailedPrecondition
from fcd_common.ids import check_vm_id
from fcd_common.proto.storage import SuspendInfo

from . import fileio
from .store import Store

log = logging.getLogger("fcd.storage")

SUSPEND_FILE_MODE = 0o660  # while Firecracker writes them (through fcd-vmm's link)
COMMITTED_MODE = 0o400  # the jail uid of the woken VM reads them through an ACL entry


def _paths(store: Store, vm_id: str, *, pending: bool) -> tuple[Path, Path]:
    lay = store.layout
    return lay.suspend_state(vm_id, pending=pending), lay.suspend_memory(vm_id, pending=pending)


def _info(
    store: Store, vm_id: str, *, pending: bool, sizes: tuple[int, int] = (0, 0)
) -> SuspendInfo:
    state, memory = _paths(store, vm_id, pending=pending)
    return SuspendInfo(
        vm_id=vm_id,
        state_path=str(state),
        memory_path=str(memory),
        pending=pending,
        state_size=sizes[0],
        memory_size=sizes[1],
    )


def _exists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def prepare(store: Store, vm_id: str) -> SuspendInfo:
    """Empty pending files in the VM's disk directory (stale pending ones replaced:
    new inodes, so nothing a jail may still hold a link to is reused)."""
    store.disk(check_vm_id(vm_id))
    state, memory = _paths(store, vm_id, pending=True)
    for path in (memory, state):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for path in (state, memory):
        os.close(fileio.create_file(path, SUSPEND_FILE_MODE))
    fsync_dir(state.parent)
    log.info("prepared suspend files", extra=logs.vm(vm_id))
    return _info(store, vm_id, pending=True)


def commit(store: Store, vm_id: str) -> SuspendInfo:
    """Check the handed-back pending files, make them read-only, rename them over the
    committed names. Idempotent: with no pending file left, the committed ones answer."""
    store.disk(check_vm_id(vm_id))
    pending = _paths(store, vm_id, pending=True)
    final = _paths(store, vm_id, pending=False)
    present = [_exists(p) for p in pending]
    if not any(present):
        if all(_exists(p) for p in final):
            return _info(store, vm_id, pending=False, sizes=_sizes(final))
        raise FailedPrecondition(
            f"vm {vm_id!r} has no suspend files to commit (prepare first)",
            details={"field": "vm_id"},
        )
    if not present[1]:
        raise FailedPrecondition(
            f"vm {vm_id!r} has a pending suspend state without its memory (an interrupted "
            "abort): prepare again",
            details={"field": "vm_id"},
        )
    todo = [(src, dst) for src, dst, here in zip(pending, final, present, strict=True) if here]
    if len(todo) == 1:
        log.warning("finishing an interrupted suspend commit", extra=logs.vm(vm_id))
    _seal([src for src, _ in todo], vm_id)
    for src, dst in todo:
        os.rename(src, dst)
    fsync_dir(final[0].parent)
    info = _info(store, vm_id, pending=False, sizes=_sizes(final))
    log.info("committed suspend files (%d bytes of memory)", info.memory_size, extra=logs.vm(vm_id))
    return info


def abort(store: Store, vm_id: str) -> None:
    """Remove the pending files (memory first, see above). Idempotent; the committed
    files of an earlier suspend are left alone."""
    state, memory = _paths(store, check_vm_id(vm_id), pending=True)
    removed = False
    for path in (memory, state):
        try:
            os.unlink(path)
            removed = True
        except FileNotFoundError:  # also: no disk directory, so nothing pending
            pass
    if removed:
        fsync_dir(state.parent)
        log.info("aborted suspend: pending files removed", extra=logs.vm(vm_id))


def _seal(paths: list[Path], vm_id: str) -> None:
    """Each pending file is a regular file of ours again, written, and one name only (no
    link left in a jail); only once all are: 0400 and on disk."""
    with contextlib.ExitStack() as stack:
        fds = [stack.enter_context(fileio.owned_fd(_open_pending(p, vm_id))) for p in paths]
        for path, fd in zip(paths, fds, strict=True):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FailedPrecondition(f"{path.name} of vm {vm_id!r} is not a regular file")
            if st.st_uid != os.geteuid() or st.st_nlink != 1:
                raise FailedPrecondition(
                    f"{path.name} of vm {vm_id!r} is not handed back yet (uid {st.st_uid}, "
                    f"{st.st_nlink} links)",
                    details={"field": "vm_id"},
                )
            if st.st_size == 0:
                raise FailedPrecondition(
                    f"{path.name} of vm {vm_id!r} is empty: the VM did not write it",
                    details={"field": "vm_id"},
                )
        for fd in fds:
            os.fchmod(fd, COMMITTED_MODE)
            os.fsync(fd)


def _open_pending(path: Path, vm_id: str) -> int:
    try:
        return fileio.open_store_file(path)
    except OSError as e:
        what = "a symbolic link" if e.errno == errno.ELOOP else e.strerror
        raise FailedPrecondition(f"{path.name} of vm {vm_id!r}: {what}") from None


def _sizes(paths: tuple[Path, Path]) -> tuple[int, int]:
    return os.lstat(paths[0]).st_size, os.lstat(paths[1]).st_size
