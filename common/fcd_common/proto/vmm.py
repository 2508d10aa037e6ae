"""fcd-api -> fcd-vmm."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..rpc import Protocol, Reply, Request
from ..types import KernelArgs, MiB, VcpuCount, VmId
from .common import Ping
from .net import NetInfo
from .storage import DiskInfo

ProcState = Literal["not_started", "running", "paused", "exited", "absent"]


# --- replies --------------------------------------------------------------------------


class JailInfo(Reply):
    vm_id: str
    uid: int
    gid: int
    chroot_dir: str


class VmProcess(Reply):
    """``state``: ``running``/``paused``/``not_started`` as Firecracker reports them
    (``GET /``), ``exited`` once the process is gone (after Stop, or if it ended by
    itself), ``not_started`` too for a jail that was never launched, ``absent`` for a
    VM without a jail."""

    vm_id: str
    state: ProcState
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    chroot_dir: str | None = None
    api_socket: str | None = None
    exit_code: int | None = None


class StopResult(Reply):
    vm_id: str
    graceful: bool
    """True if the guest shut down after Ctrl-Alt-Del; False if it had to be killed."""


class VmProcessList(Reply):
    items: list[VmProcess]


# --- requests -------------------------------------------------------------------------


class AllocateJail(Request[JailInfo], tag="vmm.allocate_jail"):
    """Reserve a uid/gid from the pool for this VM. Idempotent per vm_id."""

    vm_id: VmId


class Launch(Request[VmProcess], tag="vmm.launch"):
    """Prepare the jail, start jailer -> Firecracker, configure it and boot.

    ``disk`` and ``net`` are what fcd-storage and fcd-net answered, passed on
    unchanged. fcd-vmm trusts neither: it re-checks every field it uses (the
    kernel must be a template kernel and the disks this VM's own, inside
    fcd-storage's directories; addresses and MAC), and derives the TAP name and
    the network namespace from the VM id and ``net.mode`` itself.
    """

    vm_id: VmId
    vcpu_count: VcpuCount
    mem_size_mib: MiB
    kernel_args: KernelArgs
    disk: DiskInfo
    net: NetInfo


class Pause(Request[VmProcess], tag="vmm.pause"):
    vm_id: VmId


class Resume(Request[VmProcess], tag="vmm.resume"):
    vm_id: VmId


class Stop(Request[StopResult], tag="vmm.stop"):
    """SendCtrlAltDel, wait up to ``timeout_s`` (config default), then SIGKILL."""

    vm_id: VmId
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] | None = None


class ReleaseJail(Request[VmProcess], tag="vmm.release"):
    """Kill and reap the VM if alive, remove its chroot and cgroups, free its uid.
    Idempotent; the reply's state is ``absent``."""

    vm_id: VmId


class Status(Request[VmProcess], tag="vmm.status"):
    vm_id: VmId


class ListVms(Request[VmProcessList], tag="vmm.list"):
    pass


PROTOCOL = Protocol(
    "fcd-vmm",
    [Ping, AllocateJail, Launch, Pause, Resume, Stop, ReleaseJail, Status, ListVms],
)
