"""PATCH /v1/vms/{id}/resources through fcd-api's app over fake helpers: what reaches
fcd-vmm, what the registry keeps, and that a refused change changes nothing (#11)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fcd_common.errors import BalloonInactive, Conflict
from fcd_common.proto import vmm as pvmm

from .api_fakes import Harness, api_harness


def run(t: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with api_harness() as h:
            await t(h)

    asyncio.run(main())


BODY = {
    "id": "vm1",
    "template": "base",
    "mem_size_mib": 256,
    "drives": [{"name": "data", "size_mib": 8}],
    "balloon": {"stats_interval_s": 1},
    "cpu_quota": 0.5,
    "rate_limits": {"root": {"ops": {"size": 100, "refill_time_ms": 1000}}},
}


def test_launch_carries_the_resource_spec() -> None:
    async def t(h: Harness) -> None:
        r = await h.client.post("/v1/vms", json={**BODY, "mem_target_mib": 200})
        assert r.status_code == 201, r.text
        launch = h.fakes.launches[-1]
        assert launch.cpu_quota == 0.5 and launch.balloon_mib == 56
        assert launch.balloon == pvmm.BalloonSpec(stats_interval_s=1)
        assert launch.rate_limits is not None and launch.rate_limits.root is not None

    run(t)


def test_live_update_goes_to_vmm_and_into_the_spec() -> None:
    async def t(h: Harness) -> None:
        assert (await h.client.post("/v1/vms", json=BODY)).status_code == 201
        r = await h.client.patch(
            "/v1/vms/vm1/resources",
            json={
                "cpu_quota": 1,
                "rate_limits": {"root": {"bandwidth": {"size": 9, "refill_time_ms": 9}}},
            },
        )
        assert r.status_code == 200, r.text
        assert h.fakes.tags("vm1")[-1] == "vmm.update_resources"
        spec = h.registry.require("vm1").spec
        assert spec.cpu_quota == 1
        assert spec.rate_limits is not None and spec.rate_limits.root is not None
        assert spec.rate_limits.root.ops is not None  # merged: the ops bucket stays
        assert spec.rate_limits.root.bandwidth is not None

    run(t)


def test_refused_change_changes_nothing() -> None:
    async def t(h: Harness) -> None:
        assert (await h.client.post("/v1/vms", json=BODY)).status_code == 201
        for err, code in (
            (BalloonInactive("the guest has no active balloon driver"), "balloon_inactive"),
            (Conflict("memory limit 128 MiB is below what VM vm1 uses now"), "conflict"),
        ):
            h.fakes.fail["vmm.update_resources"] = err
            r = await h.client.patch(
                "/v1/vms/vm1/resources", json={"mem_target_mib": 128, "mem_limit_mib": 128}
            )
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == code
            rec = h.registry.require("vm1")
            assert rec.state.value == "running" and rec.error is None
            assert (rec.spec.mem_target_mib, rec.spec.mem_limit_mib) == (None, None)

    run(t)


def test_sizes_only_on_a_stopped_vm_and_used_at_start() -> None:
    async def t(h: Harness) -> None:
        assert (await h.client.post("/v1/vms", json=BODY)).status_code == 201
        r = await h.client.patch("/v1/vms/vm1/resources", json={"vcpu_count": 2})
        assert r.status_code == 409 and "Stop the VM" in r.json()["error"]["message"]
        assert (await h.client.post("/v1/vms/vm1/stop")).status_code == 200
        n = len(h.fakes.calls)
        r = await h.client.patch("/v1/vms/vm1/resources", json={"vcpu_count": 2, "cpu_quota": 0})
        assert r.status_code == 200, r.text
        assert h.fakes.calls[n:] == []  # a stopped VM: nothing is sent anywhere
        assert (await h.client.post("/v1/vms/vm1/start")).status_code == 200
        launch = h.fakes.launches[-1]
        assert (launch.vcpu_count, launch.cpu_quota) == (2, None)
        r = await h.client.patch("/v1/vms/vm1/resources", json={})
        assert r.status_code == 400

    run(t)
