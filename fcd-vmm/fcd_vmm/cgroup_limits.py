"""CPU quota and memory limit of one VM's cgroup: what to write (pure) and writing it by fd.

The jailer makes ``<mount>/<parent_cgroup>/<vm_id>`` (v1: one per controller, v2
one in the unified tree) and writes the launch values itself (``--cgroup``);
later changes are written here. Root never follows a path another party could
change: the controller's mount root is opened first (it must be a cgroup mount
listed in ``/proc/mounts``), then each component with ``openat(O_NOFOLLOW |
O_DIRECTORY)`` from the previous one, staying on the mount's device, and the
file last with ``O_NOFOLLOW``. Nothing outside this VM's own cgroup is touched.

Values (FIRECRACKER.md §3, kernel docs): v1 ``cpu.cfs_period_us`` +
``cpu.cfs_quota_us`` (``-1`` = none), ``memory.limit_in_bytes`` (a huge
number = none) and ``memory.usage_in_bytes``; v2 ``cpu.max`` (``"max 100000"``
= none), ``memory.max`` (``"max"``) and ``memory.current``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fcd_common.errors import Conflict, FailedPrecondition, Internal, InvalidArgument
from fcd_common.ids import check_vm_id

from .cgroups import Mount, read_mounts
from .plan import MIB, CgroupVersion

__all__ = [
    "CFS_PERIOD_US",
    "CgroupLimits",
    "apply_cpu_quota",
    "apply_mem_limit",
    "check_cpu",
    "check_mem_limit",
    "cpu_quota_values",
    "launch_values",
    "mem_limit_value",
    "open_vm_cgroup",
    "parse_cpu",
    "parse_mem",
    "read_limits",
]

CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
"""The kernel refuses a CFS quota below 1 ms."""
V1_UNLIMITED = 1 << 62
"""v1 reports "no memory limit" as PAGE_COUNTER_MAX pages in bytes (~2^63); anything
this large is unlimited."""


# --- pure --------------------------------------------------------------------------------


def quota_us(quota: float) -> int:
    return max(MIN_QUOTA_US, round(quota * CFS_PERIOD_US))


def cpu_quota_values(version: CgroupVersion, quota: float | None) -> list[tuple[str, str]]:
    """``(file, value)`` for a CPU quota (None or 0: no quota)."""
    if version == 1:
        q = "-1" if not quota else str(quota_us(quota))
        return [("cpu.cfs_period_us", str(CFS_PERIOD_US)), ("cpu.cfs_quota_us", q)]
    q = "max" if not quota else str(quota_us(quota))
    return [("cpu.max", f"{q} {CFS_PERIOD_US}")]


def mem_limit_value(version: CgroupVersion, limit_bytes: int) -> tuple[str, str]:
    return ("memory.limit_in_bytes" if version == 1 else "memory.max", str(limit_bytes))


def launch_values(
    version: CgroupVersion, quota: float | None, controllers: frozenset[str]
) -> list[tuple[str, str]]:
    """Extra ``--cgroup`` values for a launch (the quota; the memory limit is in
    :func:`fcd_vmm.plan.cgroup_settings`). A quota needs the cpu controller."""
    if not quota:
        return []
    if "cpu" not in controllers:
        raise FailedPrecondition(
            f"cpu_quota needs the cpu controller, which cgroup v{version} lacks on this host"
        )
    return cpu_quota_values(version, quota)


def parse_cpu(version: CgroupVersion, files: dict[str, str]) -> tuple[float | None, int | None]:
    """(quota as a CPU share or None, period in µs) from the cpu files' contents."""
    try:
        if version == 1:
            period = int(files["cpu.cfs_period_us"])
            q = int(files["cpu.cfs_quota_us"])
            return (None if q < 0 else round(q / period, 4)), period
        q_text, period_text = files["cpu.max"].split()
        period = int(period_text)
        return (None if q_text == "max" else round(int(q_text) / period, 4)), period
    except (KeyError, ValueError, ZeroDivisionError):
        return None, None


def parse_mem(text: str | None) -> int | None:
    """Bytes, or None for no limit / unreadable."""
    if text is None or text.strip() in ("", "max"):
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= V1_UNLIMITED else value


# --- by fd -------------------------------------------------------------------------------


def _controller_mount(version: CgroupVersion, controller: str, mounts: list[Mount]) -> Mount:
    for m in mounts:
        if version == 2 and m.fstype == "cgroup2":
            return m
        if version == 1 and m.fstype == "cgroup" and controller in m.options:
            return m
    raise FailedPrecondition(f"no cgroup v{version} mount with the {controller} controller")


def cgroup_components(parent: str, vm_id: str) -> list[str]:
    parts = [p for p in parent.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InvalidArgument(f"parent cgroup {parent!r} is not a plain relative path")
    return [*parts, check_vm_id(vm_id)]


@contextlib.contextmanager
def open_vm_cgroup(mount: Mount, parent: str, vm_id: str) -> Iterator[int]:
    """An ``O_PATH`` fd of ``<mount>/<parent>/<vm_id>``, each step ``O_NOFOLLOW`` on the
    mount's own device; FailedPrecondition if the VM has no cgroup there."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(mount.path, flags)
    try:
        dev = os.fstat(fd).st_dev
        for name in cgroup_components(parent, vm_id):
            try:
                nfd = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                raise FailedPrecondition(
                    f"VM {vm_id} has no cgroup under {mount.path}/{parent}"
                ) from None
            except OSError as e:
                raise Internal(f"cannot open cgroup {mount.path}/{parent}/{name}: {e}") from None
            os.close(fd)
            fd = nfd
            if os.fstat(fd).st_dev != dev:
                raise Internal(f"cgroup path of VM {vm_id} leaves {mount.path}")
        yield fd
    finally:
        os.close(fd)


def _read(dir_fd: int, name: str) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)


def _write(dir_fd: int, name: str, value: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CgroupLimits:
    cpu_quota: float | None
    cpu_period_us: int | None
    mem_limit_bytes: int | None
    mem_usage_bytes: int | None


def read_limits(
    version: CgroupVersion, parent: str, vm_id: str, mounts: list[Mount] | None = None
) -> CgroupLimits:
    mounts = read_mounts() if mounts is None else mounts
    cpu_files: dict[str, str] = {}
    with (
        contextlib.suppress(FailedPrecondition),
        open_vm_cgroup(_controller_mount(version, "cpu", mounts), parent, vm_id) as fd,
    ):
        for name in ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.max"):
            text = _read(fd, name)
            if text is not None:
                cpu_files[name] = text
    limit = usage = None
    with (
        contextlib.suppress(FailedPrecondition),
        open_vm_cgroup(_controller_mount(version, "memory", mounts), parent, vm_id) as fd,
    ):
        if version == 1:
            limit = parse_mem(_read(fd, "memory.limit_in_bytes"))
            usage = parse_mem(_read(fd, "memory.usage_in_bytes"))
        else:
            limit = parse_mem(_read(fd, "memory.max"))
            usage = parse_mem(_read(fd, "memory.current"))
    quota, period = parse_cpu(version, cpu_files)
    return CgroupLimits(quota, period, limit, usage)


def apply_cpu_quota(
    version: CgroupVersion,
    parent: str,
    vm_id: str,
    quota: float | None,
    mounts: list[Mount] | None = None,
) -> None:
    mounts = read_mounts() if mounts is None else mounts
    with open_vm_cgroup(_controller_mount(version, "cpu", mounts), parent, vm_id) as fd:
        for name, value in cpu_quota_values(version, quota):
            try:
                _write(fd, name, value)
            except OSError as e:
                raise Internal(f"cannot write {name}={value} for VM {vm_id}: {e}") from None


def check_cpu(
    version: CgroupVersion, parent: str, vm_id: str, mounts: list[Mount] | None = None
) -> None:
    """FailedPrecondition if the VM has no cpu cgroup to take a quota (asked before
    anything else of an update changes)."""
    mounts = read_mounts() if mounts is None else mounts
    with open_vm_cgroup(_controller_mount(version, "cpu", mounts), parent, vm_id):
        pass


def check_mem_limit(
    version: CgroupVersion,
    parent: str,
    vm_id: str,
    limit_bytes: int,
    mounts: list[Mount] | None = None,
) -> int | None:
    """Conflict if the VM uses more than ``limit_bytes`` now; returns the usage."""
    mounts = read_mounts() if mounts is None else mounts
    with open_vm_cgroup(_controller_mount(version, "memory", mounts), parent, vm_id) as fd:
        usage = parse_mem(_read(fd, "memory.usage_in_bytes" if version == 1 else "memory.current"))
    if usage is not None and limit_bytes < usage:
        raise Conflict(
            f"memory limit {limit_bytes // MIB} MiB is below what VM {vm_id} uses now"
            f" ({usage / MIB:.1f} MiB incl. Firecracker): nothing changed",
            details={"limit_bytes": limit_bytes, "usage_bytes": usage},
        )
    return usage


def apply_mem_limit(
    version: CgroupVersion,
    parent: str,
    vm_id: str,
    limit_bytes: int,
    mounts: list[Mount] | None = None,
) -> None:
    mounts = read_mounts() if mounts is None else mounts
    name, value = mem_limit_value(version, limit_bytes)
    with open_vm_cgroup(_controller_mount(version, "memory", mounts), parent, vm_id) as fd:
        try:
            _write(fd, name, value)
        except OSError as e:
            if e.errno == errno.EBUSY:  # the kernel could not reclaim down to it
                raise Conflict(
                    f"memory limit {limit_bytes // MIB} MiB is below what VM {vm_id} uses"
                    " (the kernel could not reclaim enough): nothing changed",
                    details={"limit_bytes": limit_bytes},
                ) from None
            raise Internal(f"cannot write {name}={value} for VM {vm_id}: {e}") from None


def cgroup_dir(version: CgroupVersion, controller: str, parent: str, vm_id: str) -> Path:
    """For messages and tests: where the VM's cgroup of ``controller`` is."""
    return _controller_mount(version, controller, read_mounts()).path / parent / vm_id
