"""cgroup version detection and removal of a VM's cgroup directories.

The jailer creates ``<mount>/<parent_cgroup>/<vm_id>`` (v1: one per controller
it was given; v2: one in the unified tree) and never removes it; fcd-vmm does,
on stop and release. A directory with live tasks cannot be removed, so the
caller kills the VM first; stragglers found in ``cgroup.procs`` are killed
here as a last resort.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from fcd_common import logs
from fcd_common.errors import FailedPrecondition

from .plan import CgroupVersion

log = logging.getLogger("fcd.vmm.cgroups")

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Mount:
    path: Path
    fstype: str
    options: frozenset[str]


def parse_mounts(text: str) -> list[Mount]:
    """cgroup/cgroup2 mounts from ``/proc/mounts`` text (octal escapes decoded)."""
    return list(_parse_mounts(text))


@functools.lru_cache(maxsize=4)
def _parse_mounts(text: str) -> tuple[Mount, ...]:
    """The parse, kept for text read before: /proc/mounts is read fresh on every
    call and only parsed again when it changed (two reads per VM, ten cgroup lines)."""
    out: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] not in ("cgroup", "cgroup2"):
            continue
        path = fields[1].encode().decode("unicode_escape")
        out.append(Mount(Path(path), fields[2], frozenset(fields[3].split(","))))
    return tuple(out)


def read_mounts() -> list[Mount]:
    return parse_mounts(Path("/proc/mounts").read_text())


def detect_version(setting: str, root: Path = CGROUP_ROOT) -> CgroupVersion:
    """``"1"``/``"2"`` as configured; ``"auto"``: v2 if the unified root delegates
    cpu and memory, else v1 if a v1 memory hierarchy is mounted."""
    if setting == "1":
        return 1
    if setting == "2":
        return 2
    ctrl = root / "cgroup.controllers"
    with contextlib.suppress(OSError):
        if {"cpu", "memory"} <= set(ctrl.read_text().split()):
            return 2
    if (root / "memory").is_dir():
        return 1
    raise FailedPrecondition(
        f"no usable cgroup hierarchy: {ctrl} does not list cpu and memory"
        f" and {root}/memory is missing"
    )


def available_controllers(
    version: CgroupVersion, mounts: list[Mount], root: Path = CGROUP_ROOT
) -> frozenset[str]:
    """Controllers the jailer can use for ``--cgroup`` with this version."""
    if version == 2:
        with contextlib.suppress(OSError):
            return frozenset((root / "cgroup.controllers").read_text().split())
        for m in mounts:
            if m.fstype == "cgroup2":
                with contextlib.suppress(OSError):
                    return frozenset((m.path / "cgroup.controllers").read_text().split())
        return frozenset()
    names = {"cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb"}
    return frozenset(o for m in mounts if m.fstype == "cgroup" for o in m.options if o in names)


def vm_cgroup_dirs(mounts: list[Mount], parent: str, vm_id: str) -> list[Path]:
    """Every place a VM's cgroup may live, one per distinct hierarchy mount."""
    seen: set[str] = set()
    out: list[Path] = []
    for m in mounts:
        p = f"{m.path}/{parent}/{vm_id}"  # one parse per directory, not two joins
        if p not in seen:
            seen.add(p)
            out.append(Path(p))
    return out


def _procs(d: Path) -> list[int]:
    for name in ("cgroup.procs", "tasks"):
        with contextlib.suppress(OSError, ValueError):
            return [int(x) for x in (d / name).read_text().split()]
    return []


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _kill_and_wait(pids: list[int], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    fds: list[int] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        fds.append(fd)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, fut)
        waits.append(fut)
    try:
        if waits:
            await asyncio.wait(waits, timeout=timeout)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


async def remove_vm_cgroups(
    parent: str, vm_id: str, *, mounts: list[Mount] | None = None
) -> list[str]:
    """rmdir the VM's leaf cgroup in every hierarchy; returns the problems left (if any)."""
    problems: list[str] = []
    for d in vm_cgroup_dirs(mounts if mounts is not None else read_mounts(), parent, vm_id):
        for attempt in (1, 2):
            try:
                os.rmdir(d)
                log.debug("removed cgroup %s", d, extra=logs.vm(vm_id))
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno == errno.EBUSY and attempt == 1:
                    pids = _procs(d)
                    log.warning(
                        "cgroup %s still holds %s; killing them", d, pids, extra=logs.vm(vm_id)
                    )
                    await _kill_and_wait(pids, 5.0)
                    continue
                problems.append(f"{d}: {e.strerror}")
                log.error("cannot remove cgroup %s: %s", d, e.strerror, extra=logs.vm(vm_id))
                break
    return problems
