"""Restart policies: what happens to a VM that crashed, stopped by itself, or is unhealthy.

Triggers (no timer: each comes from the component that saw it):

* ``crashed`` -- its Firecracker ended with a signal or an error code
  (:mod:`fcd_api.supervise` wrote ``error``): with ``on-failure`` or
  ``always`` the VM is started again (same jail, disk, IP, port mappings);
* ``halted`` -- the guest shut itself down (exit 0, ``stopped``): started
  again with ``always`` only;
* ``unhealthy`` -- its health check failed ``retries`` times
  (:mod:`fcd_api.health`): with ``on-failure`` or ``always`` it is restarted
  (stop, then start).

Attempt *n* (counted in ``runtime.restarts``) waits ``backoff * 2**(n-1)``
seconds (at most ``restart_backoff_max_s``) and then checks that nobody else
acted on the VM meanwhile (a client stop, delete or start wins). An attempt
that fails is followed by the next one; once ``max_retries`` attempts were
made the VM is left ``error`` (an unhealthy one is stopped first) with the
reason. The counter goes back to 0 when the VM is healthy again or a client
starts it. Every attempt is a journal entry and an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Literal

import msgspec

from fcd_common.config import SupervisionConfig
from fcd_common.errors import FcdError

from .models import VmRecord, VMState
from .service import Flows
from .sup_events import health_event
from .supervision_models import EffectivePolicy, Health, effective_policy

__all__ = ["Recovery", "Trigger", "backoff_delay", "wants_restart"]

log = logging.getLogger("fcd.api.recovery")

Trigger = Literal["crashed", "halted", "unhealthy"]

CRASH_PREFIXES = ("Firecracker ", "start failed")
"""``error`` texts of a crash (fcd_api.supervise.describe_exit) and of a failed start."""


def wants_restart(mode: str, trigger: Trigger) -> bool:
    """Does restart policy ``mode`` act on ``trigger``? (pure)"""
    if mode == "always":
        return True
    return mode == "on-failure" and trigger in ("crashed", "unhealthy")


def backoff_delay(policy: EffectivePolicy, attempt: int) -> float:
    """Seconds before attempt ``attempt`` (1-based)."""
    return float(min(policy.backoff_max_s, policy.backoff_s * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class Seen:
    """What the VM looked like when the trigger fired: an attempt goes ahead only if it
    still does (anything else means a client or another flow acted)."""

    state: VMState
    pid: int | None
    stopped_at: str | None

    @classmethod
    def of(cls, rec: VmRecord) -> Seen:
        return cls(rec.state, rec.runtime.pid, rec.stopped_at)

    def matches(self, rec: VmRecord, trigger: Trigger) -> bool:
        if Seen.of(rec) != self:
            return False
        return trigger != "unhealthy" or rec.runtime.health is Health.UNHEALTHY


class Recovery:
    def __init__(self, flows: Flows, cfg: SupervisionConfig) -> None:
        self.flows = flows
        self.cfg = cfg
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    def busy(self, vm_id: str) -> bool:
        t = self._tasks.get(vm_id)
        return t is not None and not t.done()

    # --- triggers --------------------------------------------------------------------
    def exited(self, rec: VmRecord) -> None:
        """fcd_api.supervise recorded the end of ``rec``'s Firecracker (``rec`` as written)."""
        trigger: Trigger = "halted" if rec.state is VMState.STOPPED else "crashed"
        self._schedule(rec, trigger, rec.error or "the guest shut down")

    def after_restart(self) -> list[str]:
        """At fcd-api's start (after the first reconcile round): a crash recorded before
        it, whose restart an earlier fcd-api did not finish, is taken up again."""
        taken = []
        for rec in self.flows.registry.list_vms(state=VMState.ERROR):
            err = rec.error or ""
            if err.startswith(CRASH_PREFIXES) and not self.busy(rec.id):
                self._schedule(rec, "crashed", err)
                taken.append(rec.id)
        return taken

    def unhealthy(self, vm_id: str, pid: int, reason: str) -> None:
        rec = self.flows.registry.get(vm_id)
        if rec is not None and rec.runtime.pid == pid:
            self._schedule(rec, "unhealthy", reason)

    def _schedule(self, rec: VmRecord, trigger: Trigger, reason: str) -> None:
        policy = effective_policy(rec.spec.restart_policy, self.cfg)
        if not wants_restart(policy.mode, trigger) or self.busy(rec.id):
            return
        task = asyncio.get_running_loop().create_task(
            self._recover(rec, trigger, reason, policy), name=f"recover-{rec.id}"
        )
        self._tasks[rec.id] = task
        task.add_done_callback(functools.partial(self._forget, rec.id))

    def _forget(self, vm_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(vm_id) is task:
            del self._tasks[vm_id]

    # --- attempts --------------------------------------------------------------------
    async def _recover(
        self, rec: VmRecord, trigger: Trigger, reason: str, policy: EffectivePolicy
    ) -> None:
        vm_id = rec.id
        seen = Seen.of(rec)
        while True:
            attempt = rec.runtime.restarts + 1
            if attempt > policy.max_retries:
                await self._give_up(vm_id, seen, trigger, reason, policy.max_retries)
                return
            delay = backoff_delay(policy, attempt)
            health_event(
                "restart_scheduled",
                vm_id,
                f"attempt {attempt}/{policy.max_retries} in {delay:g}s ({trigger}: {reason})",
                "warning",
                attempt=attempt,
                trigger=trigger,
                reason=reason,
            )
            await asyncio.sleep(delay)
            async with self.flows.locks.hold(vm_id):
                current = self.flows.registry.get(vm_id)
                if current is None or not seen.matches(current, trigger):
                    log.info("restart called off: the VM changed meanwhile", extra=_vm(vm_id))
                    return
                runtime = msgspec.structs.replace(current.runtime, restarts=attempt)
                self.flows.write(current, runtime=runtime)
            health_event(
                "restart", vm_id, f"attempt {attempt}/{policy.max_retries} ({trigger})", "warning"
            )
            try:
                if trigger == "unhealthy":
                    await self.flows.stop(vm_id)
                rec = await self.flows.start(vm_id, restarts=attempt)
            except FcdError as e:
                reason = f"restart failed: {e.code}: {e.message}"
                health_event("restart_failed", vm_id, reason, "error", attempt=attempt)
                got = self.flows.registry.get(vm_id)
                if got is None or got.state is not VMState.ERROR:
                    return  # deleted, or put back by an outage: nothing more to do here
                rec, seen, trigger = got, Seen.of(got), "crashed"
                continue
            health_event("restarted", vm_id, f"running again (pid {rec.runtime.pid})")
            return

    async def _give_up(
        self, vm_id: str, seen: Seen, trigger: Trigger, reason: str, retries: int
    ) -> None:
        f = self.flows
        why = f"restart policy gave up after {retries} attempt(s): {reason}"
        if trigger == "unhealthy":
            async with f.locks.hold(vm_id):
                current = f.registry.get(vm_id)
                if current is None or not seen.matches(current, trigger):
                    return
            with contextlib.suppress(FcdError):
                await f.stop(vm_id)
        async with f.locks.hold(vm_id):
            current = f.registry.get(vm_id)
            if current is None or current.state not in (VMState.ERROR, VMState.STOPPED):
                return
            runtime = msgspec.structs.replace(current.runtime, health=None)
            f.write(current, VMState.ERROR, error=why, runtime=runtime)
        health_event("restart_gave_up", vm_id, why, "error", attempts=retries)


def _vm(vm_id: str) -> dict[str, str]:
    return {"FCD_VM_ID": vm_id}
