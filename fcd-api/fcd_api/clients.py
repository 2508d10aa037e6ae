"""fcd-api's connections to the three helpers: one RpcClient each, nothing mirrored.

A call is ``await helpers.vmm.call(pvmm.Pause(vm_id=...))``: the request names
its reply type (``Request[VmProcess]``), so the client decodes exactly that
and mypy checks every call site. A request sent to the wrong helper is
refused before a byte is written.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fcd_common.config import Config
from fcd_common.proto import net as pnet
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm
from fcd_common.rpc import RpcClient

from .metrics_rpc import TimedRpcClient

__all__ = ["Helpers"]


@dataclass
class Helpers:
    net: RpcClient
    storage: RpcClient
    vmm: RpcClient
    stop_timeout_s: float = 10.0
    """fcd-vmm's wait after Ctrl-Alt-Del (``limits.stop_timeout_s``): a stop call may
    take that long on top of the RPC timeout."""

    @classmethod
    def from_config(cls, cfg: Config) -> Helpers:
        t = cfg.limits.rpc_timeout_s
        return cls(
            net=TimedRpcClient(cfg.socket("net"), pnet.PROTOCOL, timeout=t),
            storage=TimedRpcClient(cfg.socket("storage"), pstorage.PROTOCOL, timeout=t),
            vmm=TimedRpcClient(cfg.socket("vmm"), pvmm.PROTOCOL, timeout=t),
            stop_timeout_s=cfg.limits.stop_timeout_s,
        )

    async def close(self) -> None:
        await asyncio.gather(
            self.net.close(), self.storage.close(), self.vmm.close(), return_exceptions=True
        )
