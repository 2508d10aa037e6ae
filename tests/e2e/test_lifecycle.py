"""End to end: four real daemons as separate processes, one VM through its whole life.

Checks the real objects each daemon made (TAP on the bridge owned by the jail
uid, nft elements, disk clone hard-linked into the chroot, the Firecracker
double running as the jail uid inside its chroot and answering, registry row
`running`), then pause/resume/stop/start/delete, and that nothing is left.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from fcd_common import ids
from fcd_dev import devup
from fcd_net import leases as net_leases
from fcd_vmm import uidpool

from .harness import (
    api,
    fc_get,
    in_ns,
    nft_ruleset,
    pids_with_uid_in,
    proc_status,
    running_suite,
    taps,
)

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def _leftovers(suite, vm_id: str, tap: str, ip: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    cfg = suite.cfg
    ruleset = json.dumps(nft_ruleset(suite.netns))
    fc_name = Path(cfg.jail.firecracker).name
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{suite.parent_cgroup}/{vm_id}")]
    leases = cfg.state("net")
    return {
        "taps": taps(suite.netns, cfg.network.tap_prefix),
        "nft mentions tap": tap in ruleset,
        "nft mentions ip": ip in ruleset,
        "disk dir": (cfg.state("storage") / "disks" / vm_id).exists(),
        "chroot": (Path(cfg.paths.chroot_base) / fc_name / vm_id).exists(),
        "cgroups": cgroups,
        "processes": pids_with_uid_in(cfg.jail.uid_min, cfg.jail.uid_max, suite.netns),
        "ip lease": ip in {x.addr for x in net_leases.stored(leases).values()},
        "vmm state": [p.name for p in cfg.state("vmm").rglob("*.json") if vm_id in p.name]
        + [v for v in uidpool.stored_records(cfg.state("vmm")) if v == vm_id],
    }


CLEAN = {
    "taps": [],
    "nft mentions tap": False,
    "nft mentions ip": False,
    "disk dir": False,
    "chroot": False,
    "cgroups": [],
    "processes": [],
    "ip lease": False,
    "vmm state": [],
}


def test_create_pause_resume_stop_start_delete(tmp_path: Path) -> None:  # noqa: PLR0915 -- one VM's whole life, checked step by step against the kernel
    with running_suite(tmp_path) as suite, api(suite) as c:
        cfg = suite.cfg
        devup.import_demo_template(suite, "tiny")
        r = c.post(
            "/v1/vms",
            json={"id": "e2e-1", "template": "tiny", "vcpu_count": 1, "mem_size_mib": 128},
        )
        assert r.status_code == 201, r.text
        vm = r.json()
        assert vm["state"] == "running"
        assert r.headers.get("x-request-id")
        # where the create's time went: fcd-api's phases and fcd-vmm's (bench/create_delete.py)
        phases = [item.split(";dur=")[0] for item in r.headers["server-timing"].split(", ")]
        for phase in ("api.uid", "api.storage", "api.network", "vmm.jailer", "vmm.InstanceStart"):
            assert phase in phases, phases
        ip, pid = vm["ip_address"], vm["pid"]
        tap = ids.tap_name("e2e-1", cfg.network.tap_prefix)
        assert ip.startswith("10.77.0.")

        # fcd-net: TAP on the bridge, owned by the jail uid/gid, nft identity present
        st = proc_status(pid)
        uid, gid = int(st["Uid"].split()[0]), int(st["Gid"].split()[0])
        assert cfg.jail.uid_min <= uid <= cfg.jail.uid_max and uid != 0 and gid == uid
        link = json.loads(in_ns(suite.netns, "ip", "-j", "-d", "link", "show", tap))[0]
        assert link["master"] == cfg.network.bridge
        assert in_ns(suite.netns, "cat", f"/sys/class/net/{tap}/owner").strip() == str(uid)
        assert in_ns(suite.netns, "cat", f"/sys/class/net/{tap}/group").strip() == str(gid)
        ruleset = json.dumps(nft_ruleset(suite.netns))
        assert tap in ruleset and ip in ruleset and ids.guest_mac(ip) in ruleset

        # fcd-storage + fcd-vmm: disk clone hard-linked into the chroot, owned by the jail uid
        root = Path(cfg.paths.chroot_base) / Path(cfg.jail.firecracker).name / "e2e-1" / "root"
        disk = cfg.state("storage") / "disks" / "e2e-1" / "rootfs.ext4"
        jail_disk = root / "rootfs.ext4"
        assert jail_disk.stat().st_ino == disk.stat().st_ino
        assert (jail_disk.stat().st_uid, jail_disk.stat().st_gid) == (uid, gid)
        assert (root / "vmlinux").exists()

        # the Firecracker process: jail uid, chrooted, answering on its socket
        # after pivot_root in its own mount namespace the link reads "/": compare the inode instead
        proc_root, jail_root = os.stat(f"/proc/{pid}/root"), root.stat()
        assert (proc_root.st_dev, proc_root.st_ino) == (jail_root.st_dev, jail_root.st_ino)
        assert st["NSpid"].split()[-1] == "1"  # init of its own pid namespace
        assert fc_get(root / "run" / "firecracker.socket")["state"] == "Running"

        # registry row
        db = sqlite3.connect(cfg.state("api") / "registry.db")
        assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
        db.close()
        assert c.get("/v1/vms/e2e-1").json()["state"] == "running"
        assert [v["id"] for v in c.get("/v1/vms").json()] == ["e2e-1"]

        # pause / resume: real VMM state changes
        assert c.post("/v1/vms/e2e-1/pause").json()["state"] == "paused"
        assert fc_get(root / "run" / "firecracker.socket")["state"] == "Paused"
        bad = c.post("/v1/vms/e2e-1/pause")
        assert bad.status_code == 409 and bad.json()["error"]["details"]["state"] == "paused"
        assert c.post("/v1/vms/e2e-1/resume").json()["state"] == "running"
        assert fc_get(root / "run" / "firecracker.socket")["state"] == "Running"

        # stop: the process ends; disk, tap and address are kept for a restart
        r = c.post("/v1/vms/e2e-1/stop")
        assert r.status_code == 200 and r.json()["state"] == "stopped", r.text
        assert not Path(f"/proc/{pid}").exists() or proc_status(pid)["State"].startswith("Z")
        assert disk.exists() and tap in taps(suite.netns)

        # start again: a fresh jailer + Firecracker on the same disk, tap and address
        r = c.post("/v1/vms/e2e-1/start")
        assert r.status_code == 200 and r.json()["state"] == "running", r.text
        vm2 = r.json()
        assert vm2["ip_address"] == ip and vm2["pid"] != pid
        assert fc_get(root / "run" / "firecracker.socket")["state"] == "Running"

        # delete needs stopped (or force)
        assert c.delete("/v1/vms/e2e-1").status_code == 409
        assert c.post("/v1/vms/e2e-1/stop").json()["state"] == "stopped"
        assert c.delete("/v1/vms/e2e-1").status_code in (200, 204)
        assert c.get("/v1/vms/e2e-1").status_code == 404

        assert _leftovers(suite, "e2e-1", tap, ip) == CLEAN

        # SIGTERM: every daemon shuts down gracefully within its grace period
        assert suite.stop() == {"api": 0, "vmm": 0, "storage": 0, "net": 0}


def test_failed_create_undoes_earlier_steps(tmp_path: Path) -> None:
    """Storage refuses (disk larger than free space) after the jail and network steps ran."""
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "tiny")
        free_mib = (
            os.statvfs(suite.cfg.paths.state_dir).f_bavail
            * os.statvfs(suite.cfg.paths.state_dir).f_frsize
            // 2**20
        )
        r = c.post(
            "/v1/vms",
            json={"id": "e2e-fail", "template": "tiny", "disk_size_mib": free_mib + 4096},
        )
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "resource_exhausted"
        assert c.get("/v1/vms/e2e-fail").status_code == 404
        tap = ids.tap_name("e2e-fail", suite.cfg.network.tap_prefix)
        left = _leftovers(suite, "e2e-fail", tap, "10.77.0.2")
        assert left == CLEAN
        # and the pool is intact: the next VM gets the first address
        r = c.post("/v1/vms", json={"id": "e2e-ok", "template": "tiny"})
        assert r.status_code == 201, r.text
        assert r.json()["ip_address"] == "10.77.0.2"
        assert c.delete("/v1/vms/e2e-ok", params={"force": "true"}).status_code in (200, 204)


def test_launch_failure_undoes_everything(tmp_path: Path) -> None:
    """The VMM step fails (a kernel that is not an ELF): jail, disk and lease are undone."""
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "tiny")
        # a guest kernel that is not an ELF makes InstanceStart fail inside Firecracker
        bad_kernel = suite.import_dir / "bad-vmlinux"
        bad_kernel.write_bytes(b"not an elf" * 100)
        rootfs = suite.import_dir / "demo-src" / "rootfs.ext4"
        import asyncio

        from fcd_common.proto import storage as sp
        from fcd_common.rpc import RpcClient

        async def imp() -> None:
            client = RpcClient(suite.cfg.socket("storage"), sp.PROTOCOL, timeout=60)
            await client.call(
                sp.TemplateImport(
                    name="broken", kernel_path=str(bad_kernel), rootfs_path=str(rootfs)
                )
            )
            await client.close()

        asyncio.run(imp())
        r = c.post("/v1/vms", json={"id": "e2e-boom", "template": "broken"})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "firecracker_error"
        assert c.get("/v1/vms/e2e-boom").status_code == 404
        tap = ids.tap_name("e2e-boom", suite.cfg.network.tap_prefix)
        assert _leftovers(suite, "e2e-boom", tap, "10.77.0.2") == CLEAN
