"""Suspend and wake under the same id: an idle sandbox leaves memory and CPU, not the host.

Suspend (``POST /v1/vms/{id}/suspend``), under the VM's lock, from running or
paused:

1. a running VM is paused (``running -> pausing -> paused``);
2. fcd-storage makes empty pending suspend files in the VM's own disk
   directory; fcd-vmm has the paused Firecracker write them;
3. fcd-storage commits them (renamed over the previous ones: a woken VM that
   still maps the old memory keeps that inode);
4. fcd-vmm kills Firecracker at once (``Stop(force)``: the guest must not run,
   or write its disk, after its memory was saved) -> ``suspended``.

The TAP, lease, port mappings, jail uid and disk stay: a suspended VM survives
daemon restarts and host reboots (its files are on disk; ``suspended`` is not
a transient state). A failure before 4 removes the pending files and puts the
VM back where it was; a failed kill leaves it paused (its committed files are
harmless and replaced by the next suspend).

Wake (``POST /v1/vms/{id}/wake``, or ``/resume`` on a suspended VM):
``suspended -> starting -> running``, a fresh jailer + Firecracker whose first
call is ``PUT /snapshot/load`` of those files, with the VM's own disk and TAP.
A wake that fails leaves the VM ``suspended`` (the files are untouched) and
returns the error.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from fcd_common import logs
from fcd_common.errors import FailedPrecondition, FcdError
from fcd_common.ids import check_vm_id
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm
from fcd_common.undo import Undo

from .models import VmRecord, VMState, now
from .paused import pause_for, put_back
from .plan import launch_request
from .service import Flows, request_id

__all__ = ["SuspendFlows"]

log = logging.getLogger("fcd.api.suspend")


def _extra(vm_id: str) -> dict[str, object]:
    return logs.vm(vm_id, request_id=request_id.get())


def suspend_files(info: pstorage.SuspendInfo) -> pvmm.SnapshotFiles:
    return pvmm.SnapshotFiles(
        name=info.vm_id,
        state_path=info.state_path,
        memory_path=info.memory_path,
        kind="suspend",
    )


class SuspendFlows:
    def __init__(self, flows: Flows) -> None:
        self.flows = flows

    async def suspend(self, vm_id: str) -> VmRecord:
        f, h = self.flows, self.flows.helpers
        async with f.locks.hold(check_vm_id(vm_id)):
            rec = f.registry.require(vm_id)
            if rec.state not in (VMState.RUNNING, VMState.PAUSED):
                raise FailedPrecondition(
                    f"cannot suspend a VM that is {rec.state.value}: allowed from running, paused",
                    details={"state": rec.state.value, "action": "suspend"},
                )
            was = rec.state
            rec = await pause_for(f, rec, "suspend")
            undo = Undo()
            try:
                pending = await h.storage.call(pstorage.SuspendPrepare(vm_id=vm_id))
                undo.push("storage.suspend_abort", lambda: self._abort(vm_id))
                await h.vmm.call(
                    pvmm.SnapshotCreate(vm_id=vm_id, files=suspend_files(pending), type="full")
                )
                saved = await h.storage.call(pstorage.SuspendCommit(vm_id=vm_id))
            except BaseException as exc:
                await asyncio.shield(put_back(f, rec, was=was, undo=undo, exc=exc, what="suspend"))
                raise
            undo.commit()
            rt = msgspec.structs.replace(rec.runtime, suspend=saved)
            rec = f.write(rec, VMState.STOPPING, runtime=rt)
            try:
                await h.vmm.call(pvmm.Stop(vm_id=vm_id, force=True))
            except FcdError:
                f.write(rec, VMState.PAUSED)  # the guest is still there, paused
                raise
            rt = msgspec.structs.replace(rec.runtime, pid=None)
            rec = f.write(rec, VMState.SUSPENDED, runtime=rt, stopped_at=now())
            log.info(
                "suspended (%d MiB of memory on disk)", saved.memory_size >> 20, extra=_extra(vm_id)
            )
            return rec

    async def _abort(self, vm_id: str) -> None:
        await self.flows.helpers.storage.call(pstorage.SuspendAbort(vm_id=vm_id))

    async def wake(self, vm_id: str) -> VmRecord:
        f, h = self.flows, self.flows.helpers
        async with f.locks.hold(check_vm_id(vm_id)):
            rec = f.registry.require(vm_id)
            saved = rec.runtime.suspend
            if rec.state is not VMState.SUSPENDED or saved is None:
                raise FailedPrecondition(
                    f"cannot wake a VM that is {rec.state.value}: allowed from suspended",
                    details={"state": rec.state.value, "action": "wake"},
                )
            rec = f.write(rec, VMState.STARTING)
            try:
                proc = await h.vmm.call(launch_request(rec, suspend_files(saved)))
            except BaseException:
                f.write(rec, VMState.SUSPENDED)
                raise
            # the suspend files are used up: fcd_api.reconcile reads a set ``suspend`` as
            # "this VM's memory is on disk"
            rt = msgspec.structs.replace(rec.runtime, pid=proc.pid, suspend=None)
            rec = f.write(
                rec, VMState.RUNNING, runtime=rt, started_at=now(), stopped_at=None, error=None
            )
            log.info("woken (pid %s)", proc.pid, extra=_extra(vm_id))
            return rec
