"""``vmm.usage`` and ``vmm.usage_all``: a live VM's cgroup, RSS and Firecracker metrics.

The file reads run in a worker thread (a batch of 1,000 VMs is one thread hop),
so the event loop keeps serving launches while a scrape is collected. Firecracker
is asked to flush only when the caller wants it (``FlushMetrics``, bounded by
:data:`FLUSH_TIMEOUT_S`, at most :data:`FLUSH_CONCURRENCY` at once); a flush that
fails is reported in ``problems`` and the newest line already written is used.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fcd_common import logs
from fcd_common.config import Config
from fcd_common.errors import FcdError
from fcd_common.proto.usage import VmUsage

from . import cgroups, usage
from .fcclient import FirecrackerClient
from .plan import CgroupVersion, jail_paths
from .procs import PidWatch
from .uidpool import JailRecord

log = logging.getLogger("fcd.vmm.usage")

FLUSH_TIMEOUT_S = 2.0
READ_BUDGET = 64 << 20
"""Metrics-file bytes one call reads over all its VMs: after an fcd-vmm restart the
backlog (up to MAX_READ per VM) is summed over several collections, not in one."""
FLUSH_CONCURRENCY = 32
FLUSH = {"action_type": "FlushMetrics"}


@dataclass(frozen=True)
class Live:
    rec: JailRecord
    watch: PidWatch | None


class UsageReader:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.tail = usage.MetricsTail()
        self._flushes = asyncio.Semaphore(FLUSH_CONCURRENCY)

    async def _flush(self, vm_id: str) -> str | None:
        sock = jail_paths(self.cfg, vm_id).api_socket
        async with self._flushes:
            try:
                async with FirecrackerClient(sock, timeout=FLUSH_TIMEOUT_S) as fc:
                    await fc.put("/actions", FLUSH)
            except FcdError as e:
                log.debug("FlushMetrics failed: %s", e, extra=logs.vm(vm_id))
                return f"FlushMetrics: {e.message}"
        return None

    def _read(
        self,
        vms: list[Live],
        cgroup: tuple[CgroupVersion, frozenset[str]] | None,
        flushed: dict[str, str | None],
    ) -> list[VmUsage]:
        dirs: dict[str, Path] = {}
        if cgroup is not None:
            dirs = usage.cgroup_dirs(cgroup[0], cgroups.read_mounts())
        out: list[VmUsage] = []
        budget = [READ_BUDGET]
        for live in vms:
            out.append(self._one(live, cgroup, dirs, flushed, budget))
        return out

    def _one(
        self,
        live: Live,
        cgroup: tuple[CgroupVersion, frozenset[str]] | None,
        dirs: dict[str, Path],
        flushed: dict[str, str | None],
        budget: list[int],
    ) -> VmUsage:
        rec, watch = live.rec, live.watch
        if watch is None or not watch.alive:
            self.tail.forget(rec.vm_id)
            state = "not_started" if rec.state == "allocated" else "exited"
            return VmUsage(vm_id=rec.vm_id, state=state)
        problems: list[str] = []
        cg = None
        if cgroup is None:
            problems.append("no usable cgroup hierarchy")
        else:
            try:
                cg, why = usage.read_cgroup(cgroup[0], dirs, self.cfg.jail.parent_cgroup, rec.vm_id)
            except OSError as e:
                cg, why = None, f"cgroup: {e.strerror}"
            if why:
                problems.append(why)
        if cg is not None:
            cg = usage.with_process_cpu(cg, watch.pid)
        rss = usage.read_rss(watch.pid)
        rss_at = usage.iso(datetime.now(UTC).timestamp())
        totals, why, used = self.tail.read(jail_paths(self.cfg, rec.vm_id), rec.uid, budget[0])
        budget[0] = max(0, budget[0] - used)
        if why:
            problems.append(why)
        flush_problem = flushed.get(rec.vm_id)
        if flush_problem:
            problems.append(flush_problem)
        return VmUsage(
            vm_id=rec.vm_id,
            state="running",
            pid=watch.pid,
            rss_bytes=rss,
            rss_at=rss_at if rss is not None else None,
            cgroup=cg,
            firecracker_at=(
                usage.iso(totals.last_ms / 1000) if totals and totals.last_ms else None
            ),
            flushed=rec.vm_id in flushed and flush_problem is None,
            drives=totals.drive_io() if totals else [],
            nets=totals.net_io() if totals else [],
            problems=problems,
        )

    async def sample(
        self,
        vms: list[Live],
        cgroup: tuple[CgroupVersion, frozenset[str]] | None,
        *,
        flush: bool,
    ) -> list[VmUsage]:
        flushed: dict[str, str | None] = {}
        if flush:
            live = [v.rec.vm_id for v in vms if v.watch is not None and v.watch.alive]
            results = await asyncio.gather(*(self._flush(vm_id) for vm_id in live))
            flushed = dict(zip(live, results, strict=True))
        return await asyncio.to_thread(self._read, vms, cgroup, flushed)
