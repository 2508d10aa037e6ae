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

import errno
import os
import stat
from pathlib import Path

from fcd_common import openat2

JAIL_RESOLVE = (
    openat2.RESOLVE_IN_ROOT
    | openat2.RESOLVE_NO_SYMLINKS
    | openat2.RESOLVE_NO_MAGICLINKS
    | openat2.RESOLVE_NO_XDEV
)
PID_FILE_MAX = 32
"""A pid is at most 7 digits (pid_max 4194304); anything longer is not a pid file."""


class JailPathError(OSError):
    """A name inside a jail is not what fcd-vmm expects there (wrong type or owner)."""


def open_beneath(root: Path, rel: str, flags: int) -> int:
    """``rel`` below the directory ``root``, no symlink followed anywhere below it."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return openat2.open_below(root_fd, rel, flags, JAIL_RESOLVE)
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
