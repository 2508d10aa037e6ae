"""Crash detection: fcd-vmm's exits reach the registry at once, without a request."""

from __future__ import annotations

import asyncio
import time

from fcd_api.supervise import ExitWatcher, describe_exit
from fcd_common.errors import Unavailable

from .api_fakes import Harness
from .test_api_flows import CREATE, run


async def _state(h: Harness, vm_id: str, want: str, within: float = 1.0) -> dict[str, object]:
    deadline = time.monotonic() + within
    while True:
        vm = (await h.client.get(f"/v1/vms/{vm_id}")).json()
        if vm["state"] == want or time.monotonic() > deadline:
            return dict(vm)
        await asyncio.sleep(0.01)


def test_a_killed_firecracker_is_error_within_a_second_and_a_shutdown_is_stopped() -> None:
    async def t(h: Harness) -> None:
        await h.client.post("/v1/vms", json=CREATE)
        await h.client.post("/v1/vms", json={**CREATE, "id": "vm2"})
        watcher = ExitWatcher(h.flows)
        watcher.start()
        try:
            t0 = time.monotonic()
            h.fakes.crash("vm1", -9, ["2026 [vm1:main:ERROR] something broke"])
            vm = await _state(h, "vm1", "error")
            assert vm["state"] == "error" and time.monotonic() - t0 < 1.0
            assert "SIGKILL (9)" in str(vm["error"]) and "something broke" in str(vm["error"])
            assert vm["pid"] is None
            h.fakes.crash("vm2", 0)
            vm = await _state(h, "vm2", "stopped")
            assert vm["state"] == "stopped" and vm["error"] is None and vm["stopped_at"]
            # error -> start works when the VM's parts are intact
            r = await h.client.post("/v1/vms/vm1/start")
            assert r.status_code == 200 and r.json()["state"] == "running"
        finally:
            await watcher.close()

    run(t)


def test_stale_exits_and_outages_change_nothing_and_an_epoch_change_resyncs() -> None:
    async def t(h: Harness) -> None:
        await h.client.post("/v1/vms", json=CREATE)
        old_pid = h.fakes.procs["vm1"].pid
        await h.client.post("/v1/vms/vm1/stop")
        await h.client.post("/v1/vms/vm1/start")  # a new process
        watcher = ExitWatcher(h.flows)
        assert not await watcher.apply("vm1", old_pid, -9, [])  # an older process: stale
        h.fakes.fail["vmm.watch_exits"] = Unavailable("fcd-vmm is restarting")
        watcher.start()
        try:
            await asyncio.sleep(0.3)
            assert (await h.client.get("/v1/vms/vm1")).json()["state"] == "running"
            # fcd-vmm comes back as a new process: the VM's Firecracker is gone meanwhile
            h.fakes.procs.pop("vm1")
            h.fakes.epoch = "e2"
            del h.fakes.fail["vmm.watch_exits"]
            vm = await _state(h, "vm1", "error", within=3.0)
            assert vm["state"] == "error" and "found at resync" in str(vm["error"])
        finally:
            await watcher.close()

    run(t)


def test_describe_exit() -> None:
    assert describe_exit(-9) == "Firecracker was killed by SIGKILL (9)"
    assert describe_exit(148) == "Firecracker exited with code 148"
    assert "unknown" in describe_exit(None)
