"""End to end through the API: port mappings and netns mode with the four real daemons.

Port mappings are checked where fcd-net puts them (nft maps in the suite's
namespace); netns mode is checked where the jailer put Firecracker (its
network namespace is the VM's own, holding the shared TAP name). Real packets
are proven in tests/integration/test_net_packets.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fcd_dev import devup

from .harness import api, in_ns, nft_ruleset, running_suite

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def _elements(ns: str, name: str) -> list[object]:
    for obj in nft_ruleset(ns)["nftables"]:
        m = obj.get("map")
        if m and m["name"] == name:
            return list(m.get("elem", []))
    raise AssertionError(f"map {name} missing")


def test_ports_and_netns_mode_through_the_api(tmp_path: Path) -> None:
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        body = {
            "id": "web",
            "template": "demo",
            "port_mappings": [{"host_port": 0, "guest_port": 80}],
        }
        r = c.post("/v1/vms", json=body)
        assert r.status_code == 201, r.text
        vm = r.json()
        assert vm["port_mappings"] == [{"host_port": 20000, "guest_port": 80, "protocol": "tcp"}]
        assert _elements(suite.netns, "port_addr") == [
            [{"concat": ["tcp", 20000]}, vm["ip_address"]]
        ]

        r = c.post("/v1/vms/web/ports", json={"host_port": 20003, "guest_port": 22})
        assert r.status_code == 200, r.text
        r = c.post(
            "/v1/vms",
            json={**body, "id": "other", "port_mappings": [{"host_port": 20003, "guest_port": 1}]},
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
        r = c.delete("/v1/vms/web/ports", params={"host_port": 20000})
        assert [p["host_port"] for p in r.json()["port_mappings"]] == [20003]
        assert [e[0]["concat"][1] for e in _elements(suite.netns, "port_addr")] == [20003]
        assert c.get("/v1/vms/web/network/counters").json()["iface"] == vm["tap"]

        # two netns-mode VMs: same TAP name, guest IP and MAC, each in its own namespace
        clones = []
        for name in ("clone-a", "clone-b"):
            r = c.post("/v1/vms", json={"id": name, "template": "demo", "network_mode": "netns"})
            assert r.status_code == 201, r.text
            clones.append(r.json())
        a, b = clones
        assert (a["tap"], a["ip_address"], a["mac"]) == (b["tap"], b["ip_address"], b["mac"])
        assert a["host_ip"] != b["host_ip"] and a["network_mode"] == "netns"
        prefix = suite.vm_netns_prefix
        for vm in clones:
            fc_ns = os.readlink(f"/proc/{vm['pid']}/ns/net")
            vm_ns = [
                n
                for n in os.listdir("/run/netns")
                if n.startswith(prefix)
                and os.stat(f"/run/netns/{n}").st_ino == os.stat(f"/proc/{vm['pid']}/ns/net").st_ino
            ]
            assert len(vm_ns) == 1, (fc_ns, vm_ns)
            links = json.loads(in_ns(vm_ns[0], "ip", "-j", "link", "show", vm["tap"]))
            assert links[0]["ifname"] == "fctap0"

        for vm_id in ("web", "clone-a", "clone-b"):
            assert c.delete(f"/v1/vms/{vm_id}", params={"force": "true"}).status_code == 204
        assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)] == []
        assert _elements(suite.netns, "port_addr") == []
        assert c.post("/v1/network/reconcile").json() == {"removed": []}


def test_the_harness_leaves_no_netns_vm_behind_a_failed_test(tmp_path: Path) -> None:
    """A test that dies before deleting its netns-mode VM must not leak its Firecracker
    or its namespace (they live outside the suite's own namespace)."""
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        vm = c.post("/v1/vms", json={"id": "orphan", "template": "demo", "network_mode": "netns"})
        pid, prefix = vm.json()["pid"], suite.vm_netns_prefix
        assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or ") Z " in stat.read_text()  # gone (or a zombie)
    assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)] == []
