"""fcd-api -> fcd-net."""

from __future__ import annotations

from ..ids import VmId
from ..rpc import Protocol, Reply, Request
from .common import Ping, Uid


class NetSetup(Request, tag="net.setup", frozen=True):
    """Give a VM its address, TAP (owned by the jail uid/gid) and firewall identity.

    Idempotent: repeating it for the same VM returns the same lease.
    """

    vm_id: VmId
    uid: Uid
    gid: Uid


class NetTeardown(Request, tag="net.teardown", frozen=True):
    """Remove exactly this VM's TAP and rules and release its address. Idempotent."""

    vm_id: VmId


class NetGet(Request, tag="net.get", frozen=True):
    vm_id: VmId


class NetList(Request, tag="net.list", frozen=True):
    pass


class NetInfo(Reply, frozen=True):
    vm_id: str
    tap: str
    mac: str
    ip: str
    gateway: str
    prefix_len: int
    bridge: str
    uid: int
    gid: int


class NetInfoList(Reply, frozen=True):
    items: list[NetInfo]


PROTOCOL = Protocol("fcd-net", [Ping, NetSetup, NetTeardown, NetGet, NetList])
