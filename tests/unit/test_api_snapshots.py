"""Snapshot and restore flows through the API, over fake helpers on real RPC sockets."""

from __future__ import annotations

from typing import Any

import pytest

from fcd_api.plan import snapshot_loadable
from fcd_api.storage_routes import abort_pending_snapshots
from fcd_common.errors import FirecrackerError, ResourceExhausted
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm

from .api_fakes import Harness
from .test_api_flows import err, run

NETNS_VM = {
    "id": "src",
    "template": "base",
    "vcpu_count": 2,
    "mem_size_mib": 256,
    "kernel_args": "quiet",
    "network_mode": "netns",
    "port_mappings": [{"host_port": 20001, "guest_port": 8080}],
}


async def _source(h: Harness, **over: Any) -> None:
    r = await h.client.post("/v1/vms", json={**NETNS_VM, **over})
    assert r.status_code == 201, r.text


def test_snapshot_pauses_takes_commits_with_origin_and_resumes() -> None:
    async def t(h: Harness) -> None:
        await _source(h)
        h.fakes.calls.clear()
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "warm"})
        assert r.status_code == 201, r.text
        snap = r.json()
        assert snap["state"] == "ready" and snap["name"] == "warm"
        o = snap["origin"]
        assert (o["vm_id"], o["vcpu_count"], o["mem_size_mib"], o["template"]) == (
            "src",
            2,
            256,
            "base",
        )
        assert o["kernel_args"] == "console=ttyS0 reboot=k quiet"
        assert (o["network_mode"], o["guest_ip"], o["tap"]) == ("netns", "10.200.0.2", "fctap0")
        assert o["port_mappings"] == [{"host_port": 20001, "guest_port": 8080, "protocol": "tcp"}]
        assert (o["firecracker_version"], o["snapshot_version"]) == ("1.7.0", "1.0.0")
        assert h.fakes.tags("src") == [
            "vmm.pause",
            "storage.snapshot_prepare",
            "vmm.snapshot_create",
            "vmm.resume",
        ]
        assert "storage.snapshot_commit" in h.fakes.tags()
        assert (await h.client.get("/v1/vms/src")).json()["state"] == "running"

    run(t)


@pytest.mark.parametrize(("then", "state"), [("pause", "paused"), ("stop", "stopped")])
def test_snapshot_then(then: str, state: str) -> None:
    async def t(h: Harness) -> None:
        await _source(h)
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "s", "then": then})
        assert r.status_code == 201, r.text
        vm = (await h.client.get("/v1/vms/src")).json()
        assert vm["state"] == state
        if then == "stop":
            assert vm["pid"] is None and vm["stopped_at"]

    run(t)


def test_snapshot_of_a_paused_vm_stays_paused_without_pause_call() -> None:
    async def t(h: Harness) -> None:
        await _source(h)
        await h.client.post("/v1/vms/src/pause")
        h.fakes.calls.clear()
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "s", "then": "pause"})
        assert r.status_code == 201, r.text
        assert "vmm.pause" not in h.fakes.tags("src")
        assert (await h.client.get("/v1/vms/src")).json()["state"] == "paused"

    run(t)


def test_snapshot_refusals_leave_the_vm_and_existing_snapshots_alone() -> None:
    async def t(h: Harness) -> None:
        await _source(h)
        assert (await h.client.post("/v1/vms/src/snapshots", json={"name": "s"})).status_code == 201
        before = dict(h.fakes.snapshots)
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "s"})
        assert r.status_code == 409 and err(r)["details"]["field"] == "name"
        assert h.fakes.snapshots == before  # the existing snapshot is not deleted
        assert (await h.client.get("/v1/vms/src")).json()["state"] == "running"
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "d", "type": "diff"})
        assert r.status_code == 409 and err(r)["details"]["field"] == "type"
        await h.client.post("/v1/vms/src/stop")
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "x"})
        assert r.status_code == 409 and err(r)["details"]["state"] == "stopped"
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "../x"})
        assert r.status_code == 400

    run(t)


def test_failed_snapshot_removes_the_pending_entry_and_resumes_the_vm() -> None:
    async def t(h: Harness) -> None:
        await _source(h)
        h.fakes.fail["vmm.snapshot_create"] = FirecrackerError("Create snapshot error: disk full")
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "s"})
        assert r.status_code == 502 and "disk full" in err(r)["message"]
        assert "s" not in h.fakes.snapshots
        vm = (await h.client.get("/v1/vms/src")).json()
        assert vm["state"] == "running" and vm["error"] is None
        assert h.fakes.tags("src")[-1] == "vmm.resume"

    run(t)


def test_restore_makes_netns_clones_with_their_own_ports() -> None:
    async def t(h: Harness) -> None:
        await _source(h)
        await h.client.post("/v1/vms/src/snapshots", json={"name": "warm"})
        ips = set()
        for i in range(3):
            body = {
                "id": f"c{i}",
                "labels": {"clone": "yes"},
                "port_mappings": [{"host_port": 0, "guest_port": 8080}],
            }
            r = await h.client.post("/v1/snapshots/warm/restore", json=body)
            assert r.status_code == 201, r.text
            vm = r.json()
            assert vm["state"] == "running" and vm["restored_from"] == "warm"
            assert vm["network_mode"] == "netns" and vm["labels"] == {"clone": "yes"}
            assert vm["config"]["vcpu_count"] == 2 and vm["config"]["mem_size_mib"] == 256
            ips.add(vm["ip_address"])
            launch = h.fakes.launches[-1]
            assert launch.restore == pvmm.SnapshotFiles(
                name="warm",
                state_path="/store/snapshots/warm/vmstate",
                memory_path="/store/snapshots/warm/memory",
            )
            assert launch.resume and launch.kernel_args == "console=ttyS0 reboot=k quiet"
            assert h.fakes.disks[f"c{i}"].vm_id == f"c{i}"
        assert ips == {"10.200.0.2"}  # every clone keeps the guest's address
        ports = {h.fakes.nets[f"c{i}"].ports[0].host_port for i in range(3)}
        assert len(ports) == 3  # but each has a host port of its own
        # idempotent per id; a paused restore
        again = await h.client.post("/v1/snapshots/warm/restore", json={"id": "c0"})
        assert again.status_code == 409  # same id, other spec (no port mappings)
        r = await h.client.post("/v1/snapshots/warm/restore", json={"id": "p", "resume": False})
        assert r.status_code == 201 and r.json()["state"] == "paused"
        assert (await h.client.post("/v1/vms/p/resume")).json()["state"] == "running"

    run(t)


def test_restore_refusals_make_nothing() -> None:
    async def t(h: Harness) -> None:
        await _source(h)
        await h.client.post("/v1/vms/src/snapshots", json={"name": "warm"})
        h.fakes.calls.clear()
        r = await h.client.post("/v1/snapshots/nope/restore", json={})
        assert r.status_code == 404
        r = await h.client.post("/v1/snapshots/warm/restore", json={"network_mode": "bridge"})
        assert r.status_code == 400 and err(r)["details"]["field"] == "network_mode"
        h.fakes.info = pvmm.VmmInfo(firecracker_version="1.14.2", snapshot_version="8.0.0")
        r = await h.client.post("/v1/snapshots/warm/restore", json={"id": "x"})
        assert r.status_code == 409 and "1.7.0" in err(r)["message"]
        assert "vmm.allocate_jail" not in h.fakes.tags()
        assert h.registry.get("x") is None

    run(t)


def test_snapshot_format_compatibility() -> None:
    assert snapshot_loadable("1.0.0", "1.0.0")
    assert snapshot_loadable("8.0.0", "8.2.0")
    assert not snapshot_loadable("8.3.0", "8.2.0")
    assert not snapshot_loadable("1.0.0", "8.0.0")
    assert not snapshot_loadable("garbage", "1.0.0")


def test_diff_snapshots_chain_onto_the_last_one() -> None:
    async def t(h: Harness) -> None:
        await _source(h, track_dirty_pages=True)
        assert h.fakes.launches[-1].track_dirty_pages
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "d0", "type": "diff"})
        assert r.status_code == 409  # nothing to layer onto yet
        assert (await h.client.get("/v1/vms/src")).json()["state"] == "running"
        await h.client.post("/v1/vms/src/snapshots", json={"name": "f"})
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "d1", "type": "diff"})
        assert r.status_code == 201, r.text
        assert (r.json()["origin"]["type"], r.json()["origin"]["parent"]) == ("diff", "f")
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "d2", "type": "diff"})
        assert r.json()["origin"]["parent"] == "d1"
        # a clone of d2 can take diffs on top of the snapshot it came from
        r = await h.client.post("/v1/snapshots/d2/restore", json={"id": "c"})
        assert r.status_code == 201 and h.fakes.launches[-1].track_dirty_pages
        r = await h.client.post("/v1/vms/c/snapshots", json={"name": "c1", "type": "diff"})
        assert r.json()["origin"]["parent"] == "d2"

    run(t)


def test_full_disk_at_commit_is_507_and_the_vm_runs_on() -> None:
    async def t(h: Harness) -> None:
        await _source(h)
        h.fakes.fail["storage.snapshot_commit"] = ResourceExhausted("no space left for 's'")
        r = await h.client.post("/v1/vms/src/snapshots", json={"name": "s"})
        assert r.status_code == 507 and err(r)["code"] == "resource_exhausted"
        assert "s" not in h.fakes.snapshots  # the pending entry went with the failure
        assert (await h.client.get("/v1/vms/src")).json()["state"] == "running"

    run(t)


def test_snapshots_left_pending_by_a_crash_are_removed_at_start() -> None:
    """fcd-api killed between prepare and commit leaves a pending entry (no undo ran):
    the next fcd-api removes it at start; ready snapshots stay."""

    async def t(h: Harness) -> None:
        await _source(h)
        await h.client.post("/v1/vms/src/snapshots", json={"name": "kept"})
        await h.flows.helpers.storage.call(pstorage.SnapshotPrepare(name="cut", vm_id="src"))
        assert h.fakes.snapshots["cut"].state == "pending"
        assert await abort_pending_snapshots(h.flows.helpers.storage) == ["cut"]
        assert set(h.fakes.snapshots) == {"kept"}

    run(t)
