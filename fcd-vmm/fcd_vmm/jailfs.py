"""Filesystem work on a jail: prepare the chroot before the jailer runs, remove it after.

The kernel and the disk are hard-linked into the chroot (Firecracker resolves
every API path inside the jail). When the storage directory and the chroot
base are on different filesystems a link is impossible (EXDEV); the file is
then reflinked, or copied sparsely, and a log line says so, since writes to a
copied disk do not reach the storage's file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fcd_common import logs

from . import acl, fclog, jailopen
from .checks import StorageFile
from .plan import JailPaths

log = logging.getLogger("fcd.vmm.jailfs")

FICLONE = 0x40049409
MNT_DETACH = 2
ACL_XATTR = "system.posix_acl_access"
_acl_lock = threading.Lock()
"""Serializes read-modify-write of ACLs: restores of one snapshot share its inodes."""


def _mkdir(path: Path, mode: int) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{path} exists and is not a directory") from None
    os.chmod(path, mode, follow_symlinks=False)


def mounts_below(path: Path, mountinfo: str) -> list[Path]:
    """Mount points strictly below ``path`` in ``/proc/self/mountinfo`` text, deepest first."""
    out: list[Path] = []
    below = str(path).rstrip("/") + "/"  # mount points are normalized absolute paths
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4]
        if "\\" in point:
            point = point.encode().decode("unicode_escape")
        if point.startswith(below) and len(point) > len(below):  # a Path only for a hit
            out.append(Path(point))
    return sorted(set(out), key=lambda p: (-len(p.parts), str(p)))


def _umount_detach(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount2({path}): {os.strerror(err)}")


def remove_jail_dir(paths: JailPaths) -> None:
    """Delete ``<base>/<exec>/<vm_id>`` entirely (links are unlinked, not followed).

    The real jailer mounts only inside its own mount namespace; anything
    mounted below the jail in ours is detached first, so that removing the
    jail can never reach into another filesystem.
    """
    if not paths.jail_dir.exists():
        return
    found = mounts_below(paths.jail_dir, Path("/proc/self/mountinfo").read_text())
    for mnt in found:
        log.warning("detaching mount %s inside the jail", mnt, extra=logs.vm(paths.vm_id))
        _umount_detach(mnt)
    # looked at again only after detaching something (the usual jail has no mount here)
    if found and mounts_below(paths.jail_dir, Path("/proc/self/mountinfo").read_text()):
        raise OSError(errno.EBUSY, f"mounts remain below {paths.jail_dir}")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(paths.jail_dir)


def _copy_into(src: StorageFile, dst: Path, vm_id: str) -> str:
    """Reflink, else sparse copy ``src`` to a new file ``dst``; returns the method."""
    rfd = os.open(src.proc_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        wfd = os.open(
            dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            try:
                fcntl.ioctl(wfd, FICLONE, rfd)
                return "reflink"
            except OSError:
                pass
            size = os.fstat(rfd).st_size
            pos = 0
            while pos < size:
                try:
                    data = os.lseek(rfd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # only a hole is left
                        break
                    raise
                hole = os.lseek(rfd, data, os.SEEK_HOLE)
                off = data
                while off < hole:
                    n = os.copy_file_range(rfd, wfd, hole - off, off, off)
                    if n == 0:
                        break
                    off += n
                pos = hole
            os.ftruncate(wfd, size)
            return "copy"
        finally:
            os.close(wfd)
    finally:
        os.close(rfd)
        log.debug("copied %s to %s", src.path, dst, extra=logs.vm(vm_id))


def _place(src: StorageFile, dst: Path, vm_id: str, what: str) -> None:
    """A VM's own file (disk, data drive): a hard link, or a copy across filesystems."""
    try:
        _link_fd(src.fd, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        method = _copy_into(src, dst, vm_id)
        log.warning(
            "%s %s is on another filesystem than the chroot base: used a %s into the jail "
            "(changes to it do not reach the storage file)",
            what,
            src.path,
            method,
            extra=logs.vm(vm_id),
        )


def _link_fd(fd: int, dst: Path) -> None:
    """linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/<fd>: a new name for the pinned inode.

    (``os.link`` only uses linkat when a dir fd is given; plain link(2) would try
    to link the /proc magic symlink itself.)
    """
    proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), dst, src_dir_fd=proc_fd, follow_symlinks=True)
    finally:
        os.close(proc_fd)


def _create_owned(path: Path, uid: int, gid: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def prepare_jail(
    paths: JailPaths,
    uid: int,
    gid: int,
    kernel: StorageFile,
    rootfs: StorageFile,
    *,
    drives: Sequence[tuple[str, StorageFile, bool]] = (),
    snapshot: tuple[StorageFile, StorageFile] | None = None,
) -> None:
    """Fresh ``<root>`` with the kernel, the disk (owned by uid:gid), the extra
    drives ``(id, file, read_only)``, the log and metrics files Firecracker
    v1.7 needs to exist, and for a restore the snapshot's ``(state, memory)``
    (see :func:`place_snapshot`)."""
    vm_id = paths.vm_id
    remove_jail_dir(paths)
    base = paths.chroot_base
    if not base.is_dir():
        base.mkdir(mode=0o711, parents=True, exist_ok=True)
    _mkdir(base / paths.exec_name, 0o711)
    _mkdir(paths.jail_dir, 0o700)
    _mkdir(paths.root, 0o700)  # the jailer makes it uid:gid when it sets up "/"
    # kernel: only read by Firecracker, shared by every VM of the template
    place_shared(kernel, paths.kernel, vm_id, uid, gid, what="kernel")
    # disk: read-write by the jail uid
    _place(rootfs, paths.rootfs, vm_id, "disk")
    os.chown(paths.rootfs, uid, gid, follow_symlinks=False)
    mode = stat.S_IMODE(os.lstat(paths.rootfs).st_mode)
    if mode & 0o600 != 0o600:
        os.chmod(paths.rootfs, mode | 0o600, follow_symlinks=False)
    for drive_id, f, read_only in drives:
        if read_only:  # a template image shared by many VMs: never chowned, only read
            place_shared(f, paths.drive(drive_id), vm_id, uid, gid)
        else:  # this VM's own data drive: read-write by the jail uid, like the disk
            _place(f, paths.drive(drive_id), vm_id, "data drive")
            os.chown(paths.drive(drive_id), uid, gid, follow_symlinks=False)
    fclog.make_fifo(paths.log_file, uid, gid)  # forwarded to the journal (fclog.py)
    _create_owned(paths.metrics_file, uid, gid)
    if snapshot is not None:
        place_snapshot(paths, snapshot[0], snapshot[1], uid, gid)


def _own_copy(src: StorageFile, dst: Path, vm_id: str, uid: int, gid: int) -> str:
    """A private read-only copy of ``src`` for the jail uid (0400, its own)."""
    method = _copy_into(src, dst, vm_id)
    os.chown(dst, uid, gid, follow_symlinks=False)
    os.chmod(dst, 0o400, follow_symlinks=False)
    return method


def place_shared(
    src: StorageFile, dst: Path, vm_id: str, uid: int, gid: int, *, what: str = "shared drive"
) -> None:
    """A file many VMs read (a template's kernel or image): a hard link the jail uid
    reads through its own ACL entry (added here, revoked when the launch is over; owner
    and mode of the store's file untouched: it is not world-readable). A store of an older version
    with world-readable templates needs no entry. Another filesystem than the chroot
    base (EXDEV), or an inode whose ACL is full, gets a private read-only copy."""
    try:
        _link_fd(src.fd, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        method = _own_copy(src, dst, vm_id, uid, gid)
        log.warning(
            "%s %s is on another filesystem than the chroot base: used a %s into the jail",
            what,
            src.path,
            method,
            extra=logs.vm(vm_id),
        )
        return
    if src.st.st_mode & stat.S_IROTH:
        return
    try:
        grant_read(src.proc_path, uid)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.E2BIG, errno.EOPNOTSUPP):
            raise
        os.unlink(dst)
        method = _own_copy(src, dst, vm_id, uid, gid)
        log.warning(
            "%s %s: cannot add an ACL entry (%s): used a %s into the jail",
            what,
            src.path,
            e.strerror,
            method,
            extra=logs.vm(vm_id),
        )


# --- snapshot files -----------------------------------------------------------------------


def read_acl(path: str) -> list[acl.Entry]:
    """The access ACL of ``path`` (a ``/proc/self/fd/N`` name works, O_PATH fds too);
    the one equivalent to the mode if the file has none."""
    try:
        return acl.decode(os.getxattr(path, ACL_XATTR))
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
    return acl.from_mode(os.stat(path).st_mode)


def _write_acl(path: str, entries: list[acl.Entry]) -> None:
    try:
        os.setxattr(path, ACL_XATTR, acl.encode(entries))
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            raise OSError(e.errno, f"{path}: the filesystem has no POSIX ACLs") from None
        raise


def grant_read(path: str, uid: int) -> None:
    """Add ``user:<uid>:r--`` to the inode's ACL, keeping every other entry."""
    with _acl_lock:
        _write_acl(path, acl.with_user(read_acl(path), uid, acl.READ))


def revoke(path: str, uid: int) -> bool:
    """Remove ``user:<uid>`` from the inode's ACL; False if it had none. The last
    named entry gone, the ACL collapses back to the plain mode."""
    with _acl_lock:
        entries = read_acl(path)
        if acl.user_perm(entries, uid) is None:
            return False
        _write_acl(path, acl.without_user(entries, uid))
        return True


def place_snapshot(
    paths: JailPaths, state: StorageFile, memory: StorageFile, uid: int, gid: int
) -> None:
    """Restore: link the (ready, shared) state and memory files into the jail,
    owner and mode untouched; the jail uid reads them through its ACL entry (revoked
    when the launch is over: Firecracker has read the state and mapped the memory).

    On another filesystem than the chroot base a link is impossible: the VM then
    gets its own copy, owned by it and read-only (slow for a large memory file).
    """
    for f, dst in ((state, paths.snapshot_state), (memory, paths.snapshot_memory)):
        try:
            _link_fd(f.fd, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            method = _copy_into(f, dst, paths.vm_id)
            os.chown(dst, uid, gid, follow_symlinks=False)
            os.chmod(dst, 0o400, follow_symlinks=False)
            log.warning(
                "snapshot file %s is on another filesystem than the chroot base: used a %s",
                f.path,
                method,
                extra=logs.vm(paths.vm_id),
            )
            continue
        grant_read(f.proc_path, uid)


@dataclass(frozen=True)
class Lent:
    """A snapshot file linked into a jail and chowned to its uid while Firecracker
    writes it; ``uid``/``gid`` is the owner it goes back to."""

    file: StorageFile
    link: Path
    uid: int
    gid: int


def lend_snapshot_files(
    paths: JailPaths, state: StorageFile, memory: StorageFile, uid: int, gid: int
) -> list[Lent]:
    """Link a pending snapshot's two files into the jail and chown them to the jail
    uid (Firecracker opens them with O_TRUNC). Undone by :func:`return_snapshot_files`,
    also here if a step fails."""
    lent: list[Lent] = []
    try:
        for f, dst in ((state, paths.snapshot_state), (memory, paths.snapshot_memory)):
            st = os.stat(f.proc_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)  # a leftover of an interrupted snapshot
            _link_fd(f.fd, dst)  # EXDEV: Firecracker would write a copy, not the store's file
            lent.append(Lent(f, dst, st.st_uid, st.st_gid))
            os.chown(f.proc_path, uid, gid)
    except BaseException:
        return_snapshot_files(lent)
        raise
    return lent


def return_snapshot_files(lent: Sequence[Lent]) -> list[str]:
    """Remove the links and give the inodes back to their owner; the problems, if any."""
    problems: list[str] = []
    for item in lent:
        try:
            os.unlink(item.link)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"{item.link}: {e.strerror}")
        try:
            os.chown(item.file.proc_path, item.uid, item.gid)
        except OSError as e:
            problems.append(f"chown {item.file.path}: {e.strerror}")
    return problems


def read_pid_file(paths: JailPaths) -> int | None:
    """The pid in the jailer's pid file, or None while it is missing, still empty, or
    anything but a small regular file (the jail uid can put a FIFO, a device or a
    symlink there: none is followed, waited on or read past a few bytes)."""
    try:
        data = jailopen.read_small_file(paths.root, str(paths.pid_file.relative_to(paths.root)))
    except OSError:
        return None
    text = data.decode("ascii", errors="replace").strip()
    if len(data) > jailopen.PID_FILE_MAX or not text.isdigit():
        return None
    return int(text) if int(text) > 0 else None


def log_tail(paths: JailPaths, lines: int = 10, limit: int = 4096) -> str:
    """The last lines of Firecracker's log, for error details: from the forwarder of
    the FIFO, or (an older jail) a regular file opened inside the jail without
    following a symlink. Anything else the jail uid put there gives nothing."""
    path = paths.log_file
    if fclog.is_fifo(path):
        return fclog.forwarders.tail(path)
    try:
        pfd = jailopen.open_beneath(paths.root, str(path.relative_to(paths.root)), os.O_PATH)
        try:
            if not stat.S_ISREG(os.fstat(pfd).st_mode):
                return ""
            rfd = os.open(
                f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            )
        finally:
            os.close(pfd)
        try:
            data = os.pread(rfd, limit, max(0, os.fstat(rfd).st_size - limit))
        finally:
            os.close(rfd)
    except (OSError, ValueError):
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
