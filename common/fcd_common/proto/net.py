"""fcd-api -> fcd-net."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..ids import VmId
from ..rpc import Protocol, Reply, Request
from .common import Ping, Uid

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
HostPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""0 asks fcd-net to pick a free port from its range."""
NetMode = Literal["bridge", "netns"]


class _Spec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class PortSpec(_Spec, frozen=True):
    """One port mapping: ``protocol`` traffic to the host's ``host_port`` goes to the guest."""

    host_port: HostPort
    guest_port: Port
    protocol: Literal["tcp", "udp"] = "tcp"


class RuleSpec(_Spec, frozen=True):
    """Destinations a guest may (or may not) reach: a CIDR, optionally a protocol and ports."""

    cidr: Annotated[str, msgspec.Meta(max_length=18)]
    protocol: Literal["any", "tcp", "udp", "icmp"] = "any"
    ports: Annotated[list[Port], msgspec.Meta(max_length=32)] = []
    """Destination ports (tcp/udp only); empty means all."""


class PolicySpec(_Spec, frozen=True):
    """A VM's network policy; the defaults are the safe ones."""

    network: bool = True
    """False: a "no network" VM -- its TAP exists (Firecracker needs one) but no frame
    passes in either direction."""
    internet: bool = True
    """Egress to public addresses (NATed). Private ranges, link-local and the host are
    always denied unless ``allow`` names them (the gateway services excepted)."""
    peers: bool = False
    """VM-to-VM traffic; it passes only if both VMs say True."""
    allow: Annotated[list[RuleSpec], msgspec.Meta(max_length=64)] = []
    deny: Annotated[list[RuleSpec], msgspec.Meta(max_length=64)] = []
    """Checked first: deny beats allow."""


class NetSetup(Request, tag="net.setup", frozen=True):
    """Give a VM its address, TAP (owned by the jail uid/gid) and firewall identity.

    Idempotent: repeating it for the same VM returns the same lease.
    """

    vm_id: VmId
    uid: Uid
    gid: Uid
    ports: Annotated[list[PortSpec], msgspec.Meta(max_length=64)] = []
    policy: PolicySpec | None = None
    """None: the default policy. Both are applied on the first setup only; a repeated
    setup returns the existing lease unchanged."""
    mode: NetMode | None = None
    """None: the configured default (``network.mode``)."""


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
    ports: list[PortSpec] = []
    """The mappings in force, with every host port allocated."""
    policy: PolicySpec = PolicySpec()
    mode: NetMode = "bridge"
    netns: str | None = None
    """netns mode: the namespace the jailer joins (``--netns``)."""
    host_ip: str | None = None
    """The VM's address as seen from the host (netns mode: its veth; else ``ip``)."""


class NetInfoList(Reply, frozen=True):
    items: list[NetInfo]


class NetPortsAdd(Request, tag="net.ports_add", frozen=True):
    """Add port mappings to a VM (running or not); all or nothing. Returns the VM's info."""

    vm_id: VmId
    ports: Annotated[list[PortSpec], msgspec.Meta(min_length=1, max_length=64)]


class NetPortsRemove(Request, tag="net.ports_remove", frozen=True):
    """Remove mappings by host port and protocol (``guest_port`` is not compared)."""

    vm_id: VmId
    ports: Annotated[list[PortSpec], msgspec.Meta(min_length=1, max_length=64)]


class NetCounters(Request, tag="net.counters", frozen=True):
    vm_id: VmId


class Counters(Reply, frozen=True):
    """Kernel counters of the VM's host-side interface (TAP; veth in netns mode).

    rx is what the host received from the guest, tx what it sent to the guest.
    """

    vm_id: str
    iface: str
    rx_bytes: int
    rx_packets: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_dropped: int


class NetReconcile(Request, tag="net.reconcile", frozen=True):
    """Remove every fcd-net object no live VM owns.

    ``live`` (from fcd-api's registry): leases of other VMs are torn down too;
    None keeps every lease and removes only objects without one.
    """

    live: Annotated[list[VmId], msgspec.Meta(max_length=100_000)] | None = None


class ReconcileReport(Reply, frozen=True):
    removed: list[str]
    """What was removed, e.g. ``"tap fcabc"``, ``"lease vm-1"``, ``"netns fcvm-x"``."""


PROTOCOL = Protocol(
    "fcd-net",
    [
        Ping,
        NetSetup,
        NetTeardown,
        NetGet,
        NetList,
        NetPortsAdd,
        NetPortsRemove,
        NetCounters,
        NetReconcile,
    ],
)
