"""Pure reconciliation plan: which kernel objects under fcd-net's prefixes no lease owns.

fcd-net owns, by name: TAPs ``<tap_prefix>*`` (TUN devices; the bridge shares
the prefix and is not one), veths ``<veth_prefix>*``, namespaces
``<netns_prefix>*``; and, inside its nft tables, elements and ``vm_*`` chains
(rebuilt from the leases, so they need no plan); host ports and addresses are
the leases themselves. Anything else on the host is never considered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fcd_common.config import NetworkConfig

from .links import Link
from .plan import Lease


@dataclass(frozen=True)
class Orphans:
    taps: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        return (
            [f"tap {x}" for x in self.taps]
            + [f"veth {x}" for x in self.veths]
            + [f"netns {x}" for x in self.namespaces]
        )


def dead_leases(leases: Iterable[Lease], live: Iterable[str] | None) -> list[Lease]:
    """Leases of VMs fcd-api no longer knows (none when ``live`` is None)."""
    if live is None:
        return []
    alive = set(live)
    return [x for x in leases if x.vm_id not in alive]


def unowned_names(net: NetworkConfig, leases: Sequence[Lease], names: Iterable[str]) -> list[str]:
    """Interface names under fcd-net's TAP or veth prefix that no lease owns (the
    bridge aside): the only ones :func:`orphans` needs to see in full."""
    owned = {x.tap for x in leases if x.mode == "bridge"} | {x.veth for x in leases if x.veth}
    prefixes = (net.tap_prefix, net.veth_prefix)
    return [n for n in names if n.startswith(prefixes) and n != net.bridge and n not in owned]


def orphans(
    net: NetworkConfig, leases: Sequence[Lease], links: Iterable[Link], namespaces: Iterable[str]
) -> Orphans:
    taps = {x.tap for x in leases if x.mode == "bridge"}
    veths = {x.veth for x in leases if x.veth}
    nss = {x.netns for x in leases if x.netns}
    out = Orphans()
    for link in links:
        if link.name == net.bridge:
            continue
        if link.kind == "tun" and link.name.startswith(net.tap_prefix) and link.name not in taps:
            out.taps.append(link.name)
        elif (
            link.kind == "veth" and link.name.startswith(net.veth_prefix) and link.name not in veths
        ):
            out.veths.append(link.name)
    out.namespaces.extend(n for n in namespaces if n.startswith(net.netns_prefix) and n not in nss)
    return out
