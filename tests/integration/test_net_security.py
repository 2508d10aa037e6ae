"""Issue #9, network side: each attack of the audit, replayed on real kernel objects.

Every test is named after its finding and runs the attack as the audit did --
a real listener in the daemon's namespace, real nftables, frames a guest
writes through its TAP -- against a real fcd-net (see test_net_packets.Lab).
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcd_common.errors import Conflict, PermissionDenied
from fcd_common.proto.net import (
    NetList,
    NetPortsAdd,
    NetReconcile,
    NetSetup,
    PolicySpec,
    PortMapping,
    RuleSpec,
)

from .test_net_daemon import ipv4_frame, send
from .test_net_packets import HOST_UP, INET, PRIVATE, TOOLS, UID, Lab, lab_with

pytestmark = pytest.mark.root


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with lab_with(tmp_path) as x:
        yield x


def sysctl(lab: Lab, key: str) -> str:
    return lab.ns(lab.host, "sysctl", "-n", key).strip()


def lines_within(p: subprocess.Popen[str], seconds: float) -> list[str]:
    """What a background tool printed in the next ``seconds``."""
    assert p.stdout is not None
    out: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        r, _, _ = select.select([p.stdout], [], [], left)
        if not r:
            break
        line = p.stdout.readline()
        if not line:
            break
        out.append(line.strip())
    return out


# --- finding 1: port mappings hijack host services ---------------------------------------


def test_finding1_port_mapping_refuses_local_listener(lab: Lab) -> None:
    """A host service on a port of the range (mongod on 127.0.0.1:20042 here) is not
    taken over: the mapping is refused with the listener named, and the service still
    answers its clients."""
    lab.serve(lab.host, 20042, "mongod", "127.0.0.1")
    with pytest.raises(Conflict) as e:
        lab.setup("vm-b", ports=[PortMapping(host_port=20042, guest_port=27017)])
    assert e.value.code == "host_port_in_use"
    assert "tcp 127.0.0.1:20042" in e.value.message
    assert e.value.details["field"] == "ports[0].host_port"
    assert e.value.details["host_port"] == 20042
    assert lab.daemon.call(NetList()).items == []
    # ... also on a VM that exists (POST /v1/vms/{id}/ports), UDP included
    a = lab.setup("vm-a")
    with pytest.raises(Conflict) as e:
        lab.daemon.call(
            NetPortsAdd(vm_id="vm-a", ports=[PortMapping(host_port=20042, guest_port=1)])
        )
    assert e.value.code == "host_port_in_use"
    with pytest.raises(Conflict) as e:
        lab.daemon.call(
            NetPortsAdd(
                vm_id="vm-a", ports=[PortMapping(host_port=20042, guest_port=1, protocol="udp")]
            )
        )
    assert e.value.details["field"] == "ports[0].host_port"
    assert "udp 127.0.0.1:20042" in e.value.message
    assert lab.ok(lab.host, "tcp-call", "127.0.0.1", "20042") == "mongod:127.0.0.1"
    assert lab.ok(lab.host, "udp-call", "127.0.0.1", "20042") == "mongod:127.0.0.1"
    # host_port 0 skips a busy port; a port without a listener is still mapped
    lab.serve(lab.host, 20000, "busy")  # 0.0.0.0:20000, the lowest of the range
    info = lab.daemon.call(
        NetPortsAdd(vm_id="vm-a", ports=[PortMapping(host_port=0, guest_port=80)])
    )
    assert [p.host_port for p in info.ports] == [20001]
    g = lab.guest(a)
    lab.serve(g, 80, "guest")
    assert lab.ok(lab.inet, "tcp-call", HOST_UP, "20001") == f"guest:{INET}"
    assert lab.ok(lab.inet, "tcp-call", HOST_UP, "20000") == f"busy:{INET}"


def test_finding1_host_port_range_reserved_in_kernel(tmp_path: Path) -> None:
    """fcd-net reserves its host-port range in its namespace so the kernel never hands a
    port of it out as an ephemeral port -- merged with what was reserved before."""
    with lab_with(tmp_path, before_start="net.ipv4.ip_local_reserved_ports=5000") as lab:
        assert sysctl(lab, "net.ipv4.ip_local_reserved_ports") == "5000,20000-20099"
        lab.ns(lab.host, "sysctl", "-qw", "net.ipv4.ip_local_port_range=20090 20110")
        probe = (
            "import socket\n"
            "ports = set()\n"
            "for _ in range(200):\n"
            "    s = socket.socket(); s.bind(('127.0.0.1', 0)); ports.add(s.getsockname()[1])\n"
            "    s.close()\n"
            "print(min(ports), max(ports))\n"
        )
        lo, hi = map(int, lab.ns(lab.host, sys.executable, "-c", probe).split())
        assert 20100 <= lo <= hi <= 20110
        # a restart does not duplicate or drop anything
        lab.daemon.stop()
        lab.daemon.start()
        assert sysctl(lab, "net.ipv4.ip_local_reserved_ports") == "5000,20000-20099"


def test_finding1_localhost_not_redirected_by_default(lab: Lab) -> None:
    """A service that binds 127.0.0.1:<mapped port> later (reservation stops only
    ephemeral ports) keeps its local clients: 127.0.0.0/8 is not DNATed."""
    a = lab.setup("vm-a", ports=[PortMapping(host_port=20000, guest_port=8000)])
    g = lab.guest(a)
    lab.serve(g, 8000, "guest")
    assert lab.ok(lab.inet, "tcp-call", HOST_UP, "20000") == f"guest:{INET}"
    assert lab.ok(lab.host, "tcp-call", a.gateway, "20000").startswith("guest:")
    lab.serve(lab.host, 20000, "hostsvc", "127.0.0.1")
    assert lab.ok(lab.host, "tcp-call", "127.0.0.1", "20000") == "hostsvc:127.0.0.1"
    assert lab.ok(lab.host, "udp-call", "127.0.0.1", "20000") == "hostsvc:127.0.0.1"


# --- finding 5: any API user can open the LAN and cloud metadata to a guest -------------


def test_finding5_policy_allow_refuses_metadata_and_lan(lab: Lab) -> None:
    """With no operator list, ``allow`` can open nothing fcd-net blocks by default."""
    for cidr in ("169.254.169.254/32", "10.0.0.0/8", f"{PRIVATE}/32", "1.1.1.1"):
        with pytest.raises(PermissionDenied) as e:
            lab.setup("vm-a", policy=PolicySpec(allow=[RuleSpec(cidr=cidr)]))
        assert e.value.details == {"field": "policy.allow[0].cidr"}
        assert "network.allowable_cidrs" in e.value.message
    assert lab.daemon.call(NetList()).items == []
    # deny lists stay free (they only close things)
    a = lab.setup("vm-a", policy=PolicySpec(deny=[RuleSpec(cidr="10.0.0.0/8")]))
    g = lab.guest(a)
    lab.fails(g, "tcp-call", PRIVATE, "8080")
    assert lab.ok(g, "tcp-call", INET, "8080") == f"inet:{HOST_UP}"


def test_finding5_operator_list_link_local_and_host_addresses(tmp_path: Path) -> None:
    """The operator's list opens what it names; link-local and the host's own addresses
    need their own switch even under 0.0.0.0/0."""
    with lab_with(tmp_path, 'allowable_cidrs = ["0.0.0.0/0"]') as lab:
        for i, cidr in enumerate(("169.254.169.254/32", f"{HOST_UP}/32", "198.51.100.0/24")):
            with pytest.raises(PermissionDenied) as e:
                lab.setup("vm-x", policy=PolicySpec(allow=[RuleSpec(cidr=cidr)]))
            assert e.value.details == {"field": "policy.allow[0].cidr"}, i
        a = lab.setup(
            "vm-a",
            policy=PolicySpec(allow=[RuleSpec(cidr=f"{PRIVATE}/32", protocol="tcp", ports=[8080])]),
        )
        g = lab.guest(a)
        assert lab.ok(g, "tcp-call", PRIVATE, "8080") == f"inet:{HOST_UP}"
        lab.fails(g, "udp-call", PRIVATE, "8080")


# --- finding 11: a repeated net.setup re-owns a VM's TAP ---------------------------------


def test_finding11_repeated_setup_cannot_reown_tap(lab: Lab) -> None:
    a = lab.setup("vm-a")
    other = UID + 7  # another VM's jail uid, from the same pool
    with pytest.raises(Conflict) as e:
        lab.daemon.call(NetSetup(vm_id="vm-a", uid=other, gid=other))
    assert e.value.details == {"field": "uid"}
    owner = lab.ns(lab.host, "cat", f"/sys/class/net/{a.tap}/owner").strip()
    assert owner == str(UID)
    denied = send(lab.daemon, a, [ipv4_frame(a.mac, a.ip, a.gateway)], uid=other)
    assert denied.returncode != 0 and b"Operation not permitted" in denied.stderr
    # the lease's own owner is still served, and a lost TAP comes back with that owner
    assert lab.setup("vm-a") == a
    lab.ns(lab.host, "ip", "link", "del", a.tap)
    assert lab.setup("vm-a") == a
    assert lab.ns(lab.host, "cat", f"/sys/class/net/{a.tap}/owner").strip() == str(UID)


# --- finding 13: route_localnet on the guest bridge ---------------------------------------


def _bridge_mac(lab: Lab) -> str:
    return lab.ns(
        lab.host, "cat", f"/sys/class/net/{lab.daemon.cfg.network.bridge}/address"
    ).strip()


def _inet_table(lab: Lab) -> bool:
    tables = lab.ns(lab.host, "nft", "list", "tables")
    return "table inet fcd" in tables


def test_finding13_guest_cannot_reach_host_loopback_without_the_table(lab: Lab) -> None:
    """With fcd's inet table gone (flushed by another tool), a guest that writes a frame
    to 127.0.0.1 must not reach the host's loopback-only services."""
    a = lab.setup("vm-a")
    g = lab.guest(a)
    assert sysctl(lab, "net.ipv4.conf.fcbr0.route_localnet") == "0"
    local = lab.background(lab.host, "udp-log", "5999", "127.0.0.1")
    control = lab.background(lab.host, "udp-log", "5998", a.gateway)
    lab.daemon.stop()  # (a running fcd-net rebuilds its tables within seconds)
    lab.ns(lab.host, "nft", "delete", "table", "inet", "fcd")
    mac = _bridge_mac(lab)
    for _ in range(3):
        lab.ns(g, sys.executable, TOOLS, "raw-udp", "eth0", mac, a.ip, "127.0.0.1", "5999")
        lab.ns(g, sys.executable, TOOLS, "raw-udp", "eth0", mac, a.ip, a.gateway, "5998")
    assert f"got:{a.ip}" in lines_within(control, 5)  # the frames do reach the host
    assert lines_within(local, 1) == []


def test_finding13_route_localnet_follows_the_operator_switch(tmp_path: Path) -> None:
    """localhost_port_mappings on: route_localnet is set once the table is there and
    127.0.0.1 reaches the guest; off again: a restart resets what an older fcd left."""
    with lab_with(tmp_path, "localhost_port_mappings = true") as lab:
        assert sysctl(lab, "net.ipv4.conf.fcbr0.route_localnet") == "1"
        a = lab.setup("vm-a", ports=[PortMapping(host_port=20000, guest_port=8000)])
        b = lab.setup("vm-b", mode="netns", ports=[PortMapping(host_port=20001, guest_port=8000)])
        ga, gb = lab.guest(a), lab.guest(b)
        lab.serve(ga, 8000, "guest-a")
        lab.serve(gb, 8000, "guest-b")
        assert lab.ok(lab.host, "tcp-call", "127.0.0.1", "20000") == f"guest-a:{a.gateway}"
        assert lab.ok(lab.host, "tcp-call", "127.0.0.1", "20001").startswith("guest-b:")
        # the table is what keeps a guest off the host's loopback now: fcd-net puts it
        # back soon after something else removes it
        local = lab.background(lab.host, "udp-log", "5999", "127.0.0.1")
        lab.ns(lab.host, "nft", "delete", "table", "inet", "fcd")
        deadline = time.monotonic() + 20
        while not _inet_table(lab) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _inet_table(lab), "fcd-net did not rebuild its table"
        assert sysctl(lab, "net.ipv4.conf.fcbr0.route_localnet") == "1"
        mac = _bridge_mac(lab)
        for _ in range(3):
            lab.ns(ga, sys.executable, TOOLS, "raw-udp", "eth0", mac, a.ip, "127.0.0.1", "5999")
        assert lines_within(local, 2) == []
        assert lab.ok(lab.host, "tcp-call", "127.0.0.1", "20000") == f"guest-a:{a.gateway}"
        lab.daemon.stop()
        cfg = lab.daemon.cfg_path
        cfg.write_text(cfg.read_text().replace("localhost_port_mappings = true", ""))
        lab.daemon.start()
        assert sysctl(lab, "net.ipv4.conf.fcbr0.route_localnet") == "0"
        veth = next(iter(lab.veths()))
        assert sysctl(lab, f"net.ipv4.conf.{veth}.route_localnet") == "0"
        lab.fails(lab.host, "tcp-call", "127.0.0.1", "20000")
        assert lab.daemon.call(NetReconcile(live=None)).removed == []
        assert sysctl(lab, "net.ipv4.conf.fcbr0.route_localnet") == "0"
