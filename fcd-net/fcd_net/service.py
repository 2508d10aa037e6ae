"""fcd-net's RPC face: each request runs on the single worker thread that owns the kernel state.

The logic is :class:`fcd_net.core.NetCore`; ``NetService`` only moves each
call onto the worker thread (pyroute2's asyncio core cannot run on uvloop,
and one thread serialises every mutation without a lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fcd_common.proto.common import ProbeResult
from fcd_common.proto.net import (
    PROTOCOL,
    Counters,
    CountersList,
    NetCounters,
    NetCountersAll,
    NetGet,
    NetInfo,
    NetInfoList,
    NetList,
    NetPortsAdd,
    NetPortsRemove,
    NetProbeTcp,
    NetReconcile,
    NetSetup,
    NetTeardown,
    ReconcileReport,
)
from fcd_common.rpc import Done, Peer, handles

from . import counters, probe
from .core import FirewallApi, LinksApi, NamespacesApi, NetCore

T = TypeVar("T")

log = logging.getLogger("fcd.net")

TABLE_CHECK_S = 2.0
"""How often the worker thread checks that fcd's nft tables still exist."""


class NetService:
    """The asyncio face: each request runs on the single worker thread."""

    def __init__(
        self, core: NetCore, executor: ThreadPoolExecutor, table_check_s: float = TABLE_CHECK_S
    ) -> None:
        self.core = core
        self._executor = executor
        self._guard = asyncio.get_running_loop().create_task(self._guard_tables(table_check_s))

    async def _guard_tables(self, every: float) -> None:
        """Rebuild the tables soon after something else removed them (see
        :meth:`NetCore.guard_tables`), on the worker thread like every change."""
        while True:
            await asyncio.sleep(every)
            try:
                await self._run(self.core.guard_tables)
            except Exception as e:  # keep guarding; the next round tries again
                log.error("checking the nft tables failed: %s", e)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        # the caller's context (its request id) goes along: run_in_executor drops it
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, functools.partial(ctx.run, fn, *args))

    @handles(NetSetup)
    async def on_setup(self, req: NetSetup, _peer: Peer) -> NetInfo:
        setup = functools.partial(self.core.setup, ports=req.ports, pol=req.policy, mode=req.mode)
        return await self._run(setup, req.vm_id, req.uid, req.gid)

    @handles(NetTeardown)
    async def on_teardown(self, req: NetTeardown, _peer: Peer) -> Done:
        await self._run(self.core.teardown, req.vm_id)
        return Done()

    @handles(NetGet)
    async def on_get(self, req: NetGet, _peer: Peer) -> NetInfo:
        return await self._run(self.core.get, req.vm_id)

    @handles(NetList)
    async def on_list(self, _req: NetList, _peer: Peer) -> NetInfoList:
        return await self._run(self.core.list)

    @handles(NetPortsAdd)
    async def on_ports_add(self, req: NetPortsAdd, _peer: Peer) -> NetInfo:
        return await self._run(self.core.ports_add, req.vm_id, req.ports)

    @handles(NetPortsRemove)
    async def on_ports_remove(self, req: NetPortsRemove, _peer: Peer) -> NetInfo:
        return await self._run(self.core.ports_remove, req.vm_id, req.ports)

    @handles(NetCounters)
    async def on_counters(self, req: NetCounters, _peer: Peer) -> Counters:
        return await self._run(self.core.counters, req.vm_id)

    @handles(NetCountersAll)
    async def on_counters_all(self, _req: NetCountersAll, _peer: Peer) -> CountersList:
        return await self._run(lambda: counters.collect(list(self.core.store)))

    @handles(NetReconcile)
    async def on_reconcile(self, req: NetReconcile, _peer: Peer) -> ReconcileReport:
        return await self._run(self.core.reconcile, req.live, req.rebuild)

    @handles(NetProbeTcp)
    async def on_probe_tcp(self, req: NetProbeTcp, _peer: Peer) -> ProbeResult:
        """Socket made on the worker thread (in the VM's namespace); connect on the loop."""

        def make() -> probe.Target:
            return probe.target(self.core.store.get(req.vm_id), req.vm_id)

        t = await self._run(make)
        sock = await self._run(probe.open_socket, t)
        return await probe.connect(sock, t.ip, req.port, req.timeout_s)

    def status(self) -> str:
        return self.core.status()

    async def close(self) -> None:
        self._guard.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._guard
        await asyncio.to_thread(self._executor.shutdown, True)


__all__ = ["PROTOCOL", "FirewallApi", "LinksApi", "NamespacesApi", "NetCore", "NetService"]
