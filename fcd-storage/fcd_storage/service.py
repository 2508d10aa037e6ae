"""RPC handlers: validate, serialize per key, run the blocking store work in a thread.

Two levels of locking: a per-key lock (one template name, VM id or snapshot
name at a time) and a catalog lock: every operation that makes or uses
entries holds it shared; deleting a template or snapshot (the reference check
must not race a provision) and reclaim (which clears ``tmp/``) hold it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from fcd_common.ids import check_name, check_vm_id
from fcd_common.locks import KeyedLocks, SharedLock
from fcd_common.proto import storage as proto
from fcd_common.rpc import Done, Peer, handles

from . import disks, reclaim, snapshots, suspends, templates
from .store import Store


class StorageService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.locks = KeyedLocks()
        self.catalog = SharedLock()

    @contextlib.asynccontextmanager
    async def _using(self, key: str) -> AsyncIterator[None]:
        async with self.catalog.shared(), self.locks.hold(key):
            yield

    def status(self) -> str:
        templates, disks = self.store.counts()
        return f"{templates} templates, {disks} disks"

    @handles(proto.TemplateImport)
    async def template_import(self, req: proto.TemplateImport, _peer: Peer) -> proto.TemplateInfo:
        name = check_name(req.name)
        async with self._using(f"template:{name}"):
            m = await asyncio.to_thread(
                functools.partial(
                    templates.import_template,
                    self.store,
                    name,
                    req.kernel_path,
                    req.rootfs_path,
                    req.kernel_args,
                    kernel_sha256=req.kernel_sha256,
                    rootfs_sha256=req.rootfs_sha256,
                )
            )
        return m.info(self.store.layout)

    @handles(proto.TemplateBuild)
    async def template_build(self, req: proto.TemplateBuild, _peer: Peer) -> proto.TemplateInfo:
        name = check_name(req.name)
        async with self._using(f"template:{name}"):
            m = await asyncio.to_thread(
                functools.partial(
                    templates.build_template,
                    self.store,
                    name,
                    req.kernel_path,
                    req.source_dir,
                    size_mib=req.size_mib,
                    kernel_args=req.kernel_args,
                    kernel_sha256=req.kernel_sha256,
                )
            )
        return m.info(self.store.layout)

    @handles(proto.TemplateDelete)
    async def template_delete(self, req: proto.TemplateDelete, _peer: Peer) -> Done:
        name = check_name(req.name)
        async with self.catalog.exclusive():
            await asyncio.to_thread(templates.delete_template, self.store, name)
        return Done()

    @handles(proto.TemplateGet)
    async def template_get(self, req: proto.TemplateGet, _peer: Peer) -> proto.TemplateInfo:
        def get() -> proto.TemplateInfo:
            m = self.store.template(req.name)
            used = templates.users(self.store).get(m.name) if req.users else None
            return m.info(self.store.layout, used)

        if not req.users:
            # one small manifest read (every create asks): cheaper on the loop than
            # the thread hop (~70 CPU-us); counting users reads every disk's manifest
            return get()
        return await asyncio.to_thread(get)

    @handles(proto.TemplateList)
    async def template_list(self, _req: proto.TemplateList, _peer: Peer) -> proto.TemplateInfoList:
        def items() -> list[proto.TemplateInfo]:
            used = templates.users(self.store)
            return [m.info(self.store.layout, used.get(m.name)) for m in self.store.templates()]

        return proto.TemplateInfoList(items=await asyncio.to_thread(items))

    @handles(proto.Provision)
    async def provision(self, req: proto.Provision, _peer: Peer) -> proto.DiskInfo:
        vm_id = check_vm_id(req.vm_id)
        async with self._using(f"disk:{vm_id}"):
            m = await asyncio.to_thread(
                functools.partial(
                    disks.provision,
                    self.store,
                    vm_id,
                    req.template,
                    req.disk_size_mib,
                    req.drives,
                    snapshot=req.snapshot,
                )
            )
        return m.info(self.store.layout)

    @handles(proto.Release)
    async def release(self, req: proto.Release, _peer: Peer) -> Done:
        vm_id = check_vm_id(req.vm_id)
        async with self._using(f"disk:{vm_id}"):
            await asyncio.to_thread(disks.release, self.store, vm_id)
        return Done()

    @handles(proto.Reclaim)
    async def reclaim(self, req: proto.Reclaim, _peer: Peer) -> proto.ReclaimResult:
        live = [check_vm_id(v) for v in req.live_vm_ids]
        async with self.catalog.exclusive():
            removed = await asyncio.to_thread(reclaim.reclaim_unowned, self.store, live, req.as_of)
        return proto.ReclaimResult(removed=removed)

    # -- snapshots --------------------------------------------------------------

    def _snapshot_info(self, name: str, *, users: bool = True) -> proto.SnapshotInfo:
        m = snapshots.get(self.store, name)
        used = snapshots.users(self.store).get(m.name) if users else None
        return m.info(self.store.layout, used)

    @handles(proto.SnapshotPrepare)
    async def snapshot_prepare(self, req: proto.SnapshotPrepare, _peer: Peer) -> proto.SnapshotInfo:
        name, vm_id = check_name(req.name), check_vm_id(req.vm_id)
        async with self._using(f"snapshot:{name}"), self.locks.hold(f"disk:{vm_id}"):
            await asyncio.to_thread(snapshots.prepare, self.store, name, vm_id)
            return await asyncio.to_thread(self._snapshot_info, name)

    @handles(proto.SnapshotCommit)
    async def snapshot_commit(self, req: proto.SnapshotCommit, _peer: Peer) -> proto.SnapshotInfo:
        name = check_name(req.name)
        async with self._using(f"snapshot:{name}"):
            await asyncio.to_thread(snapshots.commit, self.store, name, req.origin)
            return await asyncio.to_thread(self._snapshot_info, name)

    @handles(proto.SnapshotGet)
    async def snapshot_get(self, req: proto.SnapshotGet, _peer: Peer) -> proto.SnapshotInfo:
        name = check_name(req.name)
        return await asyncio.to_thread(
            functools.partial(self._snapshot_info, name, users=req.users)
        )

    @handles(proto.SnapshotList)
    async def snapshot_list(self, _req: proto.SnapshotList, _peer: Peer) -> proto.SnapshotInfoList:
        def items() -> list[proto.SnapshotInfo]:
            used = snapshots.users(self.store)
            lay = self.store.layout
            return [m.info(lay, used.get(m.name)) for m in snapshots.manifests(self.store)]

        return proto.SnapshotInfoList(items=await asyncio.to_thread(items))

    @handles(proto.SnapshotDelete)
    async def snapshot_delete(self, req: proto.SnapshotDelete, _peer: Peer) -> Done:
        name = check_name(req.name)
        async with self.catalog.exclusive():
            await asyncio.to_thread(snapshots.delete, self.store, name)
        return Done()

    # -- suspend files (in the VM's own disk directory: its disk lock) --------------

    @handles(proto.SuspendPrepare)
    async def suspend_prepare(self, req: proto.SuspendPrepare, _peer: Peer) -> proto.SuspendInfo:
        vm_id = check_vm_id(req.vm_id)
        async with self._using(f"disk:{vm_id}"):
            return await asyncio.to_thread(suspends.prepare, self.store, vm_id)

    @handles(proto.SuspendCommit)
    async def suspend_commit(self, req: proto.SuspendCommit, _peer: Peer) -> proto.SuspendInfo:
        vm_id = check_vm_id(req.vm_id)
        async with self._using(f"disk:{vm_id}"):
            return await asyncio.to_thread(suspends.commit, self.store, vm_id)

    @handles(proto.SuspendAbort)
    async def suspend_abort(self, req: proto.SuspendAbort, _peer: Peer) -> Done:
        vm_id = check_vm_id(req.vm_id)
        async with self._using(f"disk:{vm_id}"):
            await asyncio.to_thread(suspends.abort, self.store, vm_id)
        return Done()

    @handles(proto.DiskGet)
    async def disk_get(self, req: proto.DiskGet, _peer: Peer) -> proto.DiskInfo:
        m = await asyncio.to_thread(self.store.disk, req.vm_id)
        return m.info(self.store.layout)

    @handles(proto.DiskList)
    async def disk_list(self, _req: proto.DiskList, _peer: Peer) -> proto.DiskInfoList:
        items = await asyncio.to_thread(self.store.disks)
        return proto.DiskInfoList(items=[m.info(self.store.layout) for m in items])
