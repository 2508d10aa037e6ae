"""Resource usage of VMs: fcd-api -> fcd-vmm (cgroup, Firecracker's metrics); the
host-side interface's counters come from fcd-net (``net.counters``/``net.counters_all``).

Every counter is cumulative since the VM's process (or interface) began; each
source carries the time it was read (RFC 3339, UTC), since they are read at
different moments. The batch requests answer for every VM at once: one call per
helper per Prometheus collection, never one per VM.
"""

from __future__ import annotations

from ..rpc import Reply, Request
from ..schema import Record
from ..types import VmId

__all__ = [
    "CgroupUsage",
    "DriveIo",
    "FirecrackerNetIo",
    "Usage",
    "UsageAll",
    "VmUsage",
    "VmUsageList",
]


class CgroupUsage(Record):
    """The VM's cgroup (every process of the jail), read at ``sampled_at``.

    v1: ``cpuacct.usage``/``cpuacct.stat``, ``cpu.stat``, ``memory.usage_in_bytes``/
    ``memory.limit_in_bytes``; v2: ``cpu.stat``, ``memory.current``/``memory.max``.
    A value the hierarchy does not offer (controller missing) is None."""

    sampled_at: str
    version: int
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cpu_throttled_ns: int | None = None
    cpu_throttled_periods: int | None = None
    memory_usage_bytes: int | None = None
    memory_limit_bytes: int | None = None
    """None: unlimited (``max``, or v1's huge sentinel)."""


class DriveIo(Record):
    """Firecracker's ``block_<drive_id>`` metrics, summed over every line."""

    drive_id: str
    read_bytes: int = 0
    write_bytes: int = 0
    read_ops: int = 0
    write_ops: int = 0
    flush_ops: int = 0


class FirecrackerNetIo(Record):
    """Firecracker's ``net_<iface_id>`` metrics, summed: rx is what the guest received."""

    iface_id: str
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_fails: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_fails: int = 0
    tx_dropped: int = 0
    """Frames the guest sent that Firecracker refused (malformed, spoofed MAC)."""


class VmUsage(Reply):
    vm_id: str
    state: str
    """fcd-vmm's view: ``running`` (or ``paused``) when a Firecracker is live, else
    ``exited``/``not_started``/``absent`` and every section below is empty."""
    pid: int | None = None
    rss_bytes: int | None = None
    """Firecracker's resident set (``VmRSS`` of /proc/PID/status)."""
    rss_at: str | None = None
    cgroup: CgroupUsage | None = None
    firecracker_at: str | None = None
    """``utc_timestamp_ms`` of Firecracker's newest metrics line (RFC 3339)."""
    flushed: bool = False
    """True if Firecracker wrote that line for this call (``FlushMetrics``)."""
    drives: list[DriveIo] = []
    nets: list[FirecrackerNetIo] = []
    problems: list[str] = []
    """Sources that could not be read, and why (the rest is still answered)."""


class VmUsageList(Reply):
    items: list[VmUsage]


class Usage(Request[VmUsage], tag="vmm.usage"):
    """One VM's usage. ``flush``: have Firecracker write its metrics first (a running
    VM only; else its last line, at most 60 s old, is used)."""

    vm_id: VmId
    flush: bool = True


class UsageAll(Request[VmUsageList], tag="vmm.usage_all"):
    """Every VM with a live Firecracker (the cgroup and RSS read now; Firecracker's
    metrics from its newest line unless ``flush``)."""

    flush: bool = False
