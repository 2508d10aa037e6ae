"""Suspend and wake under the same id, through the API over fake helpers."""

from __future__ import annotations

from fcd_common.errors import FirecrackerError
from fcd_common.proto import vmm as pvmm

from .api_fakes import Harness
from .test_api_flows import CREATE, err, run


async def _running(h: Harness) -> dict[str, object]:
    body = {**CREATE, "port_mappings": [{"host_port": 20005, "guest_port": 80}]}
    r = await h.client.post("/v1/vms", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_suspend_keeps_identity_and_wake_loads_the_files() -> None:
    async def t(h: Harness) -> None:
        before = await _running(h)
        h.fakes.calls.clear()
        r = await h.client.post("/v1/vms/vm1/suspend")
        assert r.status_code == 200, r.text
        vm = r.json()
        assert vm["state"] == "suspended" and vm["pid"] is None and vm["stopped_at"]
        for key in ("ip_address", "tap", "mac", "port_mappings", "uid"):
            assert vm[key] == before[key], key
        assert h.fakes.tags("vm1") == [
            "vmm.pause",
            "storage.suspend_prepare",
            "vmm.snapshot_create",
            "storage.suspend_commit",
            "vmm.stop",
        ]
        assert h.fakes.stops[-1].force  # killed at once: the guest never runs again
        assert "vm1" in h.fakes.nets and "vm1" in h.fakes.disks and "vm1" in h.fakes.jails
        r = await h.client.post("/v1/vms/vm1/start")
        assert r.status_code == 409 and err(r)["details"]["state"] == "suspended"

        r = await h.client.post("/v1/vms/vm1/wake")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "running" and r.json()["ip_address"] == before["ip_address"]
        launch = h.fakes.launches[-1]
        assert launch.restore == pvmm.SnapshotFiles(
            name="vm1",
            state_path="/store/disks/vm1/suspend.vmstate",
            memory_path="/store/disks/vm1/suspend.memory",
            kind="suspend",
        )
        assert launch.disk.rootfs_path == "/store/disks/vm1/rootfs.ext4"  # its own disk

        # from paused; and /resume wakes a suspended VM too
        await h.client.post("/v1/vms/vm1/pause")
        assert (await h.client.post("/v1/vms/vm1/suspend")).json()["state"] == "suspended"
        r = await h.client.post("/v1/vms/vm1/resume")
        assert r.status_code == 200 and r.json()["state"] == "running"
        await h.client.post("/v1/vms/vm1/suspend")
        assert (await h.client.delete("/v1/vms/vm1")).status_code == 204  # suspended: deletable
        assert not h.fakes.disks and not h.fakes.nets

    run(t)


def test_failed_suspend_and_failed_wake_lose_nothing() -> None:
    async def t(h: Harness) -> None:
        await _running(h)
        h.fakes.fail["vmm.snapshot_create"] = FirecrackerError("Create snapshot error: no space")
        r = await h.client.post("/v1/vms/vm1/suspend")
        assert r.status_code == 502
        vm = (await h.client.get("/v1/vms/vm1")).json()
        assert vm["state"] == "running" and vm["error"] is None
        assert "storage.suspend_abort" in h.fakes.tags("vm1")
        del h.fakes.fail["vmm.snapshot_create"]

        assert (await h.client.post("/v1/vms/vm1/suspend")).status_code == 200
        h.fakes.fail["vmm.launch"] = FirecrackerError("cannot restore snapshot")
        r = await h.client.post("/v1/vms/vm1/wake")
        assert r.status_code == 502
        assert (await h.client.get("/v1/vms/vm1")).json()["state"] == "suspended"
        del h.fakes.fail["vmm.launch"]
        assert (await h.client.post("/v1/vms/vm1/wake")).json()["state"] == "running"
        r = await h.client.post("/v1/vms/vm1/wake")
        assert r.status_code == 409 and err(r)["details"]["state"] == "running"

    run(t)
