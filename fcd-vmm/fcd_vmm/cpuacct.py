"""The VM's own cpuacct cgroup on v1 hosts where cpuacct is a hierarchy apart from cpu.

The jailer makes a VM cgroup only in the hierarchies of the files it is given, and no
cpuacct file can be given: on v1 it first copies each file's value down from the parent
cgroup, and the parent's ``cpuacct.usage`` (its running total, non-zero once any VM ran)
is refused by the kernel in the child (EINVAL, and the jailer panics). So fcd-vmm makes
``<cpuacct>/<parent>/<vm_id>`` itself and moves the verified Firecracker process into it
once it runs; its threads (the vCPUs start later) follow. CPU time spent by the jailer
before the move is not counted there. Every step is an ``openat`` with ``O_NOFOLLOW``
from the mount's root on the mount's own device.
"""

from __future__ import annotations

import errno
import os

from .cgroup_limits import cgroup_components
from .cgroups import Mount

__all__ = ["cpuacct_mount", "join_cpuacct"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def cpuacct_mount(mounts: list[Mount]) -> Mount | None:
    """The v1 cpuacct hierarchy when it is not also the cpu one (which the jailer fills)."""
    for m in mounts:
        if m.fstype == "cgroup" and "cpuacct" in m.options:
            return None if "cpu" in m.options else m
    return None


def join_cpuacct(mounts: list[Mount], parent: str, vm_id: str, pid: int) -> str | None:
    """Put ``pid`` into the VM's cpuacct cgroup (made if missing); a problem text, or None
    when done or not needed. Never raises for the host's state: metrics lose ns precision
    (they fall back to the process's own times), the VM runs on."""
    mount = cpuacct_mount(mounts)
    if mount is None:
        return None
    try:
        fd = os.open(mount.path, _DIR)
    except OSError as e:
        return f"cpuacct: {mount.path}: {e.strerror}"
    try:
        dev = os.fstat(fd).st_dev
        for name in cgroup_components(parent, vm_id):
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if os.fstat(fd).st_dev != dev:
                return f"cpuacct: cgroup path of {vm_id} leaves {mount.path}"
        wfd = os.open("cgroup.procs", os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            os.write(wfd, str(pid).encode())
        finally:
            os.close(wfd)
    except OSError as e:
        if e.errno == errno.ESRCH:
            return None  # gone already: the exit watch reports it
        return f"cpuacct: {vm_id}: {e.strerror}"
    finally:
        os.close(fd)
    return None
