"""fcd-net's pure parts: address allocation, naming, the lease file, the nftables JSON plan."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fcd_common import ids
from fcd_common.config import JailConfig, NetworkConfig
from fcd_common.errors import Internal, InvalidArgument, ResourceExhausted
from fcd_common.proto.net import PolicySpec, PortMapping, RuleSpec
from fcd_net import leases, plan, ruleset
from fcd_net.leases import LeaseStore
from fcd_net.plan import Lease

NET = NetworkConfig(subnet="10.213.0.0/24")
SMALL = NetworkConfig(subnet="10.9.9.0/29")


def lease(vm_id: str, ip: str, net: NetworkConfig = NET) -> Lease:
    return Lease(
        vm_id=vm_id,
        ip=ip,
        tap=ids.tap_name(vm_id, net.tap_prefix),
        mac=ids.guest_mac(ip),
        uid=900_001,
        gid=900_001,
    )


# --- allocation -------------------------------------------------------------------


def test_first_address_is_after_the_gateway() -> None:
    assert str(plan.allocate_ip(NET, [])) == "10.213.0.2"


def test_lowest_free_address_is_taken() -> None:
    assert str(plan.allocate_ip(NET, ["10.213.0.2", "10.213.0.4"])) == "10.213.0.3"
    assert str(plan.allocate_ip(NET, ["10.213.0.2", "10.213.0.3"])) == "10.213.0.4"


def test_small_pool_exhausts_without_network_gateway_or_broadcast() -> None:
    used: list[str] = []
    for _ in range(5):  # a /29: 8 addresses minus network, gateway and broadcast
        used.append(str(plan.allocate_ip(SMALL, used)))
    assert used == ["10.9.9.2", "10.9.9.3", "10.9.9.4", "10.9.9.5", "10.9.9.6"]
    assert not {"10.9.9.0", "10.9.9.1", "10.9.9.7"} & set(used)
    with pytest.raises(ResourceExhausted):
        plan.allocate_ip(SMALL, used)


def test_released_address_is_reused_only_once_free() -> None:
    used = ["10.9.9.2", "10.9.9.3", "10.9.9.4"]
    assert str(plan.allocate_ip(SMALL, used)) == "10.9.9.5"
    used.remove("10.9.9.3")
    assert str(plan.allocate_ip(SMALL, used)) == "10.9.9.3"


def test_new_lease_derives_tap_and_mac() -> None:
    x = plan.new_lease(NET, "vm-a", 900_010, 900_011, [])
    assert x.ip == "10.213.0.2"
    assert x.mac == "06:00:0a:d5:00:02"
    assert x.tap == ids.tap_name("vm-a", "fc")
    assert x.tap.startswith("fc") and len(x.tap) <= 15
    assert (x.uid, x.gid) == (900_010, 900_011)


def test_tap_names_differ_per_vm_and_follow_the_prefix() -> None:
    names = {ids.tap_name(f"vm-{i}", "fc") for i in range(500)}
    assert len(names) == 500
    assert ids.tap_name("vm-1", "tap").startswith("tap")
    assert len(ids.tap_name("a" * 64, "abcd").encode()) <= 15


def test_owner_must_be_in_the_jail_pool() -> None:
    jail = JailConfig(uid_min=900_000, uid_max=900_100)
    plan.check_owner(jail, 900_000, 900_100)
    with pytest.raises(InvalidArgument) as e:
        plan.check_owner(jail, 0, 900_000)
    assert e.value.details == {"field": "uid"}
    with pytest.raises(InvalidArgument) as e:
        plan.check_owner(jail, 900_001, 900_101)
    assert e.value.details == {"field": "gid"}


def test_net_info() -> None:
    info = plan.net_info(NET, lease("vm-a", "10.213.0.7"))
    assert (info.ip, info.gateway, info.prefix_len, info.bridge) == (
        "10.213.0.7",
        "10.213.0.1",
        24,
        "fcbr0",
    )


# --- lease file -------------------------------------------------------------------


def test_lease_file_roundtrip(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "net")
    assert len(store) == 0
    store.put(lease("vm-b", "10.213.0.3"))
    store.put(lease("vm-a", "10.213.0.2"))
    again = LeaseStore(tmp_path / "net")
    assert [x.vm_id for x in again] == ["vm-a", "vm-b"]
    assert again.get("vm-b") == lease("vm-b", "10.213.0.3")
    assert again.used_ips() == {"10.213.0.2", "10.213.0.3"}
    assert again.by_tap(ids.tap_name("vm-a")) == lease("vm-a", "10.213.0.2")
    again.remove("vm-a")
    assert [x.vm_id for x in LeaseStore(tmp_path / "net")] == ["vm-b"]
    assert os.listdir(tmp_path / "net") == ["leases.log"]  # one file, no temp files
    assert (tmp_path / "net" / "leases.log").stat().st_mode & 0o777 == 0o600
    assert set(leases.stored(tmp_path / "net")) == {"vm-b"}


def test_a_corrupt_lease_log_stops_the_start(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    store.put(lease("vm-a", "10.213.0.2"))
    store.put(lease("vm-b", "10.213.0.3"))
    store.log.close()
    log_file = tmp_path / "leases.log"
    good = log_file.read_bytes()
    log_file.write_bytes(good.replace(b'"vm-a"', b'"vm-a\x00', 1))  # a damaged first line
    with pytest.raises(Internal, match="corrupt"):
        LeaseStore(tmp_path)
    # a line that holds another VM's lease, and the same address twice
    b = msgspec.json.encode(("vm-c", lease("vm-b", "10.213.0.4")))
    log_file.write_bytes(good + b + b"\n")
    with pytest.raises(Internal, match="holds the lease"):
        LeaseStore(tmp_path)
    c = msgspec.json.encode(("vm-c", lease("vm-c", "10.213.0.2")))
    log_file.write_bytes(good + c + b"\n")
    with pytest.raises(Internal, match="twice"):
        LeaseStore(tmp_path)
    log_file.write_bytes(good + c[:20])  # a torn last line: never acknowledged, cut off
    assert [x.vm_id for x in LeaseStore(tmp_path)] == ["vm-a", "vm-b"]


def test_store_never_persists_a_double_lease(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    store.put(lease("vm-a", "10.213.0.2"))
    with pytest.raises(Internal):
        store.put(lease("vm-b", "10.213.0.2"))
    assert [x.vm_id for x in LeaseStore(tmp_path)] == ["vm-a"]


def test_corrupt_lease_file_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "leases"
    d.mkdir()
    (d / "a.json").write_text("{not json")
    with pytest.raises(Internal):
        leases.load(d)
    # a file that holds another VM's lease, and the same address twice
    (d / "a.json").write_text(json.dumps({"lease": msgspec.to_builtins(lease("b", "10.213.0.2"))}))
    with pytest.raises(Internal, match="holds the lease"):
        leases.load(d)
    (d / "a.json").write_text(json.dumps({"lease": msgspec.to_builtins(lease("a", "10.213.0.2"))}))
    (d / "b.json").write_text(json.dumps({"lease": msgspec.to_builtins(lease("b", "10.213.0.2"))}))
    with pytest.raises(Internal, match="twice"):
        leases.load(d)


def test_legacy_single_file_is_migrated(tmp_path: Path) -> None:
    doc = {"version": 1, "leases": [msgspec.to_builtins(lease("vm-a", "10.213.0.2"))]}
    (tmp_path / "leases.json").write_text(json.dumps(doc))
    store = LeaseStore(tmp_path)
    assert store.get("vm-a") == lease("vm-a", "10.213.0.2")
    assert not (tmp_path / "leases.json").exists()
    assert [x.vm_id for x in LeaseStore(tmp_path)] == ["vm-a"]


def test_per_vm_lease_files_are_moved_into_the_log(tmp_path: Path) -> None:
    d = tmp_path / "leases"
    d.mkdir()
    for vm_id, ip in (("vm-a", "10.213.0.2"), ("vm-b", "10.213.0.3")):
        rec = {"version": 1, "lease": msgspec.to_builtins(lease(vm_id, ip))}
        (d / f"{vm_id}.json").write_text(json.dumps(rec))
    store = LeaseStore(tmp_path)
    assert [x.vm_id for x in store] == ["vm-a", "vm-b"]
    assert not d.exists()
    assert set(leases.stored(tmp_path)) == {"vm-a", "vm-b"}
    store.remove("vm-a")
    store.log.close()
    assert [x.vm_id for x in LeaseStore(tmp_path)] == ["vm-b"]


# --- nftables plan ----------------------------------------------------------------


def _cmds(doc: dict[str, Any], verb: str, kind: str) -> list[dict[str, Any]]:
    return [c[verb][kind] for c in doc["nftables"] if verb in c and kind in c[verb]]


def test_base_ruleset_replaces_both_tables_atomically() -> None:
    doc = ruleset.base_ruleset(NET, [])
    tables = [
        (verb, next(iter(c[verb].values())))
        for c in doc["nftables"]
        for verb in c
        if "table" in c[verb]
    ]
    assert tables == [
        ("add", {"family": "inet", "name": "fcd"}),
        ("delete", {"family": "inet", "name": "fcd"}),
        ("add", {"family": "inet", "name": "fcd"}),
        ("add", {"family": "bridge", "name": "fcd"}),
        ("delete", {"family": "bridge", "name": "fcd"}),
        ("add", {"family": "bridge", "name": "fcd"}),
    ]
    chains = {(c["family"], c["name"]): c for c in _cmds(doc, "add", "chain")}
    assert chains[("inet", "postrouting")]["type"] == "nat"
    assert chains[("inet", "prerouting")]["type"] == "nat"
    assert chains[("inet", "output_nat")]["hook"] == "output"
    assert chains[("inet", "forward")]["hook"] == "forward"
    assert chains[("bridge", "prerouting")]["hook"] == "prerouting"
    sets = {(s["family"], s["name"]): s["type"] for s in _cmds(doc, "add", "set")}
    assert sets[("bridge", "vm_ip4")] == ["ifname", "ether_addr", "ipv4_addr"]
    assert sets[("bridge", "vm_arp")] == ["ifname", "ether_addr", "ether_addr", "ipv4_addr"]
    assert {"vm_addrs", "peer_ok", "isolated", "gw_addrs", "private"} <= {n for _, n in sets}
    maps = {m["name"]: m["map"] for m in _cmds(doc, "add", "map")}
    assert maps == {"port_addr": "ipv4_addr", "port_port": "inet_service", "vm_egress": "verdict"}


def test_masquerade_rules_match_pool_and_veths_leaving_elsewhere() -> None:
    rules = [
        r
        for r in _cmds(ruleset.base_ruleset(NET, []), "add", "rule")
        if r["chain"] == "postrouting"
    ]
    assert len(rules) == 2
    text = json.dumps(rules[0]["expr"])
    assert '"addr": "10.213.0.0", "len": 24' in text
    assert '"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "fcbr0"' in text
    assert rules[0]["expr"][-1] == {"masquerade": None}
    assert '"right": "fv*"' in json.dumps(rules[1]["expr"])


def test_no_guest_masquerade_when_disabled() -> None:
    net = NetworkConfig(subnet="10.213.0.0/24", masquerade=False)
    rules = [
        r
        for r in _cmds(ruleset.base_ruleset(net, []), "add", "rule")
        if r["chain"] == "postrouting"
    ]
    assert rules == []


def test_port_mappings_leave_loopback_alone_unless_enabled() -> None:
    """Issue #9 findings 1 and 13: no DNAT of 127.0.0.0/8 (and no localhost masquerade)
    unless the operator sets ``localhost_port_mappings``."""
    loopback = {"addr": "127.0.0.0", "len": 8}

    def dnat_and_masq(net: NetworkConfig) -> tuple[list[str], list[str]]:
        rules = [
            r for r in _cmds(ruleset.base_ruleset(net, []), "add", "rule") if r["family"] == "inet"
        ]
        dnat = [json.dumps(r["expr"]) for r in rules if r["chain"] in ("prerouting", "output_nat")]
        masq = [json.dumps(r["expr"]) for r in rules if r["chain"] == "postrouting"]
        return dnat, masq

    dnat, masq = dnat_and_masq(NET)
    excluded = json.dumps(
        {
            "match": {
                "op": "!=",
                "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                "right": {"prefix": loopback},
            }
        }
    )
    assert len(dnat) == 2 and all(excluded in d for d in dnat)
    assert not any(json.dumps(loopback) in m for m in masq)
    on = msgspec.structs.replace(NET, localhost_port_mappings=True)
    dnat, masq = dnat_and_masq(on)
    assert not any(excluded in d for d in dnat)
    assert sum(json.dumps(loopback) in m for m in masq) == 1


def test_antispoof_chain_checks_every_tap_and_drops_the_rest() -> None:
    doc = ruleset.base_ruleset(NET, [])
    rules = [r for r in _cmds(doc, "add", "rule") if r["family"] == "bridge"]
    pre = [r for r in rules if r["chain"] == "prerouting"]
    assert pre[0]["expr"][0]["match"]["right"] == "fc*"
    from_vm = [r["expr"] for r in rules if r["chain"] == "from_vm"]
    assert [e[-1] for e in from_vm] == [{"accept": None}, {"accept": None}, {"drop": None}]
    assert from_vm[0][1]["match"]["right"] == "@vm_ip4"
    assert from_vm[1][1]["match"]["right"] == "@vm_arp"


def test_base_ruleset_carries_every_lease() -> None:
    a, b = lease("vm-a", "10.213.0.2"), lease("vm-b", "10.213.0.3")
    elems = _cmds(ruleset.base_ruleset(NET, [a, b]), "add", "element")
    counts: dict[str, int] = {}
    for e in elems:
        counts[e["name"]] = counts.get(e["name"], 0) + len(e["elem"])
    assert counts == {"vm_ip4": 2, "vm_arp": 2, "vm_addrs": 2}


def _size(doc: dict[str, Any]) -> int:
    return len(doc["nftables"])


def test_one_vm_is_a_constant_number_of_commands_in_one_transaction() -> None:
    a = lease("vm-a", "10.213.0.2")
    add = ruleset.add_vm(NET, a)["nftables"]
    elems = [c["add"]["element"] for c in add if "element" in c.get("add", {})]
    assert {"name": "vm_ip4", "elem": [{"concat": [a.tap, a.mac, "10.213.0.2"]}]}.items() <= elems[
        0
    ].items()
    assert [e["name"] for e in elems] == ["vm_ip4", "vm_arp", "vm_addrs"]
    # no lists, no chain: a chain or jump element would cost every later transaction
    assert not [c for c in add if "chain" in c.get("add", {})]
    rm = ruleset.remove_vm(NET, a)["nftables"]
    assert not [c for c in rm if "chain" in c.get("delete", {})]
    # add-then-delete: idempotent removal in one transaction
    verbs = [next(iter(c)) for c in rm]
    assert verbs.count("add") == verbs.count("delete")
    # the size of one VM's transaction does not depend on how many VMs exist
    assert _size(ruleset.add_vm(NET, lease("vm-z", "10.213.0.200"))) == len(add)


def test_policy_and_ports_become_elements_and_one_chain() -> None:
    a = msgspec.structs.replace(
        lease("vm-a", "10.213.0.2"),
        ports=[PortMapping(host_port=20001, guest_port=80)],
        policy=PolicySpec(
            peers=True,
            internet=False,
            allow=[RuleSpec(cidr="10.9.0.0/16", protocol="tcp", ports=[5432])],
            deny=[RuleSpec(cidr="1.2.3.4/32")],
        ),
    )
    cmds = ruleset.add_vm(NET, a)["nftables"]
    names = [c["add"]["element"]["name"] for c in cmds if "element" in c.get("add", {})]
    assert names == [
        "vm_ip4",
        "vm_arp",
        "peer_taps",
        "vm_addrs",
        "peer_ok",
        "no_internet",
        "vm_egress",
        "port_addr",
        "port_port",
    ]
    # deny, then allow; what neither matches returns to from_guest (no_internet: drop)
    chain = [c["add"]["rule"]["expr"] for c in cmds if "rule" in c.get("add", {})]
    assert [e[-1] for e in chain] == [{"drop": None}, {"accept": None}]
    rm = ruleset.remove_vm(NET, a)["nftables"]
    assert rm[-1] == {
        "delete": {"chain": {"family": "inet", "table": "fcd", "name": "vm_0ad50002"}}
    }
    verbs = [next(iter(c)) for c in rm]
    assert verbs.count("add") - 1 == verbs.count("delete") - 1
    # internet off without lists: an element, no chain
    closed = msgspec.structs.replace(a, policy=PolicySpec(internet=False))
    cmds = ruleset.add_vm(NET, closed)["nftables"]
    assert not [c for c in cmds if "chain" in c.get("add", {})]
    assert "no_internet" in [
        c["add"]["element"]["name"] for c in cmds if "element" in c.get("add", {})
    ]
    assert chain[0][0]["match"]["right"] == "1.2.3.4"
    assert chain[1][-2]["match"]["right"] == {"set": [5432]}
    isolated = msgspec.structs.replace(a, policy=PolicySpec(network=False))
    names = [
        c["add"]["element"]["name"]
        for c in ruleset.add_vm(NET, isolated)["nftables"]
        if "element" in c.get("add", {})
    ]
    assert "vm_ip4" not in names and {"isolated_taps", "isolated"} <= set(names)
