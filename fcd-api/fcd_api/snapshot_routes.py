"""``POST /v1/vms/{id}/snapshots``, ``POST /v1/snapshots/{name}/restore``, ``/suspend``, ``/wake``
(the flows are :mod:`fcd_api.snapshot_flows`; listing, inspecting and deleting
snapshot files are fcd-storage's routes in :mod:`fcd_api.storage_routes`)."""

from __future__ import annotations

from litestar import Response, Router, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody

from fcd_common.proto import storage as ps

from . import events
from .models import VM
from .service import Flows
from .snapshot_flows import SnapshotFlows
from .snapshot_models import RestoreRequest, SnapshotRequest
from .suspend_flows import SuspendFlows

__all__ = ["snapshot_router"]


@post("/v1/vms/{vm_id:str}/snapshots", status_code=201, summary="Snapshot a VM")
async def take_snapshot(
    flows: NamedDependency[Flows], vm_id: FromPath[str], data: JSONBody[SnapshotRequest]
) -> ps.SnapshotInfo:
    info = await SnapshotFlows(flows).take(vm_id, data)
    events.publish("snapshot_created", vm_id, snapshot=info.name)
    return info


@post(
    "/v1/snapshots/{name:str}/restore",
    status_code=201,
    summary="Restore a new VM from a snapshot (200 if it already exists with this spec)",
    responses={200: ResponseSpec(VM, description="It already exists with this spec")},
)
async def restore_snapshot(
    flows: NamedDependency[Flows], name: FromPath[str], data: JSONBody[RestoreRequest]
) -> Response[VM]:
    rec, created = await SnapshotFlows(flows).restore(name, data)
    if created:
        events.publish("restored", rec.id, snapshot=name, state=rec.state.value)
    return Response(rec.to_public(), status_code=201 if created else 200)


@post("/v1/vms/{vm_id:str}/suspend", status_code=200, summary="Suspend a VM to disk")
async def suspend_vm(flows: NamedDependency[Flows], vm_id: FromPath[str]) -> VM:
    rec = await SuspendFlows(flows).suspend(vm_id)
    events.publish("suspended", vm_id, state=rec.state.value)
    return rec.to_public()


@post("/v1/vms/{vm_id:str}/wake", status_code=200, summary="Wake a suspended VM")
async def wake_vm(flows: NamedDependency[Flows], vm_id: FromPath[str]) -> VM:
    rec = await SuspendFlows(flows).wake(vm_id)
    events.publish("woken", vm_id, state=rec.state.value)
    return rec.to_public()


snapshot_router = Router(
    path="/",
    route_handlers=[take_snapshot, restore_snapshot, suspend_vm, wake_vm],
    tags=["snapshots"],
)
