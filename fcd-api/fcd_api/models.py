"""Public API bodies (msgspec Structs) and the registry's record type.

The public ``VM`` keeps the seed's ``VMInstance`` field names. Constraints
that do not depend on the configuration live in the types, so a bad body is
rejected by the decoder with the path of the field; limits that come from the
configuration (``limits.max_vcpu`` ...) are checked in :mod:`fcd_api.flows`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from fcd_common.ids import Name, VmId
from fcd_common.proto.net import PolicySpec

__all__ = [
    "VM",
    "CreateVMRequest",
    "DriveRequest",
    "ErrorBody",
    "ErrorDetail",
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

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
HostPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""0: fcd-net picks a free port from its configured range."""
LabelKey = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$", min_length=1, max_length=63)
]
LabelValue = Annotated[str, msgspec.Meta(max_length=256)]
AnnotationKey = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
AnnotationValue = Annotated[str, msgspec.Meta(max_length=4096)]
KERNEL_ARGS_MAX = 1024
"""fcd-vmm's limit for the whole (template + request) command line it is given."""
KernelArgs = Annotated[str, msgspec.Meta(pattern=r"^[\x20-\x7e]*$", max_length=KERNEL_ARGS_MAX)]
"""Printable ASCII only: the command line goes to Firecracker verbatim."""


class VMState(enum.StrEnum):
    UNKNOWN = "unknown"
    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


def now() -> str:
    """The current time as RFC 3339 UTC (millisecond precision, ``Z`` suffix)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Body(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pass


class PortMapping(_Body, kw_only=True, frozen=True):
    host_port: HostPort
    guest_port: Port
    protocol: Literal["tcp", "udp"] = "tcp"


class DriveRequest(_Body, kw_only=True, frozen=True):
    """An extra drive: ``size_mib`` for a blank ext4 data drive, or ``template`` to attach
    that template's image read-only (shared by every VM using it)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    size_mib: Annotated[int, msgspec.Meta(ge=1)] | None = None
    template: Name | None = None


class RuntimeDrive(_Body, kw_only=True, frozen=True):
    name: str
    path: str
    read_only: bool


class CreateVMRequest(_Body, kw_only=True, frozen=True):
    """Body of ``POST /v1/vms``. Also stored as the VM's spec (with ``id`` filled in)."""

    id: VmId | None = None
    """Client-chosen id; generated when absent. Repeating a create with the same id
    and spec returns the existing VM; a different spec is a 409."""
    sandbox_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    template: Name
    vcpu_count: Annotated[int, msgspec.Meta(ge=1, le=32)] = 1
    mem_size_mib: Annotated[int, msgspec.Meta(ge=MIN_MEM_MIB, le=MAX_MEM_MIB)] = 128
    disk_size_mib: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Root disk size; the template's image size when absent."""
    kernel_args: KernelArgs = ""
    """Appended to the template's kernel arguments."""
    port_mappings: Annotated[list[PortMapping], msgspec.Meta(max_length=64)] = []
    """tcp/udp from the host's addresses (and the host itself) to the guest; ``host_port``
    0 allocates one from fcd-net's range; a taken port is a 409. The VM's
    ``port_mappings`` show the ports in force (allocated, added, removed)."""
    network_mode: Literal["bridge", "netns"] | None = None
    """None: fcd-net's configured default. netns: a namespace of its own with the same
    TAP, guest IP and MAC as every other VM (for clones of one snapshot)."""
    network_policy: PolicySpec | None = None
    """None: the safe defaults (no VM-to-VM, internet yes, private ranges and host no)."""
    labels: dict[LabelKey, LabelValue] = {}
    annotations: dict[AnnotationKey, AnnotationValue] = {}
    drives: list[DriveRequest] = []
    """Extra drives (data or shared read-only), attached after the root disk."""


class VMConfig(_Body, kw_only=True, frozen=True):
    vcpu_count: int
    mem_size_mib: int
    template: str
    disk_size_mib: int | None
    kernel_args: str
    drives: list[DriveRequest] = []


class VM(_Body, kw_only=True, frozen=True):
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


class ErrorDetail(_Body, kw_only=True, frozen=True):
    code: str
    message: str
    details: Any = None


class ErrorBody(_Body, kw_only=True, frozen=True):
    error: ErrorDetail


class VersionInfo(_Body, kw_only=True, frozen=True):
    version: str
    api_version: str = "v1"


class Runtime(_Body, kw_only=True, frozen=True):
    """What the helpers handed out for a VM (the registry's runtime fields)."""

    uid: int | None = None
    gid: int | None = None
    chroot_dir: str | None = None
    tap: str | None = None
    mac: str | None = None
    ip: str | None = None
    gateway: str | None = None
    prefix_len: int | None = None
    bridge: str | None = None
    kernel_path: str | None = None
    rootfs_path: str | None = None
    disk_method: str | None = None
    template_kernel_args: str | None = None
    pid: int | None = None
    drives: list[RuntimeDrive] = []
    port_mappings: list[PortMapping] | None = None
    """As fcd-net holds them (host ports allocated); None before network setup."""
    network_mode: str | None = None
    netns: str | None = None
    host_ip: str | None = None


class VmRecord(_Body, kw_only=True, frozen=True):
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
            ),
            pid=r.pid,
            ip_address=r.ip,
            port_mappings=list(s.port_mappings if r.port_mappings is None else r.port_mappings),
            resources={"vcpu_count": s.vcpu_count, "mem_size_mib": s.mem_size_mib},
            created_at=self.created_at,
            started_at=self.started_at,
            stopped_at=self.stopped_at,
            labels=dict(s.labels),
            annotations=dict(s.annotations),
            tap=r.tap,
            mac=r.mac,
            gateway=r.gateway,
            uid=r.uid,
            error=self.error,
            updated_at=self.updated_at,
            network_mode=r.network_mode,
            host_ip=r.host_ip,
        )
