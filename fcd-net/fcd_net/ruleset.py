"""Pure nftables plan for fcd-net: the tables, rebuilt atomically at start.

nftables design
---------------
Two tables named ``cfg.network.nft_table`` (default ``fcd``); nothing outside
them is ever touched. The rules never change after start: every VM is a
handful of elements in sets and maps (and one small chain of its own), so
adding or removing VM N is O(1) elements in one transaction whatever N is
(:mod:`fcd_net.vm_rules`). "Guest interfaces" below are the bridge (bridge
mode) and the host ends of the VMs' veth pairs, ``<veth_prefix>*`` (netns
mode); a VM's *address* is its pool IP (bridge) or the VM end of its veth
(netns).

``table inet fcd`` -- the routed path:

* sets ``vm_addrs`` (every VM), ``peer_ok`` (VMs that allow VM-to-VM),
  ``isolated`` ("no network" VMs), ``no_internet`` (VMs with ``internet``
  off), ``gw_addrs`` (the gateway addresses
  guests see: the bridge's and every veth's host end), ``private`` (interval
  set, :data:`fcd_net.checks.PRIVATE`), ``gw_services`` (proto . port from
  ``network.gateway_services``); maps ``port_addr``/``port_port`` (proto .
  host port : VM address / guest port) and ``vm_egress`` (VM address : jump
  to its chain; only VMs with deny or allow lists have one).
* ``prerouting``/``output`` (nat, dstnat): ``fib daddr type local`` tcp/udp
  is DNATed through those maps -- from outside, and from the host itself
  (output path) -- except to 127.0.0.0/8: a host service bound to
  127.0.0.1:<port> keeps its local clients. With
  ``network.localhost_port_mappings`` 127.0.0.0/8 is redirected too: then
  ``route_localnet`` is on for guest interfaces (set by fcd-net only after
  these tables are built) and such connections are masqueraded in
  ``postrouting``.
* ``postrouting`` (nat, srcnat): the localhost masquerade above; with
  ``network.masquerade`` the pool and veth range are masqueraded leaving
  through anything but a guest interface.
* ``forward`` (policy accept, so unrelated forwarding is left alone):
  established/related pass; from a guest interface ``jump from_guest``; to a
  guest interface ``jump to_guest``.
* ``from_guest``: isolated source drop; destination a VM → ``vm_to_vm``
  (accept only if both addresses are in ``peer_ok``); ``ip saddr vmap
  @vm_egress`` (the VM's own chain: deny list drop, allow list accept, else
  return); ``ip saddr @no_internet drop``; ``ip daddr @private drop``; accept.
* ``to_guest``: isolated destination drop; ``ct status dnat`` (a port
  mapping) accept; anything else new is dropped.
* ``input``: from a guest interface ``jump guest_input``: established pass;
  isolated drop; ICMP echo and ``gw_services`` to ``gw_addrs`` accept; drop
  -- a guest reaches no other service of the host.
* ``output`` (filter): the host cannot reach an isolated VM either.

``table bridge fcd`` -- anti-spoofing and L2 isolation. A frame a guest
writes to its TAP is *bridged*, not routed: without ``br_netfilter`` it never
traverses the inet family, and only the bridge family sees ``iifname`` = the
TAP:

* ``prerouting`` (priority -200): ``iifname "<tap_prefix>*" jump from_vm``;
  ``from_vm`` accepts IPv4 iff ``iifname . ether saddr . ip saddr`` is in
  ``vm_ip4``, ARP iff ``iifname . ether saddr . arp saddr ether . arp saddr
  ip`` is in ``vm_arp``, and drops (counted) everything else -- a TAP without
  a lease, or of a "no network" VM, passes nothing.
* ``forward``: a frame from one TAP to another passes only if both TAPs are
  in ``peer_taps``; frames to a TAP in ``isolated_taps`` are dropped (also in
  ``output``, the host's own frames).

Deleting an absent element is an error in nftables 1.0.6 (no ``destroy``),
so removal is ``add`` then ``delete`` of the same elements in one
transaction: idempotent and atomic. At start each table is rebuilt in one
transaction -- ``add table``, ``delete table``, then the full table with
every persisted lease -- which also drops any element no lease owns.
"""

from __future__ import annotations

from collections.abc import Sequence

from fcd_common.config import NetworkConfig

from . import vm_rules
from .checks import PRIVATE
from .nftjson import (
    ACCEPT,
    DROP,
    L4,
    TCP_UDP,
    Json,
    base_chain,
    chain,
    counter,
    jump,
    map_decl,
    match,
    meta,
    payload,
    prefix,
    replace_table,
    rule,
    set_decl,
)
from .plan import Lease

__all__ = ["Json", "base_ruleset", "bridge_table", "inet_table"]

SET_IP4 = vm_rules.SET_IP4
SET_ARP = vm_rules.SET_ARP

LOCALHOST_EXCLUDED = match(payload("ip", "daddr"), prefix("127.0.0.0/8"), "!=")
"""Port mappings leave 127.0.0.0/8 alone unless ``network.localhost_port_mappings``."""

_CT_OK = match({"ct": {"key": "state"}}, ["established", "related"], "in")


def _guest_ifaces(net: NetworkConfig, key: str) -> list[Json]:
    """One match per kind of guest interface (bridge; veth host ends)."""
    return [match(meta(key), net.bridge), match(meta(key), f"{net.veth_prefix}*")]


def _services(net: NetworkConfig) -> list[Json]:
    out = []
    for s in net.gateway_services:
        proto, _, port = s.partition("/")
        out.append({"concat": [proto, int(port)]})
    return out


def inet_table(net: NetworkConfig) -> list[Json]:
    fam, t = "inet", net.nft_table
    s = vm_rules
    cmds = replace_table(fam, t)
    cmds += [
        set_decl(fam, t, s.SET_ADDRS, "ipv4_addr"),
        set_decl(fam, t, s.SET_PEERS, "ipv4_addr"),
        set_decl(fam, t, s.SET_ISOLATED, "ipv4_addr"),
        set_decl(fam, t, s.SET_NO_INTERNET, "ipv4_addr"),
        set_decl(fam, t, s.SET_GW, "ipv4_addr", elem=[str(net.gateway)]),
        set_decl(fam, t, "private", "ipv4_addr", interval=True, elem=[prefix(c) for c in PRIVATE]),
        set_decl(fam, t, "gw_services", ["inet_proto", "inet_service"], elem=_services(net)),
        map_decl(fam, t, s.MAP_DNAT_ADDR, ["inet_proto", "inet_service"], "ipv4_addr"),
        map_decl(fam, t, s.MAP_DNAT_PORT, ["inet_proto", "inet_service"], "inet_service"),
        map_decl(fam, t, s.MAP_EGRESS, "ipv4_addr", "verdict"),
    ]
    not_loopback = [] if net.localhost_port_mappings else [LOCALHOST_EXCLUDED]
    dnat = [
        match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
        *not_loopback,
        TCP_UDP,
        {
            "dnat": {
                "family": "ip",
                "addr": {"map": {"key": L4, "data": f"@{s.MAP_DNAT_ADDR}"}},
                "port": {"map": {"key": L4, "data": f"@{s.MAP_DNAT_PORT}"}},
            }
        },
    ]
    cmds += [
        base_chain(fam, t, "prerouting", "nat", "prerouting", -100),
        rule(fam, t, "prerouting", "fcd: port mappings", *dnat),
        base_chain(fam, t, "output_nat", "nat", "output", -100),
        rule(fam, t, "output_nat", "fcd: port mappings from the host itself", *dnat),
        base_chain(fam, t, "postrouting", "nat", "postrouting", 100),
    ]
    if net.localhost_port_mappings:
        cmds.append(
            rule(
                fam,
                t,
                "postrouting",
                "fcd: port mappings used via 127.0.0.1",
                match(payload("ip", "saddr"), prefix("127.0.0.0/8")),
                match({"ct": {"key": "status"}}, "dnat", "in"),
                {"masquerade": None},
            )
        )
    if net.masquerade:
        for src, iface in ((net.subnet, net.bridge), (net.veth_subnet, f"{net.veth_prefix}*")):
            cmds.append(
                rule(
                    fam,
                    t,
                    "postrouting",
                    "fcd: egress masquerade for guests",
                    match(payload("ip", "saddr"), prefix(src)),
                    match(meta("oifname"), iface, "!="),
                    {"masquerade": None},
                )
            )
    cmds += [
        base_chain(fam, t, "forward", "filter", "forward", 0),
        chain(fam, t, "from_guest"),
        chain(fam, t, "to_guest"),
        chain(fam, t, "vm_to_vm"),
        rule(fam, t, "forward", "fcd: replies", _CT_OK, ACCEPT),
    ]
    cmds += [
        rule(fam, t, "forward", None, m, jump("from_guest")) for m in _guest_ifaces(net, "iifname")
    ]
    cmds += [
        rule(fam, t, "forward", None, m, jump("to_guest")) for m in _guest_ifaces(net, "oifname")
    ]
    saddr, daddr = payload("ip", "saddr"), payload("ip", "daddr")
    cmds += [
        rule(fam, t, "from_guest", "fcd: no network", match(saddr, f"@{s.SET_ISOLATED}"), DROP),
        rule(
            fam,
            t,
            "from_guest",
            "fcd: to another VM",
            match(daddr, f"@{s.SET_ADDRS}"),
            jump("vm_to_vm"),
        ),
        rule(
            fam,
            t,
            "from_guest",
            "fcd: the VM's own allow/deny lists",
            {"vmap": {"key": saddr, "data": f"@{s.MAP_EGRESS}"}},
        ),
        rule(fam, t, "from_guest", "fcd: no internet", match(saddr, f"@{s.SET_NO_INTERNET}"), DROP),
        rule(
            fam,
            t,
            "from_guest",
            "fcd: private, link-local, reserved",
            match(daddr, "@private"),
            counter(),
            DROP,
        ),
        rule(fam, t, "from_guest", "fcd: the internet", ACCEPT),
        rule(fam, t, "vm_to_vm", None, match(daddr, f"@{s.SET_ISOLATED}"), DROP),
        rule(
            fam,
            t,
            "vm_to_vm",
            "fcd: both VMs allow peers",
            match(saddr, f"@{s.SET_PEERS}"),
            match(daddr, f"@{s.SET_PEERS}"),
            ACCEPT,
        ),
        rule(fam, t, "vm_to_vm", "fcd: VM-to-VM denied by default", counter(), DROP),
        rule(fam, t, "to_guest", "fcd: no network", match(daddr, f"@{s.SET_ISOLATED}"), DROP),
        rule(
            fam,
            t,
            "to_guest",
            "fcd: port mappings",
            match({"ct": {"key": "status"}}, "dnat", "in"),
            ACCEPT,
        ),
        rule(fam, t, "to_guest", "fcd: no other new inbound connections", counter(), DROP),
    ]
    cmds += [
        base_chain(fam, t, "input", "filter", "input", 0),
        chain(fam, t, "guest_input"),
    ]
    cmds += [
        rule(fam, t, "input", None, m, jump("guest_input")) for m in _guest_ifaces(net, "iifname")
    ]
    cmds += [
        rule(fam, t, "guest_input", None, _CT_OK, ACCEPT),
        rule(fam, t, "guest_input", "fcd: no network", match(saddr, f"@{s.SET_ISOLATED}"), DROP),
        rule(
            fam,
            t,
            "guest_input",
            "fcd: ping the gateway",
            match(daddr, f"@{s.SET_GW}"),
            match(payload("icmp", "type"), "echo-request"),
            ACCEPT,
        ),
        rule(
            fam,
            t,
            "guest_input",
            "fcd: gateway services",
            match(daddr, f"@{s.SET_GW}"),
            TCP_UDP,
            match(L4, "@gw_services"),
            ACCEPT,
        ),
        rule(fam, t, "guest_input", "fcd: nothing else on the host", counter(), DROP),
        base_chain(fam, t, "output", "filter", "output", 0),
        rule(fam, t, "output", "fcd: no network", match(daddr, f"@{s.SET_ISOLATED}"), DROP),
    ]
    return cmds


def bridge_table(net: NetworkConfig) -> list[Json]:
    fam, t = "bridge", net.nft_table
    s = vm_rules
    taps = f"{net.tap_prefix}*"
    cmds = replace_table(fam, t)
    cmds += [
        set_decl(fam, t, s.SET_IP4, ["ifname", "ether_addr", "ipv4_addr"]),
        set_decl(fam, t, s.SET_ARP, ["ifname", "ether_addr", "ether_addr", "ipv4_addr"]),
        set_decl(fam, t, s.SET_PEER_TAPS, "ifname"),
        set_decl(fam, t, s.SET_ISOLATED_TAPS, "ifname"),
        base_chain(fam, t, "prerouting", "filter", "prerouting", -200),
        chain(fam, t, "from_vm"),
        rule(
            fam,
            t,
            "prerouting",
            "fcd: every frame from a guest TAP is checked",
            match(meta("iifname"), taps),
            jump("from_vm"),
        ),
        rule(
            fam,
            t,
            "from_vm",
            "fcd: IPv4 with the VM's own TAP, MAC and address",
            match(payload("ether", "type"), "ip"),
            match(
                {"concat": [meta("iifname"), payload("ether", "saddr"), payload("ip", "saddr")]},
                f"@{s.SET_IP4}",
            ),
            ACCEPT,
        ),
        rule(
            fam,
            t,
            "from_vm",
            "fcd: ARP with the VM's own TAP, MAC and address",
            match(payload("ether", "type"), "arp"),
            match(
                {
                    "concat": [
                        meta("iifname"),
                        payload("ether", "saddr"),
                        payload("arp", "saddr ether"),
                        payload("arp", "saddr ip"),
                    ]
                },
                f"@{s.SET_ARP}",
            ),
            ACCEPT,
        ),
        rule(
            fam,
            t,
            "from_vm",
            "fcd: anything else from a guest is spoofed or not allowed",
            counter(),
            DROP,
        ),
        base_chain(fam, t, "forward", "filter", "forward", 0),
        rule(
            fam,
            t,
            "forward",
            "fcd: no network",
            match(meta("oifname"), f"@{s.SET_ISOLATED_TAPS}"),
            DROP,
        ),
        rule(
            fam,
            t,
            "forward",
            "fcd: guest to guest only if both allow peers",
            match(meta("iifname"), taps),
            match(meta("oifname"), taps),
            match(meta("iifname"), f"@{s.SET_PEER_TAPS}"),
            match(meta("oifname"), f"@{s.SET_PEER_TAPS}"),
            ACCEPT,
        ),
        rule(
            fam,
            t,
            "forward",
            "fcd: VM-to-VM denied by default",
            match(meta("iifname"), taps),
            match(meta("oifname"), taps),
            counter(),
            DROP,
        ),
        base_chain(fam, t, "output", "filter", "output", 0),
        rule(
            fam,
            t,
            "output",
            "fcd: no network",
            match(meta("oifname"), f"@{s.SET_ISOLATED_TAPS}"),
            DROP,
        ),
    ]
    return cmds


def base_ruleset(net: NetworkConfig, leases: Sequence[Lease]) -> Json:
    """One transaction that (re)builds both tables with every lease in them."""
    cmds = inet_table(net) + bridge_table(net)
    for lease in leases:
        cmds += vm_rules.vm_cmds(net, lease)
    return {"nftables": cmds}


def add_vm(net: NetworkConfig, lease: Lease) -> Json:
    """One transaction adding one VM (idempotent: ``add`` ignores existing elements)."""
    return {"nftables": vm_rules.vm_cmds(net, lease)}


def remove_vm(net: NetworkConfig, lease: Lease) -> Json:
    """One transaction removing one VM, whether or not it is present."""
    return {"nftables": vm_rules.remove_cmds(net, lease)}


def replace_ports(net: NetworkConfig, old: Lease, new: Lease) -> Json:
    """One transaction swapping a VM's port mappings."""
    return {"nftables": vm_rules.port_cmds(net, old, "remove") + vm_rules.port_cmds(net, new)}
