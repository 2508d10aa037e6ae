"""Typed stubs for the three helpers, one method per RPC handler.

They mirror ``fcd_common.proto.{net,storage,vmm}`` one to one and are the only
place fcd-api builds RPC requests. Calls whose reply carries nothing fcd-api
needs (teardown, release, pause, resume) accept any reply, so a helper that
answers with ``Done`` or with a richer Struct is equally fine; ``launch``,
``pause``, ``resume`` take a ``VmProcess`` when the helper sends one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from fcd_common.config import Config
from fcd_common.proto import net as pnet
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm
from fcd_common.proto.common import Ping, Pong
from fcd_common.rpc import Request, RpcClient

__all__ = ["Helpers", "NetClient", "StorageClient", "VmmClient"]

_R = TypeVar("_R")


def _process(obj: Any, vm_id: str, default_state: pvmm.ProcState) -> pvmm.VmProcess:
    """A VmProcess from whatever the helper replied (a VmProcess, or Done)."""
    if isinstance(obj, dict) and "state" in obj:
        try:
            return msgspec.convert(obj, pvmm.VmProcess)
        except msgspec.ValidationError:
            pass
    pid = obj.get("pid") if isinstance(obj, dict) else None
    return pvmm.VmProcess(
        vm_id=vm_id, state=default_state, pid=pid if isinstance(pid, int) else None
    )


class _Stub:
    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc

    async def ping(self) -> Pong:
        return await self.rpc.call(Ping(), Pong)

    async def close(self) -> None:
        await self.rpc.close()


class NetClient(_Stub):
    async def setup(
        self,
        vm_id: str,
        uid: int,
        gid: int,
        *,
        ports: list[pnet.PortSpec] | None = None,
        policy: pnet.PolicySpec | None = None,
        mode: pnet.NetMode | None = None,
    ) -> pnet.NetInfo:
        req = pnet.NetSetup(
            vm_id=vm_id, uid=uid, gid=gid, ports=ports or [], policy=policy, mode=mode
        )
        return await self.rpc.call(req, pnet.NetInfo)

    async def ports_add(self, vm_id: str, ports: list[pnet.PortSpec]) -> pnet.NetInfo:
        return await self.rpc.call(pnet.NetPortsAdd(vm_id=vm_id, ports=ports), pnet.NetInfo)

    async def ports_remove(self, vm_id: str, ports: list[pnet.PortSpec]) -> pnet.NetInfo:
        return await self.rpc.call(pnet.NetPortsRemove(vm_id=vm_id, ports=ports), pnet.NetInfo)

    async def counters(self, vm_id: str) -> pnet.Counters:
        return await self.rpc.call(pnet.NetCounters(vm_id=vm_id), pnet.Counters)

    async def reconcile(self, live: list[str] | None = None) -> pnet.ReconcileReport:
        return await self.rpc.call(pnet.NetReconcile(live=live), pnet.ReconcileReport)

    async def teardown(self, vm_id: str) -> None:
        await self.rpc.call(pnet.NetTeardown(vm_id=vm_id), msgspec.Raw)

    async def get(self, vm_id: str) -> pnet.NetInfo:
        return await self.rpc.call(pnet.NetGet(vm_id=vm_id), pnet.NetInfo)

    async def list(self) -> pnet.NetInfoList:
        return await self.rpc.call(pnet.NetList(), pnet.NetInfoList)


class StorageClient(_Stub):
    async def template_import(
        self, name: str, kernel_path: str, rootfs_path: str, kernel_args: str = ""
    ) -> pstorage.TemplateInfo:
        req = pstorage.TemplateImport(
            name=name, kernel_path=kernel_path, rootfs_path=rootfs_path, kernel_args=kernel_args
        )
        return await self.rpc.call(req, pstorage.TemplateInfo)

    async def template_get(self, name: str) -> pstorage.TemplateInfo:
        return await self.rpc.call(pstorage.TemplateGet(name=name), pstorage.TemplateInfo)

    async def template_list(self) -> pstorage.TemplateInfoList:
        return await self.rpc.call(pstorage.TemplateList(), pstorage.TemplateInfoList)

    async def provision(
        self,
        vm_id: str,
        template: str,
        disk_size_mib: int | None = None,
        drives: list[pstorage.DriveSpec] | None = None,
    ) -> pstorage.DiskInfo:
        req = pstorage.Provision(
            vm_id=vm_id, template=template, disk_size_mib=disk_size_mib, drives=drives or []
        )
        return await self.rpc.call(req, pstorage.DiskInfo)

    async def release(self, vm_id: str) -> None:
        await self.rpc.call(pstorage.Release(vm_id=vm_id), msgspec.Raw)

    async def disk_get(self, vm_id: str) -> pstorage.DiskInfo:
        return await self.rpc.call(pstorage.DiskGet(vm_id=vm_id), pstorage.DiskInfo)

    async def disk_list(self) -> pstorage.DiskInfoList:
        return await self.rpc.call(pstorage.DiskList(), pstorage.DiskInfoList)

    async def call(self, req: Request, reply: type[_R], *, timeout: float | None = None) -> _R:
        """Any other storage request (templates, snapshots, reclaim): long copies and
        mkfs runs get ``timeout`` instead of the default RPC timeout."""
        return await self.rpc.call(req, reply, timeout=timeout or self.rpc.timeout)


class VmmClient(_Stub):
    def __init__(self, rpc: RpcClient, *, stop_timeout_s: float = 10.0) -> None:
        super().__init__(rpc)
        self.stop_timeout_s = stop_timeout_s
        """fcd-vmm's default wait after Ctrl-Alt-Del (config limits.stop_timeout_s)."""

    async def allocate_jail(self, vm_id: str) -> pvmm.JailInfo:
        return await self.rpc.call(pvmm.AllocateJail(vm_id=vm_id), pvmm.JailInfo)

    async def launch(self, req: pvmm.Launch) -> pvmm.VmProcess:
        obj = await self.rpc.call(req, object)
        return _process(obj, req.vm_id, "running")

    async def pause(self, vm_id: str) -> pvmm.VmProcess:
        return _process(await self.rpc.call(pvmm.Pause(vm_id=vm_id), object), vm_id, "paused")

    async def resume(self, vm_id: str) -> pvmm.VmProcess:
        return _process(await self.rpc.call(pvmm.Resume(vm_id=vm_id), object), vm_id, "running")

    async def stop(self, vm_id: str, timeout_s: float | None = None) -> pvmm.StopResult:
        # The helper may wait timeout_s for the guest before SIGKILL: give the RPC that long too.
        extra = timeout_s if timeout_s is not None else self.stop_timeout_s
        return await self.rpc.call(
            pvmm.Stop(vm_id=vm_id, timeout_s=timeout_s),
            pvmm.StopResult,
            timeout=self.rpc.timeout + extra,
        )

    async def release(self, vm_id: str) -> None:
        await self.rpc.call(pvmm.ReleaseJail(vm_id=vm_id), msgspec.Raw)

    async def status(self, vm_id: str) -> pvmm.VmProcess:
        return await self.rpc.call(pvmm.Status(vm_id=vm_id), pvmm.VmProcess)

    async def list(self) -> pvmm.VmProcessList:
        return await self.rpc.call(pvmm.ListVms(), pvmm.VmProcessList)


@dataclass
class Helpers:
    net: NetClient
    storage: StorageClient
    vmm: VmmClient

    @classmethod
    def from_config(cls, cfg: Config) -> Helpers:
        t = cfg.limits.rpc_timeout_s
        return cls(
            net=NetClient(RpcClient(cfg.socket("net"), pnet.PROTOCOL, timeout=t)),
            storage=StorageClient(RpcClient(cfg.socket("storage"), pstorage.PROTOCOL, timeout=t)),
            vmm=VmmClient(
                RpcClient(cfg.socket("vmm"), pvmm.PROTOCOL, timeout=t),
                stop_timeout_s=cfg.limits.stop_timeout_s,
            ),
        )

    async def close(self) -> None:
        await asyncio.gather(
            self.net.close(), self.storage.close(), self.vmm.close(), return_exceptions=True
        )
