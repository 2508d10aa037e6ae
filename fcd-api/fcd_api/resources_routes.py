"""``PATCH /v1/vms/{id}/resources`` and ``GET /v1/vms/{id}/resources`` (flows:
:mod:`fcd_api.resources_flows`)."""

from __future__ import annotations

from litestar import Router, get, patch
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from .resources_flows import ResourceFlows
from .resources_models import ResourcesUpdate, ResourcesView
from .service import Flows

__all__ = ["resources_router"]


@patch(
    "/v1/vms/{vm_id:str}/resources",
    status_code=200,
    summary="Change a VM's balloon target, rate limits, CPU quota, memory limit "
    "(live) or vCPUs/memory (stopped VMs: at the next start)",
)
async def update_resources(
    flows: NamedDependency[Flows], vm_id: FromPath[str], data: JSONBody[ResourcesUpdate]
) -> ResourcesView:
    return await ResourceFlows(flows).update(vm_id, data)


@get("/v1/vms/{vm_id:str}/resources", summary="A VM's resource spec and what is in force")
async def get_resources(flows: NamedDependency[Flows], vm_id: FromPath[str]) -> ResourcesView:
    return await ResourceFlows(flows).view(vm_id)


resources_router = Router(
    path="/", route_handlers=[update_resources, get_resources], tags=["resources"]
)
