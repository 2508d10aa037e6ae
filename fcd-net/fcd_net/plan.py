"""Pure planning for fcd-net: addresses, names, leases.

Nothing here touches the kernel or the disk; the appliers (``links``,
``firewall``, ``leases``) carry these plans out.

The nftables plan lives in :mod:`fcd_net.ruleset`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet

from fcd_common import ids
from fcd_common.config import JailConfig, NetworkConfig
from fcd_common.errors import InvalidArgument, ResourceExhausted
from fcd_common.proto.net import NetInfo, NetMode, PolicySpec, PortMapping
from fcd_common.schema import Record

from .lowfree import LowestFree

NETNS_DIR = ids.NETNS_DIR
NETNS_VETH = "eth0"
"""Name of the VM side of the veth pair inside a VM namespace."""


class Lease(Record):
    """One VM's network identity, as persisted in ``leases.log`` (:mod:`fcd_net.leases`).

    Bridge mode: ``ip`` is unique and the TAP sits on the bridge. netns mode:
    ``ip``/``mac``/``tap`` are the same for every VM (inside its own namespace
    ``netns``) and ``host_ip`` -- the VM end of its veth pair, NATed to the
    guest -- is what the host routes to. ``addr`` is the unique one either way.
    """

    vm_id: str
    ip: str
    tap: str
    mac: str
    uid: int
    gid: int
    ports: list[PortMapping] = []
    policy: PolicySpec = PolicySpec()
    mode: NetMode = "bridge"
    netns: str | None = None
    veth: str | None = None
    """netns mode: the host end of the veth pair."""
    host_ip: str | None = None
    """netns mode: the VM end of the veth pair (odd address of its /31)."""

    @property
    def addr(self) -> str:
        """The VM's unique address on the host."""
        return self.host_ip or self.ip

    @property
    def host_iface(self) -> str:
        """The VM's interface in the host namespace (its counters are the VM's)."""
        return self.veth or self.tap

    @property
    def veth_gateway(self) -> str | None:
        """netns mode: the host end's address (the namespace's default gateway)."""
        if self.host_ip is None:
            return None
        return str(ipaddress.IPv4Address(self.host_ip) - 1)


# --- validation ----------------------------------------------------------------


def check_owner(jail: JailConfig, uid: int, gid: int) -> None:
    """The TAP owner must be a jail uid/gid from the pool, never root or a system account."""
    for field, value in (("uid", uid), ("gid", gid)):
        if not jail.uid_min <= value <= jail.uid_max:
            raise InvalidArgument(
                f"{field} {value} is outside the jail pool [{jail.uid_min}, {jail.uid_max}]",
                details={"field": field},
            )


# --- addresses -----------------------------------------------------------------


Pools = Callable[[int, int, int], LowestFree]
"""``(first, last, step) -> LowestFree`` of a range of addresses (LeaseStore.pool)."""


def _dotted(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def _lowest(
    first: int, last: int, step: int, taken: AbstractSet[str], pools: Pools | None
) -> int | None:
    """The lowest value of the range whose dotted quad is not ``taken``: from the
    store's index (O(log n)) or, without one, by scanning from ``first``."""
    if pools is not None:
        return pools(first, last, step).lowest(lambda v: _dotted(v) in taken)
    for value in range(first, last + 1, step):
        if _dotted(value) not in taken:
            return value
    return None


def allocate_ip(
    net: NetworkConfig, used: Iterable[str], pools: Pools | None = None
) -> ipaddress.IPv4Address:
    """Lowest free host address of the pool after the gateway.

    Never the network, broadcast or gateway address, never one in ``used``.
    """
    network = net.network
    # Leases store canonical dotted quads: compare strings, parse nothing per lease
    # (building IPv4Address objects for every lease made this O(N) in slow Python).
    taken = used if isinstance(used, AbstractSet) else set(used)
    first = int(net.gateway) + 1
    last = int(network.broadcast_address) - 1
    value = _lowest(first, last, 1, taken, pools)
    if value is not None:
        return ipaddress.IPv4Address(value)
    raise ResourceExhausted(
        f"address pool {network} is exhausted ({last - first + 1} guest addresses in use)"
    )


def new_lease(
    net: NetworkConfig,
    vm_id: str,
    uid: int,
    gid: int,
    used: Iterable[str],
    *,
    pools: Pools | None = None,
) -> Lease:
    ip = str(allocate_ip(net, used, pools))
    return Lease(
        vm_id=vm_id,
        ip=ip,
        tap=ids.tap_name(vm_id, net.tap_prefix),
        mac=ids.guest_mac(ip),
        uid=uid,
        gid=gid,
    )


# --- netns mode ----------------------------------------------------------------


def netns_name(net: NetworkConfig, vm_id: str) -> str:
    """``<netns_prefix><13-char digest of the id>``: derived, never taken from a caller."""
    return ids.netns_name(vm_id, net.netns_prefix)


def netns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def netns_tap(net: NetworkConfig) -> str:
    """The TAP name inside every VM namespace (the same for all clones)."""
    return ids.netns_tap(net.tap_prefix)


def netns_guest(net: NetworkConfig) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """(TAP address = the guest's gateway, guest address) inside every VM namespace."""
    n = ipaddress.IPv4Network(net.netns_subnet)
    return n.network_address + 1, n.network_address + 2


def allocate_veth(
    net: NetworkConfig, used: Iterable[str], pools: Pools | None = None
) -> ipaddress.IPv4Address:
    """The lowest free VM-side veth address: the odd half of a /31 of ``veth_subnet``."""
    network = ipaddress.IPv4Network(net.veth_subnet)
    # dotted quads compared as strings, as in allocate_ip: nothing parsed per lease
    taken = used if isinstance(used, AbstractSet) else set(used)
    base = int(network.network_address)
    value = _lowest(base + 1, base + network.num_addresses - 1, 2, taken, pools)
    if value is not None:
        return ipaddress.IPv4Address(value)
    raise ResourceExhausted(f"veth pool {network} is exhausted")


def new_netns_lease(
    net: NetworkConfig,
    vm_id: str,
    uid: int,
    gid: int,
    used: Iterable[str],
    *,
    pools: Pools | None = None,
) -> Lease:
    _, guest = netns_guest(net)
    return Lease(
        vm_id=vm_id,
        ip=str(guest),
        tap=netns_tap(net),
        mac=ids.guest_mac(str(guest)),
        uid=uid,
        gid=gid,
        mode="netns",
        netns=netns_name(net, vm_id),
        veth=ids.tap_name(vm_id, net.veth_prefix),
        host_ip=str(allocate_veth(net, used, pools)),
    )


def net_info(net: NetworkConfig, lease: Lease) -> NetInfo:
    if lease.mode == "netns":
        gw, _ = netns_guest(net)
        gateway, prefix_len, bridge = str(gw), ipaddress.IPv4Network(net.netns_subnet).prefixlen, ""
    else:
        gateway, prefix_len, bridge = str(net.gateway), net.network.prefixlen, net.bridge
    return NetInfo(
        vm_id=lease.vm_id,
        tap=lease.tap,
        mac=lease.mac,
        ip=lease.ip,
        gateway=gateway,
        prefix_len=prefix_len,
        bridge=bridge,
        uid=lease.uid,
        gid=lease.gid,
        ports=list(lease.ports),
        policy=lease.policy,
        mode=lease.mode,
        netns=netns_path(lease.netns) if lease.netns else None,
        host_ip=lease.addr,
    )
