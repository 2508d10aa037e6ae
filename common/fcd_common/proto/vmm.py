"""fcd-api -> fcd-vmm."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..rpc import Protocol, Reply, Request
from ..schema import Record
from ..types import KernelArgs, MiB, Name, VcpuCount, VmId
from .common import Ping
from .console import ConsoleRead
from .net import NetInfo
from .storage import DiskInfo

ProcState = Literal["not_started", "running", "paused", "exited", "absent"]
SnapshotType = Literal["full", "diff"]


class SnapshotFiles(Record):
    """A snapshot's state and memory files: fcd-storage's snapshot entry ``name``, or
    (``kind="suspend"``) the suspend files in the disk directory of the VM ``name``.

    fcd-vmm re-checks that the paths are exactly those files (pending for a create,
    committed for a restore; suspend files only for that VM itself) and links them
    into the jail itself.
    """

    name: Name
    state_path: str
    memory_path: str
    kind: Literal["snapshot", "suspend"] = "snapshot"


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


class VmmInfo(Reply):
    """The Firecracker binary fcd-vmm launches: ``--version`` and ``--snapshot-version``
    (a snapshot loads only into the same major snapshot format, minor not newer)."""

    firecracker_version: str
    snapshot_version: str


class VmExit(Record):
    """A Firecracker process that ended without fcd-vmm ending it (a crash, a kill, or
    the guest shutting down: Firecracker exits 0 then)."""

    seq: int
    vm_id: str
    pid: int
    exit_code: int | None
    """0: the guest shut down or rebooted; > 0: Firecracker's own error exit;
    < 0: killed by that signal; None: not our child, status unknown."""
    at: str
    """RFC 3339, when fcd-vmm saw it."""
    log_tail: list[str] = []
    """Firecracker's last log lines."""


class VmExits(Reply):
    epoch: str
    """This fcd-vmm process's id: another epoch means fcd-vmm restarted, sequence numbers
    began again, and the caller should compare its records with ``vmm.list``."""
    items: list[VmExit]
    next: int
    """The ``since`` to pass next."""


class SnapshotTaken(Reply):
    vm_id: str
    type: SnapshotType
    state_size: int
    memory_size: int
    firecracker_version: str
    snapshot_version: str
    took_ms: float


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
    track_dirty_pages: bool = False
    """Needed for diff snapshots (Firecracker v1.7 refuses a Diff without it)."""
    restore: SnapshotFiles | None = None
    """Start from this (ready) snapshot instead of booting: ``PUT /snapshot/load`` is
    the first configuration call of the fresh Firecracker; the VM's disk and TAP are
    at the paths and names the snapshot was taken with (netns mode for clones)."""
    resume: bool = True
    """With ``restore``: running (True) or paused (False) once loaded."""


class Pause(Request[VmProcess], tag="vmm.pause"):
    vm_id: VmId


class Resume(Request[VmProcess], tag="vmm.resume"):
    vm_id: VmId


class Stop(Request[StopResult], tag="vmm.stop"):
    """SendCtrlAltDel, wait up to ``timeout_s`` (config default), then SIGKILL.

    ``force``: SIGKILL at once, never resuming a paused guest first (a suspend: the
    guest must not run, or write its disk, after its memory was saved)."""

    vm_id: VmId
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] | None = None
    force: bool = False


class ReleaseJail(Request[VmProcess], tag="vmm.release"):
    """Kill and reap the VM if alive, remove its chroot and cgroups, free its uid.
    Idempotent; the reply's state is ``absent``."""

    vm_id: VmId


class Status(Request[VmProcess], tag="vmm.status"):
    vm_id: VmId


class ListVms(Request[VmProcessList], tag="vmm.list"):
    pass


class Info(Request[VmmInfo], tag="vmm.info"):
    pass


class WatchExits(Request[VmExits], tag="vmm.watch_exits"):
    """Long poll: the exits after ``since`` (of this epoch), at once if there are any,
    else as soon as one happens, or an empty list after ``wait_s``."""

    long_poll = True
    since: Annotated[int, msgspec.Meta(ge=0)] = 0
    epoch: str | None = None
    """The caller's last epoch: another one (or None) returns every exit still held."""
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 25.0


class SnapshotCreate(Request[SnapshotTaken], tag="vmm.snapshot_create"):
    """Have the paused VM's Firecracker write ``files`` (a pending snapshot of fcd-storage,
    or this VM's pending suspend files).

    fcd-vmm links the two files into the jail, lends them to the jail uid while
    Firecracker writes them (``PUT /snapshot/create``), then hands them back to
    their owner and removes the links. The VM stays paused. ``diff`` needs a VM
    launched with ``track_dirty_pages``.
    """

    vm_id: VmId
    files: SnapshotFiles
    type: SnapshotType = "full"


PROTOCOL = Protocol(
    "fcd-vmm",
    [
        Ping,
        AllocateJail,
        Launch,
        Pause,
        Resume,
        Stop,
        ReleaseJail,
        Status,
        ListVms,
        Info,
        SnapshotCreate,
        WatchExits,
        ConsoleRead,
    ],
)
