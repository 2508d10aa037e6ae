"""Growing an ext2/3/4 image after its file was extended, making one (e2fsprogs).

The tools parse images and trees users made: each runs confined to writing the
one image it works on (:mod:`fcd_storage.sandbox`, #9 finding 10)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from fcd_common.errors import FailedPrecondition, Internal, InvalidArgument

from . import sandbox

log = logging.getLogger("fcd.storage")

_MAGIC_OFFSET = 1024 + 56
_MAGIC = b"\x53\xef"  # 0xEF53, little endian
_SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
TIMEOUT_S = 600.0


def is_extfs(header: bytes) -> bool:
    """True if the first bytes of an image carry the ext2/3/4 superblock magic."""
    return header[_MAGIC_OFFSET : _MAGIC_OFFSET + 2] == _MAGIC


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN)
    if path is None:
        raise FailedPrecondition(f"{name} not found: install e2fsprogs to resize ext4 disks")
    return path


def _run(argv: list[str], image: Path) -> subprocess.CompletedProcess[str]:
    """Run a tool on ``image`` in the sandbox (:mod:`fcd_storage.sandbox`)."""
    return sandbox.run(argv, image, timeout=TIMEOUT_S)


def grow(image: Path) -> None:
    """Check the filesystem (``e2fsck -fp``) and grow it to the file's size (``resize2fs``)."""
    fsck = _run([_tool("e2fsck"), "-fp", str(image)], image)
    if fsck.returncode >= 4:  # 1 and 2 mean "errors corrected"
        out = (fsck.stdout + fsck.stderr).strip()
        raise Internal(f"e2fsck failed on the new disk (exit {fsck.returncode}): {out}")
    if fsck.returncode:
        log.warning("e2fsck corrected errors on %s: %s", image, fsck.stdout.strip())
    res = _run([_tool("resize2fs"), str(image)], image)
    if res.returncode != 0:
        raise Internal(f"resize2fs failed (exit {res.returncode}): {res.stderr.strip()}")


_MKFS_OPTS = "lazy_itable_init=1,lazy_journal_init=1"


def make_blank(image: Path, label: str) -> None:
    """A fresh ext4 filesystem filling the (sparse) file ``image``."""
    res = _run(
        [_tool("mkfs.ext4"), "-q", "-F", "-E", _MKFS_OPTS, "-L", label[:16], str(image)], image
    )
    if res.returncode != 0:
        raise Internal(f"mkfs.ext4 failed (exit {res.returncode}): {res.stderr.strip()}")


def make_from_dir(image: Path, source_dir: str, inodes: int, pass_fds: tuple[int, ...]) -> None:
    """``mkfs.ext4 -d``: an ext4 filesystem filling ``image`` with the tree at ``source_dir``.

    ``source_dir`` may be ``/proc/self/fd/N`` for a directory fd in ``pass_fds``
    (the caller pinned the directory it checked). The root directory is owned by
    root whoever runs this; the files keep their owners and modes.
    """
    argv = [
        _tool("mkfs.ext4"),
        "-q",
        "-F",
        "-N",
        str(inodes),
        "-E",
        f"{_MKFS_OPTS},root_owner=0:0",
        "-d",
        source_dir,
        str(image),
    ]
    res = sandbox.run(argv, image, timeout=TIMEOUT_S, pass_fds=pass_fds)
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip()
        if "No space left" in out or "Could not allocate" in out or "inode" in out.lower():
            raise FailedPrecondition(
                f"the tree does not fit the image: {out[-500:]}", details={"field": "size_mib"}
            )
        raise InvalidArgument(
            f"mkfs.ext4 -d could not build the image: {out[-500:]}",
            details={"field": "source_dir"},
        )
    fsck = _run([_tool("e2fsck"), "-fn", str(image)], image)
    if fsck.returncode != 0:
        raise Internal(f"the built image fails e2fsck -n: {(fsck.stdout + fsck.stderr)[-500:]}")
