"""The pause that a snapshot and a suspend share: into it, and back out after a failure.

Both flows save a VM's memory, which Firecracker does only while the VM is
paused: a running VM is paused first (``running -> pausing -> paused``), and a
failure puts it back where it was -- the flow's undo steps run, a VM that was
running is resumed; if either of those fails too, the VM is left ``error`` with
every problem in its ``error`` field.
"""

from __future__ import annotations

import logging

from fcd_common import logs
from fcd_common.errors import FcdError
from fcd_common.proto import vmm as pvmm
from fcd_common.undo import Undo

from .models import VmRecord, VMState
from .service import Flows, request_id

__all__ = ["pause_for", "put_back"]

log = logging.getLogger("fcd.api.paused")


async def pause_for(flows: Flows, rec: VmRecord, what: str) -> VmRecord:
    """``rec`` paused (a paused VM as it is); a failed pause leaves it ``error``."""
    if rec.state is not VMState.RUNNING:
        return rec
    rec = flows.write(rec, VMState.PAUSING)
    with flows.guard(rec, f"{what} (pause)"):
        await flows.helpers.vmm.call(pvmm.Pause(vm_id=rec.id))
    return flows.write(rec, VMState.PAUSED)


async def put_back(
    flows: Flows, rec: VmRecord, *, was: VMState, undo: Undo, exc: BaseException, what: str
) -> None:
    """After ``what`` failed with ``exc``: undo its steps, resume a VM that was running."""
    vm_id = rec.id
    problems = [f"{u.name}: {u.error}" for u in await undo.rollback()]
    if was is VMState.RUNNING:
        try:
            await flows.helpers.vmm.call(pvmm.Resume(vm_id=vm_id))
            flows.write(rec, VMState.RUNNING)
        except FcdError as e:
            problems.append(f"resume: {e.code}: {e.message}")
    cause = exc.message if isinstance(exc, FcdError) else repr(exc)
    log.error("%s failed: %s", what, cause, extra=logs.vm(vm_id, request_id=request_id.get()))
    if problems:
        current = flows.registry.get(vm_id) or rec
        error = f"{what} failed: {cause}; then: {'; '.join(problems)}"
        flows.write(current, VMState.ERROR, error=error)
