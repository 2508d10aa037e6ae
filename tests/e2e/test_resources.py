"""End to end: rate limits, balloon, CPU quota and memory limit through the API (#11).

Four real daemons; the VM's Firecracker (the double, or the real binary with
``FCD_FIRECRACKER``) is asked for ``GET /vm/config`` and ``/balloon/statistics``
over its own socket, and the cgroup files the kernel holds for the VM are read
directly: what the API says is in force must be what Firecracker and the kernel
have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes import guest_kernel
from fcd_common.errors import NotFound
from fcd_common.proto import storage as sp
from fcd_common.rpc import RpcClient
from fcd_dev import devup
from fcd_dev import suite as suite_mod

from .harness import api, fc_get, running_suite

pytestmark = [pytest.mark.root, pytest.mark.e2e]

MIB = 1 << 20
REAL = bool(os.environ.get("FCD_FIRECRACKER"))
"""The real Firecracker does not look at the guest: the minimal guest has no balloon
driver, so every balloon change is ``balloon_inactive`` there."""

LIMITS = {
    "root": {
        "bandwidth": {"size": 10_000_000, "refill_time_ms": 1000},
        "ops": {"size": 500, "refill_time_ms": 1000, "one_time_burst": 100},
    },
    "drives": {"data": {"bandwidth": {"size": 5_000_000, "refill_time_ms": 1000}}},
    "net": {
        "rx": {"bandwidth": {"size": 1_250_000, "refill_time_ms": 1000}},
        "tx": {"ops": {"size": 1000, "refill_time_ms": 1000}},
    },
}


def _import_balloon_template(suite: suite_mod.Suite, name: str) -> None:
    """A template whose kernel names the virtio-balloon driver (see guest_kernel.build)."""
    work = suite.import_dir / f"{name}-src"
    work.mkdir(parents=True, exist_ok=True)
    kernel = guest_kernel.build(work / "vmlinux", balloon_driver=True)
    rootfs = guest_kernel.build_rootfs(work / "rootfs.ext4")

    async def run() -> None:
        client = RpcClient(suite.cfg.socket("storage"), sp.PROTOCOL, timeout=60)
        try:
            with contextlib.suppress(NotFound):
                await client.call(sp.TemplateGet(name=name))
                return
            await client.call(
                sp.TemplateImport(name=name, kernel_path=str(kernel), rootfs_path=str(rootfs))
            )
        finally:
            await client.close()

    asyncio.run(run())


def _sock(suite: suite_mod.Suite, vm_id: str) -> Path:
    cfg = suite.cfg
    fc = Path(cfg.jail.firecracker).name
    return Path(cfg.paths.chroot_base) / fc / vm_id / "root" / "run" / "firecracker.socket"


def _cg(suite: suite_mod.Suite, controller: str, vm_id: str, name: str) -> str:
    return (
        (Path("/sys/fs/cgroup") / controller / suite.parent_cgroup / vm_id / name)
        .read_text()
        .strip()
    )


def _bucket(size: int, refill: int, burst: int | None = None) -> dict[str, Any]:
    return {"size": size, "one_time_burst": burst, "refill_time": refill}


def _drives(vm_config: dict[str, Any]) -> dict[str, Any]:
    return {d["drive_id"]: d["rate_limiter"] for d in vm_config["drives"]}


def _ok(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.fixture
def suite(tmp_path: Path) -> Any:
    if not Path("/sys/fs/cgroup/cpu").is_dir():
        pytest.skip("needs the cgroup v1 cpu hierarchy (this host's layout)")
    with running_suite(tmp_path) as s:
        devup.import_demo_template(s, "tiny")
        _import_balloon_template(s, "bal")
        yield s


def test_limits_at_create_and_live_updates(suite: suite_mod.Suite) -> None:  # noqa: PLR0915 -- one VM, each resource changed and read back from Firecracker and the kernel
    overhead = suite.cfg.limits.mem_overhead_mib
    with api(suite) as c:
        # a bad limit names its field and creates nothing
        r = c.post(
            "/v1/vms",
            json={
                "id": "res-bad",
                "template": "tiny",
                "rate_limits": {"drives": {"nope": LIMITS["root"]}},
            },
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"]["field"] == "rate_limits.drives.nope"
        r = c.post(
            "/v1/vms",
            json={
                "id": "res-bad",
                "template": "tiny",
                "rate_limits": {"root": {"ops": {"size": 5, "refill_time_ms": 0}}},
            },
        )
        assert r.status_code == 400, r.text
        assert "rate_limits.root.ops" in r.json()["error"]["message"]
        assert c.get("/v1/vms/res-bad").status_code == 404

        vm = _ok(
            c.post(
                "/v1/vms",
                json={
                    "id": "res-1",
                    "template": "bal",
                    "mem_size_mib": 128,
                    "drives": [{"name": "data", "size_mib": 8}],
                    "rate_limits": LIMITS,
                    "balloon": {"deflate_on_oom": True, "stats_interval_s": 1},
                    "cpu_quota": 0.5,
                },
            ),
            201,
        )
        assert vm["state"] == "running"
        assert vm["config"]["cpu_quota"] == 0.5
        sock = _sock(suite, "res-1")

        # at create: Firecracker has the limiters and the balloon, the cgroup the quota
        fc_cfg = fc_get(sock, "/vm/config")
        drives = _drives(fc_cfg)
        assert drives["rootfs"] == {
            "bandwidth": _bucket(10_000_000, 1000),
            "ops": _bucket(500, 1000, 100),
        }
        assert drives["data"] == {"bandwidth": _bucket(5_000_000, 1000), "ops": None}
        (eth0,) = fc_cfg["network-interfaces"]
        assert eth0["rx_rate_limiter"] == {"bandwidth": _bucket(1_250_000, 1000), "ops": None}
        assert eth0["tx_rate_limiter"] == {"bandwidth": None, "ops": _bucket(1000, 1000)}
        balloon = {
            k: fc_cfg["balloon"][k]
            for k in ("amount_mib", "deflate_on_oom", "stats_polling_interval_s")
        }
        assert balloon == {  # v1.14 adds free_page_hinting/_reporting
            "amount_mib": 0,
            "deflate_on_oom": True,
            "stats_polling_interval_s": 1,
        }
        assert _cg(suite, "cpu", "res-1", "cpu.cfs_quota_us") == "50000"
        assert _cg(suite, "cpu", "res-1", "cpu.cfs_period_us") == "100000"
        assert int(_cg(suite, "memory", "res-1", "memory.limit_in_bytes")) == (128 + overhead) * MIB

        # GET shows the spec and what is in force
        vm = _ok(c.get("/v1/vms/res-1"))
        force = vm["resources"]["in_force"]
        assert force["cpu_quota"] == 0.5
        assert force["mem_limit_bytes"] == (128 + overhead) * MIB
        assert force["mem_usage_bytes"] > 0
        assert force["rate_limits"]["root"]["ops"] == {
            "size": 500,
            "refill_time_ms": 1000,
            "one_time_burst": 100,
        }
        assert force["balloon"]["requested_mib"] == 0
        assert force["balloon"]["actual_mib"] == 0

        # live: CPU quota and memory limit on the cgroup
        view = _ok(c.patch("/v1/vms/res-1/resources", json={"cpu_quota": 1.5}))
        assert view["in_force"]["cpu_quota"] == 1.5
        assert _cg(suite, "cpu", "res-1", "cpu.cfs_quota_us") == "150000"
        view = _ok(c.patch("/v1/vms/res-1/resources", json={"mem_limit_mib": 512}))
        assert int(_cg(suite, "memory", "res-1", "memory.limit_in_bytes")) == (512 + overhead) * MIB
        assert view["in_force"]["mem_limit_bytes"] == (512 + overhead) * MIB

        # live: rate limits of the root disk, the data drive and the interface
        upd = {
            "root": {"bandwidth": {"size": 20_000_000, "refill_time_ms": 500}},
            "drives": {"data": {"ops": {"size": 50, "refill_time_ms": 1000}}},
            "net": {"tx": {"ops": {"size": 0, "refill_time_ms": 0}}},
        }
        view = _ok(c.patch("/v1/vms/res-1/resources", json={"rate_limits": upd}))
        fc_cfg = fc_get(sock, "/vm/config")
        drives = _drives(fc_cfg)
        assert drives["rootfs"] == {
            "bandwidth": _bucket(20_000_000, 500),
            "ops": _bucket(500, 1000, 100),
        }
        assert drives["data"] == {"bandwidth": _bucket(5_000_000, 1000), "ops": _bucket(50, 1000)}
        assert fc_cfg["network-interfaces"][0]["tx_rate_limiter"] is None
        assert view["rate_limits"]["net"]["tx"] is None  # the spec: removed, as in Firecracker
        assert view["in_force"]["rate_limits"] == view["rate_limits"]

        # a drive that is not this VM's is refused before anything is sent
        r = c.patch(
            "/v1/vms/res-1/resources",
            json={"rate_limits": {"drives": {"other": {"ops": {"size": 1, "refill_time_ms": 1}}}}},
        )
        assert r.status_code == 400, r.text

        # live: the balloon (the double's guest here has a driver; the real one never does)
        r = c.patch("/v1/vms/res-1/resources", json={"mem_target_mib": 96})
        if REAL:
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "balloon_inactive"
        else:
            view = _ok(r)
            assert fc_get(sock, "/vm/config")["balloon"]["amount_mib"] == 32
            stats = fc_get(sock, "/balloon/statistics")
            assert (stats["target_mib"], stats["actual_mib"]) == (32, 32)
            assert view["in_force"]["balloon"]["requested_mib"] == 32
            assert view["in_force"]["balloon"]["actual_mib"] == 32
            assert view["mem_target_mib"] == 96

        # a memory limit below what the VM's cgroup uses now: 409, nothing changed
        hog = _hog_in_cgroup(suite, "res-1", 300)
        try:
            r = c.patch("/v1/vms/res-1/resources", json={"mem_limit_mib": 128})
            assert r.status_code == 409, r.text
            assert "below" in r.json()["error"]["message"]
            assert (
                int(_cg(suite, "memory", "res-1", "memory.limit_in_bytes"))
                == (512 + overhead) * MIB
            )
            assert _ok(c.get("/v1/vms/res-1"))["config"]["mem_limit_mib"] == 512
        finally:
            hog.kill()
            hog.wait()

        # vCPUs and memory size: refused while running, applied after stop/start
        r = c.patch("/v1/vms/res-1/resources", json={"vcpu_count": 2})
        assert r.status_code == 409, r.text
        assert "stop the vm" in r.json()["error"]["message"].lower()
        assert fc_get(sock, "/vm/config")["machine-config"]["vcpu_count"] == 1
        _ok(c.post("/v1/vms/res-1/stop"))
        view = _ok(c.patch("/v1/vms/res-1/resources", json={"vcpu_count": 2, "mem_size_mib": 256}))
        assert view["in_force"] is None
        vm = _ok(c.post("/v1/vms/res-1/start"))
        assert (vm["config"]["vcpu_count"], vm["config"]["mem_size_mib"]) == (2, 256)
        fc_cfg = fc_get(sock, "/vm/config")
        assert fc_cfg["machine-config"]["vcpu_count"] == 2
        assert fc_cfg["machine-config"]["mem_size_mib"] == 256
        # what was changed live holds across the restart (it is the spec now)
        assert _drives(fc_cfg)["rootfs"]["bandwidth"] == _bucket(20_000_000, 500)
        assert _cg(suite, "cpu", "res-1", "cpu.cfs_quota_us") == "150000"
        assert int(_cg(suite, "memory", "res-1", "memory.limit_in_bytes")) == (512 + overhead) * MIB

        # the quota removed: no CFS limit
        view = _ok(c.patch("/v1/vms/res-1/resources", json={"cpu_quota": 0}))
        assert _cg(suite, "cpu", "res-1", "cpu.cfs_quota_us") == "-1"
        assert view["cpu_quota"] is None
        assert view["in_force"]["cpu_quota"] is None

        # every accepted change is an event of the stream, in order, live or at next start
        r = c.get("/v1/events", params={"vm_id": "res-1", "type": "resources"})
        assert r.status_code == 200, r.text
        evs = [json.loads(line) for line in r.text.splitlines() if line]
        changes = [(e["data"]["in_force"], e["data"].get("cpu_quota")) for e in evs]
        assert changes[0] == ("now", 1.5), changes
        assert ("next_start", None) in changes and changes[-1] == ("now", 0), changes

        r = c.delete("/v1/vms/res-1", params={"force": "true"})
        assert r.status_code == 204, r.text


def test_balloon_inactive(suite: suite_mod.Suite) -> None:
    """A guest without a balloon driver: 409 balloon_inactive, nothing changed, VM runs."""
    with api(suite) as c:
        _ok(
            c.post(
                "/v1/vms",
                json={
                    "id": "res-2",
                    "template": "tiny",
                    "balloon": {"deflate_on_oom": False, "stats_interval_s": 1},
                },
            ),
            201,
        )
        r = c.patch("/v1/vms/res-2/resources", json={"mem_target_mib": 64})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "balloon_inactive"
        assert "no active balloon driver" in err["message"]
        vm = _ok(c.get("/v1/vms/res-2"))
        assert vm["state"] == "running"
        assert vm["config"]["mem_target_mib"] is None
        stats = fc_get(_sock(suite, "res-2"), "/balloon/statistics")
        assert stats == {"target_pages": 0, "actual_pages": 0, "target_mib": 0, "actual_mib": 0}
        assert vm["resources"]["in_force"]["balloon"]["actual_mib"] == 0

        # a VM without a balloon cannot take a memory target at all
        _ok(c.post("/v1/vms", json={"id": "res-3", "template": "tiny"}), 201)
        r = c.patch("/v1/vms/res-3/resources", json={"mem_target_mib": 64})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"]["field"] == "mem_target_mib"
        for vm_id in ("res-2", "res-3"):
            assert c.delete(f"/v1/vms/{vm_id}", params={"force": "true"}).status_code == 204


def _hog_in_cgroup(suite: suite_mod.Suite, vm_id: str, mib: int) -> subprocess.Popen[bytes]:
    """A process that joins the VM's memory cgroup and then touches ``mib`` MiB (v1 charges
    memory to the cgroup a task is in when it faults the page in)."""
    tasks = Path("/sys/fs/cgroup/memory") / suite.parent_cgroup / vm_id / "tasks"
    code = (
        "import os, sys, time\n"
        f"open({str(tasks)!r}, 'w').write(str(os.getpid()))\n"
        f"b = b'x' * ({mib} << 20)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None
    deadline = time.monotonic() + 60
    line = p.stdout.readline()
    assert line.strip() == b"ready" and time.monotonic() < deadline
    return p
