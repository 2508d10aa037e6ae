"""``openat2(2)`` through ctypes, with an ``O_NOFOLLOW`` walk where the kernel lacks it.

Used wherever a daemon opens a name below a directory someone else controls: a
jail (its uid owns the chroot) or an import directory (users put files there).
``resolve`` takes the ``RESOLVE_*`` flags; without openat2 (ENOSYS, or a seccomp
filter's EPERM) every component is opened ``O_NOFOLLOW`` from the previous one,
which gives the same answer for relative paths without ``..`` and symlinks.
"""

from __future__ import annotations

import ctypes
import errno
import os

SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_openat2: bool | None = None


def split_rel(rel: str) -> list[str]:
    """The components of a relative path; refuses ``..``, ``.``, empty and absolute names."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{rel!r} is not a plain relative path")
    return parts


def _syscall(dir_fd: int, rel: str, flags: int, resolve: int) -> int:
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
        raise OSError(err, os.strerror(err), rel)
    return int(fd)


def _walk(dir_fd: int, parts: list[str], flags: int) -> int:
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


def open_below(dir_fd: int, rel: str, flags: int, resolve: int) -> int:
    """``rel`` below ``dir_fd`` with ``flags | O_NOFOLLOW | O_CLOEXEC``; no symlink is
    followed on the way (``resolve`` must include ``RESOLVE_NO_SYMLINKS`` for the
    fallback to be equivalent)."""
    global _have_openat2
    parts = split_rel(rel)
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW
    if _have_openat2 is not False:
        try:
            return _syscall(dir_fd, rel, flags, resolve)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _have_openat2 = False
    return _walk(dir_fd, parts, flags)
