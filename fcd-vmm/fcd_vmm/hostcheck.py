"""What fcd-vmm needs from the host, checked at start and before each launch.

The configured jailer and Firecracker binaries must be executable regular
files as *this* process sees them (``ProtectHome=`` or a missing mount hides a
path that exists on the host), and ``/dev/kvm`` and ``/dev/net/tun`` must open
read/write (a ``DevicePolicy=`` denial shows only on open, not in ``access``).
Each problem is one line naming the file and the cause, e.g.
``jailer /opt/fc/jailer: No such file or directory``. Warnings (not fatal):
``/etc/subuid``/``/etc/subgid`` ranges that overlap the jail uid range.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from fcd_common import subids
from fcd_common.config import Config

DEVICES = ("/dev/kvm", "/dev/net/tun")
SUBID_FILES: Sequence[str] = subids.SUBID_FILES


def binary_problem(role: str, path: str) -> str | None:
    """Why ``path`` cannot be executed as the ``role`` binary, or None."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{role} {path}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{role} {path}: not a regular file"
    if not os.access(path, os.X_OK):
        return f"{role} {path}: not executable"
    return None


def device_problem(path: str) -> str | None:
    """Why ``path`` cannot be opened read/write, or None (opened and closed: no side effect)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        return f"{path}: {e.strerror}"
    os.close(fd)
    return None


def binary_problems(cfg: Config) -> list[str]:
    found = (
        binary_problem("jailer", cfg.jail.jailer),
        binary_problem("firecracker", cfg.jail.firecracker),
    )
    return [p for p in found if p is not None]


def problems(cfg: Config, devices: tuple[str, ...] | None = None) -> list[str]:
    """Everything wrong, binaries first; empty when the host is ready for a launch."""
    found = map(device_problem, DEVICES if devices is None else devices)
    return binary_problems(cfg) + [p for p in found if p is not None]


def subid_warnings(cfg: Config, files: Sequence[str] | None = None) -> list[str]:
    """Subordinate id ranges that overlap the jail uid range (issue #9, finding 12):
    their owners can run processes as a VM's jail uid. Not fatal -- launches work --
    but the range must be reserved."""
    lo, hi = cfg.jail.uid_min, cfg.jail.uid_max
    return subids.file_overlaps(lo, hi, SUBID_FILES if files is None else files)
