"""``GET /metrics``: Prometheus text exposition (prometheus-client), and what feeds it.

Control plane (rendered at each scrape, cheap):

* ``fcd_operations_total{kind,outcome}`` and ``fcd_operation_duration_seconds{kind}``:
  every mutating API call (``kind`` = the route's handler, e.g. ``pause_vm``;
  ``outcome`` = ``ok`` or the error code), counted by :class:`OperationsMiddleware`.
* ``fcd_rpc_duration_seconds{helper,method}`` and ``fcd_rpc_errors_total{helper,method,code}``:
  every call fcd-api makes to a helper (:class:`TimedRpcClient`).
* ``fcd_helper_up{helper}``: whether the helper answered the newest collection.
* ``fcd_vms{state}``: VMs by state (one ``GROUP BY`` on the registry).

Per VM (labels ``vm_id``, ``sandbox_id``; ``drive`` for disks): CPU, memory,
network and disk series from the background collection
(:mod:`fcd_api.metrics_collect`). They are rendered once per collection, in a worker
thread, and the text is reused by every scrape until the next one; so a scrape's
cost does not grow with the number of VMs and it never calls a helper.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

from .metrics_collect import Collection, Collector
from .metrics_rpc import RPC_ERRORS, RPC_SECONDS, TimedRpcClient
from .models import VMState
from .registry import Registry

__all__ = [
    "CONTENT_TYPE",
    "Exposition",
    "OperationsMiddleware",
    "TimedRpcClient",
    "render_vms",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STALE_AFTER = 3
"""Per-VM series older than this many collection intervals are not served."""
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

OPERATIONS = Counter(
    "fcd_operations",
    "Mutating API calls by kind and outcome (ok or the error code)",
    ["kind", "outcome"],
    registry=None,
)
OPERATION_SECONDS = Histogram(
    "fcd_operation_duration_seconds",
    "Duration of mutating API calls",
    ["kind"],
    buckets=_BUCKETS,
    registry=None,
)
# --- per-VM series -----------------------------------------------------------------------

_VM = ["vm_id", "sandbox_id"]
_NET = (
    ("receive_bytes", "tx_bytes", "Bytes the VM received (its host interface sent)"),
    ("receive_packets", "tx_packets", "Packets the VM received"),
    ("receive_dropped", "tx_dropped", "Packets for the VM dropped on its host interface"),
    ("receive_errors", "tx_errors", "Transmit errors on the VM's host interface"),
    ("transmit_bytes", "rx_bytes", "Bytes the VM sent (its host interface received)"),
    ("transmit_packets", "rx_packets", "Packets the VM sent"),
    ("transmit_dropped", "rx_dropped", "Packets from the VM dropped on its host interface"),
    ("transmit_errors", "rx_errors", "Receive errors on the VM's host interface"),
)


class _VmCollector(_PromCollector):
    def __init__(self, col: Collection) -> None:
        self.col = col

    def collect(self) -> Iterable[Metric]:
        cpu = CounterMetricFamily(
            "fcd_vm_cpu_usage_seconds", "CPU time of the VM's cgroup", labels=_VM
        )
        user = CounterMetricFamily("fcd_vm_cpu_user_seconds", "User CPU time", labels=_VM)
        system = CounterMetricFamily("fcd_vm_cpu_system_seconds", "System CPU time", labels=_VM)
        thr = CounterMetricFamily(
            "fcd_vm_cpu_throttled_seconds", "Time the VM's cgroup was throttled", labels=_VM
        )
        vcpus = GaugeMetricFamily("fcd_vm_vcpus", "vCPUs of the VM", labels=_VM)
        mem = GaugeMetricFamily(
            "fcd_vm_memory_usage_bytes", "Memory charged to the VM's cgroup", labels=_VM
        )
        limit = GaugeMetricFamily(
            "fcd_vm_memory_limit_bytes", "The VM cgroup's memory limit", labels=_VM
        )
        rss = GaugeMetricFamily(
            "fcd_vm_firecracker_rss_bytes", "Resident set of the VM's Firecracker", labels=_VM
        )
        net = {
            name: CounterMetricFamily(f"fcd_vm_network_{name}", doc, labels=_VM)
            for name, _src, doc in _NET
        }
        dl = [*_VM, "drive"]
        disk = {
            "read_bytes": CounterMetricFamily("fcd_vm_disk_read_bytes", "Bytes read", labels=dl),
            "write_bytes": CounterMetricFamily(
                "fcd_vm_disk_write_bytes", "Bytes written", labels=dl
            ),
            "read_ops": CounterMetricFamily("fcd_vm_disk_read_ops", "Read requests", labels=dl),
            "write_ops": CounterMetricFamily("fcd_vm_disk_write_ops", "Write requests", labels=dl),
        }
        for vm in self.col.vms:
            lv = [vm.vm_id, vm.sandbox_id]
            vcpus.add_metric(lv, vm.vcpus)
            u = vm.usage
            if u is not None and u.cgroup is not None:
                cg = u.cgroup
                for fam, ns in (
                    (cpu, cg.cpu_usage_ns),
                    (user, cg.cpu_user_ns),
                    (system, cg.cpu_system_ns),
                    (thr, cg.cpu_throttled_ns),
                ):
                    if ns is not None:
                        fam.add_metric(lv, ns / 1e9)
                if cg.memory_usage_bytes is not None:
                    mem.add_metric(lv, cg.memory_usage_bytes)
                if cg.memory_limit_bytes is not None:
                    limit.add_metric(lv, cg.memory_limit_bytes)
            if u is not None:
                if u.rss_bytes is not None:
                    rss.add_metric(lv, u.rss_bytes)
                for d in u.drives:
                    ld = [*lv, d.drive_id]
                    for key, fam in disk.items():
                        fam.add_metric(ld, getattr(d, key))
            c = vm.counters
            if c is not None:
                for name, src, _doc in _NET:
                    net[name].add_metric(lv, getattr(c, src))
        yield from (cpu, user, system, thr, vcpus, mem, limit, rss, *net.values(), *disk.values())


def render_vms(col: Collection) -> bytes:
    """The per-VM series of one collection, in the text format."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_VmCollector(col))
    return generate_latest(reg)


# --- the live part ----------------------------------------------------------------------


class _LiveCollector(_PromCollector):
    def __init__(self, registry: Registry, collector: Collector) -> None:
        self.registry = registry
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        counts = self.registry.counts()
        vms = GaugeMetricFamily("fcd_vms", "VMs by state", labels=["state"])
        for st in VMState:
            vms.add_metric([st.value], counts.get(st, 0))
        yield vms
        col = self.collector.latest
        up = GaugeMetricFamily("fcd_helper_up", "1 if the helper answered", labels=["helper"])
        age = GaugeMetricFamily(
            "fcd_vm_metrics_age_seconds", "Age of the per-VM series (their collection)"
        )
        took = GaugeMetricFamily(
            "fcd_vm_metrics_collection_seconds", "How long the newest collection took"
        )
        if col is not None:
            for helper, ok in sorted(col.helpers_up.items()):
                up.add_metric([helper], 1.0 if ok else 0.0)
            age.add_metric([], max(0.0, time.time() - col.at))
            took.add_metric([], col.took_s)
        yield from (up, age, took)


class Exposition:
    """What ``GET /metrics`` returns for one fcd-api."""

    def __init__(self, registry: Registry, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for m in (OPERATIONS, OPERATION_SECONDS, RPC_SECONDS, RPC_ERRORS):
            self.registry.register(m)
        self.registry.register(_LiveCollector(registry, collector))
        self.vm_text = b""
        self.collector = collector
        collector.listeners.append(self._rendered)

    async def _rendered(self, col: Collection) -> None:
        self.vm_text = await asyncio.to_thread(render_vms, col)

    def scrape(self) -> bytes:
        """The live series, and the per-VM ones unless their collection is older than
        :data:`STALE_AFTER` intervals (then they are left out, not shown stale)."""
        col = self.collector.latest
        fresh = col is not None and time.time() - col.at <= STALE_AFTER * self.collector.interval_s
        return generate_latest(self.registry) + (self.vm_text if fresh else b"")


# --- operations ----------------------------------------------------------------------------

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_ERR_BODY_MAX = 65536


class _ErrCode(msgspec.Struct):
    code: str = "unknown"


class _ErrBody(msgspec.Struct):
    error: _ErrCode = msgspec.field(default_factory=_ErrCode)


def _outcome(status: int, body: bytes) -> str:
    if status < 400:
        return "ok"
    try:
        return msgspec.json.decode(body, type=_ErrBody).error.code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return f"http_{status}"


class OperationsMiddleware:
    """Counts and times every mutating request by the route handler that served it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") in _READS:
            await self.app(scope, receive, send)
            return
        status = 500
        body = bytearray()

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif (
                message["type"] == "http.response.body"
                and status >= 400
                and len(body) < _ERR_BODY_MAX
            ):
                body.extend(message.get("body", b"")[:_ERR_BODY_MAX])
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, watch)
        finally:
            handler = scope.get("route_handler")
            kind = getattr(handler, "handler_name", None) or "unrouted"
            OPERATIONS.labels(kind, _outcome(status, bytes(body))).inc()
            OPERATION_SECONDS.labels(kind).observe(time.perf_counter() - t0)
