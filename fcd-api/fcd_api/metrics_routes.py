"""Metrics routes: ``GET /v1/vms/{id}/metrics`` (one VM, fresh) and ``GET /metrics``
(Prometheus, every VM, from the background collection).

The per-VM call asks fcd-vmm (``vmm.usage`` with ``FlushMetrics``) and fcd-net
(``net.counters``) at once, outside the VM's lock: reading usage never waits
for, or holds up, an operation on the VM. A helper that cannot answer leaves its
sections null and names itself in ``problems``; the call still succeeds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import MediaType, Request, Response, Router, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from fcd_common.errors import FcdError
from fcd_common.proto import net as pnet
from fcd_common.proto import vmm as pvmm
from fcd_common.proto.usage import Usage, VmUsage

from .metrics_models import VMMetrics, build_metrics, now_iso
from .models import VMState
from .prom import CONTENT_TYPE, Exposition
from .service import Flows

__all__ = ["metrics_router", "vm_metrics"]


async def vm_metrics(flows: Flows, vm_id: str) -> VMMetrics:
    rec = flows.get(vm_id)
    h = flows.helpers

    async def nothing() -> None:
        return None

    usage_call = (
        h.vmm.call(Usage(vm_id=rec.id, flush=True)) if rec.runtime.jail is not None else nothing()
    )
    net_call = (
        h.net.call(pnet.NetCounters(vm_id=rec.id)) if rec.runtime.net is not None else nothing()
    )
    # a balloon's target and actual size: Firecracker's balloon statistics (only for a
    # VM with a balloon device that is live)
    live = rec.state in (VMState.RUNNING, VMState.PAUSED)
    balloon_call = (
        h.vmm.call(pvmm.ReadResources(vm_id=rec.id))
        if rec.spec.balloon is not None and live
        else nothing()
    )
    usage_r, counters_r, balloon_r = await asyncio.gather(
        usage_call, net_call, balloon_call, return_exceptions=True
    )
    counters_at = now_iso()
    problems: list[str] = []
    usage: VmUsage | None = None
    counters: pnet.Counters | None = None
    for helper, r in (("fcd-vmm", usage_r), ("fcd-net", counters_r), ("fcd-vmm", balloon_r)):
        if isinstance(r, FcdError):
            problems.append(f"{helper}: {r.code}: {r.message}")
        elif isinstance(r, BaseException):
            raise r
    if isinstance(usage_r, VmUsage):
        usage = usage_r
    if isinstance(counters_r, pnet.Counters):
        counters = counters_r
    balloon = balloon_r.balloon if isinstance(balloon_r, pvmm.ResourcesInForce) else None
    return build_metrics(rec, usage, counters, counters_at, problems, balloon=balloon)


@get("/v1/vms/{vm_id:str}/metrics", summary="A VM's resource usage (CPU, memory, network, disk)")
async def get_vm_metrics(flows: NamedDependency[Flows], vm_id: FromPath[str]) -> VMMetrics:
    return await vm_metrics(flows, vm_id)


@get("/metrics", media_type=MediaType.TEXT, include_in_schema=False)
async def prometheus(request: Request[Any, Any, Any]) -> Response[bytes]:
    exposition: Exposition = request.app.state["exposition"]
    return Response(exposition.scrape(), media_type=CONTENT_TYPE)


metrics_router = Router(path="/", route_handlers=[get_vm_metrics, prometheus])
