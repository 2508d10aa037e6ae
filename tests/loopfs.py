"""Throwaway filesystems on sparse loop images (root), for storage tests and benches.

``loop_fs(base, "xfs"|"ext4", size)`` makes a sparse image under ``base``,
formats it (XFS with ``reflink=1``), attaches a loop device, mounts it and
yields the mount point; on the way out it unmounts, detaches and deletes the
image, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

ENV = {"PATH": "/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL": "C"}
MKFS = {"xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"], "ext4": ["mkfs.ext4", "-q", "-F"]}


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=ENV).stdout.strip()


@contextlib.contextmanager
def loop_fs(base: Path, fstype: str, size: int = 2 << 30) -> Iterator[Path]:
    img, mnt = base / f"{fstype}.img", base / f"{fstype}-mnt"
    mnt.mkdir()
    with img.open("wb") as f:
        f.truncate(size)
    try:
        run(*MKFS[fstype], str(img))
        dev = run("losetup", "--find", "--show", str(img))
        mounted = False
        try:
            run("mount", "-t", fstype, dev, str(mnt))
            mounted = True
            yield mnt
        finally:
            if mounted:
                subprocess.run(["umount", str(mnt)], check=False, env=ENV)
            subprocess.run(["losetup", "-d", dev], check=False, env=ENV)
    finally:
        img.unlink(missing_ok=True)


def used_bytes(path: Path) -> int:
    """Blocks in use on the filesystem holding ``path`` (after a sync)."""
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
