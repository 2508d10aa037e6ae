"""Crash detection: fcd-api learns at once when a Firecracker ends without being asked.

One background task long-polls fcd-vmm (``vmm.watch_exits``): fcd-vmm holds a
pidfd per VM and answers the moment one fires, so there is no timer. For each
exit of the process the registry knows (same pid, VM running or paused):

* exit code 0 of a running VM -- the guest shut down or rebooted
  (``reboot=k``): ``stopped``;
* anything else -- a crash or a kill: ``error``, with the code or signal and
  Firecracker's last log lines in the VM's ``error``.

An exit of an older process, or of a VM some flow already moved on, changes
nothing. When fcd-vmm's epoch changes (it restarted; its in-memory exits are
gone) and at fcd-api's own start, every VM the registry has as running or
paused is compared with ``vmm.list``: one whose Firecracker is gone is
updated the same way. While fcd-vmm is down the task retries with a short
backoff; nothing is marked because of an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

import msgspec

from fcd_common import logs
from fcd_common.errors import FcdError
from fcd_common.proto import vmm as pvmm

from . import events
from .models import VmRecord, VMState, now
from .service import Flows

__all__ = ["ExitWatcher", "describe_exit"]

log = logging.getLogger("fcd.api.supervise")

WAIT_S = 25.0
RETRY_S = (0.2, 0.5, 1.0, 2.0)
LIVE = (VMState.RUNNING, VMState.PAUSED)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "Firecracker is gone (exit status unknown)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"Firecracker was killed by {name} ({-code})"
    return f"Firecracker exited with code {code}"


def exit_details(code: int | None) -> dict[str, Any]:
    """``exit_code`` or ``signal`` (name and number) of a died event; both None: unknown."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"SIG{-code}"
        return {"exit_code": None, "signal": name, "signal_number": -code}
    return {"exit_code": code, "signal": None}


class ExitWatcher:
    def __init__(self, flows: Flows) -> None:
        self.flows = flows
        self._task: asyncio.Task[None] | None = None
        self.epoch: str | None = None
        self.on_exit: Callable[[VmRecord], None] | None = None
        """Told of every end recorded (the record as written): fcd_api.recovery."""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="exit-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        vmm = self.flows.helpers.vmm
        since, failures = 0, 0
        while True:
            req = pvmm.WatchExits(since=since, epoch=self.epoch, wait_s=WAIT_S)
            try:
                res = await vmm.call(req, timeout=vmm.timeout + WAIT_S)
                for ex in res.items:  # precise first: code, signal, log lines
                    await self.apply(ex.vm_id, ex.pid, ex.exit_code, ex.log_tail)
                if res.epoch != self.epoch:  # then whatever else is gone
                    await self.resync()
                    self.epoch = res.epoch
            except FcdError as e:
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                if failures == 1:
                    log.warning("watching VM exits: %s; retrying", e.message)
                await asyncio.sleep(delay)
                continue
            failures = 0
            since = res.next

    async def resync(self) -> list[str]:
        """Registry VMs running or paused whose Firecracker fcd-vmm does not have."""
        procs = {p.vm_id: p for p in (await self.flows.helpers.vmm.call(pvmm.ListVms())).items}
        changed = []
        for rec in self.flows.registry.list_vms():
            if rec.state not in LIVE:
                continue
            p = procs.get(rec.id)
            if p is None or p.state in ("exited", "absent", "not_started"):
                code = None if p is None else p.exit_code
                if await self.apply(rec.id, rec.runtime.pid, code, [], resync=True):
                    changed.append(rec.id)
        return changed

    async def apply(
        self,
        vm_id: str,
        pid: int | None,
        code: int | None,
        tail: list[str],
        *,
        resync: bool = False,
    ) -> bool:
        """Record the end of ``vm_id``'s Firecracker ``pid``; False if it was stale."""
        f = self.flows
        async with f.locks.hold(vm_id):
            rec = f.registry.get(vm_id)
            if rec is None or rec.state not in LIVE or rec.runtime.pid != pid:
                return False
            self._record(rec, code, tail, resync)
            return True

    def _record(self, rec: VmRecord, code: int | None, tail: list[str], resync: bool) -> None:
        f, extra = self.flows, logs.vm(rec.id)
        pid = rec.runtime.pid
        runtime = msgspec.structs.replace(rec.runtime, pid=None, health=None)
        if code == 0 and rec.state is VMState.RUNNING:  # a paused guest cannot shut down
            rec = f.write(rec, VMState.STOPPED, runtime=runtime, stopped_at=now(), error=None)
            log.info("the guest shut down: Firecracker exited 0", extra=extra)
            events.publish("stopped", rec.id, state="stopped", reason="guest shutdown")
        else:
            what = describe_exit(code) + (" (found at resync)" if resync else "")
            if tail:
                what += "; last log lines: " + " | ".join(tail[-3:])
            rec = f.write(rec, VMState.ERROR, runtime=runtime, stopped_at=now(), error=what)
            log.error("%s", what, extra=extra)
            events.publish("died", rec.id, **exit_details(code), pid=pid, message=what)
        if self.on_exit is not None:
            self.on_exit(rec)
