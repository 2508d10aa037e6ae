"""Kernel counters of every VM's host-side interface, from one rtnetlink link dump.

``net.counters_all`` answers for every lease at once, so a Prometheus collection
costs fcd-net one dump (``RTM_GETLINK`` with ``NLM_F_DUMP``) however many VMs
there are. The host-side interface is the TAP (bridge mode) or the veth (netns
mode: the TAP lives in the VM's namespace; every frame of the VM crosses the
veth). Its rx is what the guest sent, its tx what the guest was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pyroute2 import IPRoute

from fcd_common.proto.net import Counters, CountersList

from .plan import Lease

__all__ = ["STAT_KEYS", "collect", "dump_stats", "parse_stats"]

STAT_KEYS = (
    "rx_bytes",
    "rx_packets",
    "rx_dropped",
    "rx_errors",
    "tx_bytes",
    "tx_packets",
    "tx_dropped",
    "tx_errors",
)


def parse_stats(msg: Any) -> tuple[str, dict[str, int]] | None:
    """(ifname, counters) of one RTM_NEWLINK message; None without stats."""
    name = msg.get_attr("IFLA_IFNAME")
    st = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
    if name is None or st is None:
        return None
    return str(name), {k: int(st[k]) for k in STAT_KEYS}


def dump_stats() -> dict[str, dict[str, int]]:
    """Counters of every interface of this namespace (one netlink dump)."""
    out: dict[str, dict[str, int]] = {}
    ipr = IPRoute()
    try:
        for msg in ipr.link("dump"):
            got = parse_stats(msg)
            if got is not None:
                out[got[0]] = got[1]
    finally:
        ipr.close()
    return out


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def collect(
    leases: Iterable[Lease], dump: Callable[[], Mapping[str, Mapping[str, int]]] = dump_stats
) -> CountersList:
    """One Counters per lease whose interface exists (a missing one is left out)."""
    at = now()
    stats = dump()
    items = [
        Counters(vm_id=lease.vm_id, iface=lease.host_iface, **stats[lease.host_iface])
        for lease in leases
        if lease.host_iface in stats
    ]
    return CountersList(sampled_at=at, items=sorted(items, key=lambda c: c.vm_id))
