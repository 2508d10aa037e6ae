"""Who may read the store: fcd-storage itself, nobody else by mode (#9 finding 6).

Images, disks and snapshots hold guest data (a snapshot's memory file is a
guest's RAM), so nothing in the store is world-accessible: directories are
0750 and files at most 0640 (group: fcd-storage's own). fcd-vmm reads it as
root; a jailed Firecracker reads only what fcd-vmm links into its jail, through
an ACL entry for its own uid (templates, snapshots) or as the owner (its disk).

Stores made by earlier versions (0755 trees, 0644 templates) are tightened at
every start by :func:`tighten`: the "other" bits are removed, nothing else.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

DIR = 0o750
FILE = 0o640
NO_OTHER = ~0o007


def tighten(root: Path) -> Iterator[Path]:
    """Remove the "other" permission bits from every directory and regular file below
    ``root`` (symlinks and special files are left alone, never followed); yields what
    changed. Files fcd-storage does not own (a running VM's disk belongs to its jail
    uid) are skipped: their owner's mode is fcd-vmm's business."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            try:
                st = os.lstat(path)
                if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                    continue
                mode = stat.S_IMODE(st.st_mode)
                if mode & 0o007 and st.st_uid == os.geteuid():
                    os.chmod(path, mode & NO_OTHER)
                    yield path
            except (FileNotFoundError, PermissionError):
                continue
