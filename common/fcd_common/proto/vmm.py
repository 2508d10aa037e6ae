"""fcd-api -> fcd-vmm."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..rpc import Protocol, Reply, Request
from ..schema import Record
from ..types import DriveName, KernelArgs, MiB, Name, VcpuCount, VmId
from .common import Ping, ProbeResult
from .console import ConsoleRead
from .net import NetInfo
from .storage import DiskInfo
from .usage import Usage, UsageAll

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


# --- resources: rate limits, balloon, CPU quota, memory limit (issue 11) -------------------

BUCKET_MAX = 2**62
REFILL_MS_MAX = 86_400_000
"""A refill time of at most one day: Firecracker turns a larger one into no limit at all
(its nanosecond product overflows) and says nothing."""
CPU_QUOTA_MAX = 64.0
STATS_INTERVAL_MAX = 3600

BucketSize = Annotated[int, msgspec.Meta(ge=0, le=BUCKET_MAX)]
RefillMs = Annotated[int, msgspec.Meta(ge=0, le=REFILL_MS_MAX)]
CpuQuota = Annotated[float, msgspec.Meta(ge=0.01, le=CPU_QUOTA_MAX)]
"""A share of one host CPU (``1.5`` = 150 %), enforced by the VM's cgroup (CFS quota)."""
CpuQuotaUpdate = Annotated[float, msgspec.Meta(ge=0, le=CPU_QUOTA_MAX)]
"""As :data:`CpuQuota`; ``0`` removes the quota."""


class TokenBucket(Record):
    """Firecracker's token bucket: ``size`` tokens (bytes for bandwidth, operations for
    ops) refilled from empty to full in ``refill_time_ms``; ``one_time_burst`` is extra
    initial credit that never refills. ``size`` or ``refill_time_ms`` 0: no limit (in an
    update, that removes the limit)."""

    size: BucketSize
    refill_time_ms: RefillMs
    one_time_burst: BucketSize | None = None

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.refill_time_ms > 0


class RateLimit(Record):
    bandwidth: TokenBucket | None = None
    """Bytes."""
    ops: TokenBucket | None = None
    """Operations (block requests, packets)."""


class NetRateLimits(Record):
    rx: RateLimit | None = None
    """Into the guest."""
    tx: RateLimit | None = None
    """Out of the guest."""


class RateLimits(Record):
    """Per device: ``root`` (the root disk), ``drives`` by extra drive name, ``net`` (the
    interface). In an update only the buckets given change."""

    root: RateLimit | None = None
    drives: dict[DriveName, RateLimit] = {}
    net: NetRateLimits | None = None


class BalloonSpec(Record):
    """A virtio balloon: lets the host take memory back from the guest."""

    deflate_on_oom: bool = False
    """Let the guest deflate the balloon when it would otherwise run out of memory."""
    stats_interval_s: Annotated[int, msgspec.Meta(ge=0, le=STATS_INTERVAL_MAX)] = 0
    """Guest memory statistics every N seconds (0: off). Set at create only: Firecracker
    v1.7.0 aborts on a change after boot."""


class BalloonState(Record):
    """The balloon as Firecracker reports it: ``requested_mib`` is the size asked for
    (``GET /balloon``); ``target``/``actual`` come from ``GET /balloon/statistics``
    (None while statistics are off): what the guest driver was told and has reached."""

    requested_mib: int
    deflate_on_oom: bool
    stats_interval_s: int
    target_mib: int | None = None
    actual_mib: int | None = None
    target_pages: int | None = None
    actual_pages: int | None = None


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
    timings: dict[str, float] = {}
    """Where a Launch's or a ReleaseJail's time went, ms per phase (``fcd_common.spans``);
    empty otherwise."""


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


class ResourcesInForce(Reply):
    """What is in force for a live VM, read back from Firecracker and the VM's cgroup."""

    vm_id: str
    cgroup_version: int
    cpu_quota: float | None = None
    """None: no quota."""
    cpu_period_us: int | None = None
    mem_limit_bytes: int | None = None
    """The cgroup's hard limit (guest memory + Firecracker overhead); None: unlimited."""
    mem_usage_bytes: int | None = None
    rate_limits: RateLimits = msgspec.field(default_factory=RateLimits)
    balloon: BalloonState | None = None


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
    rate_limits: RateLimits | None = None
    balloon: BalloonSpec | None = None
    balloon_mib: Annotated[int, msgspec.Meta(ge=0)] = 0
    """The balloon's initial size (memory taken from the guest); needs ``balloon``."""
    cpu_quota: CpuQuota | None = None
    mem_limit_mib: MiB | None = None
    """Guest memory allowed by the cgroup (None: ``mem_size_mib``); the cgroup's hard
    limit adds fcd-vmm's configured Firecracker overhead."""


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


class UpdateResources(Request[ResourcesInForce], tag="vmm.update_resources"):
    """Change what a live VM may use. fcd-vmm re-checks every value against what it
    recorded at launch (memory size, drive ids, whether there is a balloon), applies
    the balloon first (a guest without a driver: ``balloon_inactive``, nothing changed),
    then rate limits (``PATCH /drives``, ``/network-interfaces``), then the cgroup (a
    memory limit below current usage: ``conflict``). Fields left None stay as they are."""

    vm_id: VmId
    rate_limits: RateLimits | None = None
    balloon_mib: Annotated[int, msgspec.Meta(ge=0)] | None = None
    cpu_quota: CpuQuotaUpdate | None = None
    """0 removes the quota."""
    mem_limit_mib: MiB | None = None


class ReadResources(Request[ResourcesInForce], tag="vmm.resources"):
    """What is in force for a running or paused VM (Firecracker's view and the cgroup)."""

    vm_id: VmId


class Probe(Request[ProbeResult], tag="vmm.probe"):
    """Health probe: does the VM's Firecracker answer ``GET /`` on its API socket within
    ``timeout_s``? A VM without a live Firecracker is a failed probe, not an error."""

    vm_id: VmId
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0


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
        UpdateResources,
        ReadResources,
        ConsoleRead,
        Usage,
        UsageAll,
        Probe,
    ],
)
