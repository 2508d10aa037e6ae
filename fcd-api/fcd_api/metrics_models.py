"""``GET /v1/vms/{id}/metrics``: a VM's resource usage, shaped like the seed's
``ResourceUsage``, and the pure function that builds it from the helpers' answers.

Each section carries ``sampled_at`` (RFC 3339, UTC): its source was read then
(the cgroup and RSS by fcd-vmm, Firecracker's metrics when it last wrote a line,
the interface counters by fcd-net). Counters are cumulative since the VM's
Firecracker (disk, Firecracker's net and CPU) or interface (network) began.

``network`` is the VM's side: ``rx_*`` is what the VM was sent (the host-side
interface's tx), ``tx_*`` what it sent (the interface's rx); ``firecracker``
holds Firecracker's own view of the same device (``net_<iface>`` metrics).
A section whose source is unavailable is null, and ``problems`` says why.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fcd_common.proto.net import Counters
from fcd_common.proto.usage import VmUsage
from fcd_common.proto.vmm import BalloonState
from fcd_common.schema import Record

from .models import VmRecord

__all__ = [
    "CpuMetrics",
    "DiskMetrics",
    "FirecrackerNetMetrics",
    "MemoryMetrics",
    "NetworkMetrics",
    "VMMetrics",
    "build_metrics",
]

NS = 1_000_000_000
MIB = 1 << 20


class CpuMetrics(Record):
    sampled_at: str
    vcpus: int
    usage_seconds: float | None
    """CPU time of every process of the VM's cgroup (Firecracker and its vCPU threads)."""
    user_seconds: float | None
    system_seconds: float | None
    throttled_seconds: float | None
    throttled_periods: int | None
    cgroup_version: int


class MemoryMetrics(Record):
    sampled_at: str
    usage_bytes: int | None
    """The cgroup's charge (guest memory touched, page cache, VMM)."""
    limit_bytes: int | None
    """None: unlimited."""
    firecracker_rss_bytes: int | None
    balloon_target_bytes: int | None = None
    balloon_actual_bytes: int | None = None
    """Only for a live VM with a balloon device (null otherwise): the target the guest
    was given (the size asked for while balloon statistics are off) and the size it
    reached (statistics only)."""


class FirecrackerNetMetrics(Record):
    sampled_at: str
    iface_id: str
    rx_bytes: int
    rx_packets: int
    rx_fails: int
    tx_bytes: int
    tx_packets: int
    tx_fails: int
    tx_dropped: int


class NetworkMetrics(Record):
    sampled_at: str
    iface: str
    rx_bytes: int
    rx_packets: int
    rx_dropped: int
    rx_errors: int
    tx_bytes: int
    tx_packets: int
    tx_dropped: int
    tx_errors: int
    firecracker: FirecrackerNetMetrics | None = None


class DiskMetrics(Record):
    drive_id: str
    sampled_at: str
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int
    flush_ops: int


class VMMetrics(Record):
    vm_id: str
    sandbox_id: str | None
    state: str
    sampled_at: str
    cpu: CpuMetrics | None
    memory: MemoryMetrics | None
    network: NetworkMetrics | None
    disk: list[DiskMetrics]
    problems: list[str] = []


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _balloon(b: BalloonState | None) -> dict[str, int | None]:
    """target: what the guest driver was told (statistics on), else the size asked for;
    actual: what it reached (statistics only)."""
    if b is None:
        return {}
    target = b.target_mib if b.target_mib is not None else b.requested_mib
    actual = b.actual_mib
    return {
        "balloon_target_bytes": target * MIB,
        "balloon_actual_bytes": None if actual is None else actual * MIB,
    }


def _secs(ns: int | None) -> float | None:
    return None if ns is None else ns / NS


def build_metrics(
    rec: VmRecord,
    usage: VmUsage | None,
    counters: Counters | None,
    counters_at: str | None,
    problems: list[str] | None = None,
    *,
    balloon: BalloonState | None = None,
) -> VMMetrics:
    """The public metrics of ``rec`` from fcd-vmm's usage and fcd-net's counters (and,
    for a VM with a balloon, Firecracker's balloon state)."""
    probs = list(problems or [])
    cpu = memory = None
    disk: list[DiskMetrics] = []
    fc_net: FirecrackerNetMetrics | None = None
    if usage is not None:
        probs += usage.problems
        cg = usage.cgroup
        if cg is not None:
            cpu = CpuMetrics(
                sampled_at=cg.sampled_at,
                vcpus=rec.spec.vcpu_count,
                usage_seconds=_secs(cg.cpu_usage_ns),
                user_seconds=_secs(cg.cpu_user_ns),
                system_seconds=_secs(cg.cpu_system_ns),
                throttled_seconds=_secs(cg.cpu_throttled_ns),
                throttled_periods=cg.cpu_throttled_periods,
                cgroup_version=cg.version,
            )
        if cg is not None or usage.rss_bytes is not None:
            memory = MemoryMetrics(
                sampled_at=(cg.sampled_at if cg else usage.rss_at) or now_iso(),
                usage_bytes=cg.memory_usage_bytes if cg else None,
                limit_bytes=cg.memory_limit_bytes if cg else None,
                firecracker_rss_bytes=usage.rss_bytes,
                **_balloon(balloon),
            )
        fc_at = usage.firecracker_at
        if fc_at is not None:
            disk = [
                DiskMetrics(
                    drive_id=d.drive_id,
                    sampled_at=fc_at,
                    read_bytes=d.read_bytes,
                    write_bytes=d.write_bytes,
                    read_ops=d.read_ops,
                    write_ops=d.write_ops,
                    flush_ops=d.flush_ops,
                )
                for d in usage.drives
            ]
            for n in usage.nets[:1]:  # fcd gives a VM one interface (eth0)
                fc_net = FirecrackerNetMetrics(
                    sampled_at=fc_at,
                    iface_id=n.iface_id,
                    rx_bytes=n.rx_bytes,
                    rx_packets=n.rx_packets,
                    rx_fails=n.rx_fails,
                    tx_bytes=n.tx_bytes,
                    tx_packets=n.tx_packets,
                    tx_fails=n.tx_fails,
                    tx_dropped=n.tx_dropped,
                )
    network = None
    if counters is not None:
        network = NetworkMetrics(
            sampled_at=counters_at or now_iso(),
            iface=counters.iface,
            # the host-side interface's tx is what the VM received
            rx_bytes=counters.tx_bytes,
            rx_packets=counters.tx_packets,
            rx_dropped=counters.tx_dropped,
            rx_errors=counters.tx_errors,
            tx_bytes=counters.rx_bytes,
            tx_packets=counters.rx_packets,
            tx_dropped=counters.rx_dropped,
            tx_errors=counters.rx_errors,
            firecracker=fc_net,
        )
    return VMMetrics(
        vm_id=rec.id,
        sandbox_id=rec.spec.sandbox_id,
        state=rec.state.value,
        sampled_at=now_iso(),
        cpu=cpu,
        memory=memory,
        network=network,
        disk=disk,
        problems=probs,
    )
