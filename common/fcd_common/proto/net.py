"""fcd-api -> fcd-net."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..rpc import Caller, Done, Protocol, Reply, Request
from ..schema import Record
from ..types import Cidr, NetMode, Port, Uid, VmId
from .common import Ping, PortMapping, ProbeResult

__all__ = [
    "PROTOCOL",
    "Counters",
    "CountersList",
    "NetCounters",
    "NetCountersAll",
    "NetGet",
    "NetInfo",
    "NetInfoList",
    "NetList",
    "NetMode",
    "NetPortsAdd",
    "NetPortsRemove",
    "NetProbeTcp",
    "NetReconcile",
    "NetSetup",
    "NetTeardown",
    "PolicySpec",
    "PortMapping",
    "ReconcileReport",
    "RuleSpec",
]

Ports = Annotated[list[PortMapping], msgspec.Meta(max_length=64)]


class RuleSpec(Record):
    """Destinations a guest may (or may not) reach: a CIDR, optionally a protocol and ports."""

    cidr: Cidr
    protocol: Literal["any", "tcp", "udp", "icmp"] = "any"
    ports: Annotated[list[Port], msgspec.Meta(max_length=32)] = []
    """Destination ports (tcp/udp only); empty means all."""


class PolicySpec(Record):
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


# --- replies --------------------------------------------------------------------------


class NetInfo(Reply):
    """A VM's network as fcd-net leased it. fcd-api keeps it in the registry as it came and
    hands it on, embedded, to fcd-vmm's Launch (which re-checks what it uses)."""

    vm_id: str
    tap: str
    mac: str
    ip: str
    gateway: str
    prefix_len: int
    bridge: str
    uid: int
    gid: int
    ports: list[PortMapping] = []
    """The mappings in force, with every host port allocated."""
    policy: PolicySpec = PolicySpec()
    mode: NetMode = "bridge"
    netns: str | None = None
    """netns mode: the namespace the jailer joins (``--netns``)."""
    host_ip: str | None = None
    """The VM's address as seen from the host (netns mode: its veth; else ``ip``)."""


class NetInfoList(Reply):
    items: list[NetInfo]


class Counters(Reply):
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
    rx_errors: int = 0
    tx_errors: int = 0


class CountersList(Reply):
    sampled_at: str
    """RFC 3339, when the link dump was taken."""
    items: list[Counters]
    """One per lease whose interface exists."""


class ReconcileReport(Reply):
    removed: list[str]
    """What was removed, e.g. ``"tap fcabc"``, ``"lease vm-1"``, ``"netns fcvm-x"``."""


# --- requests -------------------------------------------------------------------------


class NetSetup(Request[NetInfo], tag="net.setup"):
    """Give a VM its address, TAP (owned by the jail uid/gid) and firewall identity.

    Idempotent: repeating it for the same VM returns the same lease.
    """

    vm_id: VmId
    uid: Uid
    gid: Uid
    ports: Ports = []
    policy: PolicySpec | None = None
    """None: the default policy. Both are applied on the first setup only; a repeated
    setup returns the existing lease unchanged."""
    mode: NetMode | None = None
    """None: the configured default (``network.mode``)."""


class NetTeardown(Request[Done], tag="net.teardown"):
    """Remove exactly this VM's TAP and rules and release its address. Idempotent."""

    vm_id: VmId


class NetGet(Request[NetInfo], tag="net.get"):
    vm_id: VmId


class NetList(Request[NetInfoList], tag="net.list"):
    pass


class NetPortsAdd(Request[NetInfo], tag="net.ports_add"):
    """Add port mappings to a VM (running or not); all or nothing. Returns the VM's info."""

    vm_id: VmId
    ports: Annotated[list[PortMapping], msgspec.Meta(min_length=1, max_length=64)]


class NetPortsRemove(Request[NetInfo], tag="net.ports_remove"):
    """Remove mappings by host port and protocol (``guest_port`` is not compared)."""

    vm_id: VmId
    ports: Annotated[list[PortMapping], msgspec.Meta(min_length=1, max_length=64)]


class NetCounters(Request[Counters], tag="net.counters"):
    vm_id: VmId


class NetCountersAll(Request[CountersList], tag="net.counters_all"):
    """Counters of every lease's host-side interface, from one link dump per namespace."""


class NetReconcile(Request[ReconcileReport], tag="net.reconcile"):
    """Remove every fcd-net object no live VM owns.

    ``live`` (from fcd-api's registry): leases of other VMs are torn down too;
    None keeps every lease and removes only objects without one. fcd-api only:
    the registry is what says which VMs are live.
    """

    access = Caller.API
    live: Annotated[list[VmId], msgspec.Meta(max_length=100_000)] | None = None
    rebuild: bool = True
    """Rebuild fcd's nft tables from the leases, one transaction with every VM (0.3 s
    of fcd-net's only worker thread at 1,000 VMs). False: only if they are gone --
    fcd-api's periodic rounds, which look for leftovers, not for drift."""


class NetProbeTcp(Request[ProbeResult], tag="net.probe_tcp"):
    """Health probe: can a TCP connection to the guest's ``port`` be made within
    ``timeout_s``, from where a client reaches the guest -- fcd-net's own namespace
    (bridge mode), or inside the VM's namespace (netns mode)? Only the VM's lease
    says where the guest is; nothing is sent on the connection."""

    vm_id: VmId
    port: Port
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0


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
        NetCountersAll,
        NetProbeTcp,
    ],
)
