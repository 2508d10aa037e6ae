"""Pure nftables plan for fcd-net: the JSON transactions the firewall applier runs.

nftables design
---------------
Two tables, both named ``cfg.network.nft_table`` (default ``fcd``), and
nothing outside them is ever touched:

``table inet fcd`` -- the routed path (guest <-> the rest of the world):

* ``postrouting`` (nat, srcnat): ``ip saddr <pool> oifname != <bridge>
  masquerade`` when ``network.masquerade`` is on, so guests reach the
  outside through the host's address; traffic that stays on the bridge is
  never NATed.
* ``forward`` (filter, policy accept so unrelated host forwarding is left
  alone): ``ct state established,related accept``; ``iifname <bridge>
  oifname != <bridge> accept`` (guests may open connections out); then
  ``oifname <bridge> drop`` -- no new connection is routed *into* the pool
  (port mappings arrive in a later issue and will be accepted before this
  rule). The host itself still reaches guests: its own packets take the
  output path, not forward.

``table bridge fcd`` -- anti-spoofing. A frame a guest writes to its TAP is
*bridged*, not routed: without ``br_netfilter`` it never traverses the inet
family, and even with it the inet hooks see the bridge, not the TAP, as the
input interface. Only the bridge family sees ``iifname`` = the TAP, so the
identity check lives there:

* ``prerouting`` (filter, priority -200): ``iifname "<tap_prefix>*" jump
  from_vm``. Every frame from any fcd TAP is checked -- a TAP without a lease
  (a leftover) has no identity and is therefore dropped: default deny.
* ``from_vm``: IPv4 is accepted iff ``iifname . ether saddr . ip saddr`` is
  in set ``vm_ip4``; ARP iff ``iifname . ether saddr . arp saddr ether .
  arp saddr ip`` is in set ``vm_arp``; everything else (IPv6, VLAN tags, other
  ethertypes, forged MAC or IP, gratuitous ARP for another address) hits a
  counted ``drop``.

One VM is exactly two set elements (one per set), added or removed in one
nft transaction, so the rules themselves never change after start and a
VM's identity appears and disappears atomically. Deleting an absent element
is an error in nftables 1.0.6 (no ``destroy``), so removal is ``add`` then
``delete`` of the same elements in one transaction: idempotent and atomic.

At daemon start each table is rebuilt in one transaction -- ``add table``
(so it exists), ``delete table``, then the full table with the elements of
every persisted lease. That is idempotent, repairs a flushed or edited
ruleset, and never leaves a moment without the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fcd_common.config import NetworkConfig

from .plan import Lease

Json = dict[str, Any]

SET_IP4 = "vm_ip4"
SET_ARP = "vm_arp"


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _rule(family: str, table: str, chain: str, comment: str, *expr: Json) -> Json:
    return {
        "add": {
            "rule": {
                "family": family,
                "table": table,
                "chain": chain,
                "comment": comment,
                "expr": list(expr),
            }
        }
    }


def _replace_table(family: str, name: str) -> list[Json]:
    """Commands that leave an empty, freshly created table (whether it existed or not)."""
    table = {"family": family, "name": name}
    return [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]


def inet_table(net: NetworkConfig) -> list[Json]:
    """The routed-path table: masquerade for the pool and the forward policy."""
    fam, t, br = "inet", net.nft_table, net.bridge
    pool = {"prefix": {"addr": str(net.network.network_address), "len": net.network.prefixlen}}
    cmds = _replace_table(fam, t)
    if net.masquerade:
        cmds += [
            {
                "add": {
                    "chain": {
                        "family": fam,
                        "table": t,
                        "name": "postrouting",
                        "type": "nat",
                        "hook": "postrouting",
                        "prio": 100,
                        "policy": "accept",
                    }
                }
            },
            _rule(
                fam, t, "postrouting", "fcd: egress masquerade for the guest pool",
                _match(_payload("ip", "saddr"), pool),
                _match(_meta("oifname"), br, "!="),
                {"masquerade": None},
            ),
        ]
    cmds += [
        {
            "add": {
                "chain": {
                    "family": fam,
                    "table": t,
                    "name": "forward",
                    "type": "filter",
                    "hook": "forward",
                    "prio": 0,
                    "policy": "accept",
                }
            }
        },
        _rule(
            fam, t, "forward", "fcd: replies",
            _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
            {"accept": None},
        ),
        _rule(
            fam, t, "forward", "fcd: guests may connect out",
            _match(_meta("iifname"), br),
            _match(_meta("oifname"), br, "!="),
            {"accept": None},
        ),
        _rule(
            fam, t, "forward", "fcd: no new inbound connections to guests",
            _match(_meta("oifname"), br),
            {"drop": None},
        ),
    ]
    return cmds


def ip4_element(lease: Lease) -> Json:
    return {"concat": [lease.tap, lease.mac, lease.ip]}


def arp_element(lease: Lease) -> Json:
    return {"concat": [lease.tap, lease.mac, lease.mac, lease.ip]}


def _elements(net: NetworkConfig, verb: str, leases: Sequence[Lease]) -> list[Json]:
    if not leases:
        return []
    base = {"family": "bridge", "table": net.nft_table}
    return [
        {verb: {"element": {**base, "name": SET_IP4, "elem": [ip4_element(x) for x in leases]}}},
        {verb: {"element": {**base, "name": SET_ARP, "elem": [arp_element(x) for x in leases]}}},
    ]


def bridge_table(net: NetworkConfig, leases: Sequence[Lease] = ()) -> list[Json]:
    """The anti-spoofing table, with the identities of ``leases`` already in its sets."""
    fam, t = "bridge", net.nft_table
    cmds = _replace_table(fam, t)
    cmds += [
        {
            "add": {
                "set": {
                    "family": fam,
                    "table": t,
                    "name": SET_IP4,
                    "type": ["ifname", "ether_addr", "ipv4_addr"],
                }
            }
        },
        {
            "add": {
                "set": {
                    "family": fam,
                    "table": t,
                    "name": SET_ARP,
                    "type": ["ifname", "ether_addr", "ether_addr", "ipv4_addr"],
                }
            }
        },
        {
            "add": {
                "chain": {
                    "family": fam,
                    "table": t,
                    "name": "prerouting",
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": -200,
                    "policy": "accept",
                }
            }
        },
        {"add": {"chain": {"family": fam, "table": t, "name": "from_vm"}}},
        _rule(
            fam, t, "prerouting", "fcd: every frame from a guest TAP is checked",
            _match(_meta("iifname"), f"{net.tap_prefix}*"),
            {"jump": {"target": "from_vm"}},
        ),
        _rule(
            fam, t, "from_vm", "fcd: IPv4 with the VM's own TAP, MAC and address",
            _match(_payload("ether", "type"), "ip"),
            _match(
                {"concat": [_meta("iifname"), _payload("ether", "saddr"), _payload("ip", "saddr")]},
                f"@{SET_IP4}",
            ),
            {"accept": None},
        ),
        _rule(
            fam, t, "from_vm", "fcd: ARP with the VM's own TAP, MAC and address",
            _match(_payload("ether", "type"), "arp"),
            _match(
                {
                    "concat": [
                        _meta("iifname"),
                        _payload("ether", "saddr"),
                        _payload("arp", "saddr ether"),
                        _payload("arp", "saddr ip"),
                    ]
                },
                f"@{SET_ARP}",
            ),
            {"accept": None},
        ),
        _rule(
            fam, t, "from_vm", "fcd: anything else from a guest is spoofed or not allowed",
            {"counter": {"packets": 0, "bytes": 0}},
            {"drop": None},
        ),
    ]
    return cmds + _elements(net, "add", leases)


def base_ruleset(net: NetworkConfig, leases: Sequence[Lease]) -> Json:
    """One transaction that (re)builds both tables with every lease's identity."""
    return {"nftables": inet_table(net) + bridge_table(net, leases)}


def add_vm(net: NetworkConfig, lease: Lease) -> Json:
    """One transaction adding one VM's identity (idempotent: ``add`` ignores existing elements)."""
    return {"nftables": _elements(net, "add", [lease])}


def remove_vm(net: NetworkConfig, lease: Lease) -> Json:
    """One transaction removing one VM's identity, whether or not it is present."""
    return {"nftables": _elements(net, "add", [lease]) + _elements(net, "delete", [lease])}
