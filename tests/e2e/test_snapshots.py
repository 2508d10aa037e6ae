"""End to end through the API: snapshot a VM, restore ten clones at once, delete them all.

Four real daemons in a private netns, the jailer and Firecracker doubles (or the
real binaries when FCD_FIRECRACKER/FCD_JAILER are set). What each clone must
have is checked where it lives: its own network namespace holding the shared
TAP name and guest address, its own disk (a separate inode carrying the
source's marker), its own host port whose SYNs leave on its own TAP only, and
read access to the shared memory file through an ACL entry, never the world.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fcd_dev import devup
from fcd_vmm import acl

from .harness import api, in_ns, running_suite, taps

pytestmark = [pytest.mark.root, pytest.mark.e2e]

CLONES = 10
MARKER = b"fcd-snapshot-marker\n"


def _netns_of(pid: int, prefix: str) -> str:
    ino = os.stat(f"/proc/{pid}/ns/net").st_ino
    names = [
        n
        for n in os.listdir("/run/netns")
        if n.startswith(prefix) and os.stat(f"/run/netns/{n}").st_ino == ino
    ]
    assert len(names) == 1, names
    return names[0]


def _asked_for_guest(ns: str, guest_ip: str) -> bool:
    """Did a packet get routed to the guest in ``ns``? The TAP's neighbour table then holds
    the guest's address (ARP asked; the double answers no ARP, and a TAP counts tx
    only when its reader reads)."""
    out = json.loads(in_ns(ns, "ip", "-j", "neigh", "show", "dev", "fctap0") or "[]")
    return any(n.get("dst") == guest_ip for n in out)


def _syn(suite_ns: str, host: str, port: int) -> None:
    """A TCP connect from the suite's namespace to a mapped host port (no guest answers)."""
    code = (
        "import socket;s=socket.socket();s.settimeout(0.3)\n"
        f"try: s.connect(({host!r},{port}))\nexcept OSError: pass"
    )
    subprocess.run(["ip", "netns", "exec", suite_ns, "python3", "-c", code], check=False)


def _acl_uids(path: Path) -> set[int]:
    try:
        raw = os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return set()
    return {e.id for e in acl.decode(raw) if e.tag == acl.USER}


def _check_memory_private(memory: Path, clone_uids: set[int]) -> None:
    """Each clone's jail uid read the memory file through an ACL entry of its own that
    lasted only as long as its launch (its Firecracker holds the file mapped): with the
    clones running no uid is named, and the owning group and others get nothing."""
    assert clone_uids and not clone_uids & _acl_uids(memory)
    assert stat.S_IMODE(memory.stat().st_mode) & 0o077 == 0
    with contextlib.suppress(OSError):  # no xattr at all: the ACL is the mode
        entries = acl.decode(os.getxattr(memory, "system.posix_acl_access"))
        assert [e.perm for e in entries if e.tag in (acl.GROUP_OBJ, acl.GROUP)] == [0]


def _snapshot_a_clone(c: Any, vm_id: str) -> None:
    """A clone's Firecracker lost its ACL entry once its load returned: a snapshot of it
    is written from its mapped memory, never by reading the shared file again."""
    r = c.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "of-clone"})
    assert r.status_code == 201, r.text
    assert c.get(f"/v1/vms/{vm_id}").json()["state"] == "running"
    assert c.delete("/v1/snapshots/of-clone").status_code == 204


def _check_own_disks(storage: Path, src_disk: Path, clones: list[dict[str, Any]]) -> None:
    inodes = set()
    for v in clones:
        disk = storage / "disks" / v["id"] / "rootfs.ext4"
        with open(disk, "rb") as f:
            f.seek(-4096, os.SEEK_END)
            assert f.read(len(MARKER)) == MARKER
        inodes.add(disk.stat().st_ino)
    assert len(inodes | {src_disk.stat().st_ino}) == len(clones) + 1  # every disk its own


def _check_ports_reach_their_own_tap(
    suite_ns: str, host: str, guest_ip: str, ports: list[int], nss: list[str]
) -> None:
    """Each clone's host port leads to its own guest interface, and only there."""
    assert not any(_asked_for_guest(n, guest_ip) for n in nss)
    for i, port in enumerate(ports):
        _syn(suite_ns, host, port)
        reached = [j for j, n in enumerate(nss) if _asked_for_guest(n, guest_ip)]
        assert reached == list(range(i + 1)), (port, reached)


def test_snapshot_then_ten_clones_in_their_own_namespaces(tmp_path: Path) -> None:
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        src = {"id": "src", "template": "demo", "network_mode": "netns"}
        r = c.post("/v1/vms", json=src)
        assert r.status_code == 201, r.text
        storage = suite.cfg.state("storage")
        src_disk = storage / "disks" / "src" / "rootfs.ext4"
        with open(src_disk, "r+b") as f:  # stands in for what the guest wrote
            f.seek(-4096, os.SEEK_END)
            f.write(MARKER)

        r = c.post("/v1/vms/src/snapshots", json={"name": "warm"})
        assert r.status_code == 201, r.text
        snap = r.json()
        assert snap["state"] == "ready" and snap["origin"]["network_mode"] == "netns"
        assert c.get("/v1/vms/src").json()["state"] == "running"
        memory = Path(snap["memory_path"])
        assert stat.S_IMODE(memory.stat().st_mode) & 0o077 == 0  # no group/world access

        t0 = time.monotonic()
        clones: list[dict[str, Any]] = []
        for i in range(CLONES):
            body = {"id": f"clone-{i}", "port_mappings": [{"host_port": 0, "guest_port": 8080}]}
            r = c.post("/v1/snapshots/warm/restore", json=body)
            assert r.status_code == 201, r.text
            clones.append(r.json())
        took = time.monotonic() - t0
        listed = {v["id"]: v for v in c.get("/v1/vms").json()}
        assert all(listed[v["id"]]["state"] == "running" for v in clones)
        assert {v["ip_address"] for v in clones} == {c.get("/v1/vms/src").json()["ip_address"]}
        assert len({v["host_ip"] for v in clones}) == CLONES
        ports = [v["port_mappings"][0]["host_port"] for v in clones]
        assert len(set(ports)) == CLONES

        prefix = suite.vm_netns_prefix
        namespaces = [_netns_of(v["pid"], prefix) for v in clones]
        assert len(set(namespaces)) == CLONES
        _check_own_disks(storage, src_disk, clones)
        _check_memory_private(memory, {v["uid"] for v in clones})

        host = str(suite.cfg.network.gateway)  # the host's own address on the bridge
        guest_ip = clones[0]["ip_address"]
        _check_ports_reach_their_own_tap(suite.netns or "", host, guest_ip, ports, namespaces)

        _snapshot_a_clone(c, "clone-0")

        r = c.delete("/v1/snapshots/warm")
        assert r.status_code == 409  # in use by the clones
        for v in [*clones, {"id": "src"}]:
            assert c.delete(f"/v1/vms/{v['id']}", params={"force": "true"}).status_code == 204
        assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)] == []
        assert taps(suite.netns or "") == []
        assert _acl_uids(memory) == set()
        assert c.delete("/v1/snapshots/warm").status_code == 204
        assert c.get("/v1/snapshots").json() == []
        print(f"\n{CLONES} clones restored in {took:.2f}s")


def test_suspend_and_wake_keep_id_address_and_ports(tmp_path: Path) -> None:
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        body = {
            "id": "idle",
            "template": "demo",
            "port_mappings": [{"host_port": 0, "guest_port": 22}],
        }
        vm = c.post("/v1/vms", json=body).json()
        assert vm["state"] == "running", vm
        disk_dir = suite.cfg.state("storage") / "disks" / "idle"

        r = c.post("/v1/vms/idle/suspend")
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["state"] == "suspended" and s["pid"] is None
        for key in ("ip_address", "tap", "mac", "port_mappings", "uid"):
            assert s[key] == vm[key], key
        assert not Path(f"/proc/{vm['pid']}").exists()  # its Firecracker is gone
        assert vm["tap"] in taps(suite.netns or "")  # its TAP, lease and ports stay
        memory = disk_dir / "suspend.memory"
        assert memory.stat().st_size > 0 and stat.S_IMODE(memory.stat().st_mode) & 0o007 == 0
        assert not list(disk_dir.glob("*.pending"))
        assert c.post("/v1/vms/idle/start").status_code == 409

        r = c.post("/v1/vms/idle/wake")
        assert r.status_code == 200, r.text
        w = r.json()
        assert w["state"] == "running" and w["pid"] not in (None, vm["pid"])
        for key in ("ip_address", "tap", "mac", "port_mappings", "uid"):
            assert w[key] == vm[key], key
        assert c.post("/v1/vms/idle/suspend").json()["state"] == "suspended"
        assert c.post("/v1/vms/idle/resume").json()["state"] == "running"  # resume wakes too
        assert c.delete("/v1/vms/idle", params={"force": "true"}).status_code == 204
        assert not disk_dir.exists() and taps(suite.netns or "") == []
