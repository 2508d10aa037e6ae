"""The sandbox e2fsprogs run in (``python -I -S confine.py``, see sandbox.py): #9 finding 10.

``e2fsck``, ``resize2fs`` and ``mkfs.ext4`` parse images and trees that users made.
A bug in them must not reach more than the one image being worked on, so they
run in a fresh, single-threaded process that confines itself and then ``exec``s
the tool:

1. as root (``fcd up``): a new, empty network namespace; then the image owner's
   uid and gid with no supplementary groups, or, for an image root owns, uid 0
   with every capability gone (the bounding set too, so the exec cannot regain
   them);
2. ``PR_SET_NO_NEW_PRIVS``: no set-uid binary or file capability can raise it again;
3. Landlock: no filesystem change anywhere but writing the image named by
   ``--write`` (reading stays allowed: the tools read their own libraries and
   configuration), no TCP bind or connect, no abstract Unix sockets or signals
   outside the sandbox;
4. seccomp (libseccomp): ``socket(2)`` fails with EACCES, whatever the family.

Each layer is applied if the kernel (or a surrounding seccomp filter, such as
the unit's ``SystemCallFilter=``) allows it; what could not be applied is
reported on stderr as ``confine: ...`` lines and the tool still runs, confined
by what was. The argument vector is built by :func:`fcd_storage.sandbox.argv`.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import sys
from collections.abc import Sequence

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CLONE_NEWNET = 0x40000000
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

# filesystem rights (ABI 1, then 2: REFER, 3: TRUNCATE)
FS_WRITE_FILE = 1 << 1
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13
FS_TRUNCATE = 1 << 14
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

SCMP_ACT_ALLOW = 0x7FFF0000


def _scmp_act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 if it has none (or it is disabled)."""
    ret = _libc.syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )  # fmt: skip
    return int(ret) if ret > 0 else 0


def landlock_rights(abi: int) -> tuple[int, int, int, int]:
    """``(handled fs, handled net, scoped, allowed on the image)`` for an ABI version."""
    fs = (
        FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR
        | FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM
    )  # fmt: skip
    image = FS_WRITE_FILE
    if abi >= 2:
        fs |= FS_REFER
    if abi >= 3:
        fs |= FS_TRUNCATE
        image |= FS_TRUNCATE
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return fs, net, scoped, image


def apply_landlock(writable: Sequence[str]) -> int:
    """Restrict this process (and what it execs) as described above; returns the ABI."""
    abi = landlock_abi()
    if abi == 0:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not available")
    fs, net, scoped, image = landlock_rights(abi)
    attr = _RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    rs = _check(
        _libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
            ctypes.c_size_t(size), ctypes.c_uint32(0),
        ),
        "landlock_create_ruleset",
    )  # fmt: skip
    try:
        for path in [*writable, "/dev/null"]:  # e2fsck opens /dev/null read-write
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(image, fd)
                _check(
                    _libc.syscall(
                        ctypes.c_long(SYS_LANDLOCK_ADD_RULE), ctypes.c_int(rs),
                        ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule),
                        ctypes.c_uint32(0),
                    ),
                    f"landlock_add_rule({path})",
                )  # fmt: skip
            finally:
                os.close(fd)
        _check(
            _libc.syscall(
                ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(rs), ctypes.c_uint32(0)
            ),
            "landlock_restrict_self",
        )
    finally:
        os.close(rs)
    return abi


def deny_sockets() -> None:
    """A seccomp filter (built by libseccomp) that fails every ``socket(2)`` with EACCES."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)  # no find_library: it forks tools
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_rule_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint)
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        nr = lib.seccomp_syscall_resolve_name(b"socket")
        rc = lib.seccomp_rule_add(ctx, _scmp_act_errno(errno.EACCES), nr, 0)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add: {os.strerror(-rc)}")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)


def drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def drop_capabilities() -> None:
    """Empty the bounding set, then the effective, permitted and inheritable sets."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())  # noqa: SIM115 -- one read
    for cap in range(last + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"PR_CAPBSET_DROP {cap}")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def confine(writable: Sequence[str], *, uid: int | None, gid: int | None, new_netns: bool) -> None:
    def warn(msg: str) -> None:
        sys.stderr.write(f"confine: {msg}\n")

    if new_netns:
        try:
            _check(_libc.unshare(ctypes.c_int(CLONE_NEWNET)), "unshare(CLONE_NEWNET)")
        except OSError as e:
            warn(str(e))
    if uid is not None and gid is not None:  # not optional: failing to drop is an error
        drop_to(uid, gid)
    if os.geteuid() == 0 or uid == 0:
        drop_capabilities()
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    for layer in (lambda: apply_landlock(writable), deny_sockets):
        try:
            layer()
        except OSError as e:
            warn(str(e))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fcd-storage-confine")
    p.add_argument("--write", action="append", default=[], help="a file the tool may write")
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--new-netns", action="store_true")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd or not cmd[0].startswith("/"):
        p.error("an absolute command is required after --")
    try:
        confine(args.write, uid=args.uid, gid=args.gid, new_netns=args.new_netns)
    except OSError as e:
        sys.stderr.write(f"confine: {e}\n")
        return 126
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
