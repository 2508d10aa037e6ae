"""``PATCH /v1/vms/{id}/resources`` and the resources part of ``GET /v1/vms/{id}``.

An update holds the VM's lock. On a running or paused VM fcd-vmm applies it
(balloon, rate limits, cgroup) and answers what is now in force; on a stopped
VM only the spec changes, applied at the next start. A refused or failed update
changes neither the spec nor the VM's state (a VM is never put in ``error`` by
a limit it could not take). Every accepted change is logged with ``FCD_VM_ID``
through :func:`_resources_event`.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from fcd_common.errors import FailedPrecondition, FcdError, InvalidArgument
from fcd_common.ids import check_vm_id
from fcd_common.proto import vmm as pvmm

from . import events
from .models import VM, VmRecord, VMState
from .plan import check_limits
from .resources_models import ResourcesUpdate, ResourcesView
from .resources_plan import check_resource_spec, merge_update, size_change_refused, update_request
from .service import Flows, _extra
from .spec_check import checked_spec

__all__ = ["ResourceFlows"]

log = logging.getLogger("fcd.api.resources")

LIVE = frozenset({VMState.RUNNING, VMState.PAUSED})
SPEC_ONLY = frozenset({VMState.STOPPED, VMState.ERROR})
FIXED_SIZE = LIVE | {VMState.SUSPENDED}
"""States whose vCPUs and memory size cannot change (a suspended VM's memory is saved)."""
READ_TIMEOUT_S = 5.0


def _resources_event(vm_id: str, what: str, changes: dict[str, Any], *, applied: bool) -> None:
    """One resource change of one VM: an entry of the events stream (``resources``, with
    the changed fields and whether they are in force now or at the next start) and,
    through :func:`events.publish`, a journal line with ``FCD_VM_ID``."""
    events.publish(
        "resources",
        vm_id,
        change=what,
        in_force="now" if applied else "next_start",
        **{k: v for k, v in changes.items() if k not in {"change", "in_force"}},
    )


def has_resource_settings(rec: VmRecord) -> bool:
    s = rec.spec
    return any(
        v is not None
        for v in (s.rate_limits, s.balloon, s.cpu_quota, s.mem_limit_mib, s.mem_target_mib)
    )


def _changes(upd: ResourcesUpdate) -> dict[str, Any]:
    out = msgspec.to_builtins(upd)
    return {k: v for k, v in out.items() if v is not None}


class ResourceFlows:
    def __init__(self, flows: Flows) -> None:
        self.flows = flows

    async def update(self, vm_id: str, upd: ResourcesUpdate) -> ResourcesView:
        changes = _changes(upd)
        if not changes:
            raise InvalidArgument("nothing to change: the body names no resource")
        f = self.flows
        async with f.locks.hold(check_vm_id(vm_id)):
            rec = f.registry.require(vm_id)
            state = rec.state
            if state not in LIVE | SPEC_ONLY | {VMState.SUSPENDED}:
                raise FailedPrecondition(
                    f"VM {vm_id} is {state.value}: change its resources once it is running"
                    " or stopped",
                    details={"state": state.value},
                )
            if state in FIXED_SIZE:
                size_change_refused(rec.spec, upd, state.value)
            new = checked_spec(merge_update(rec.spec, upd))
            check_limits(new, f.limits)
            check_resource_spec(new, f.limits)
            in_force = None
            if state in LIVE:
                in_force = await f.helpers.vmm.call(update_request(vm_id, new, upd))
            rec = f.write(rec, spec=new)
            _resources_event(vm_id, "changed", changes, applied=state in LIVE)
            return self._view(rec, in_force, None)

    async def in_force(self, rec: VmRecord) -> tuple[pvmm.ResourcesInForce | None, str | None]:
        if rec.state not in LIVE:
            return None, None
        try:
            got = await self.flows.helpers.vmm.call(
                pvmm.ReadResources(vm_id=rec.id), timeout=READ_TIMEOUT_S
            )
        except FcdError as e:
            log.warning("resources in force: %s", e.message, extra=_extra(rec.id))
            return None, f"{e.code}: {e.message}"
        return got, None

    async def view(self, vm_id: str) -> ResourcesView:
        rec = self.flows.get(vm_id)
        return self._view(rec, *await self.in_force(rec))

    async def public(self, rec: VmRecord) -> VM:
        """The VM as ``GET /v1/vms/{id}`` shows it: with what is in force while it runs
        (read from fcd-vmm only for a VM with resource settings; ``GET .../resources``
        always reads it)."""
        vm = rec.to_public()
        if not has_resource_settings(rec):
            return vm
        got, err = await self.in_force(rec)
        if got is None and err is None:
            return vm
        resources = dict(vm.resources)
        if got is not None:
            resources["in_force"] = msgspec.to_builtins(got)
        if err is not None:
            resources["in_force_error"] = err
        return msgspec.structs.replace(vm, resources=resources)

    @staticmethod
    def _view(rec: VmRecord, got: pvmm.ResourcesInForce | None, err: str | None) -> ResourcesView:
        s = rec.spec
        return ResourcesView(
            vm_id=rec.id,
            state=rec.state.value,
            vcpu_count=s.vcpu_count,
            mem_size_mib=s.mem_size_mib,
            cpu_quota=s.cpu_quota,
            mem_limit_mib=s.mem_limit_mib,
            mem_target_mib=s.mem_target_mib,
            rate_limits=s.rate_limits,
            in_force=got,
            in_force_error=err,
        )
