"""Snapshot flows: take a snapshot of a VM, restore a new VM from one.

Take (``POST /v1/vms/{id}/snapshots``), under the VM's lock:

1. a running VM is paused (``running -> pausing -> paused``; a paused one stays);
2. fcd-storage reserves ``snapshots/<name>/`` with empty state and memory files
   (a name that exists is a 409 and nothing else happens);
3. fcd-vmm has the paused Firecracker write them (``PUT /snapshot/create``);
4. fcd-storage commits: clones the VM's disk, makes the files read-only and
   writes the manifest with the origin record a restore needs (vCPUs, memory,
   template, command line, guest network, port mappings, Firecracker and
   snapshot format versions, parent);
5. the VM goes where ``then`` says: resumed, left paused, or stopped.

A failure in 2-4 deletes the pending entry (an undo; fcd-storage also reclaims
pending entries at start) and puts the VM back where it was (a running VM is
resumed); if that resume fails the VM is marked ``error`` with both errors.

Restore (``POST /v1/snapshots/{name}/restore``) is a create whose source is
the snapshot (:meth:`fcd_api.service.Flows.create` with a
:class:`~fcd_api.plan.Restore`): the snapshot must be ready, carry its origin
record and be loadable by this host's Firecracker (else 409 before anything
is made); the new VM gets its own reflink of the snapshot's disk, a netns-mode
network identical to the snapshot's guest network, and a fresh Firecracker
whose first call is ``PUT /snapshot/load``.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from fcd_common import logs
from fcd_common.errors import FailedPrecondition
from fcd_common.ids import check_name, check_vm_id, new_vm_id
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm
from fcd_common.undo import Undo

from .models import VmRecord, VMState, now
from .paused import pause_for, put_back
from .plan import Restore, check_restorable, restored_spec, snapshot_files, snapshot_origin
from .service import Flows, request_id
from .snapshot_models import RestoreRequest, SnapshotRequest

__all__ = ["SnapshotFlows"]

log = logging.getLogger("fcd.api.snapshots")

SNAPSHOT_FROM = (VMState.RUNNING, VMState.PAUSED)


def _extra(vm_id: str) -> dict[str, object]:
    return logs.vm(vm_id, request_id=request_id.get())


class SnapshotFlows:
    def __init__(self, flows: Flows) -> None:
        self.flows = flows

    async def take(self, vm_id: str, req: SnapshotRequest) -> pstorage.SnapshotInfo:
        f = self.flows
        name = check_name(req.name)
        async with f.locks.hold(check_vm_id(vm_id)):
            rec = f.registry.require(vm_id)
            if rec.state not in SNAPSHOT_FROM:
                raise FailedPrecondition(
                    f"cannot snapshot a VM that is {rec.state.value}: allowed from running, paused",
                    details={"state": rec.state.value, "action": "snapshot"},
                )
            parent = None
            if req.type == "diff":
                parent = rec.runtime.last_snapshot or rec.runtime.restored_from
                if not rec.spec.track_dirty_pages or parent is None:
                    raise FailedPrecondition(
                        "a diff snapshot needs a VM created with track_dirty_pages and an"
                        " earlier snapshot of it (or one it was restored from) to layer onto",
                        details={"field": "type", "state": rec.state.value},
                    )
            was = rec.state
            rec = await pause_for(f, rec, "snapshot")
            log.info("snapshot %s (%s) of a %s VM", name, req.type, was.value, extra=_extra(vm_id))
            undo = Undo()
            try:
                snap = await self._take_steps(rec, name, req, undo, parent)
            except BaseException as exc:
                await asyncio.shield(put_back(f, rec, was=was, undo=undo, exc=exc, what="snapshot"))
                raise
            undo.commit()
            rec = f.write(rec, runtime=msgspec.structs.replace(rec.runtime, last_snapshot=name))
            await self._then(rec, req.then)
            return snap

    async def _take_steps(
        self, rec: VmRecord, name: str, req: SnapshotRequest, undo: Undo, parent: str | None
    ) -> pstorage.SnapshotInfo:
        h, vm_id = self.flows.helpers, rec.id
        pending = await h.storage.call(pstorage.SnapshotPrepare(name=name, vm_id=vm_id))
        undo.push("storage.snapshot_delete", lambda: self._delete_snapshot(name))
        files = snapshot_files(pending)
        taken = await h.vmm.call(pvmm.SnapshotCreate(vm_id=vm_id, files=files, type=req.type))
        origin = snapshot_origin(rec, taken, parent)
        snap = await h.storage.call(pstorage.SnapshotCommit(name=name, origin=origin))
        log.info(
            "snapshot %s taken in %.1f ms (%d bytes of memory)",
            name,
            taken.took_ms,
            taken.memory_size,
            extra=_extra(vm_id),
        )
        return snap

    async def _delete_snapshot(self, name: str) -> None:
        await self.flows.helpers.storage.call(pstorage.SnapshotDelete(name=name))

    async def _then(self, rec: VmRecord, then: str) -> None:
        f, vm_id = self.flows, rec.id
        if then == "pause":
            return
        if then == "resume":
            with f.guard(rec, "snapshot (resume)"):
                await f.helpers.vmm.call(pvmm.Resume(vm_id=vm_id))
            f.write(rec, VMState.RUNNING)
            return
        rec = f.write(rec, VMState.STOPPING)
        with f.guard(rec, "snapshot (stop)"):
            h = f.helpers
            await h.vmm.call(pvmm.Stop(vm_id=vm_id), timeout=h.vmm.timeout + h.stop_timeout_s)
        runtime = msgspec.structs.replace(rec.runtime, pid=None)
        f.write(rec, VMState.STOPPED, runtime=runtime, stopped_at=now())

    async def restore(self, name: str, req: RestoreRequest) -> tuple[VmRecord, bool]:
        """A new VM from snapshot ``name``; (record, created), idempotent per id."""
        h = self.flows.helpers
        # both reads at once (users=False: no walk of every disk manifest); the
        # snapshot's error first, as when they ran one after the other
        got_snap, got_info = await asyncio.gather(
            h.storage.call(pstorage.SnapshotGet(name=check_name(name, "snapshot"), users=False)),
            h.vmm.call(pvmm.Info()),
            return_exceptions=True,
        )
        if isinstance(got_snap, BaseException):
            raise got_snap
        if isinstance(got_info, BaseException):
            raise got_info
        snap, info = got_snap, got_info
        origin = check_restorable(snap, info)
        spec = restored_spec(req.id or new_vm_id(), origin, req)
        source = Restore(files=snapshot_files(snap), origin=origin, resume=req.resume)
        return await self.flows.create(spec, source)
