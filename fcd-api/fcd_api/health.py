"""Health checks: each running VM with a check is probed every ``interval_s``.

The rules are those of container health checks (pure, :func:`step`):

* a VM that (re)starts is ``starting``; the first successful probe makes it
  ``healthy`` and ends its start period;
* failures inside ``start_period_s`` after the start do not count;
* ``retries`` consecutive failures after it make the VM ``unhealthy``; one
  success makes it ``healthy`` again.

One task per running Firecracker (VM id and pid) runs the probes; a scan every
second starts tasks for VMs that began running and ends those of VMs that did
not. A paused VM is not probed (nor counted); a VM that is neither running nor
paused has no health. Health is kept in the registry (``runtime.health``, shown
by ``GET /v1/vms/{id}`` and ``fcctl ls``), each change is a journal entry and
an event, and a change to ``unhealthy`` is handed to the restart policy
(:mod:`fcd_api.recovery`). A probe that cannot reach its helper (fcd-net or
fcd-vmm restarting) is skipped, not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from fcd_common.config import SupervisionConfig
from fcd_common.errors import Unavailable

from .models import VMState
from .probes import run_probe
from .service import Flows
from .sup_events import health_event
from .supervision_models import Effective, Health, effective_check

__all__ = ["HealthMonitor", "Tracker", "step"]

log = logging.getLogger("fcd.api.health")

SCAN_S = 1.0
PROBED = (VMState.RUNNING, VMState.PAUSED)


@dataclass(frozen=True)
class Tracker:
    health: Health = Health.STARTING
    failures: int = 0
    """Consecutive failures that counted."""
    in_start_period: bool = True


def step(t: Tracker, ok: bool, since_start_s: float, check: Effective) -> Tracker:
    """The tracker after one probe that answered ``ok`` ``since_start_s`` after the start."""
    if ok:
        return Tracker(Health.HEALTHY, 0, False)
    if t.in_start_period and since_start_s < check.start_period_s:
        return Tracker(t.health, 0, True)
    failures = t.failures + 1
    health = Health.UNHEALTHY if failures >= check.retries else t.health
    return Tracker(health, failures, False)


OnUnhealthy = Callable[[str, int, str], None]
"""(vm id, pid, reason)"""


class HealthMonitor:
    def __init__(
        self, flows: Flows, cfg: SupervisionConfig, on_unhealthy: OnUnhealthy | None = None
    ) -> None:
        self.flows = flows
        self.cfg = cfg
        self.on_unhealthy = on_unhealthy
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._scan: asyncio.Task[None] | None = None
        self._seen: tuple[int, int] | None = None
        """The registry generation of the last full scan."""

    def start(self) -> None:
        self._scan = asyncio.get_running_loop().create_task(self._run(), name="health-scan")

    async def close(self) -> None:
        tasks = [t for t in (self._scan, *self._tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception:
                log.exception("health scan failed")
            await asyncio.sleep(SCAN_S)

    async def scan(self) -> None:
        """Start a probe task per probed Firecracker; end the others; clear stale health.

        Reads every record only when the registry changed (or a probe task ended):
        with nothing changed the result is the same, and reading all records every
        second was O(VMs) on the event loop."""
        generation = self.flows.registry.generation()
        if generation == self._seen and not any(t.done() for t in self._tasks.values()):
            return
        wanted: dict[tuple[str, int], Effective] = {}
        everyone = bool(self.cfg.health_check)  # a default check probes every VM
        for rec in self.flows.registry.health_rows(everyone=everyone):
            check = effective_check(rec.check, self.cfg)
            pid = rec.pid
            if check is not None and rec.state in PROBED and pid is not None:
                wanted[(rec.id, pid)] = check
            elif rec.has_health and rec.state not in PROBED:
                await self._set(rec.id, None, None)
        for key, task in list(self._tasks.items()):
            if key not in wanted or task.done():
                task.cancel()
                del self._tasks[key]
        for key, check in wanted.items():
            if key not in self._tasks:
                self._tasks[key] = asyncio.get_running_loop().create_task(
                    self._watch(key[0], key[1], check), name=f"health-{key[0]}"
                )
        self._seen = generation  # only after a whole scan: a failed one is repeated

    async def _watch(self, vm_id: str, pid: int, check: Effective) -> None:
        t0 = time.monotonic()
        since = time.time() - check.interval_s  # serial: lines since the previous probe
        tracker = Tracker()
        await self._set(vm_id, pid, Health.STARTING, "started")
        while True:
            await asyncio.sleep(check.interval_s)
            rec = self.flows.registry.get(vm_id)
            if rec is None or rec.runtime.pid != pid or rec.state not in PROBED:
                return
            if rec.state is VMState.PAUSED:
                continue
            probed_at = time.time()
            try:
                res = await run_probe(
                    self.flows.helpers, vm_id, check.kind, check.arg, check.timeout_s, since=since
                )
            except Unavailable as e:
                log.info("health probe skipped: %s", e.message, extra={"FCD_VM_ID": vm_id})
                continue
            since = probed_at
            new = step(tracker, res.ok, time.monotonic() - t0, check)
            if not res.ok:
                log.info(
                    "health probe failed (%d/%d): %s",
                    new.failures,
                    check.retries,
                    res.detail,
                    extra={"FCD_VM_ID": vm_id},
                )
            if new.health is not tracker.health:
                if await self._set(vm_id, pid, new.health, res.detail):
                    if new.health is Health.UNHEALTHY and self.on_unhealthy is not None:
                        self.on_unhealthy(vm_id, pid, f"health check failed: {res.detail}")
                else:
                    return
            tracker = new

    async def _set(
        self, vm_id: str, pid: int | None, health: Health | None, detail: str | None = None
    ) -> bool:
        """Record ``health`` if the VM still runs ``pid`` (pid None: any state); an event."""
        f = self.flows
        async with f.locks.hold(vm_id):
            rec = f.registry.get(vm_id)
            if rec is None or (pid is not None and rec.runtime.pid != pid):
                return False
            old = rec.runtime.health
            if old is health:
                return True
            changes = {"health": health}
            if health is Health.HEALTHY:
                changes["restarts"] = 0  # type: ignore[assignment]
            f.write(rec, runtime=msgspec.structs.replace(rec.runtime, **changes))
        if health is not None:
            level = "warning" if health is Health.UNHEALTHY else "info"
            health_event(
                "health",
                vm_id,
                f"{old.value if old else 'none'} -> {health.value}: {detail or ''}",
                level,
                health=health.value,
                previous=old.value if old else None,
                detail=detail,
            )
        return True
