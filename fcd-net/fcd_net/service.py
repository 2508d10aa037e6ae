"""fcd-net's handlers: give a VM its address, TAP and firewall identity, and take them back.

``NetCore`` holds the logic and is synchronous; every call runs on one
dedicated worker thread, which both keeps netlink/nftables/fsync off the
event loop and serialises all mutations (allocation, TAP, nft, lease file)
without a lock. ``NetService`` is the thin asyncio face the RPC server
calls. The appliers are passed in, so the logic is unit-tested with fakes.

Order of a setup: validate, decide (lease), persist the lease (the intent),
then create the TAP, attach it, add the nft identity. If a step fails the
steps already done are undone in reverse and a new lease is released, so a
failed setup leaves nothing behind. A teardown removes the kernel objects
first and releases the address last, so an address is never reusable while
rules for it still exist.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import msgspec

from fcd_common import ids, logs
from fcd_common.config import Config
from fcd_common.errors import Conflict, NotFound
from fcd_common.proto.net import (
    PROTOCOL,
    NetGet,
    NetInfo,
    NetInfoList,
    NetList,
    NetSetup,
    NetTeardown,
)
from fcd_common.rpc import Done, Handler, Peer, Request

from . import plan
from .leases import LeaseStore
from .links import Link
from .plan import Lease

log = logging.getLogger("fcd.net")

T = TypeVar("T")


class LinksApi(Protocol):
    def get(self, name: str) -> Link | None: ...
    def ensure_bridge(self, name: str, gateway: ipaddress.IPv4Interface) -> Link: ...
    def create_tap(self, name: str, uid: int, gid: int) -> None: ...
    def attach(self, name: str, bridge: str) -> None: ...
    def delete(self, name: str) -> bool: ...


class FirewallApi(Protocol):
    def ensure_base(self, leases: Sequence[Lease]) -> None: ...
    def add_vm(self, lease: Lease) -> None: ...
    def remove_vm(self, lease: Lease) -> None: ...


class NetCore:
    def __init__(
        self, cfg: Config, store: LeaseStore, links: LinksApi, firewall: FirewallApi
    ) -> None:
        self.cfg = cfg
        self.net = cfg.network
        self.store = store
        self.links = links
        self.firewall = firewall
        self.bridge_up = False

    # --- start -------------------------------------------------------------------
    def start(self) -> None:
        """Bridge up with the gateway; nft tables rebuilt with every lease's identity."""
        gateway = ipaddress.IPv4Interface(f"{self.net.gateway}/{self.net.network.prefixlen}")
        bridge = self.links.ensure_bridge(self.net.bridge, gateway)
        self.bridge_up = bridge.up
        for lease in self.store:
            if ipaddress.IPv4Address(lease.ip) not in self.net.network:
                log.warning(
                    "lease %s of %s is outside the pool %s (config changed?)",
                    lease.ip, lease.vm_id, self.net.network, extra=logs.vm(lease.vm_id),
                )
        self.firewall.ensure_base(list(self.store))

    # --- requests ----------------------------------------------------------------
    def setup(self, vm_id: str, uid: int, gid: int) -> NetInfo:
        ids.check_vm_id(vm_id)
        plan.check_owner(self.cfg.jail, uid, gid)
        tap = ids.tap_name(vm_id, self.net.tap_prefix)
        holder = self.store.by_tap(tap)
        if holder is not None and holder.vm_id != vm_id:
            raise Conflict(
                f"TAP name {tap} is already held by VM {holder.vm_id}", details={"field": "vm_id"}
            )
        old = self.store.get(vm_id)
        if old is None:
            lease = plan.new_lease(self.net, vm_id, uid, gid, self.store.used_ips())
        else:
            lease = msgspec.structs.replace(old, uid=uid, gid=gid, tap=tap)
        link = self.links.get(tap)
        if link is not None and not link.is_tap:
            raise Conflict(f"interface {tap} exists and is not a TAP ({link.kind})")

        self.store.put(lease)
        created = False
        try:
            if link is None:
                self.links.create_tap(tap, uid, gid)
                created = True
            elif (link.owner, link.group) != (uid, gid):
                log.info(
                    "re-owning TAP %s: %s:%s -> %d:%d", tap, link.owner, link.group, uid, gid,
                    extra=logs.vm(vm_id),
                )
                self.links.create_tap(tap, uid, gid)
            self.links.attach(tap, self.net.bridge)
            self.firewall.add_vm(lease)
        except BaseException as e:
            log.warning("setup of %s failed, undoing: %s", vm_id, e, extra=logs.vm(vm_id))
            self._undo_setup(lease, old, created)
            raise
        log.info(
            "VM %s: %s on %s (%s), TAP owner %d:%d",
            vm_id, lease.ip, tap, lease.mac, uid, gid, extra=logs.vm(vm_id),
        )
        return plan.net_info(self.net, lease)

    def _undo_setup(self, lease: Lease, old: Lease | None, created: bool) -> None:
        steps: list[tuple[str, Callable[[], object]]] = []
        if created:
            steps.append(("delete TAP", lambda: self.links.delete(lease.tap)))
        if old is None:
            steps.append(("remove nft identity", lambda: self.firewall.remove_vm(lease)))
            steps.append(("release address", lambda: self.store.remove(lease.vm_id)))
        else:
            steps.append(("restore lease", lambda: self.store.put(old)))
        for what, step in steps:
            try:
                step()
            except Exception as e:
                log.error(
                    "undo of %s: %s failed: %s", lease.vm_id, what, e, extra=logs.vm(lease.vm_id)
                )

    def teardown(self, vm_id: str) -> None:
        ids.check_vm_id(vm_id)
        lease = self.store.get(vm_id)
        tap = lease.tap if lease is not None else ids.tap_name(vm_id, self.net.tap_prefix)
        if lease is not None:
            self.firewall.remove_vm(lease)
        holder = self.store.by_tap(tap)
        if holder is None or holder.vm_id == vm_id:
            link = self.links.get(tap)
            if link is not None and link.is_tap:
                self.links.delete(tap)
        if lease is not None:
            self.store.remove(vm_id)
            log.info("VM %s: released %s and TAP %s", vm_id, lease.ip, tap, extra=logs.vm(vm_id))
        else:
            log.info("VM %s: nothing to tear down", vm_id, extra=logs.vm(vm_id))

    def get(self, vm_id: str) -> NetInfo:
        ids.check_vm_id(vm_id)
        lease = self.store.get(vm_id)
        if lease is None:
            raise NotFound(f"no network lease for VM {vm_id}")
        return plan.net_info(self.net, lease)

    def list(self) -> NetInfoList:
        return NetInfoList(items=[plan.net_info(self.net, x) for x in self.store])

    def status(self) -> str:
        state = "up" if self.bridge_up else "down"
        return f"{len(self.store)} leases, bridge {self.net.bridge} {state}"


class NetService:
    """The asyncio face: each request runs on the single worker thread."""

    def __init__(self, core: NetCore, executor: ThreadPoolExecutor) -> None:
        self.core = core
        self._executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def on_setup(self, req: NetSetup, _peer: Peer) -> NetInfo:
        return await self._run(self.core.setup, req.vm_id, req.uid, req.gid)

    async def on_teardown(self, req: NetTeardown, _peer: Peer) -> Done:
        await self._run(self.core.teardown, req.vm_id)
        return Done()

    async def on_get(self, req: NetGet, _peer: Peer) -> NetInfo:
        return await self._run(self.core.get, req.vm_id)

    async def on_list(self, _req: NetList, _peer: Peer) -> NetInfoList:
        return await self._run(self.core.list)

    def handlers(self) -> Mapping[type[Request], Handler]:
        return {
            NetSetup: self.on_setup,
            NetTeardown: self.on_teardown,
            NetGet: self.on_get,
            NetList: self.on_list,
        }

    def status(self) -> str:
        return self.core.status()

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True)


__all__ = ["PROTOCOL", "FirewallApi", "LinksApi", "NetCore", "NetService"]
