"""``/v1/templates``, ``/v1/snapshots`` and ``POST /v1/storage/reclaim``: thin routes over
fcd-storage's RPCs (fcd-storage validates everything again).

Reclaim needs what only fcd-api knows, the VMs that exist: it sends the id of
every VM in the registry, in any state, and the time it read them, so a create
that starts meanwhile keeps its disk. fcd-api also runs it once at start.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from litestar import Controller, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from fcd_common.proto import storage as ps
from fcd_common.rpc import RpcClient

from .models import now
from .registry import Registry
from .service import Flows
from .storage_models import StorageReclaimReport

__all__ = ["abort_pending_snapshots", "reclaim", "reclaim_at_start", "storage_router"]

log = logging.getLogger("fcd.api.storage")

LONG_TIMEOUT_S = 1800.0
"""Imports and builds copy or format whole images."""


async def reclaim(registry: Registry, storage: RpcClient) -> StorageReclaimReport:
    as_of = now()
    live = [r.id for r in registry.list_vms()]
    res = await storage.call(ps.Reclaim(live_vm_ids=live, as_of=as_of), timeout=LONG_TIMEOUT_S)
    if res.removed:
        log.warning("storage reclaim removed %s", ", ".join(res.removed))
    return StorageReclaimReport(removed=res.removed, live_vms=len(live))


class TemplateController(Controller):
    path = "/v1/templates"
    tags = ["templates"]

    @get("/", summary="List templates (with the VMs and snapshots using each)")
    async def list_templates(self, flows: NamedDependency[Flows]) -> list[ps.TemplateInfo]:
        res = await flows.helpers.storage.call(ps.TemplateList())
        return res.items

    @get("/{name:str}", summary="Inspect a template")
    async def get_template(
        self, flows: NamedDependency[Flows], name: FromPath[str]
    ) -> ps.TemplateInfo:
        return await flows.helpers.storage.call(ps.TemplateGet(name=name))

    @post("/", status_code=201, summary="Import a kernel and a rootfs image (sha256 verified)")
    async def import_template(
        self, flows: NamedDependency[Flows], data: JSONBody[ps.TemplateSource]
    ) -> ps.TemplateInfo:
        req = ps.TemplateImport(**msgspec.structs.asdict(data))
        return await flows.helpers.storage.call(req, timeout=LONG_TIMEOUT_S)

    @post("/build", status_code=201, summary="Build a template's rootfs from a directory tree")
    async def build_template(
        self, flows: NamedDependency[Flows], data: JSONBody[ps.TemplateTree]
    ) -> ps.TemplateInfo:
        req = ps.TemplateBuild(**msgspec.structs.asdict(data))
        return await flows.helpers.storage.call(req, timeout=LONG_TIMEOUT_S)

    @delete("/{name:str}", status_code=204, summary="Delete a template nobody uses")
    async def delete_template(self, flows: NamedDependency[Flows], name: FromPath[str]) -> None:
        await flows.helpers.storage.call(ps.TemplateDelete(name=name))


class SnapshotController(Controller):
    path = "/v1/snapshots"
    tags = ["snapshots"]

    @get("/", summary="List snapshot files (with the VMs restored from each)")
    async def list_snapshots(self, flows: NamedDependency[Flows]) -> list[ps.SnapshotInfo]:
        res = await flows.helpers.storage.call(ps.SnapshotList())
        return res.items

    @get("/{name:str}", summary="Inspect a snapshot")
    async def get_snapshot(
        self, flows: NamedDependency[Flows], name: FromPath[str]
    ) -> ps.SnapshotInfo:
        return await flows.helpers.storage.call(ps.SnapshotGet(name=name))

    @delete("/{name:str}", status_code=204, summary="Delete a snapshot no VM uses")
    async def delete_snapshot(self, flows: NamedDependency[Flows], name: FromPath[str]) -> None:
        await flows.helpers.storage.call(ps.SnapshotDelete(name=name))


@post(
    "/v1/storage/reclaim",
    status_code=200,
    tags=["storage"],
    summary="Remove partial files and disks no live VM owns",
)
async def reclaim_storage(flows: NamedDependency[Flows]) -> StorageReclaimReport:
    return await reclaim(flows.registry, flows.helpers.storage)


storage_router = Router(
    path="/", route_handlers=[TemplateController, SnapshotController, reclaim_storage]
)


_background: set[asyncio.Task[None]] = set()


async def abort_pending_snapshots(storage: RpcClient) -> list[str]:
    """Delete every pending snapshot: only fcd-api takes snapshots, so one still pending
    when fcd-api starts was cut short by its crash (its VM stays where the registry
    says: paused if the snapshot had paused it)."""
    res = await storage.call(ps.SnapshotList())
    gone = []
    for snap in res.items:
        if snap.state == "pending":
            await storage.call(ps.SnapshotDelete(name=snap.name))
            gone.append(snap.name)
    if gone:
        log.warning("removed snapshots cut short by a restart: %s", ", ".join(gone))
    return gone


def reclaim_at_start(registry: Registry, storage: RpcClient) -> None:
    """Run reclaim once in the background, and remove snapshots a crash left pending;
    a helper that is not up yet is only logged."""

    async def run() -> None:
        try:
            res = await reclaim(registry, storage)
            log.info("storage reclaim at start: %d removed", len(res.removed))
            await abort_pending_snapshots(storage)
        except Exception as e:
            log.warning("storage reclaim at start failed: %s", e)

    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)
