"""Public API bodies (msgspec Structs) and the registry's record type.

The public ``VM`` keeps the seed's ``VMInstance`` field names. Constraints
that do not depend on the configuration live in the types, so a bad body is
rejected by the decoder with the path of the field; limits that come from the
configuration (``limits.max_vcpu`` ...) are checked in :mod:`fcd_api.service`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from fcd_common.proto.common import PortMapping
from fcd_common.proto.net import NetInfo, PolicySpec
from fcd_common.proto.storage import DiskInfo, DriveSpec, SuspendInfo
from fcd_common.proto.vmm import BalloonSpec, CpuQuota, JailInfo, RateLimits
from fcd_common.schema import Record
from fcd_common.types import KernelArgs, MiB, Name, NetMode, VcpuCount, VmId

from .supervision_models import Health, HealthCheck, RestartPolicy, WaitFor

__all__ = [
    "MAX_ANNOTATIONS",
    "MAX_LABELS",
    "VM",
    "Annotations",
    "CreateVMRequest",
    "DriveSpec",
    "ErrorBody",
    "ErrorDetail",
    "Labels",
    "PortMapping",
    "Runtime",
    "VMConfig",
    "VMState",
    "VersionInfo",
    "VmRecord",
    "now",
]

MIN_MEM_MIB = 128
MAX_MEM_MIB = 1 << 20

LabelKey = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}\Z", min_length=1, max_length=63)
]
LabelValue = Annotated[str, msgspec.Meta(max_length=256)]
AnnotationKey = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
AnnotationValue = Annotated[str, msgspec.Meta(max_length=4096)]
MAX_LABELS = 64
MAX_ANNOTATIONS = 64
Labels = Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=MAX_LABELS)]
"""At most 64 labels of at most 63 + 256 characters (#9 finding 14: 100,000 were taken)."""
Annotations = Annotated[
    dict[AnnotationKey, AnnotationValue], msgspec.Meta(max_length=MAX_ANNOTATIONS)
]
"""At most 64 annotations of at most 253 + 4096 characters: about 277 KiB in all, under
fcd-api's 1 MiB body limit."""


class VMState(enum.StrEnum):
    UNKNOWN = "unknown"
    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"
    """A delete under way (or cut short: fcd-api's reconciliation finishes it)."""
    SUSPENDED = "suspended"
    """Firecracker gone, memory and state on disk (the VM's own); id, disk, IP and port
    mappings kept. Not in the seed's list: its closest seed state is ``stopped``."""
    ERROR = "error"


def now() -> str:
    """The current time as RFC 3339 UTC (millisecond precision, ``Z`` suffix)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CreateVMRequest(Record):
    """Body of ``POST /v1/vms``. Also stored as the VM's spec (with ``id`` filled in)."""

    id: VmId | None = None
    """Client-chosen id; generated when absent. Repeating a create with the same id
    and spec returns the existing VM; a different spec is a 409."""
    sandbox_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    template: Name
    vcpu_count: VcpuCount = 1
    mem_size_mib: Annotated[int, msgspec.Meta(ge=MIN_MEM_MIB, le=MAX_MEM_MIB)] = 128
    disk_size_mib: MiB | None = None
    """Root disk size; the template's image size when absent."""
    kernel_args: KernelArgs = ""
    """Appended to the template's kernel arguments."""
    port_mappings: Annotated[list[PortMapping], msgspec.Meta(max_length=64)] = []
    """tcp/udp from the host's addresses (and the host itself) to the guest; ``host_port``
    0 allocates one from fcd-net's range; a taken port is a 409, and so is a port a
    host service listens on (``host_port_in_use``, naming the listener; 127.0.0.0/8
    is redirected only if the operator enables it). The VM's ``port_mappings``
    show the ports in force (allocated, added, removed)."""
    network_mode: NetMode | None = None
    """None: fcd-net's configured default. netns: a namespace of its own with the same
    TAP, guest IP and MAC as every other VM (for clones of one snapshot)."""
    network_policy: PolicySpec | None = None
    """None: the safe defaults (no VM-to-VM, internet yes, private ranges and host no).
    ``allow`` may only name CIDRs inside the operator's ``network.allowable_cidrs``
    (none by default); anything else is a 403 naming the rule."""
    labels: Labels = {}
    annotations: Annotations = {}
    drives: Annotated[list[DriveSpec], msgspec.Meta(max_length=16)] = []
    """Extra drives (data or shared read-only), attached after the root disk: at most
    ``limits.max_drives`` (itself at most 16)."""
    track_dirty_pages: bool = False
    """Let Firecracker track dirty pages, so the VM can take diff snapshots."""
    rate_limits: RateLimits | None = None
    """Token buckets (bandwidth, ops) of the root disk, extra drives and the interface."""
    balloon: BalloonSpec | None = None
    """A balloon device, so memory can be taken back while the VM runs."""
    cpu_quota: CpuQuota | None = None
    """A share of one host CPU (1.5 = 150 %), enforced by the VM's cgroup."""
    mem_limit_mib: Annotated[int, msgspec.Meta(ge=MIN_MEM_MIB, le=MAX_MEM_MIB)] | None = None
    """Guest memory the cgroup allows (None: ``mem_size_mib``); Firecracker's overhead is
    added to it for the hard limit."""
    mem_target_mib: Annotated[int, msgspec.Meta(ge=0, le=MAX_MEM_MIB)] | None = None
    """Guest memory to leave the guest through the balloon (needs ``balloon``)."""
    health_check: HealthCheck | None = None
    """None: ``supervision.health_check`` of the configuration (none by default)."""
    restart_policy: RestartPolicy | None = None
    """None: ``supervision.restart_mode`` (``no`` by default)."""
    wait_for: WaitFor | None = None
    """Create and start answer ``running`` only once the guest accepts a TCP connection
    on this port (``tcp:PORT``) or printed a line matching (``serial:REGEX``)."""
    wait_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None
    """None: ``supervision.wait_timeout_s``. A create that times out is undone."""


class VMConfig(Record):
    vcpu_count: int
    mem_size_mib: int
    template: str
    disk_size_mib: int | None
    kernel_args: str
    drives: list[DriveSpec] = []
    rate_limits: RateLimits | None = None
    balloon: BalloonSpec | None = None
    cpu_quota: float | None = None
    mem_limit_mib: int | None = None
    mem_target_mib: int | None = None


class VM(Record):
    """A VM as returned by the API (the seed's ``VMInstance`` plus a few extras)."""

    id: str
    sandbox_id: str | None
    state: VMState
    config: VMConfig
    pid: int | None
    ip_address: str | None
    port_mappings: list[PortMapping]
    resources: dict[str, Any]
    created_at: str
    started_at: str | None
    stopped_at: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    # extras
    tap: str | None = None
    mac: str | None = None
    gateway: str | None = None
    uid: int | None = None
    error: str | None = None
    updated_at: str | None = None
    network_mode: str | None = None
    host_ip: str | None = None
    """The VM's unique address on the host (netns mode: its veth; else ``ip_address``)."""
    restored_from: str | None = None
    """The snapshot this VM was restored from (its first start)."""
    health: Health | None = None
    """starting, healthy or unhealthy while running with a health check; else None."""
    restarts: int = 0
    """Restarts by the restart policy since the VM last was healthy (or a client started it)."""


class ErrorDetail(Record):
    code: str
    message: str
    details: Any = None


class ErrorBody(Record):
    error: ErrorDetail


class VersionInfo(Record):
    version: str
    api_version: str = "v1"


class Runtime(Record):
    """What the helpers handed out for a VM, kept as they answered (the registry's
    runtime column): the jail, the disks, the network, and the live process."""

    jail: JailInfo | None = None
    disk: DiskInfo | None = None
    net: NetInfo | None = None
    template_kernel_args: str | None = None
    pid: int | None = None
    restored_from: str | None = None
    """The snapshot the VM was created from (None: booted from its template)."""
    last_snapshot: str | None = None
    """The VM's latest snapshot: the parent of its next diff snapshot."""
    suspend: SuspendInfo | None = None
    """The VM's committed suspend files (a wake loads them)."""
    health: Health | None = None
    restarts: int = 0


class VmRecord(Record):
    """One registry row."""

    id: str
    spec: CreateVMRequest
    state: VMState
    runtime: Runtime = Runtime()
    error: str | None = None
    created_at: str
    started_at: str | None = None
    stopped_at: str | None = None
    updated_at: str

    def to_public(self) -> VM:
        s, r = self.spec, self.runtime
        net = r.net
        return VM(
            id=self.id,
            sandbox_id=s.sandbox_id,
            state=self.state,
            config=VMConfig(
                vcpu_count=s.vcpu_count,
                mem_size_mib=s.mem_size_mib,
                template=s.template,
                disk_size_mib=s.disk_size_mib,
                kernel_args=s.kernel_args,
                drives=list(s.drives),
                rate_limits=s.rate_limits,
                balloon=s.balloon,
                cpu_quota=s.cpu_quota,
                mem_limit_mib=s.mem_limit_mib,
                mem_target_mib=s.mem_target_mib,
            ),
            pid=r.pid,
            ip_address=net.ip if net else None,
            port_mappings=list(s.port_mappings if net is None else net.ports),
            resources={"vcpu_count": s.vcpu_count, "mem_size_mib": s.mem_size_mib},
            created_at=self.created_at,
            started_at=self.started_at,
            stopped_at=self.stopped_at,
            labels=dict(s.labels),
            annotations=dict(s.annotations),
            tap=net.tap if net else None,
            mac=net.mac if net else None,
            gateway=net.gateway if net else None,
            uid=r.jail.uid if r.jail else None,
            error=self.error,
            updated_at=self.updated_at,
            network_mode=net.mode if net else None,
            host_ip=net.host_ip if net else None,
            restored_from=r.restored_from,
            health=r.health,
            restarts=r.restarts,
        )
