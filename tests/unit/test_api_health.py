"""Health checks, restart policies and readiness in fcd-api, over the fake helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from fcd_api import cli
from fcd_api.health import Tracker, step
from fcd_api.models import VMState
from fcd_api.recovery import backoff_delay, wants_restart
from fcd_api.supervision import Supervision
from fcd_api.supervision_models import (
    Effective,
    EffectivePolicy,
    Health,
    HealthCheck,
    RestartPolicy,
    effective_check,
    effective_policy,
)
from fcd_common.config import SupervisionConfig

from .api_fakes import Harness
from .test_api_flows import CREATE, err, run

FAST = SupervisionConfig(
    health_interval_s=0.02,
    health_timeout_s=0.5,
    restart_backoff_s=0.0,
    reconcile_interval_s=0.0,
)
CHECK = Effective("tcp", "80", interval_s=1, timeout_s=1, retries=3, start_period_s=10)


# --- pure rules ------------------------------------------------------------------------
def test_start_period_failures_do_not_count_and_a_success_ends_it() -> None:
    t = Tracker()
    t = step(t, False, 1.0, CHECK)
    assert t == Tracker(Health.STARTING, 0, True)
    t = step(t, True, 2.0, CHECK)
    assert t == Tracker(Health.HEALTHY, 0, False)
    # after a success the start period is over even though 10 s have not passed
    t = step(t, False, 3.0, CHECK)
    assert (t.health, t.failures) == (Health.HEALTHY, 1)


def test_retries_consecutive_failures_make_it_unhealthy_and_one_success_heals() -> None:
    t = Tracker()
    for n in (1, 2):
        t = step(t, False, 11.0 + n, CHECK)
        assert (t.health, t.failures) == (Health.STARTING, n)
    t = step(t, False, 14.0, CHECK)
    assert t.health is Health.UNHEALTHY
    assert step(t, True, 15.0, CHECK).health is Health.HEALTHY


def test_policies_and_backoff() -> None:
    assert not wants_restart("no", "crashed")
    assert wants_restart("on-failure", "crashed") and wants_restart("on-failure", "unhealthy")
    assert not wants_restart("on-failure", "halted")
    assert wants_restart("always", "halted")
    p = EffectivePolicy("always", 5, backoff_s=1.0, backoff_max_s=5.0)
    assert [backoff_delay(p, n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_defaults_come_from_the_config_and_the_spec_overrides_them() -> None:
    cfg = SupervisionConfig(health_check="api", health_retries=7, restart_mode="on-failure")
    e = effective_check(None, cfg)
    assert e is not None and (e.kind, e.retries, e.interval_s) == ("api", 7, 10.0)
    e = effective_check(HealthCheck(check="tcp:8080", interval_s=1), cfg)
    assert e is not None and (e.kind, e.port, e.retries, e.interval_s) == ("tcp", 8080, 7, 1)
    assert effective_check(None, SupervisionConfig()) is None
    p = effective_policy(RestartPolicy(mode="always", max_retries=1), cfg)
    assert (p.mode, p.max_retries, p.backoff_s) == ("always", 1, 1.0)
    assert effective_policy(None, cfg).mode == "on-failure"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"health_check": {"check": "tcp:0"}}, "health_check"),
        ({"health_check": {"check": "serial:("}}, "health_check"),
        ({"health_check": {"check": "ping"}}, "health_check.check"),
        ({"health_check": {"check": "api", "retries": 0}}, "health_check.retries"),
        ({"restart_policy": {"mode": "sometimes"}}, "restart_policy.mode"),
        ({"wait_for": "tcp:70000"}, "wait_for"),
        ({"wait_for": "api"}, "wait_for"),
        # the operator's limits.max_wait_timeout_s (600 s): no request held for an hour
        ({"wait_for": "tcp:22", "wait_timeout_s": 3600}, "wait_timeout_s"),
    ],
)
def test_bad_supervision_fields_are_400_naming_the_field(body: dict[str, Any], field: str) -> None:
    async def t(h: Harness) -> None:
        r = await h.client.post("/v1/vms", json={**CREATE, **body})
        assert r.status_code == 400, r.text
        e = err(r)
        assert e["code"] == "invalid_argument" and field in e["message"], e
        assert h.registry.count() == 0

    run(t)


# --- with the fake helpers ---------------------------------------------------------------
@asynccontextmanager
async def supervised(h: Harness, cfg: SupervisionConfig = FAST) -> AsyncIterator[Supervision]:
    sup = Supervision(h.flows, cfg)
    sup.start()
    try:
        yield sup
    finally:
        await sup.close()


async def until(h: Harness, vm_id: str, **want: Any) -> dict[str, Any]:
    """Poll GET until every field in ``want`` matches (generous limit: a loaded machine)."""
    deadline = time.monotonic() + 20
    while True:
        vm: dict[str, Any] = (await h.client.get(f"/v1/vms/{vm_id}")).json()
        if all(vm.get(k) == v for k, v in want.items()) or time.monotonic() > deadline:
            assert all(vm.get(k) == v for k, v in want.items()), (want, vm)
            return vm
        await asyncio.sleep(0.01)


def _body(**kw: Any) -> dict[str, Any]:
    return {
        **CREATE,
        "health_check": {"check": "tcp:80", "retries": 2, "start_period_s": 0},
        **kw,
    }


def test_tcp_check_fails_recovers_and_the_policy_gives_up() -> None:
    """A tcp: check going unhealthy (restart), healthy again (counter back to 0), then
    failing for good: after max_retries the VM is error with the reason."""

    async def t(h: Harness) -> None:
        body = _body(restart_policy={"mode": "on-failure", "max_retries": 2})
        assert (await h.client.post("/v1/vms", json=body)).status_code == 201
        h.fakes.tcp_up[("vm1", 80)] = True
        async with supervised(h):
            await until(h, "vm1", health="healthy")
            pid = h.fakes.procs["vm1"].pid
            h.fakes.tcp_up[("vm1", 80)] = False  # the guest's service dies
            vm = await until(h, "vm1", restarts=1, state="running")
            assert vm["pid"] != pid  # stop, then start: a fresh Firecracker
            assert h.fakes.tags("vm1")[-2:] == ["vmm.stop", "vmm.launch"] or "vmm.stop" in (
                h.fakes.tags("vm1")
            )
            launch = h.fakes.launches[-1]
            assert launch.net.ip == vm["ip_address"] and launch.disk.rootfs_path  # same parts
            h.fakes.tcp_up[("vm1", 80)] = True  # it comes back
            await until(h, "vm1", health="healthy", restarts=0)
            h.fakes.tcp_up[("vm1", 80)] = False  # and dies for good
            vm = await until(h, "vm1", state="error")
            assert "gave up after 2 attempt(s)" in vm["error"], vm
            assert "health check failed" in vm["error"] and vm["pid"] is None
            assert vm["health"] is None and "vm1" not in h.fakes.procs

    run(t)


def test_no_policy_only_marks_unhealthy() -> None:
    async def t(h: Harness) -> None:
        assert (await h.client.post("/v1/vms", json=_body())).status_code == 201
        async with supervised(h):
            vm = await until(h, "vm1", health="unhealthy")
            assert vm["state"] == "running" and vm["restarts"] == 0
            assert h.fakes.tags("vm1").count("vmm.launch") == 1

    run(t)


def test_crash_is_started_again_with_on_failure_and_a_halt_only_with_always() -> None:
    async def t(h: Harness) -> None:
        for vm_id, mode in (("a", "on-failure"), ("b", "on-failure"), ("c", "always")):
            body = {**CREATE, "id": vm_id, "restart_policy": {"mode": mode}}
            assert (await h.client.post("/v1/vms", json=body)).status_code == 201
        async with supervised(h):
            h.fakes.crash("a", -9)
            vm = await until(h, "a", state="running", restarts=1)
            assert vm["error"] is None
            h.fakes.crash("b", 0)  # the guest shut down: on-failure leaves it stopped
            h.fakes.crash("c", 0)  # always: started again
            await until(h, "c", state="running", restarts=1)
            await until(h, "b", state="stopped")
            await asyncio.sleep(0.2)
            assert (await h.client.get("/v1/vms/b")).json()["state"] == "stopped"

    run(t)


def test_mode_no_leaves_a_crashed_vm_in_error() -> None:
    async def t(h: Harness) -> None:
        body = {**CREATE, "restart_policy": {"mode": "no"}}
        assert (await h.client.post("/v1/vms", json=body)).status_code == 201
        async with supervised(h):
            h.fakes.crash("vm1", -11)
            vm = await until(h, "vm1", state="error")
            await asyncio.sleep(0.2)
            assert (await h.client.get("/v1/vms/vm1")).json()["state"] == "error"
            assert "SIGSEGV" in vm["error"] and h.fakes.tags("vm1").count("vmm.launch") == 1

    run(t)


def test_a_start_that_keeps_failing_ends_in_error_after_max_retries() -> None:
    async def t(h: Harness) -> None:
        body = {**CREATE, "restart_policy": {"mode": "on-failure", "max_retries": 3}}
        assert (await h.client.post("/v1/vms", json=body)).status_code == 201
        from fcd_common.errors import FirecrackerError

        h.fakes.fail["vmm.launch"] = FirecrackerError("boot failed")
        async with supervised(h):
            h.fakes.crash("vm1", -9)
            vm = await until(h, "vm1", state="error", restarts=3)
            vm = await until(h, "vm1", state="error", restarts=3)
            deadline = time.monotonic() + 20
            while "gave up" not in (vm["error"] or "") and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
                vm = (await h.client.get("/v1/vms/vm1")).json()
            assert "gave up after 3 attempt(s)" in vm["error"] and "boot failed" in vm["error"]
            assert h.fakes.tags("vm1").count("vmm.launch") == 4  # the create's + 3 attempts

    run(t)


def test_a_client_stop_calls_off_a_pending_restart() -> None:
    async def t(h: Harness) -> None:
        body = {**CREATE, "restart_policy": {"mode": "always", "backoff": 0.5}}
        assert (await h.client.post("/v1/vms", json=body)).status_code == 201
        async with supervised(h):
            h.fakes.crash("vm1", -9)
            await until(h, "vm1", state="error")
            assert (await h.client.post("/v1/vms/vm1/start")).status_code == 200
            assert (await h.client.post("/v1/vms/vm1/stop")).status_code == 200
            await asyncio.sleep(1.0)  # past the backoff: the attempt sees a changed VM
            vm = (await h.client.get("/v1/vms/vm1")).json()
            assert vm["state"] == "stopped" and vm["restarts"] == 0

    run(t)


# --- readiness ------------------------------------------------------------------------
def test_wait_for_tcp_answers_running_only_once_the_guest_accepts() -> None:
    async def t(h: Harness) -> None:
        async with supervised(h):

            async def guest_comes_up() -> None:
                await h.fakes.arrived("vmm.launch").wait()
                await asyncio.sleep(0.3)
                vm = (await h.client.get("/v1/vms/vm1")).json()
                assert vm["state"] == "starting" and vm["pid"] is not None
                h.fakes.tcp_up[("vm1", 22)] = True

            up = asyncio.create_task(guest_comes_up())
            r = await h.client.post("/v1/vms", json={**CREATE, "wait_for": "tcp:22"})
            await up
            assert r.status_code == 201 and r.json()["state"] == "running", r.text

    run(t)


def test_wait_for_timeout_fails_the_create_cleanly_and_a_start_leaves_error() -> None:
    async def t(h: Harness) -> None:
        async with supervised(h):
            body = {**CREATE, "wait_for": "tcp:22", "wait_timeout_s": 0.5}
            r = await h.client.post("/v1/vms", json=body)
            assert r.status_code == 504, r.text
            e = err(r)
            assert e["code"] == "deadline_exceeded" and "tcp:22" in e["message"], e
            assert "Connection refused" in e["message"]
            assert h.registry.get("vm1") is None
            assert not (h.fakes.jails or h.fakes.nets or h.fakes.disks or h.fakes.procs)

            h.fakes.tcp_up[("vm1", 22)] = True
            assert (await h.client.post("/v1/vms", json=body)).status_code == 201
            assert (await h.client.post("/v1/vms/vm1/stop")).status_code == 200
            h.fakes.tcp_up[("vm1", 22)] = False
            r = await h.client.post("/v1/vms/vm1/start")
            assert r.status_code == 504, r.text
            vm = (await h.client.get("/v1/vms/vm1")).json()
            assert vm["state"] == "error" and "vm1" not in h.fakes.procs and vm["pid"] is None
            assert h.fakes.stops[-1].force  # killed, not left half-started

    run(t)


def test_wait_for_a_guest_that_dies_fails_at_once() -> None:
    async def t(h: Harness) -> None:
        async with supervised(h):

            async def dies() -> None:
                await h.fakes.arrived("vmm.launch").wait()
                await asyncio.sleep(0.1)
                h.fakes.procs.pop("vm1")

            task = asyncio.create_task(dies())
            body = {**CREATE, "wait_for": "tcp:22", "wait_timeout_s": 60}
            r = await h.client.post("/v1/vms", json=body)
            await task
            assert r.status_code == 409 and "ended before it was ready" in r.text, r.text
            assert h.registry.get("vm1") is None

    run(t)


def test_health_shows_in_fcctl_ls() -> None:
    cols = {c.header: c for c in cli._vm_columns(datetime.now(UTC))}
    assert cols["HEALTH"].cell({"id": "a", "health": "healthy"}) == "healthy"
    assert cols["HEALTH"].cell({"id": "b", "health": None}) == "-"


def test_a_restart_pending_when_fcd_api_went_down_is_taken_up_at_its_start() -> None:
    async def t(h: Harness) -> None:
        body = {**CREATE, "restart_policy": {"mode": "on-failure", "max_retries": 2}}
        assert (await h.client.post("/v1/vms", json=body)).status_code == 201
        await h.client.post("/v1/vms", json={**CREATE, "id": "manual"})
        # recorded by an fcd-api that died before restarting it
        rec = h.registry.require("vm1")
        h.fakes.procs.pop("vm1")
        h.registry.update(
            msgspec.structs.replace(
                rec, state=VMState.ERROR, error="Firecracker was killed by SIGKILL (9)"
            )
        )
        async with supervised(h):
            await until(h, "vm1", state="running", restarts=1)
        assert (await h.client.get("/v1/vms/manual")).json()["restarts"] == 0

    run(t)


def test_wait_for_serial_counts_only_lines_of_this_boot() -> None:
    async def t(h: Harness) -> None:
        async with supervised(h):

            async def boots() -> None:
                await h.fakes.arrived("vmm.launch").wait()
                await asyncio.sleep(0.2)
                h.fakes.print_line("vm1", "fcd-guest: hello")

            task = asyncio.create_task(boots())
            body = {**CREATE, "wait_for": "serial:guest: hel+o$", "wait_timeout_s": 30}
            r = await h.client.post("/v1/vms", json=body)
            await task
            assert r.status_code == 201 and r.json()["state"] == "running", r.text
            assert (await h.client.post("/v1/vms/vm1/stop")).status_code == 200
            # the line of the previous boot does not make the next start ready
            h.fakes.fail.clear()
            body_start = h.registry.require("vm1").spec
            assert body_start.wait_for == "serial:guest: hel+o$"
            rec = h.registry.require("vm1")
            h.registry.update(
                msgspec.structs.replace(
                    rec, spec=msgspec.structs.replace(rec.spec, wait_timeout_s=0.5)
                )
            )
            r = await h.client.post("/v1/vms/vm1/start")
            assert r.status_code == 504 and "no console line matching" in r.text, r.text

    run(t)


def test_serial_health_check_wants_a_line_per_interval() -> None:
    async def t(h: Harness) -> None:
        body = {
            **CREATE,
            "health_check": {"check": "serial:heartbeat", "interval_s": 0.1, "retries": 2},
        }
        assert (await h.client.post("/v1/vms", json=body)).status_code == 201
        beating = True

        async def heart() -> None:
            while beating:
                h.fakes.print_line("vm1", "heartbeat")
                await asyncio.sleep(0.03)

        task = asyncio.create_task(heart())
        async with supervised(h, msgspec.structs.replace(FAST, health_timeout_s=0.05)):
            await until(h, "vm1", health="healthy")
            beating = False
            await task
            await until(h, "vm1", health="unhealthy")

    run(t)
