"""Pure nftables plan *inside* one VM namespace (netns mode).

Every VM namespace holds the same TAP (``<tap_prefix>tap0``, the guest's
gateway address) and the VM end of a veth pair (``eth0``) with the VM's unique
address. Its own tables:

* ``table netdev fcd``, chain ``guard`` on the TAP's ingress (policy drop):
  IPv4 passes only with the guest's MAC and address, ARP only with the
  guest's MAC as source and sender; everything else -- forged frames, IPv6,
  and every frame of a "no network" VM -- is dropped (counted).
* ``table ip fcd``: traffic from the guest leaving through the veth is SNATed
  to the VM's unique address; anything arriving for that address is DNATed to
  the guest. So the host sees one unique address per VM while every clone
  keeps the guest IP/MAC its snapshot was taken with.
"""

from __future__ import annotations

from fcd_common.config import NetworkConfig

from .nftjson import (
    ACCEPT,
    Json,
    base_chain,
    counter,
    match,
    meta,
    payload,
    replace_table,
    rule,
)
from .plan import NETNS_VETH, Lease, netns_tap

TABLE = "fcd"


def ns_ruleset(net: NetworkConfig, lease: Lease) -> Json:
    assert lease.host_ip is not None
    tap = netns_tap(net)
    cmds = replace_table("netdev", TABLE)
    cmds.append(base_chain("netdev", TABLE, "guard", "filter", "ingress", -500, "drop", dev=tap))
    if lease.policy.network:
        cmds += [
            rule(
                "netdev",
                TABLE,
                "guard",
                "fcd: the guest's own IPv4",
                match(payload("ether", "type"), "ip"),
                match(payload("ether", "saddr"), lease.mac),
                match(payload("ip", "saddr"), lease.ip),
                ACCEPT,
            ),
            rule(
                "netdev",
                TABLE,
                "guard",
                "fcd: the guest's own ARP",
                match(payload("ether", "type"), "arp"),
                match(payload("ether", "saddr"), lease.mac),
                match(payload("arp", "saddr ether"), lease.mac),
                match(payload("arp", "saddr ip"), lease.ip),
                ACCEPT,
            ),
        ]
    cmds.append(
        rule("netdev", TABLE, "guard", "fcd: spoofed or not allowed", counter(), {"drop": None})
    )
    cmds += replace_table("ip", TABLE)
    cmds += [
        base_chain("ip", TABLE, "prerouting", "nat", "prerouting", -100),
        rule(
            "ip",
            TABLE,
            "prerouting",
            "fcd: the VM's address is the guest",
            match(meta("iifname"), NETNS_VETH),
            match(payload("ip", "daddr"), lease.host_ip),
            {"dnat": {"addr": lease.ip}},
        ),
        base_chain("ip", TABLE, "postrouting", "nat", "postrouting", 100),
        rule(
            "ip",
            TABLE,
            "postrouting",
            "fcd: the guest leaves as the VM's address",
            match(meta("oifname"), NETNS_VETH),
            match(payload("ip", "saddr"), lease.ip),
            {"snat": {"addr": lease.host_ip}},
        ),
    ]
    return {"nftables": cmds}
