"""Resource changes, pure parts: API validation and merging, fcd-vmm's bodies, re-checks,
error mapping and cgroup values, and the fd walk that never follows a symlink (#11)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
import pytest

from fcd_api.models import CreateVMRequest
from fcd_api.resources_models import ResourcesUpdate
from fcd_api.resources_plan import (
    check_resource_spec,
    launch_resources,
    merge_limits,
    merge_update,
    size_change_refused,
    update_request,
)
from fcd_common.config import LimitsConfig
from fcd_common.errors import (
    HTTP_STATUS,
    BalloonInactive,
    FailedPrecondition,
    FirecrackerError,
    Internal,
    InvalidArgument,
    from_code,
)
from fcd_common.proto.vmm import (
    BalloonSpec,
    NetRateLimits,
    RateLimit,
    RateLimits,
    TokenBucket,
    UpdateResources,
)
from fcd_vmm import cgroup_limits, plan, resources
from fcd_vmm.cgroups import Mount
from fcd_vmm.fcclient import FirecrackerClient
from fcd_vmm.uidpool import JailRecord

from ..launches import drive
from .test_vmm_plan import launch_req, make_cfg

B = TokenBucket


def spec(**kw: object) -> CreateVMRequest:
    return msgspec.convert({"id": "vm-1", "template": "t", **kw}, CreateVMRequest)


# --- the API: validation names the field ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"rate_limits": {"drives": {"nope": {"ops": {"size": 1, "refill_time_ms": 1}}}}},
            "rate_limits.drives.nope",
        ),
        (
            {"rate_limits": {"root": {"bandwidth": {"size": 5, "refill_time_ms": 0}}}},
            "rate_limits.root.bandwidth",
        ),
        (
            {"rate_limits": {"net": {"tx": {"ops": {"size": 0, "refill_time_ms": 9}}}}},
            "rate_limits.net.tx.ops",
        ),
        ({"mem_target_mib": 64}, "mem_target_mib"),
        ({"mem_target_mib": 512, "balloon": {}}, "mem_target_mib"),
        ({"cpu_quota": 40.0}, "cpu_quota"),
    ],
)
def test_spec_errors_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_resource_spec(spec(**body), LimitsConfig())
    assert e.value.details["field"] == field
    assert field in e.value.message


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"cpu_quota": 0}, "$.cpu_quota"),
        ({"cpu_quota": 65}, "$.cpu_quota"),
        (
            {"rate_limits": {"root": {"ops": {"size": -1, "refill_time_ms": 1}}}},
            "$.rate_limits.root.ops.size",
        ),
        (
            {"rate_limits": {"root": {"ops": {"size": 1, "refill_time_ms": 86_400_001}}}},
            "$.rate_limits.root.ops.refill_time_ms",
        ),
        ({"balloon": {"stats_interval_s": 3601}}, "$.balloon.stats_interval_s"),
        ({"rate_limits": {"root": {"bw": {}}}}, "$.rate_limits.root"),
    ],
)
def test_decoder_rejects_out_of_range(body: dict[str, object], path: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=path.replace("$", r"\$")):
        spec(**body)


def test_valid_spec_goes_to_launch() -> None:
    s = spec(
        mem_size_mib=256,
        drives=[{"name": "data", "size_mib": 8}],
        rate_limits={"drives": {"data": {"ops": {"size": 1, "refill_time_ms": 1}}}},
        balloon={"deflate_on_oom": True},
        mem_target_mib=200,
        cpu_quota=0.5,
    )
    check_resource_spec(s, LimitsConfig())
    kw = launch_resources(s)
    assert kw["balloon_mib"] == 56
    assert kw["cpu_quota"] == 0.5
    assert kw["balloon"] == BalloonSpec(deflate_on_oom=True)


def test_merge_limits_is_firecrackers_patch_rule() -> None:
    old = RateLimits(
        root=RateLimit(bandwidth=B(size=1, refill_time_ms=1), ops=B(size=2, refill_time_ms=2)),
        drives={"data": RateLimit(ops=B(size=3, refill_time_ms=3))},
        net=NetRateLimits(tx=RateLimit(ops=B(size=4, refill_time_ms=4))),
    )
    upd = RateLimits(
        root=RateLimit(bandwidth=B(size=9, refill_time_ms=9)),  # replaces bw, ops stays
        drives={"data": RateLimit(ops=B(size=0, refill_time_ms=0))},  # removes the only one
        net=NetRateLimits(tx=RateLimit(ops=B(size=0, refill_time_ms=0))),
    )
    got = merge_limits(old, upd)
    assert got == RateLimits(
        root=RateLimit(bandwidth=B(size=9, refill_time_ms=9), ops=B(size=2, refill_time_ms=2))
    )
    assert (
        merge_limits(
            got,
            RateLimits(
                root=RateLimit(
                    bandwidth=B(size=0, refill_time_ms=0), ops=B(size=0, refill_time_ms=0)
                )
            ),
        )
        is None
    )
    assert merge_limits(None, None) is None


def test_size_change_refused_while_running_only_if_it_changes() -> None:
    s = spec(vcpu_count=1)
    size_change_refused(s, ResourcesUpdate(vcpu_count=1), "running")  # same value: fine
    with pytest.raises(FailedPrecondition, match="Stop the VM") as e:
        size_change_refused(s, ResourcesUpdate(vcpu_count=2), "running")
    assert e.value.details == {"field": "vcpu_count", "state": "running"}
    assert HTTP_STATUS[e.value.code] == 409


def test_update_merges_into_spec_and_asks_only_what_changed() -> None:
    s = spec(balloon={}, mem_size_mib=256, cpu_quota=1.0)
    upd = ResourcesUpdate(cpu_quota=0, mem_target_mib=128)
    new = merge_update(s, upd)
    assert (new.cpu_quota, new.mem_target_mib) == (None, 128)
    req = update_request("vm-1", new, upd)
    assert req == UpdateResources(vm_id="vm-1", balloon_mib=128, cpu_quota=0)


def test_balloon_inactive_is_a_409_that_crosses_rpc() -> None:
    err = from_code("balloon_inactive", "no driver")
    assert isinstance(err, BalloonInactive)
    assert HTTP_STATUS["balloon_inactive"] == 409


# --- fcd-vmm: bodies, re-checks, error mapping -------------------------------------------


def test_configure_calls_carry_limiters_and_balloon(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    storage = cfg.state("storage")
    req = launch_req(
        cfg,
        drives=[drive(str(storage / "disks" / "vm-1" / "drive-data.ext4"))],
        rate_limits=RateLimits(
            root=RateLimit(bandwidth=B(size=10, refill_time_ms=100, one_time_burst=5)),
            drives={"data": RateLimit(ops=B(size=7, refill_time_ms=70))},
            net=NetRateLimits(rx=RateLimit(bandwidth=B(size=1, refill_time_ms=1))),
        ),
        balloon=BalloonSpec(deflate_on_oom=True, stats_interval_s=2),
        balloon_mib=16,
    )
    calls = {c.path: c.body for c in plan.configure_calls(plan.LaunchSpec(req=req, tap="t"))}
    assert calls["/drives/rootfs"]["rate_limiter"] == {
        "bandwidth": {"size": 10, "refill_time": 100, "one_time_burst": 5}
    }
    assert calls["/drives/data"]["rate_limiter"] == {"ops": {"size": 7, "refill_time": 70}}
    assert calls["/network-interfaces/eth0"]["rx_rate_limiter"] == {
        "bandwidth": {"size": 1, "refill_time": 1}
    }
    assert "tx_rate_limiter" not in calls["/network-interfaces/eth0"]
    assert calls["/balloon"] == {
        "amount_mib": 16,
        "deflate_on_oom": True,
        "stats_polling_interval_s": 2,
    }
    paths = [c.path for c in plan.configure_calls(plan.LaunchSpec(req=req, tap="t"))]
    assert paths.index("/balloon") < paths.index("/actions")


def test_launch_recheck(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    bad = launch_req(
        cfg, rate_limits=RateLimits(drives={"other": RateLimit(ops=B(size=1, refill_time_ms=1))})
    )
    with pytest.raises(InvalidArgument, match=r"rate_limits\.drives\.other"):
        resources.check_launch_resources(bad, cfg)
    with pytest.raises(InvalidArgument, match="balloon_mib"):
        resources.check_launch_resources(launch_req(cfg, balloon_mib=8), cfg)
    with pytest.raises(InvalidArgument, match="balloon_mib"):
        resources.check_launch_resources(
            launch_req(cfg, balloon=BalloonSpec(), balloon_mib=257), cfg
        )


def test_update_recheck_against_the_launch_record(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    rec = JailRecord(vm_id="vm-1", uid=1, gid=1, mem_size_mib=256, drives=["data"], balloon=True)
    resources.check_update(
        UpdateResources(
            vm_id="vm-1",
            balloon_mib=256,
            rate_limits=RateLimits(drives={"data": RateLimit()}),
        ),
        rec,
        cfg,
    )
    with pytest.raises(InvalidArgument, match=r"drives\.x"):
        resources.check_update(
            UpdateResources(vm_id="vm-1", rate_limits=RateLimits(drives={"x": RateLimit()})),
            rec,
            cfg,
        )
    with pytest.raises(InvalidArgument, match="balloon_mib"):
        resources.check_update(UpdateResources(vm_id="vm-1", balloon_mib=257), rec, cfg)
    with pytest.raises(InvalidArgument, match="cpu_quota"):
        resources.check_update(UpdateResources(vm_id="vm-1", cpu_quota=33), rec, cfg)
    with pytest.raises(InvalidArgument, match="mem_limit_mib"):
        resources.check_update(UpdateResources(vm_id="vm-1", mem_limit_mib=1 << 30), rec, cfg)
    rec.balloon = False
    with pytest.raises(FailedPrecondition, match="without a balloon"):
        resources.check_update(UpdateResources(vm_id="vm-1", balloon_mib=1), rec, cfg)


@pytest.mark.parametrize(
    "fault",
    [
        "Balloon config error: Error creating the balloon device: DeviceNotActive",  # v1.7.0
        "Balloon update error: Balloon: Device not activated yet.",  # v1.14.2
    ],
)
def test_device_not_active_becomes_balloon_inactive(fault: str) -> None:
    e = FirecrackerError(f"PATCH /balloon: {fault}", details={"fault_message": fault})
    got = resources.balloon_error(e, "vm-1")
    assert isinstance(got, BalloonInactive)
    assert "no active balloon driver" in got.message


def test_rate_limit_calls_only_for_what_is_given() -> None:
    calls = resources.rate_limit_calls(
        RateLimits(
            drives={"data": RateLimit(ops=B(size=0, refill_time_ms=0)), "empty": RateLimit()},
            net=NetRateLimits(tx=RateLimit(bandwidth=B(size=5, refill_time_ms=1))),
        )
    )
    assert [(c.method, c.path, c.body) for c in calls] == [
        (
            "PATCH",
            "/drives/data",
            {"drive_id": "data", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}},
        ),
        (
            "PATCH",
            "/network-interfaces/eth0",
            {"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 5, "refill_time": 1}}},
        ),
    ]


def test_rate_limits_read_back_from_vm_config() -> None:
    cfg = {
        "drives": [
            {
                "drive_id": "rootfs",
                "rate_limiter": {
                    "bandwidth": {"size": 1, "one_time_burst": None, "refill_time": 2},
                    "ops": None,
                },
            },
            {"drive_id": "data", "rate_limiter": None},
        ],
        "network-interfaces": [
            {
                "iface_id": "eth0",
                "rx_rate_limiter": None,
                "tx_rate_limiter": {
                    "bandwidth": None,
                    "ops": {"size": 3, "one_time_burst": 4, "refill_time": 5},
                },
            }
        ],
    }
    assert resources.rate_limits_from_config(cfg) == RateLimits(
        root=RateLimit(bandwidth=B(size=1, refill_time_ms=2)),
        net=NetRateLimits(tx=RateLimit(ops=B(size=3, refill_time_ms=5, one_time_burst=4))),
    )


def test_client_never_patches_balloon_statistics(tmp_path: Path) -> None:
    async def go() -> None:
        async with FirecrackerClient(tmp_path / "none.sock") as fc:
            await fc.patch("/balloon/statistics", {"stats_polling_interval_s": 1})

    with pytest.raises(Internal, match="create only"):
        asyncio.run(go())


# --- cgroup values and the fd walk -------------------------------------------------------


def test_cgroup_values() -> None:
    assert cgroup_limits.cpu_quota_values(1, 0.5) == [
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "50000"),
    ]
    assert cgroup_limits.cpu_quota_values(1, None)[1] == ("cpu.cfs_quota_us", "-1")
    assert cgroup_limits.cpu_quota_values(2, 1.5) == [("cpu.max", "150000 100000")]
    assert cgroup_limits.cpu_quota_values(2, 0) == [("cpu.max", "max 100000")]
    assert cgroup_limits.cpu_quota_values(1, 0.001)[1][1] == "1000"  # the kernel's minimum
    assert cgroup_limits.parse_cpu(
        1, {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1"}
    ) == (None, 100000)
    assert cgroup_limits.parse_cpu(2, {"cpu.max": "25000 100000"}) == (0.25, 100000)
    assert cgroup_limits.parse_mem("max") is None
    assert cgroup_limits.parse_mem("9223372036854771712") is None
    assert cgroup_limits.parse_mem("1048576") == 1 << 20
    with pytest.raises(FailedPrecondition, match="cpu controller"):
        cgroup_limits.launch_values(2, 0.5, frozenset({"memory"}))
    assert cgroup_limits.launch_values(1, None, frozenset()) == []


def test_fd_walk_refuses_a_symlink_anywhere(tmp_path: Path) -> None:
    mount = Mount(tmp_path, "cgroup", frozenset({"cpu"}))
    (tmp_path / "fcd" / "vm-1").mkdir(parents=True)
    (tmp_path / "fcd" / "vm-1" / "cpu.cfs_quota_us").write_text("-1")
    with cgroup_limits.open_vm_cgroup(mount, "fcd", "vm-1") as fd:
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "fcd" / "vm-1"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "fcd" / "vm-2").symlink_to(elsewhere)
    with pytest.raises(Internal), cgroup_limits.open_vm_cgroup(mount, "fcd", "vm-2"):
        pass
    (tmp_path / "link").symlink_to(tmp_path / "fcd")
    with pytest.raises(Internal), cgroup_limits.open_vm_cgroup(mount, "link", "vm-1"):
        pass
    with (
        pytest.raises(FailedPrecondition, match="no cgroup"),
        cgroup_limits.open_vm_cgroup(mount, "fcd", "vm-9"),
    ):
        pass
    with pytest.raises(InvalidArgument), cgroup_limits.open_vm_cgroup(mount, "../x", "vm-1"):
        pass
    # the file itself is opened O_NOFOLLOW too
    os.unlink(tmp_path / "fcd" / "vm-1" / "cpu.cfs_quota_us")
    target = tmp_path / "victim"
    target.write_text("keep")
    (tmp_path / "fcd" / "vm-1" / "cpu.cfs_quota_us").symlink_to(target)
    (tmp_path / "fcd" / "vm-1" / "cpu.cfs_period_us").write_text("100000")
    with pytest.raises(Internal):
        cgroup_limits.apply_cpu_quota(1, "fcd", "vm-1", 0.5, mounts=[mount])
    assert target.read_text() == "keep"


def test_launch_cgroup_values_carry_limit_and_quota(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    v1 = frozenset({"cpu", "memory", "pids"})
    settings = plan.cgroup_settings(1, v1, 2, 256, 64, mem_limit_mib=512)
    assert ("memory.limit_in_bytes", str((512 + 64) << 20)) in settings
    settings += cgroup_limits.launch_values(1, 1.5, v1)
    argv = plan.jailer_argv(cfg, vm_id="vm-1", uid=1, gid=1, cgroup_version=1, cgroups=settings)
    assert "cpu.cfs_quota_us=150000" in argv and "cpu.cfs_period_us=100000" in argv
    assert plan.cgroup_settings(1, v1, 2, 256, 64)[1] == (
        "memory.limit_in_bytes",
        str((256 + 64) << 20),
    )
