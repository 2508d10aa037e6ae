"""Network routes: port mappings on a live VM, counters, reconciliation (fcd-net RPCs).

* ``POST /v1/vms/{id}/ports`` (body: one ``PortMapping``; ``host_port`` 0 picks
  one) adds a mapping to a VM in any state but ``creating``; 409 if the host port
  is taken.
* ``DELETE /v1/vms/{id}/ports?host_port=N&protocol=tcp`` removes one.
* ``GET /v1/vms/{id}/network/counters``: rx/tx bytes, packets, drops of the VM's
  host-side interface.
* ``POST /v1/network/reconcile``: fcd-net removes what no VM in the registry owns.

The registry keeps the mappings fcd-net reports, so ``GET /v1/vms/{id}`` shows
the ports in force; fcd-net's lease file is what makes them survive restarts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from fcd_common.proto import net as pnet

from .models import VM, PortMapping
from .service import Flows

__all__ = ["net_router"]


async def _change_ports(flows: Flows, vm_id: str, add: bool, ports: list[PortMapping]) -> VM:
    return (await flows.change_ports(vm_id, add, ports)).to_public()


@post("/v1/vms/{vm_id:str}/ports", status_code=200, summary="Add a port mapping to a VM")
async def add_port(
    flows: NamedDependency[Flows], vm_id: FromPath[str], data: JSONBody[PortMapping]
) -> VM:
    return await _change_ports(flows, vm_id, True, [data])


@delete("/v1/vms/{vm_id:str}/ports", status_code=200, summary="Remove a port mapping")
async def remove_port(
    flows: NamedDependency[Flows],
    vm_id: FromPath[str],
    host_port: Annotated[int, QueryParameter(ge=1, le=65535)],
    protocol: Annotated[Literal["tcp", "udp"], QueryParameter()] = "tcp",
) -> VM:
    gone = PortMapping(host_port=host_port, guest_port=1, protocol=protocol)
    return await _change_ports(flows, vm_id, False, [gone])


@get("/v1/vms/{vm_id:str}/network/counters", summary="Counters of the VM's interface")
async def counters(flows: NamedDependency[Flows], vm_id: FromPath[str]) -> pnet.Counters:
    return await flows.counters(vm_id)


@post("/v1/network/reconcile", status_code=200, summary="Remove network objects of no VM")
async def reconcile_route(flows: NamedDependency[Flows]) -> pnet.ReconcileReport:
    return await flows.reconcile_network()


net_router = Router(
    path="/", route_handlers=[add_port, remove_port, counters, reconcile_route], tags=["network"]
)
