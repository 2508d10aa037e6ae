"""fcd-net as a real daemon in a private network namespace, checked with ip/nft.

Each test gets a fresh netns (``fcdt-<random>``) and a temp dir with its own
config; the daemon runs as a subprocess inside the namespace and is called
over its Unix socket. Nothing here touches the host's network or ruleset.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fcd_common import config, ids
from fcd_common.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from fcd_common.proto.common import Ping
from fcd_common.proto.net import (
    PROTOCOL,
    NetGet,
    NetInfo,
    NetList,
    NetReconcile,
    NetSetup,
    NetTeardown,
)
from fcd_common.rpc import Done, Reply, Request, RpcClient
from fcd_dev.suite import SuiteError, spawn, terminate
from fcd_net import leases as net_leases

pytestmark = pytest.mark.root

R = TypeVar("R", bound=Reply)
UID = 900_123
GID = 900_124


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


class NetDaemon:
    """One fcd-net process in namespace ``ns`` with config ``cfg_path``."""

    def __init__(self, ns: str, cfg_path: Path) -> None:
        self.ns = ns
        self.cfg_path = cfg_path
        self.cfg = config.load(str(cfg_path))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = cfg_path.parent / "fcd-net.log"

    def start(self) -> None:
        # nsenter (in spawn), not `ip netns exec` (which also unshares the mount
        # namespace): VM namespaces fcd-net mounts under /run/netns must be
        # visible to the test, as they are to the jailer in production.
        self.cfg.socket("net").unlink(missing_ok=True)
        with self.log.open("ab") as out:
            try:
                self.proc = spawn("net", self.cfg_path, netns=self.ns, out=out, timeout=15)
            except SuiteError as e:
                raise AssertionError(f"{e}:\n{self.log.read_text()}") from None

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 15)
        self.proc = None

    def call(self, req: Request[R]) -> R:
        async def go() -> R:
            client = RpcClient(self.cfg.socket("net"), PROTOCOL, timeout=20)
            try:
                return await client.call(req)
            finally:
                await client.close()

        return asyncio.run(go())

    # --- observation --------------------------------------------------------------
    def ns_sh(self, *cmd: str) -> str:
        return sh("ip", "netns", "exec", self.ns, *cmd)

    def link(self, name: str) -> dict[str, Any] | None:
        links = json.loads(sh("ip", "-n", self.ns, "-j", "-d", "link", "show"))
        return next((x for x in links if x["ifname"] == name), None)

    def taps(self) -> list[str]:
        links = json.loads(sh("ip", "-n", self.ns, "-j", "-d", "link", "show"))
        return sorted(x["ifname"] for x in links if x.get("linkinfo", {}).get("info_kind") == "tun")

    def ruleset(self) -> list[dict[str, Any]]:
        doc = json.loads(self.ns_sh("nft", "-j", "list", "ruleset"))
        out: list[dict[str, Any]] = doc["nftables"]
        return out

    def elements(self, name: str) -> list[list[str]]:
        for obj in self.ruleset():
            s = obj.get("set")
            if s and s["family"] == "bridge" and s["name"] == name:
                return sorted(e["concat"] for e in s.get("elem", []))
        raise AssertionError(f"set {name} missing")

    def drops(self) -> int:
        for obj in self.ruleset():
            r = obj.get("rule")
            if r and r["family"] == "bridge" and r["chain"] == "from_vm":
                for e in r["expr"]:
                    if "counter" in e:
                        return int(e["counter"]["packets"])
        raise AssertionError("drop counter missing")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[NetDaemon]:
    ns = f"fcdt-{secrets.token_hex(4)}"
    cfg_path = tmp_path / "fcd.toml"
    cfg_path.write_text(
        f"""
[paths]
state_dir = "{tmp_path}/state"
run_dir = "{tmp_path}/run"
chroot_base = "{tmp_path}/jail"

[network]
subnet = "10.213.0.0/29"

[jail]
uid_min = 900000
uid_max = 900999
"""
    )
    sh("ip", "netns", "add", ns)
    d = NetDaemon(ns, cfg_path)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def setup(d: NetDaemon, vm_id: str, uid: int = UID, gid: int = GID) -> NetInfo:
    return d.call(NetSetup(vm_id=vm_id, uid=uid, gid=gid))


def test_start_builds_bridge_and_tables(daemon: NetDaemon) -> None:
    addrs = json.loads(sh("ip", "-n", daemon.ns, "-j", "addr", "show", "dev", "fcbr0"))[0]
    assert "UP" in addrs["flags"]
    assert {"family": "inet", "local": "10.213.0.1", "prefixlen": 29}.items() <= next(
        a for a in addrs["addr_info"] if a["family"] == "inet"
    ).items()
    tables = {(o["table"]["family"], o["table"]["name"]) for o in daemon.ruleset() if "table" in o}
    assert tables == {("inet", "fcd"), ("bridge", "fcd")}
    pong = daemon.call(Ping())
    assert pong.status == "0 leases, bridge fcbr0 up"


def test_reconcile_is_for_fcd_api_only(daemon: NetDaemon) -> None:
    """root is an ADMIN peer here (api_user is "fcd"): reads pass, the registry owner's
    destructive reconcile does not -- the contract's access rule, enforced by fcd-net."""
    daemon.call(NetSetup(vm_id="vm-a", uid=UID, gid=GID))
    assert [x.vm_id for x in daemon.call(NetList()).items] == ["vm-a"]
    with pytest.raises(PermissionDenied, match=r"net\.reconcile may not be called"):
        daemon.call(NetReconcile(live=[]))
    assert [x.vm_id for x in daemon.call(NetList()).items] == ["vm-a"]


def test_setup_creates_owned_tap_on_bridge_with_identity(daemon: NetDaemon) -> None:
    info = setup(daemon, "vm-a")
    tap = ids.tap_name("vm-a")
    assert info == NetInfo(
        vm_id="vm-a",
        tap=tap,
        mac="06:00:0a:d5:00:02",
        ip="10.213.0.2",
        gateway="10.213.0.1",
        prefix_len=29,
        bridge="fcbr0",
        uid=UID,
        gid=GID,
        host_ip="10.213.0.2",
    )
    link = daemon.link(tap)
    assert link is not None
    assert link["master"] == "fcbr0" and "UP" in link["flags"]
    assert link["linkinfo"]["info_data"]["type"] == "tap"
    assert daemon.ns_sh("cat", f"/sys/class/net/{tap}/owner").strip() == str(UID)
    assert daemon.ns_sh("cat", f"/sys/class/net/{tap}/group").strip() == str(GID)
    assert daemon.elements("vm_ip4") == [[tap, info.mac, info.ip]]
    assert daemon.elements("vm_arp") == [[tap, info.mac, info.mac, info.ip]]
    # idempotent: same lease, no second TAP or element; the owner is the lease's
    # (another owner: test_net_security.test_finding11_repeated_setup_cannot_reown_tap)
    assert setup(daemon, "vm-a") == info
    assert daemon.taps() == [tap]
    assert daemon.elements("vm_ip4") == [[tap, info.mac, info.ip]]
    assert daemon.call(NetGet(vm_id="vm-a")) == info
    assert daemon.call(NetList()).items == [info]
    # a TAP deleted behind our back is recreated
    sh("ip", "-n", daemon.ns, "link", "del", tap)
    assert setup(daemon, "vm-a") == info
    assert daemon.link(tap) is not None
    assert daemon.ns_sh("cat", f"/sys/class/net/{tap}/owner").strip() == str(UID)


def test_teardown_removes_exactly_that_vm(daemon: NetDaemon) -> None:
    a, b = setup(daemon, "vm-a"), setup(daemon, "vm-b")
    assert a.ip != b.ip
    assert daemon.call(NetTeardown(vm_id="vm-a")) == Done()
    assert daemon.taps() == [b.tap]
    assert daemon.elements("vm_ip4") == [[b.tap, b.mac, b.ip]]
    assert daemon.elements("vm_arp") == [[b.tap, b.mac, b.mac, b.ip]]
    with pytest.raises(NotFound):
        daemon.call(NetGet(vm_id="vm-a"))
    # idempotent, and unknown VMs are not an error
    assert daemon.call(NetTeardown(vm_id="vm-a")) == Done()
    assert daemon.call(NetTeardown(vm_id="never")) == Done()
    assert [x.vm_id for x in daemon.call(NetList()).items] == ["vm-b"]
    kept = {x.addr for x in net_leases.stored(daemon.cfg.state("net")).values()}
    assert a.ip not in kept and b.ip in kept


def test_leases_survive_restart_and_ruleset_is_repaired(daemon: NetDaemon) -> None:
    a = setup(daemon, "vm-a")
    n_rules = len([o for o in daemon.ruleset() if "rule" in o])
    assert n_rules > 8
    daemon.stop()
    daemon.ns_sh("nft", "flush", "ruleset")
    daemon.start()
    assert daemon.elements("vm_ip4") == [[a.tap, a.mac, a.ip]]
    assert daemon.call(NetGet(vm_id="vm-a")) == a
    assert setup(daemon, "vm-a") == a
    b = setup(daemon, "vm-b")
    assert b.ip != a.ip
    # restarting twice does not duplicate rules
    daemon.stop()
    daemon.start()
    rules = [o for o in daemon.ruleset() if "rule" in o]
    assert len(rules) == n_rules
    assert daemon.call(Ping()).status == "2 leases, bridge fcbr0 up"


def test_start_removes_only_the_leftover_taps_under_its_prefix(daemon: NetDaemon) -> None:
    """Interfaces are found by name (if_nameindex), then looked at in full only if
    fcd-net's prefix names them and no lease owns them."""
    a = setup(daemon, "vm-a")
    daemon.stop()
    daemon.ns_sh("ip", "tuntap", "add", "fcleft0", "mode", "tap")  # a crash's leftover
    daemon.ns_sh("ip", "tuntap", "add", "other0", "mode", "tap")  # not fcd's
    # fcd's TAP prefix on something that is not a TAP
    daemon.ns_sh("ip", "link", "add", "fcpair0", "type", "veth", "peer", "name", "zzpair0")
    daemon.start()
    assert sorted(daemon.taps()) == sorted([a.tap, "other0"])
    assert daemon.link("fcpair0") is not None
    assert daemon.call(NetGet(vm_id="vm-a")) == a


def test_owner_outside_jail_pool_is_refused(daemon: NetDaemon) -> None:
    with pytest.raises(InvalidArgument) as e:
        setup(daemon, "vm-a", uid=0)
    assert e.value.details == {"field": "uid"}
    with pytest.raises(InvalidArgument) as e:
        setup(daemon, "vm-a", gid=1000)
    assert e.value.details == {"field": "gid"}
    assert daemon.taps() == []
    assert daemon.call(NetList()).items == []


def test_concurrent_setups_get_distinct_addresses_until_the_pool_is_exhausted(
    daemon: NetDaemon,
) -> None:
    async def many() -> list[NetInfo]:
        client = RpcClient(daemon.cfg.socket("net"), PROTOCOL, timeout=20)
        try:
            return list(
                await asyncio.gather(
                    *(client.call(NetSetup(vm_id=f"vm-{i}", uid=UID, gid=GID)) for i in range(5))
                )
            )
        finally:
            await client.close()

    ips = sorted(x.ip for x in asyncio.run(many()))
    assert ips == [f"10.213.0.{i}" for i in range(2, 7)]
    with pytest.raises(ResourceExhausted):
        setup(daemon, "vm-5")
    assert len(daemon.taps()) == 5


def test_an_interface_that_is_not_a_tap_is_not_taken_over(daemon: NetDaemon) -> None:
    tap = ids.tap_name("vm-a")
    sh("ip", "-n", daemon.ns, "link", "add", tap, "type", "bridge")
    with pytest.raises(Conflict):
        setup(daemon, "vm-a")
    assert daemon.call(NetList()).items == []
    assert daemon.call(NetTeardown(vm_id="vm-a")) == Done()
    assert daemon.link(tap) is not None  # not ours: left alone


# --- real frames through a TAP opened by its jail uid ---------------------------------

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000

# Attaching raises the TAP's carrier; the bridge port goes to forwarding when the kernel
# handles that event, and a frame written before then is dropped by the bridge before
# the nftables hooks see it (not counted). So the sender waits for "forwarding" (3).
_SENDER = rf"""
import fcntl, os, struct, sys, time
tap, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open("/dev/net/tun", os.O_RDWR)
os.setgroups([]); os.setgid(gid); os.setuid(uid)   # attach as the jail uid, no capabilities
fcntl.ioctl(fd, {TUNSETIFF}, struct.pack("16sH", tap.encode(), {IFF_TAP | IFF_NO_PI}))
deadline = time.monotonic() + 10
while open(f"/sys/class/net/{{tap}}/brport/state").read().strip() != "3":
    if time.monotonic() > deadline:
        sys.exit(f"bridge port {{tap}} not forwarding")
    time.sleep(0.01)
for frame in sys.stdin.buffer.read().split(b"\n--\n"):
    os.write(fd, bytes.fromhex(frame.decode()))
"""


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ipv4_frame(src_mac: str, src_ip: str, dst_ip: str) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        28,
        0,
        0,
        64,
        17,
        0,
        socket.inet_aton(src_ip),
        socket.inet_aton(dst_ip),
    )
    udp = struct.pack("!HHHH", 1234, 9, 8, 0)
    return b"\xff" * 6 + _mac(src_mac) + b"\x08\x00" + ip + udp


def arp_frame(src_mac: str, sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    arp = (
        struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
        + _mac(sender_mac)
        + socket.inet_aton(sender_ip)
        + b"\x00" * 6
        + socket.inet_aton(target_ip)
    )
    return b"\xff" * 6 + _mac(src_mac) + b"\x08\x06" + arp


def ipv6_frame(src_mac: str) -> bytes:
    return b"\xff" * 6 + _mac(src_mac) + b"\x86\xdd" + b"\x60" + b"\x00" * 39


def send(
    daemon: NetDaemon, info: NetInfo, frames: list[bytes], uid: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    data = "\n--\n".join(f.hex() for f in frames).encode()
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            daemon.ns,
            sys.executable,
            "-c",
            _SENDER,
            info.tap,
            str(info.uid if uid is None else uid),
            str(info.gid),
        ],
        input=data,
        check=uid is None,
        capture_output=True,
    )


def test_forged_frames_from_a_tap_are_dropped(daemon: NetDaemon) -> None:
    """The jail uid can attach to its TAP; only frames with its own MAC and IP pass."""
    info = setup(daemon, "vm-a")
    other = setup(daemon, "vm-b")
    gw = "10.213.0.1"

    base = daemon.drops()
    legit = [
        ipv4_frame(info.mac, info.ip, gw),
        arp_frame(info.mac, info.mac, info.ip, gw),
    ]
    forged = [
        ipv4_frame(info.mac, other.ip, gw),  # another VM's address
        ipv4_frame(other.mac, info.ip, gw),  # another VM's MAC
        ipv4_frame("06:00:de:ad:be:ef", "10.213.0.99", gw),
        arp_frame(info.mac, info.mac, other.ip, gw),  # ARP claiming another address
        arp_frame(info.mac, other.mac, info.ip, gw),  # ARP with a forged sender MAC
        ipv6_frame(info.mac),  # not IPv4/ARP
    ]
    # One attach, legitimate frames first. The kernel may count them a little after
    # write() returns (softirq work deferred to ksoftirqd under load): wait for the
    # forged ones to be counted, then a dropped legitimate frame would show as extra.
    send(daemon, info, legit + forged)
    deadline = time.monotonic() + 10
    while daemon.drops() < base + len(forged) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert daemon.drops() == base + len(forged), (
        "a legitimate frame was dropped or a forged one passed"
    )

    # another uid (even of the jail pool) cannot attach to this VM's TAP
    denied = send(daemon, info, [ipv4_frame(info.mac, info.ip, gw)], uid=info.uid + 7)
    assert denied.returncode != 0 and b"Operation not permitted" in denied.stderr
