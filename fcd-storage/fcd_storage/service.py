"""RPC handlers: validate, serialize per key, run the blocking store work in a thread."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fcd_common.ids import check_name, check_vm_id
from fcd_common.proto import storage as proto
from fcd_common.rpc import Done, Handler, Peer, Request

from .store import Store


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class StorageService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.locks = KeyedLocks()

    def status(self) -> str:
        templates, disks = self.store.counts()
        return f"{templates} templates, {disks} disks"

    def handlers(self) -> dict[type[Request], Handler]:
        return {
            proto.TemplateImport: self.template_import,
            proto.TemplateGet: self.template_get,
            proto.TemplateList: self.template_list,
            proto.Provision: self.provision,
            proto.Release: self.release,
            proto.DiskGet: self.disk_get,
            proto.DiskList: self.disk_list,
        }

    async def template_import(self, req: proto.TemplateImport, _peer: Peer) -> proto.TemplateInfo:
        name = check_name(req.name)
        async with self.locks.hold(f"template:{name}"):
            m = await asyncio.to_thread(
                self.store.import_template, name, req.kernel_path, req.rootfs_path, req.kernel_args
            )
        return m.info(self.store.layout)

    async def template_get(self, req: proto.TemplateGet, _peer: Peer) -> proto.TemplateInfo:
        m = await asyncio.to_thread(self.store.template, req.name)
        return m.info(self.store.layout)

    async def template_list(self, _req: proto.TemplateList, _peer: Peer) -> proto.TemplateInfoList:
        items = await asyncio.to_thread(self.store.templates)
        return proto.TemplateInfoList(items=[m.info(self.store.layout) for m in items])

    async def provision(self, req: proto.Provision, _peer: Peer) -> proto.DiskInfo:
        vm_id = check_vm_id(req.vm_id)
        async with self.locks.hold(f"disk:{vm_id}"):
            m = await asyncio.to_thread(
                self.store.provision, vm_id, req.template, req.disk_size_mib
            )
        return m.info(self.store.layout)

    async def release(self, req: proto.Release, _peer: Peer) -> Done:
        vm_id = check_vm_id(req.vm_id)
        async with self.locks.hold(f"disk:{vm_id}"):
            await asyncio.to_thread(self.store.release, vm_id)
        return Done()

    async def disk_get(self, req: proto.DiskGet, _peer: Peer) -> proto.DiskInfo:
        m = await asyncio.to_thread(self.store.disk, req.vm_id)
        return m.info(self.store.layout)

    async def disk_list(self, _req: proto.DiskList, _peer: Peer) -> proto.DiskInfoList:
        items = await asyncio.to_thread(self.store.disks)
        return proto.DiskInfoList(items=[m.info(self.store.layout) for m in items])
