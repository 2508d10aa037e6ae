"""Reconciliation: fcd-api's registry against what the helpers really have.

Runs at fcd-api's start (retrying until every helper answers) and then every
``supervision.reconcile_interval_s``. One round, in this order:

1. **fcd-vmm** (``vmm.list``): the processes are the ground truth of what runs.
2. **Interrupted operations.** Every VM in a transient state is looked at under
   its lock -- no flow holds the lock any more, so its operation was cut short
   (fcd-api killed, or a bug) -- and rolled forward or back by :func:`decide`
   from what fcd-vmm says about it *now*:

   ========== =========================== ===================================
   state      Firecracker                 becomes
   ========== =========================== ===================================
   creating   any                         undone (release jail, net, disk; row
                                          removed): the client never got a 2xx
   starting   running / paused            running / paused (adopted)
   starting   gone, never started before  undone, as creating
   starting   gone, suspend files         suspended (a wake cut short)
   starting   gone                        stopped
   pausing    running / paused            running / paused
   pausing    gone                        error (it ended meanwhile)
   stopping   gone, suspend files         suspended
   stopping   alive, suspend files        killed (force), then suspended
   stopping   gone                        stopped
   stopping   running / paused            running / paused (the stop is
                                          rolled back; it was never answered)
   deleting   any                         the delete is finished
   error,     any                         undone, as creating (a create that
   never                                  failed and could not undo itself)
   started
   error      running / paused            running / paused (never ``error``
                                          with a live guest)
   error,     a Firecracker that never    killed (a launch cut short after the
   stopped,   booted (or any process)     jailer ran); the state is kept
   suspended
   ========== =========================== ===================================

   A VM that ends up neither running nor paused never keeps a process: one
   still there (booted or not) is killed (``vmm.stop``, force) first.

   A helper that cannot be reached leaves the VM as it is until the next round
   (which comes within seconds while anything is left); any other failure
   leaves it ``error`` with the reason -- the only case neither way works.
3. **Live VMs** whose Firecracker is gone (:meth:`ExitWatcher.resync`).
4. **Orphans**, each re-checked under the VM's lock so a create in flight
   (whose row exists before its first helper call) is never touched:
   jails fcd-vmm has for no VM (``vmm.release``); leases fcd-net has for no VM
   (``net.teardown``), then fcd-net's kernel objects without a lease
   (``net.reconcile``); disks fcd-storage has for no VM (``storage.reclaim``,
   which also compares with the time the registry was read).

Nothing a client got a 2xx for is removed: only ``creating`` and never-started
``starting`` rows (whose create never answered) are undone, and orphans are
by definition in no row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from fcd_common import logs
from fcd_common.errors import FcdError, Unavailable
from fcd_common.proto import net as pnet
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm

from .models import VmRecord, VMState, now
from .service import Flows
from .storage_routes import abort_pending_snapshots, reclaim
from .sup_events import health_event
from .supervise import ExitWatcher

__all__ = ["Decision", "Reconciler", "Report", "decide"]

log = logging.getLogger("fcd.api.reconcile")

RETRY_S = 1.0
S = VMState
ALIVE = ("running", "paused")
Release = Callable[[str], Awaitable[None]]
Verb = Literal["keep", "set", "undo", "finish_delete", "kill_then"]


@dataclass(frozen=True)
class Decision:
    verb: Verb
    to: VMState | None = None
    why: str = ""


def decide(rec: VmRecord, proc: pvmm.VmProcess) -> Decision:
    """What to do with ``rec`` given its Firecracker ``proc`` as fcd-vmm reports it (pure)."""
    st, alive = rec.state, proc.state in ALIVE
    if st is S.CREATING:
        return Decision("undo", why="create cut short")
    if st is S.DELETING:
        return Decision("finish_delete", why="delete cut short")
    rule = _RULES.get(st)
    if rule is not None:
        return rule(rec, alive, S.PAUSED if proc.state == "paused" else S.RUNNING)
    if st is S.ERROR and rec.started_at is None:
        # only a failed create leaves such a row (its undo could not finish): no client
        # got a 2xx for it, so the undo is finished now
        return Decision("undo", why="create failed and its undo did not finish")
    if st is S.ERROR and alive and proc.pid is not None:
        return Decision("set", _live(proc), "Firecracker is alive: error was not its state")
    if st in (S.ERROR, S.STOPPED, S.SUSPENDED) and proc.pid is not None:
        # e.g. a launch cut short after the jailer ran: a Firecracker never booted
        return Decision("kill_then", st, f"a Firecracker ({proc.state}) runs for a {st} VM")
    return Decision("keep")


def _live(proc: pvmm.VmProcess) -> VMState:
    return S.PAUSED if proc.state == "paused" else S.RUNNING


def _starting(rec: VmRecord, alive: bool, live: VMState) -> Decision:
    if alive:
        return Decision("set", live, "start cut short; Firecracker runs: adopted")
    if rec.started_at is None:
        return Decision("undo", why="create cut short before the guest ran")
    if rec.runtime.suspend is not None:
        return Decision("set", S.SUSPENDED, "wake cut short; the suspend files are kept")
    return Decision("set", S.STOPPED, "start cut short; nothing runs")


def _pausing(_rec: VmRecord, alive: bool, live: VMState) -> Decision:
    if alive:
        return Decision("set", live, "pause cut short")
    return Decision("set", S.ERROR, "Firecracker ended while pausing")


def _stopping(rec: VmRecord, alive: bool, live: VMState) -> Decision:
    suspended = rec.runtime.suspend is not None
    if suspended and alive:
        return Decision("kill_then", S.SUSPENDED, "suspend cut short after its files were saved")
    if suspended:
        return Decision("set", S.SUSPENDED, "suspend cut short after Firecracker ended")
    if alive:
        return Decision("set", live, "stop cut short; the guest still runs")
    return Decision("set", S.STOPPED, "stop cut short after Firecracker ended")


_RULES: dict[VMState, Callable[[VmRecord, bool, VMState], Decision]] = {
    S.STARTING: _starting,
    S.PAUSING: _pausing,
    S.STOPPING: _stopping,
}


@dataclass
class Report:
    repaired: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    """VMs left for the next round (a helper could not be reached)."""

    @property
    def clean(self) -> bool:
        return not self.pending


class Reconciler:
    def __init__(self, flows: Flows, watcher: ExitWatcher, interval_s: float) -> None:
        self.flows = flows
        self.watcher = watcher
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self._aborted = False
        self.done_once = asyncio.Event()
        """Set after the first complete round (every helper answered)."""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reconcile")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        first, failures = True, 0
        while True:
            try:
                report = await self.run_once(at_start=first)
            except FcdError as e:
                failures += 1
                if failures == 1:
                    log.warning("reconcile: %s: %s; retrying", e.code, e.message)
                await asyncio.sleep(RETRY_S)
                continue
            except Exception:
                log.exception("reconcile failed")
                await asyncio.sleep(RETRY_S * 5)
                continue
            failures = 0
            if report.clean:
                first = False
                self.done_once.set()
            if report.pending:
                await asyncio.sleep(RETRY_S)
            elif self.interval_s > 0:
                await asyncio.sleep(self.interval_s)
            else:
                return

    async def run_once(self, *, at_start: bool = False) -> Report:
        """One round in the documented order; raises if a helper cannot be listed."""
        f, h = self.flows, self.flows.helpers
        report = Report()
        procs = {p.vm_id: p for p in (await h.vmm.call(pvmm.ListVms())).items}
        leases = [x.vm_id for x in (await h.net.call(pnet.NetList())).items]
        rows = f.registry.list_vms()  # after the listings: see the module docstring

        for rec in rows:
            proc = procs.get(rec.id) or pvmm.VmProcess(vm_id=rec.id, state="absent")
            if decide(rec, proc).verb != "keep":
                await self._repair(rec.id, report)
        report.repaired += await self.watcher.resync()

        known = {r.id for r in rows}
        for vm_id in sorted(set(procs) - known):
            await self._orphan(vm_id, "jail", self._release_jail, report)
        for vm_id in sorted(set(leases) - known):
            await self._orphan(vm_id, "lease", self._teardown_net, report)
        net = await h.net.call(pnet.NetReconcile(live=None, rebuild=at_start))
        report.removed += net.removed
        disks = await reclaim(f.registry, h.storage)
        report.removed += disks.removed
        if at_start and not self._aborted:  # once: later ones may be snapshots under way
            report.removed += [f"snapshot:{n}" for n in await abort_pending_snapshots(h.storage)]
            self._aborted = True
        self.rounds += 1
        if report.repaired or report.removed:
            log.warning(
                "reconcile: repaired %s; removed %s",
                ", ".join(report.repaired) or "nothing",
                ", ".join(report.removed) or "nothing",
            )
        return report

    # --- one VM ------------------------------------------------------------------------
    async def _repair(self, vm_id: str, report: Report) -> None:
        f = self.flows
        async with f.locks.hold(vm_id):
            rec = f.registry.get(vm_id)
            if rec is None:
                return
            try:
                proc = await f.helpers.vmm.call(pvmm.Status(vm_id=vm_id))
                d = decide(rec, proc)
                if d.verb == "keep":
                    return
                await self._apply(rec, proc, d)
            except FcdError as e:
                if isinstance(e, Unavailable):
                    report.pending.append(vm_id)
                    return
                current = f.registry.get(vm_id)
                if current is not None:
                    why = (
                        f"reconcile could not repair a {rec.state.value} VM: {e.code}: {e.message}"
                    )
                    f.write(current, S.ERROR, error=why)
                    health_event("reconcile", vm_id, why, "error")
                return
            report.repaired.append(vm_id)
            health_event(
                "reconcile",
                vm_id,
                f"{rec.state.value}: {d.why} -> {d.to.value if d.to else d.verb}",
                "warning",
                previous=rec.state.value,
                action=d.verb,
            )

    async def _apply(self, rec: VmRecord, proc: pvmm.VmProcess, d: Decision) -> None:
        f, vm_id = self.flows, rec.id
        if d.verb in ("undo", "finish_delete"):
            await self._release_jail(vm_id)
            await self._teardown_net(vm_id)
            await f.helpers.storage.call(_release_disk(vm_id))
            f.registry.delete(vm_id)
            return
        assert d.to is not None
        if d.verb == "kill_then" or (d.to not in (S.RUNNING, S.PAUSED) and proc.pid is not None):
            await f.helpers.vmm.call(pvmm.Stop(vm_id=vm_id, force=True))  # nothing runs half
        if d.to is rec.state:
            return
        if d.to in (S.RUNNING, S.PAUSED):
            runtime = msgspec.structs.replace(rec.runtime, pid=proc.pid)
            f.write(rec, d.to, runtime=runtime, started_at=rec.started_at or now(), error=None)
        elif d.to is S.ERROR:
            runtime = msgspec.structs.replace(rec.runtime, pid=None)
            f.write(rec, d.to, runtime=runtime, error=f"interrupted: {d.why}")
        else:
            runtime = msgspec.structs.replace(rec.runtime, pid=None)
            f.write(rec, d.to, runtime=runtime, stopped_at=rec.stopped_at or now())

    async def _orphan(self, vm_id: str, what: str, release: Release, report: Report) -> None:
        async with self.flows.locks.hold(vm_id):
            if self.flows.registry.get(vm_id) is not None:
                return  # a create took this id meanwhile: it is its own
            try:
                await release(vm_id)
            except FcdError as e:
                log.warning("reconcile: %s of %s: %s", what, vm_id, e.message, extra=logs.vm(vm_id))
                return
        report.removed.append(f"{what}:{vm_id}")

    async def _release_jail(self, vm_id: str) -> None:
        await self.flows.helpers.vmm.call(pvmm.ReleaseJail(vm_id=vm_id))

    async def _teardown_net(self, vm_id: str) -> None:
        await self.flows.helpers.net.call(pnet.NetTeardown(vm_id=vm_id))


def _release_disk(vm_id: str) -> pstorage.Release:
    return pstorage.Release(vm_id=vm_id)
