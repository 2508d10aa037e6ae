"""The few Linux calls Python 3.11 lacks, through ctypes on the already-loaded libc.

``CDLL(None)`` resolves symbols in the running process (no library file is opened), so
these keep working after pivot_root.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_BIND = 0x1000
MS_SLAVE = 1 << 19
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_NAME = 15
SYS_PIVOT_ROOT = 155  # x86_64
SYS_CLOSE_RANGE = 436

_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


def _check(ret: int) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(
        _libc.syscall(
            SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)
        )
    )


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype))


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            None,
        )
    )


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), flags))


def pivot_root(new_root: str, put_old: str) -> None:
    _check(
        _libc.syscall(
            SYS_PIVOT_ROOT, ctypes.c_char_p(new_root.encode()), ctypes.c_char_p(put_old.encode())
        )
    )


def set_comm(name: str) -> None:
    _check(_libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0))
