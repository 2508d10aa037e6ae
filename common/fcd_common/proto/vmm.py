"""fcd-api -> fcd-vmm."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..ids import VmId
from ..rpc import Protocol, Reply, Request
from .common import MiB, Ping

VcpuCount = Annotated[int, msgspec.Meta(ge=1, le=32)]
ProcState = Literal["not_started", "running", "paused", "exited", "absent"]


class AllocateJail(Request, tag="vmm.allocate_jail", frozen=True):
    """Reserve a uid/gid from the pool for this VM. Idempotent per vm_id."""

    vm_id: VmId


class JailInfo(Reply, frozen=True):
    vm_id: str
    uid: int
    gid: int
    chroot_dir: str


class LaunchDrive(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An extra drive: this VM's own data drive (read-write), or a template's rootfs,
    which fcd-vmm accepts only with ``read_only``."""

    drive_id: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    path: str
    read_only: bool = False


class Launch(Request, tag="vmm.launch", frozen=True):
    """Prepare the jail, start jailer -> Firecracker, configure it and boot.

    ``kernel_path``/``rootfs_path`` must be files inside fcd-storage's
    directories (fcd-vmm re-checks); they are linked into the chroot.
    """

    vm_id: VmId
    vcpu_count: VcpuCount
    mem_size_mib: MiB
    kernel_path: str
    rootfs_path: str
    kernel_args: str
    tap: str
    mac: str
    ip: str
    gateway: str
    prefix_len: Annotated[int, msgspec.Meta(ge=1, le=30)]
    drives: list[LaunchDrive] = []
    netns: str | None = None
    """netns mode: the VM's namespace (``/run/netns/<netns_prefix><digest>``) for the
    jailer's ``--netns``; fcd-vmm recomputes it from the id and the TAP name from config."""


class Pause(Request, tag="vmm.pause", frozen=True):
    vm_id: VmId


class Resume(Request, tag="vmm.resume", frozen=True):
    vm_id: VmId


class Stop(Request, tag="vmm.stop", frozen=True):
    """SendCtrlAltDel, wait up to ``timeout_s`` (config default), then SIGKILL."""

    vm_id: VmId
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] | None = None


class ReleaseJail(Request, tag="vmm.release", frozen=True):
    """Kill and reap the VM if alive, remove its chroot and cgroups, free its uid. Idempotent."""

    vm_id: VmId


class Status(Request, tag="vmm.status", frozen=True):
    vm_id: VmId


class ListVms(Request, tag="vmm.list", frozen=True):
    pass


class VmProcess(Reply, frozen=True):
    vm_id: str
    state: ProcState
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    chroot_dir: str | None = None
    api_socket: str | None = None
    exit_code: int | None = None


class StopResult(Reply, frozen=True):
    vm_id: str
    graceful: bool
    """True if the guest shut down after Ctrl-Alt-Del; False if it had to be killed."""


class VmProcessList(Reply, frozen=True):
    items: list[VmProcess]


PROTOCOL = Protocol(
    "fcd-vmm",
    [Ping, AllocateJail, Launch, Pause, Resume, Stop, ReleaseJail, Status, ListVms],
)
