"""Pure planning for fcd-net: addresses, names, leases.

Nothing here touches the kernel or the disk; the appliers (``links``,
``firewall``, ``leases``) carry these plans out.

The nftables plan lives in :mod:`fcd_net.ruleset`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import msgspec

from fcd_common import ids
from fcd_common.config import JailConfig, NetworkConfig
from fcd_common.errors import InvalidArgument, ResourceExhausted
from fcd_common.proto.net import NetInfo


class Lease(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One VM's network identity, as persisted in ``leases.json``."""

    vm_id: str
    ip: str
    tap: str
    mac: str
    uid: int
    gid: int


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


def allocate_ip(net: NetworkConfig, used: Iterable[str]) -> ipaddress.IPv4Address:
    """Lowest free host address of the pool after the gateway.

    Never the network, broadcast or gateway address, never one in ``used``.
    """
    network = net.network
    taken = {ipaddress.IPv4Address(a) for a in used}
    first = int(net.gateway) + 1
    last = int(network.broadcast_address) - 1
    for value in range(first, last + 1):
        addr = ipaddress.IPv4Address(value)
        if addr not in taken:
            return addr
    raise ResourceExhausted(
        f"address pool {network} is exhausted ({last - first + 1} guest addresses in use)"
    )


def pool_size(net: NetworkConfig) -> int:
    """Number of guest addresses in the pool (hosts minus the gateway)."""
    return max(0, net.network.num_addresses - 3)


def new_lease(net: NetworkConfig, vm_id: str, uid: int, gid: int, used: Iterable[str]) -> Lease:
    ip = str(allocate_ip(net, used))
    return Lease(
        vm_id=vm_id,
        ip=ip,
        tap=ids.tap_name(vm_id, net.tap_prefix),
        mac=ids.guest_mac(ip),
        uid=uid,
        gid=gid,
    )


def net_info(net: NetworkConfig, lease: Lease) -> NetInfo:
    return NetInfo(
        vm_id=lease.vm_id,
        tap=lease.tap,
        mac=lease.mac,
        ip=lease.ip,
        gateway=str(net.gateway),
        prefix_len=net.network.prefixlen,
        bridge=net.bridge,
        uid=lease.uid,
        gid=lease.gid,
    )
