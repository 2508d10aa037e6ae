"""fcd-api end to end in-process: the Litestar app over fake helpers on real RPC sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fcd_api.plan import join_kernel_args
from fcd_common.config import LimitsConfig
from fcd_common.errors import FirecrackerError, Internal, ResourceExhausted, Unavailable

from .api_fakes import Harness, api_harness

CREATE = {
    "id": "vm1",
    "template": "base",
    "vcpu_count": 2,
    "mem_size_mib": 256,
    "kernel_args": "quiet",
    "labels": {"team": "x"},
}


def run(test: Callable[[Harness], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with api_harness(**kw) as h:
            await test(h)

    asyncio.run(main())


def err(resp: Any) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]  # type: ignore[no-any-return]


def test_happy_path() -> None:
    async def t(h: Harness) -> None:
        c = h.client
        r = await c.post("/v1/vms", json=CREATE, headers={"X-Request-Id": "req-1"})
        assert r.status_code == 201, r.text
        assert r.headers["x-request-id"] == "req-1"
        vm = r.json()
        assert vm["id"] == "vm1" and vm["state"] == "running"
        assert vm["config"] == {
            "vcpu_count": 2,
            "mem_size_mib": 256,
            "template": "base",
            "disk_size_mib": None,
            "kernel_args": "quiet",
            "drives": [],
            "rate_limits": None,
            "balloon": None,
            "cpu_quota": None,
            "mem_limit_mib": None,
            "mem_target_mib": None,
        }
        assert vm["ip_address"] == "172.30.0.2" and vm["pid"] and vm["started_at"]
        assert vm["labels"] == {"team": "x"} and vm["port_mappings"] == []
        assert vm["stopped_at"] is None and vm["uid"] == 900000
        assert h.fakes.tags("vm1") == [
            "vmm.allocate_jail",
            "storage.provision",
            "net.setup",
            "vmm.launch",
        ] or h.fakes.tags("vm1") == [
            "vmm.allocate_jail",
            "net.setup",
            "storage.provision",
            "vmm.launch",
        ]
        launch = h.fakes.launches[-1]
        assert launch.kernel_args == "console=ttyS0 reboot=k quiet"
        net = launch.net
        assert (net.tap, net.ip, net.gateway, net.prefix_len) == (
            h.fakes.nets["vm1"].tap,
            "172.30.0.2",
            "172.30.0.1",
            24,
        )
        assert launch.disk.rootfs_path == "/store/disks/vm1/rootfs.ext4"
        assert (launch.vcpu_count, launch.mem_size_mib) == (2, 256)

        assert (await c.get("/v1/vms/vm1")).json() == vm
        assert [v["id"] for v in (await c.get("/v1/vms")).json()] == ["vm1"]
        assert (await c.get("/v1/vms?state=running&label=team=x")).json()[0]["id"] == "vm1"
        assert (await c.get("/v1/vms?state=stopped")).json() == []
        assert (await c.get("/v1/vms?label=team=y")).json() == []

        r = await c.post("/v1/vms/vm1/pause")
        assert r.status_code == 200 and r.json()["state"] == "paused"
        r = await c.post("/v1/vms/vm1/resume")
        assert r.status_code == 200 and r.json()["state"] == "running"
        r = await c.post("/v1/vms/vm1/stop")
        assert r.status_code == 200 and r.json()["state"] == "stopped"
        assert r.json()["stopped_at"] and r.json()["pid"] is None
        assert r.json()["ip_address"] == "172.30.0.2"  # stop keeps disk, TAP and IP
        assert "vm1" in h.fakes.nets and "vm1" in h.fakes.disks and "vm1" in h.fakes.jails

        r = await c.post("/v1/vms/vm1/start")
        assert r.status_code == 200 and r.json()["state"] == "running"
        assert r.json()["stopped_at"] is None
        again = h.fakes.launches[-1]
        assert again.net.tap == launch.net.tap and again.net.ip == launch.net.ip
        assert again.disk.rootfs_path == launch.disk.rootfs_path
        await c.post("/v1/vms/vm1/stop")

        h.fakes.calls.clear()
        r = await c.delete("/v1/vms/vm1")
        assert r.status_code == 204, r.text
        assert h.fakes.tags() == ["vmm.release", "net.teardown", "storage.release"]
        assert not h.fakes.nets and not h.fakes.disks and not h.fakes.jails
        assert (await c.get("/v1/vms/vm1")).status_code == 404
        assert h.flows.status() == "0 VMs (0 running)"

    run(t)


def test_generated_id_and_request_id() -> None:
    async def t(h: Harness) -> None:
        r = await h.client.post("/v1/vms", json={"template": "base"})
        assert r.status_code == 201
        assert r.json()["id"].startswith("vm-")
        assert len(r.headers["x-request-id"]) >= 16
        r = await h.client.get("/_ping", headers={"X-Request-Id": "bad id\twith junk"})
        assert r.text == "OK" and r.headers["x-request-id"] != "bad id\twith junk"

    run(t)


def test_illegal_transitions_409_with_state() -> None:
    async def t(h: Harness) -> None:
        c = h.client
        await c.post("/v1/vms", json=CREATE)
        for path in ["start", "resume"]:
            r = await c.post(f"/v1/vms/vm1/{path}")
            assert r.status_code == 409
            e = err(r)
            assert e["code"] == "failed_precondition"
            assert e["details"]["state"] == "running"
        r = await c.delete("/v1/vms/vm1")
        assert r.status_code == 409 and err(r)["details"]["state"] == "running"
        await c.post("/v1/vms/vm1/stop")
        for path in ["stop", "pause", "resume"]:
            r = await c.post(f"/v1/vms/vm1/{path}")
            assert r.status_code == 409 and err(r)["details"]["state"] == "stopped"

    run(t)


def test_force_delete_running() -> None:
    async def t(h: Harness) -> None:
        await h.client.post("/v1/vms", json=CREATE)
        r = await h.client.delete("/v1/vms/vm1?force=true")
        assert r.status_code == 204
        assert not h.fakes.nets and not h.fakes.disks and not h.fakes.jails
        assert h.registry.count() == 0

    run(t)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"template": "base", "vcpu_count": 0}, "vcpu_count"),
        ({"template": "base", "vcpu_count": 33}, "vcpu_count"),
        ({"template": "base", "mem_size_mib": 64}, "mem_size_mib"),
        ({"template": "base", "bogus": 1}, "bogus"),
        ({}, "template"),
        ({"template": "../etc"}, "template"),
        ({"template": "base", "id": "Bad_Id"}, "id"),
        ({"template": "base", "kernel_args": "a\nb"}, "kernel_args"),
        (
            {"template": "base", "port_mappings": [{"host_port": -1, "guest_port": 80}]},
            "port_mappings[0].host_port",
        ),
        (
            {"template": "base", "port_mappings": [{"host_port": 1, "guest_port": 0}]},
            "port_mappings[0].guest_port",
        ),
        (
            {"template": "base", "network_policy": {"peers": "yes"}},
            "network_policy.peers",
        ),
    ],
)
def test_bad_input_400_names_field(body: dict[str, Any], field: str) -> None:
    async def t(h: Harness) -> None:
        r = await h.client.post("/v1/vms", json=body)
        assert r.status_code == 400, r.text
        e = err(r)
        assert e["code"] == "invalid_argument"
        assert e["details"]["field"] == field
        assert h.fakes.calls == [] and h.registry.count() == 0

    run(t)


def test_config_limits() -> None:
    async def t(h: Harness) -> None:
        r = await h.client.post("/v1/vms", json={"template": "base", "vcpu_count": 4})
        assert r.status_code == 400 and err(r)["details"]["field"] == "vcpu_count"
        r = await h.client.post("/v1/vms", json={"template": "base", "mem_size_mib": 1024})
        assert r.status_code == 400 and err(r)["details"]["field"] == "mem_size_mib"
        r = await h.client.post("/v1/vms", json={"template": "base", "id": "a"})
        assert r.status_code == 201
        r = await h.client.post("/v1/vms", json={"template": "base", "id": "b"})
        assert r.status_code == 507 and err(r)["code"] == "resource_exhausted"

    run(t, limits=LimitsConfig(max_vcpu=2, max_mem_mib=512, max_vms=1))


def test_bad_query_and_unknown_ids() -> None:
    async def t(h: Harness) -> None:
        r = await h.client.get("/v1/vms?state=bogus")
        assert r.status_code == 400 and err(r)["details"]["field"] == "state"
        r = await h.client.get("/v1/vms?label=nokv")
        assert r.status_code == 400 and err(r)["details"]["field"] == "label"
        for method, path in [
            ("GET", "/v1/vms/nope"),
            ("POST", "/v1/vms/nope/start"),
            ("DELETE", "/v1/vms/nope"),
            ("DELETE", "/v1/vms/nope?force=true"),
        ]:
            r = await h.client.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert err(r)["code"] == "not_found"
        r = await h.client.get("/v1/vms/NOT_AN_ID")
        assert r.status_code == 400 and err(r)["details"]["field"] == "id"
        r = await h.client.get("/no/such/route")
        assert r.status_code == 404 and err(r)["code"] == "not_found"

    run(t)


def test_idempotent_create_and_conflict() -> None:
    async def t(h: Harness) -> None:
        r1 = await h.client.post("/v1/vms", json=CREATE)
        assert r1.status_code == 201
        n = len(h.fakes.calls)
        r2 = await h.client.post("/v1/vms", json=CREATE)
        assert r2.status_code == 200 and r2.json() == r1.json()
        assert len(h.fakes.calls) == n  # no helper was called again
        r3 = await h.client.post("/v1/vms", json={**CREATE, "vcpu_count": 1})
        assert r3.status_code == 409
        e = err(r3)
        assert e["code"] == "conflict" and e["details"]["state"] == "running"

    run(t)


def test_concurrent_creates_same_id_serialize() -> None:
    async def t(h: Harness) -> None:
        rs = await asyncio.gather(*(h.client.post("/v1/vms", json=CREATE) for _ in range(5)))
        assert sorted(r.status_code for r in rs) == [200, 200, 200, 200, 201]
        assert h.fakes.tags().count("vmm.launch") == 1

    run(t)


def test_unknown_template_404_nothing_allocated() -> None:
    async def t(h: Harness) -> None:
        r = await h.client.post("/v1/vms", json={"template": "nope", "id": "vm1"})
        assert r.status_code == 404 and err(r)["code"] == "not_found"
        assert h.fakes.tags() == ["storage.template_get"]
        assert h.registry.count() == 0

    run(t)


def test_storage_failure_undoes_net_and_jail() -> None:
    async def t(h: Harness) -> None:
        h.fakes.fail["storage.provision"] = ResourceExhausted("disk full", details={"free": 0})
        r = await h.client.post("/v1/vms", json=CREATE)
        assert r.status_code == 507
        e = err(r)
        assert e["code"] == "resource_exhausted" and e["message"] == "disk full"
        tags = h.fakes.tags("vm1")
        assert {"net.teardown", "vmm.release"} <= set(tags)
        # undos in reverse order of the steps
        assert tags[-3:] == ["net.teardown", "storage.release", "vmm.release"]
        assert not h.fakes.nets and not h.fakes.jails and not h.fakes.disks
        assert h.registry.count() == 0
        assert (await h.client.get("/v1/vms/vm1")).status_code == 404
        # and the same id can be created afterwards
        del h.fakes.fail["storage.provision"]
        assert (await h.client.post("/v1/vms", json=CREATE)).status_code == 201

    run(t)


def test_launch_failure_undoes_all_three() -> None:
    async def t(h: Harness) -> None:
        h.fakes.fail["vmm.launch"] = FirecrackerError("InstanceStart: bad kernel")
        r = await h.client.post("/v1/vms", json=CREATE)
        assert r.status_code == 502 and err(r)["code"] == "firecracker_error"
        tags = h.fakes.tags("vm1")
        assert tags[tags.index("vmm.launch") + 1 :] == [
            "net.teardown",
            "storage.release",
            "vmm.release",
        ]
        assert not h.fakes.nets and not h.fakes.jails and not h.fakes.disks
        assert h.registry.count() == 0

    run(t)


def test_failed_undo_leaves_error_row_then_delete_finishes() -> None:
    async def t(h: Harness) -> None:
        h.fakes.fail["vmm.launch"] = FirecrackerError("boom")
        h.fakes.fail["net.teardown"] = Unavailable("fcd-net is down")
        r = await h.client.post("/v1/vms", json=CREATE)
        assert r.status_code == 502 and err(r)["code"] == "firecracker_error"
        vm = (await h.client.get("/v1/vms/vm1")).json()
        assert vm["state"] == "error"
        assert "create failed: firecracker_error: boom" in vm["error"]
        assert "net.teardown: unavailable: fcd-net is down" in vm["error"]
        # the other undos still ran
        assert not h.fakes.jails and not h.fakes.disks
        r = await h.client.delete("/v1/vms/vm1")
        assert r.status_code == 503 and err(r)["code"] == "unavailable"
        # fcd-net unreachable: still deleting (reconciliation or a repeat finishes it)
        assert (await h.client.get("/v1/vms/vm1")).json()["state"] == "deleting"
        del h.fakes.fail["net.teardown"]
        assert (await h.client.delete("/v1/vms/vm1")).status_code == 204
        assert not h.fakes.nets and h.registry.count() == 0

    run(t)


def test_delete_releases_network_and_storage_together_and_a_refusal_wins() -> None:
    """After the jail, net and storage are released concurrently: one failing does not
    keep the other from running; a refusal leaves ``error``, an unreachable helper
    alone ``deleting``; a repeat finishes the delete."""

    async def t(h: Harness) -> None:
        await h.client.post("/v1/vms", json=CREATE)
        h.fakes.fail["net.teardown"] = Unavailable("fcd-net is down")
        h.fakes.fail["storage.release"] = Internal("disk stuck")
        r = await h.client.delete("/v1/vms/vm1", params={"force": "true"})
        assert r.status_code == 500 and err(r)["message"] == "disk stuck"
        vm = (await h.client.get("/v1/vms/vm1")).json()
        assert vm["state"] == "error" and "delete (storage.release)" in vm["error"]
        assert not h.fakes.jails  # the jail went first
        del h.fakes.fail["storage.release"]
        r = await h.client.delete("/v1/vms/vm1")
        assert r.status_code == 503 and err(r)["code"] == "unavailable"
        assert not h.fakes.disks  # released although fcd-net was unreachable
        assert (await h.client.get("/v1/vms/vm1")).json()["state"] == "deleting"
        del h.fakes.fail["net.teardown"]
        assert (await h.client.delete("/v1/vms/vm1")).status_code == 204
        assert not h.fakes.nets and h.registry.count() == 0

    run(t)


def test_lifecycle_failure_marks_error() -> None:
    async def t(h: Harness) -> None:
        await h.client.post("/v1/vms", json=CREATE)
        h.fakes.fail["vmm.pause"] = Internal("pause exploded")
        r = await h.client.post("/v1/vms/vm1/pause")
        assert r.status_code == 500 and err(r)["message"] == "pause exploded"
        vm = (await h.client.get("/v1/vms/vm1")).json()
        assert vm["state"] == "error" and "pause failed" in vm["error"]
        assert (await h.client.delete("/v1/vms/vm1")).status_code == 204

    run(t)


def test_operations_on_one_vm_serialize() -> None:
    async def t(h: Harness) -> None:
        gate = h.fakes.block["vmm.launch"] = asyncio.Event()
        create = asyncio.create_task(h.client.post("/v1/vms", json=CREATE))
        await asyncio.wait_for(h.fakes.arrived("vmm.launch").wait(), 5)
        vm = (await h.client.get("/v1/vms/vm1")).json()
        assert vm["state"] == "starting"  # reads do not wait for the lock
        stop = asyncio.create_task(h.client.post("/v1/vms/vm1/stop"))
        await asyncio.sleep(0.05)
        assert not stop.done()  # waits for the create to finish
        gate.set()
        assert (await create).status_code == 201
        r = await stop
        assert r.status_code == 200 and r.json()["state"] == "stopped"

    run(t)


def test_openapi_version_ping() -> None:
    async def t(h: Harness) -> None:
        r = await h.client.get("/openapi.json")
        assert r.status_code == 200
        doc = r.json()
        assert doc["openapi"].startswith("3.")
        assert {"/v1/vms", "/v1/vms/{vm_id}", "/v1/vms/{vm_id}/start"} <= set(doc["paths"])
        assert (await h.client.get("/version")).json()["api_version"] == "v1"
        assert (await h.client.get("/_ping")).text == "OK"

    run(t)


def test_kernel_args_join() -> None:
    assert join_kernel_args("console=ttyS0", "") == "console=ttyS0"
    assert join_kernel_args(" a ", " b ") == "a b"
    assert join_kernel_args("", "") == ""


def test_combined_kernel_args_limit_checked_before_allocating() -> None:
    async def t(h: Harness) -> None:
        body = {"template": "base", "id": "vm1", "kernel_args": "x" * 1010}
        r = await h.client.post("/v1/vms", json=body)
        assert r.status_code == 400, r.text
        assert err(r)["details"]["field"] == "kernel_args"
        assert h.fakes.tags() == ["storage.template_get"] and h.registry.count() == 0
        r = await h.client.post("/v1/vms", json={**body, "kernel_args": "x" * 1025})
        assert r.status_code == 400 and err(r)["details"]["field"] == "kernel_args"

    run(t)


def test_launch_request_needs_every_runtime_field() -> None:
    from fcd_api.models import CreateVMRequest, Runtime, VmRecord, VMState
    from fcd_api.plan import launch_request
    from tests.launches import make_launch

    spec = CreateVMRequest(id="a", template="base", vcpu_count=2, kernel_args="quiet")
    flat = make_launch(
        vm_id="a",
        vcpu_count=1,
        mem_size_mib=128,
        kernel_args="",
        kernel_path="/k",
        rootfs_path="/r",
        tap="fcx",
        mac="06:00:0a:00:00:02",
        ip="10.0.0.2",
        gateway="10.0.0.1",
        prefix_len=24,
    )
    rt = Runtime(disk=flat.disk, net=flat.net, template_kernel_args="console=ttyS0")
    rec = VmRecord(
        id="a", spec=spec, state=VMState.STOPPED, runtime=rt, created_at="t", updated_at="t"
    )
    req = launch_request(rec)
    assert (req.vcpu_count, req.kernel_args, req.net.tap, req.net.prefix_len) == (
        2,
        "console=ttyS0 quiet",
        "fcx",
        24,
    )
    with pytest.raises(Internal):
        launch_request(
            VmRecord(id="a", spec=spec, state=VMState.STOPPED, created_at="t", updated_at="t")
        )


def test_an_unreachable_helper_leaves_the_vm_as_it_was_with_a_503() -> None:
    """#13: fcd-vmm briefly down; a pause then must not strand a healthy VM in error."""

    async def t(h: Harness) -> None:
        await h.client.post("/v1/vms", json=CREATE)
        down = Unavailable("cannot connect to fcd-vmm", details={"sent": False})
        for action, state in (("pause", "running"), ("stop", "running")):
            h.fakes.fail[f"vmm.{action}"] = down
            r = await h.client.post(f"/v1/vms/vm1/{action}")
            assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
            vm = (await h.client.get("/v1/vms/vm1")).json()
            assert (vm["state"], vm["error"]) == (state, None), vm
            del h.fakes.fail[f"vmm.{action}"]
        # a call that was sent and then lost may have happened: that stays an error
        h.fakes.fail["vmm.pause"] = Unavailable("fcd-vmm connection lost")
        r = await h.client.post("/v1/vms/vm1/pause")
        assert r.status_code == 503
        assert (await h.client.get("/v1/vms/vm1")).json()["state"] == "error"

    run(t)


def test_an_id_with_a_trailing_newline_is_refused_before_any_row_is_written() -> None:
    """#9 finding 4: msgspec matches patterns with re.search, so `$` let "evil\\n" pass;
    the shared types end in \\Z, and the decoder refuses it before the registry."""

    async def t(h: Harness) -> None:
        r = await h.client.post("/v1/vms", json={**CREATE, "id": "evil\n"})
        assert r.status_code == 400 and err(r)["details"]["field"] == "id", r.text
        assert h.registry.count() == 0 and h.fakes.tags() == []
        r = await h.client.post("/v1/storage/reclaim")
        assert r.status_code == 200, r.text  # nothing stuck in the registry to trip it

    run(t)
