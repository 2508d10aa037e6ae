"""Opening files inside a jail without following anything its uid controls.

The jail uid owns the chroot's ``/`` and ``/run``: a compromised Firecracker can
put a symlink, a FIFO, a device node or another VM's socket under any name
fcd-vmm (root) later opens there. So every open below a jail root goes through
``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
RESOLVE_NO_XDEV)`` from a descriptor of the root (the root itself sits in a
directory only root can change), falling back to a component-by-component
``O_NOFOLLOW`` walk where the kernel has no openat2. The caller then checks
what it got by ``fstat`` on the descriptor, never by name:

- the API socket must be a socket owned by the jail uid, and is connected to
  through ``/proc/self/fd/N`` of its ``O_PATH`` descriptor (short enough for
  ``sun_path``, and it reaches exactly the inode that was checked);
- the pid file must be a regular file, opened non-blocking and read for at most
  a few bytes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10
JAIL_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
PID_FILE_MAX = 32
"""A pid is at most 7 digits (pid_max 4194304); anything longer is not a pid file."""


class JailPathError(OSError):
    """A name inside a jail is not what fcd-vmm expects there (wrong type or owner)."""


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_openat2: bool | None = None


def _openat2(dir_fd: int, rel: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(rel)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"openat2({rel}): {os.strerror(err)}")
    return int(fd)


def _walk(dir_fd: int, parts: list[str], flags: int) -> int:
    """The fallback: each directory opened ``O_PATH | O_DIRECTORY | O_NOFOLLOW`` from the
    previous one; the last component with ``flags | O_NOFOLLOW``."""
    cur = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(
                part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur
            )
            os.close(cur)
            cur = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=cur)
    finally:
        os.close(cur)


def split_rel(rel: str) -> list[str]:
    """The components of a path inside a jail; refuses ``..``, empty and absolute names."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{rel!r} is not a plain relative path")
    return parts


def open_beneath(root: Path, rel: str, flags: int) -> int:
    """``rel`` below the directory ``root``, no symlink followed anywhere below it."""
    global _have_openat2
    parts = split_rel(rel)
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if _have_openat2 is not False:
            try:
                return _openat2(root_fd, rel, flags, JAIL_RESOLVE)
            except OSError as e:
                if e.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
                _have_openat2 = False
        return _walk(root_fd, parts, flags)
    finally:
        os.close(root_fd)


def open_socket(root: Path, rel: str, uid: int) -> int:
    """An ``O_PATH`` descriptor of the socket ``rel`` in the jail, proven to be a
    socket owned by ``uid``; connect to ``/proc/self/fd/<fd>``."""
    fd = open_beneath(root, rel, os.O_PATH)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise JailPathError(errno.ENOTSOCK, f"{rel} in the jail is not a socket")
        if st.st_uid != uid:
            raise JailPathError(
                errno.EPERM, f"{rel} in the jail belongs to uid {st.st_uid}, not to {uid}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small_file(root: Path, rel: str, limit: int = PID_FILE_MAX) -> bytes:
    """At most ``limit`` bytes of the regular file ``rel`` in the jail; never blocks
    (a FIFO or device there is refused before any read, and opening one with
    ``O_NONBLOCK | O_NOCTTY`` neither waits nor takes a terminal)."""
    fd = open_beneath(root, rel, os.O_PATH)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JailPathError(errno.EINVAL, f"{rel} in the jail is not a regular file")
        rfd = os.open(
            f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        )
    finally:
        os.close(fd)
    try:
        return os.read(rfd, limit + 1)
    finally:
        os.close(rfd)
