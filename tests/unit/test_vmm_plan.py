"""fcd-vmm pure parts: uid pool, jail plan (paths, jailer argv, cgroups, API bodies),
argument re-checks, Firecracker client error mapping, inotify waits. No root needed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import msgspec
import pytest

from fcd_common import config, storelayout
from fcd_common.errors import (
    FirecrackerError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from fcd_common.ids import tap_name
from fcd_common.proto.vmm import Launch, SnapshotFiles
from fcd_vmm import cgroups, checks, plan
from fcd_vmm.fcclient import FirecrackerClient, fault_text
from fcd_vmm.pathwait import Aborted, wait_for_path
from fcd_vmm.uidpool import UidPool, pick_uid, stored_records

from ..launches import make_launch

VM = "vm-1"


def make_cfg(tmp: Path, **jail_kw: object) -> config.Config:
    return config.Config(
        paths=config.PathsConfig(
            state_dir=str(tmp / "state"), run_dir=str(tmp / "run"), chroot_base=str(tmp / "jail")
        ),
        jail=config.JailConfig(
            firecracker="/opt/fc/firecracker",
            jailer="/opt/fc/jailer",
            uid_min=900_000,
            uid_max=900_009,
            parent_cgroup="fcd",
            **jail_kw,  # type: ignore[arg-type]
        ),
    )


def launch_req(cfg: config.Config, **kw: object) -> Launch:
    storage = cfg.state("storage")
    base: dict[str, object] = {
        "vm_id": VM,
        "vcpu_count": 2,
        "mem_size_mib": 256,
        "kernel_path": str(storage / "templates" / "t1" / "vmlinux"),
        "rootfs_path": str(storage / "disks" / VM / "rootfs.ext4"),
        "kernel_args": "quiet init=/sbin/init",
        "tap": tap_name(VM, cfg.network.tap_prefix),
        "mac": "06:00:ac:1e:00:02",
        "ip": "172.30.0.2",
        "gateway": "172.30.0.1",
        "prefix_len": 16,
    }
    base.update(kw)
    return make_launch(**base)


# --- uid pool ------------------------------------------------------------------------------


def test_pick_uid_lowest_free_from_start_and_wraps() -> None:
    assert pick_uid([], 10, 12) == 10
    assert pick_uid([10, 11], 10, 12) == 12
    assert pick_uid([10, 11, 12], 10, 12) is None
    assert pick_uid([], 10, 12, start=12) == 12
    assert pick_uid([12], 10, 12, start=12) == 10  # wraps around
    assert pick_uid([], 10, 12, start=99) == 10  # start outside the range is ignored


def test_pool_allocates_distinct_uid_equals_gid(tmp_path: Path) -> None:
    pool = UidPool(tmp_path, 100, 109, max_vms=50)
    pool.load()
    recs = [pool.allocate(f"vm-{i}") for i in range(10)]
    uids = [r.uid for r in recs]
    assert len(set(uids)) == 10
    assert all(100 <= u <= 109 and r.gid == u for u, r in zip(uids, recs, strict=True))


def test_pool_churn_matches_a_pick_from_the_records(tmp_path: Path) -> None:
    """The pool's own set of uids (kept instead of rebuilt per pick) never drifts from
    its records: every allocation, across releases, failures and a reload, is what a
    pick over the records themselves would give."""
    import random

    rng = random.Random(7)
    pool = UidPool(tmp_path, 100, 139, max_vms=100)
    pool.load()
    alive: list[str] = []
    for step in range(600):
        if step == 300:
            pool = UidPool(tmp_path, 100, 139, max_vms=100)
            pool.load()
        if alive and (len(alive) >= 40 or rng.random() < 0.45):
            pool.release(alive.pop(rng.randrange(len(alive))))
            continue
        expected = pick_uid([r.uid for r in pool], 100, 139, pool._next)
        vm_id = f"vm-{step}"
        rec = pool.allocate(vm_id)
        alive.append(vm_id)
        assert rec.uid == expected
    assert sorted(r.uid for r in pool) == sorted(pool._uids)


def test_pool_is_idempotent(tmp_path: Path) -> None:
    pool = UidPool(tmp_path, 100, 109, max_vms=50)
    pool.load()
    a = pool.allocate("vm-a")
    assert pool.allocate("vm-a") is a
    assert len(pool) == 1


def test_pool_exhaustion_and_vm_limit(tmp_path: Path) -> None:
    pool = UidPool(tmp_path, 100, 101, max_vms=50)
    pool.load()
    pool.allocate("a")
    pool.allocate("b")
    with pytest.raises(ResourceExhausted, match="exhausted"):
        pool.allocate("c")
    pool.release("a")
    assert pool.allocate("c").uid == 100  # the freed uid is reused only when needed
    small = UidPool(tmp_path / "x", 100, 199, max_vms=1)
    small.load()
    small.allocate("a")
    with pytest.raises(ResourceExhausted, match="limit"):
        small.allocate("b")


def test_pool_does_not_reuse_a_just_freed_uid_while_others_are_free(tmp_path: Path) -> None:
    pool = UidPool(tmp_path, 100, 109, max_vms=50)
    pool.load()
    first = pool.allocate("a").uid
    pool.release("a")
    assert pool.allocate("b").uid != first


def test_pool_persists_and_reloads(tmp_path: Path) -> None:
    pool = UidPool(tmp_path, 100, 109, max_vms=50)
    pool.load()
    a = pool.allocate("vm-a")
    b = pool.allocate("vm-b")
    b.pid, b.state = 4242, "running"
    pool.save(b)
    last = (tmp_path / "jails.log").read_bytes().splitlines()[-1]
    assert json.loads(last) == [
        "vm-b",
        {
            "vm_id": "vm-b",
            "uid": b.uid,
            "gid": b.uid,
            "pid": 4242,
            "state": "running",
            "exit_code": None,
            "acl_files": [],
            "mem_size_mib": None,
            "drives": [],
            "balloon": False,
        },
    ]
    assert stored_records(tmp_path) == {"vm-a": a, "vm-b": b}
    assert os.listdir(tmp_path) == ["jails.log"]  # one file, no per-VM or temp files
    again = UidPool(tmp_path, 100, 109, max_vms=50)
    again.load()
    assert again.get("vm-a") == a and again.get("vm-b") == b
    assert again.allocate("vm-c").uid not in {a.uid, b.uid}
    again.release("vm-a")
    assert "vm-a" not in stored_records(tmp_path)
    size = (tmp_path / "jails.log").stat().st_size
    again.release("vm-a")  # idempotent, and writes nothing
    assert (tmp_path / "jails.log").stat().st_size == size
    third = UidPool(tmp_path, 100, 109, max_vms=50)
    assert {r.vm_id for r in third.load()} == {"vm-b", "vm-c"}


def test_pool_moves_an_older_fcds_record_files_into_its_log(tmp_path: Path) -> None:
    d = tmp_path / "vms"
    d.mkdir()
    (d / "vm-a.json").write_text('{"vm_id": "vm-a", "uid": 100, "gid": 100, "pid": 7}')
    (d / "vm-b.json").write_text('{"vm_id": "vm-b", "uid": 101, "gid": 101}')
    (d / "vm-c.json").write_text("not json")  # unreadable: kept where it is
    pool = UidPool(tmp_path, 100, 109, max_vms=50)
    assert {(r.vm_id, r.pid) for r in pool.load()} == {("vm-a", 7), ("vm-b", None)}
    assert sorted(p.name for p in d.iterdir()) == ["vm-c.json"]
    assert set(stored_records(tmp_path)) == {"vm-a", "vm-b"}
    # an interrupted migration: the log has vm-a already, its file came back (stale)
    (d / "vm-a.json").write_text('{"vm_id": "vm-a", "uid": 100, "gid": 100, "pid": 1}')
    again = UidPool(tmp_path, 100, 109, max_vms=50)
    assert {(r.vm_id, r.pid) for r in again.load()} == {("vm-a", 7), ("vm-b", None)}
    assert not (d / "vm-a.json").exists()


def test_pool_reload_skips_garbage_and_duplicate_uids(tmp_path: Path) -> None:
    with (tmp_path / "jails.log").open("wb") as f:
        f.write(b'["vm-a", {"vm_id": "vm-a", "uid": 100, "gid": 100}]\n')
        f.write(b'["vm-b", {"vm_id": "vm-b", "uid": 100, "gid": 100}]\n')  # same uid
        f.write(b"not json\n")
        f.write(b'["vm-c", {"vm_id": "vm-c", "uid": "x"}]\n')  # not a record
        f.write(b'["vm-d", {"vm_id": "other", "uid": 103, "gid": 103}]\n')  # id mismatch
    pool = UidPool(tmp_path, 100, 109, max_vms=50)
    assert [r.vm_id for r in pool.load()] == ["vm-a"]
    assert pool.allocate("vm-e").uid != 100


def test_pool_refuses_bad_ids(tmp_path: Path) -> None:
    pool = UidPool(tmp_path, 100, 109, max_vms=50)
    pool.load()
    for bad in ("../x", "A", "", "a/b", "-a"):
        with pytest.raises(InvalidArgument):
            pool.allocate(bad)


# --- jail plan -----------------------------------------------------------------------------


def test_jail_paths(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    p = plan.jail_paths(cfg, VM)
    root = tmp_path / "jail" / "firecracker" / VM / "root"
    assert p.jail_dir == root.parent
    assert p.root == root
    assert p.api_socket == root / "run" / "firecracker.socket"
    assert p.pid_file == root / "firecracker.pid"
    assert (p.kernel, p.rootfs) == (root / "vmlinux", root / "rootfs.ext4")
    assert (p.log_file, p.metrics_file) == (root / "firecracker.log", root / "metrics.json")
    with pytest.raises(InvalidArgument):
        plan.jail_paths(cfg, "../../etc")


def test_jail_paths_follow_the_exec_basename(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    cfg = msgspec.structs.replace(
        cfg, jail=msgspec.structs.replace(cfg.jail, firecracker="/x/firecracker-v1.7.0")
    )
    p = plan.jail_paths(cfg, VM)
    assert p.root == tmp_path / "jail" / "firecracker-v1.7.0" / VM / "root"
    assert p.pid_file.name == "firecracker-v1.7.0.pid"


def test_cgroup_settings_v1_and_v2() -> None:
    v1 = plan.cgroup_settings(1, frozenset({"cpu", "memory", "pids"}), 2, 256, 64)
    assert v1 == [
        ("cpu.shares", "2048"),
        ("memory.limit_in_bytes", str(320 * 1024 * 1024)),
        ("pids.max", str(plan.PIDS_MAX)),
    ]
    # the v1 jailer copies the parent's value into a new cgroup first: cpuacct.usage (the
    # parent's running total) would be EINVAL there, so it is never asked for
    with_acct = plan.cgroup_settings(1, frozenset({"cpu", "cpuacct", "memory"}), 1, 128, 0)
    assert not [f for f, _ in with_acct if f.startswith("cpuacct.")]
    v2 = plan.cgroup_settings(2, frozenset({"cpu", "memory"}), 4, 128, 0)
    assert v2 == [("cpu.weight", "400"), ("memory.max", str(128 << 20))]
    assert plan.cgroup_settings(2, frozenset({"hugetlb"}), 1, 128, 0) == []


def test_jailer_argv(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    argv = plan.jailer_argv(
        cfg,
        vm_id=VM,
        uid=900_003,
        gid=900_003,
        cgroup_version=1,
        cgroups=[("cpu.shares", "1024"), ("memory.limit_in_bytes", "1000")],
    )
    assert argv == [
        "/opt/fc/jailer",
        "--id",
        VM,
        "--exec-file",
        "/opt/fc/firecracker",
        "--uid",
        "900003",
        "--gid",
        "900003",
        "--chroot-base-dir",
        str(tmp_path / "jail"),
        "--cgroup-version",
        "1",
        "--parent-cgroup",
        "fcd",
        "--cgroup",
        "cpu.shares=1024",
        "--cgroup",
        "memory.limit_in_bytes=1000",
        "--new-pid-ns",
        "--",
        "--api-sock",
        "/run/firecracker.socket",
    ]
    after = argv[argv.index("--") + 1 :]
    assert "--id" not in after  # the jailer passes --id itself
    no_ns = plan.jailer_argv(
        make_cfg(tmp_path, new_pid_ns=False), vm_id=VM, uid=1, gid=1, cgroup_version=2, cgroups=[]
    )
    assert "--new-pid-ns" not in no_ns and "--cgroup" not in no_ns
    assert "--daemonize" in no_ns  # else the jailer would exec in place and never return
    assert no_ns[no_ns.index("--cgroup-version") + 1] == "2"


def spec_for(cfg: config.Config, **kw: object) -> plan.LaunchSpec:
    return checks.check_launch(launch_req(cfg, **kw), cfg)


def test_boot_args_carry_ip_argument(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    assert plan.netmask(16) == "255.255.0.0"
    assert plan.netmask(24) == "255.255.255.0"
    assert plan.boot_args(spec_for(cfg)) == (
        "console=ttyS0 reboot=k panic=1 pci=off "
        "ip=172.30.0.2::172.30.0.1:255.255.0.0::eth0:off "
        "quiet init=/sbin/init"
    )
    assert plan.boot_args(spec_for(cfg, kernel_args="")).endswith("eth0:off")
    assert "  " not in plan.boot_args(spec_for(cfg, kernel_args="  a   b "))


# Field sets from Firecracker's OpenAPI spec (FIRECRACKER.md §1); bodies reject unknown fields.
FC_FIELDS = {
    "/logger": {"log_path", "level", "show_level", "show_log_origin", "module"},
    "/metrics": {"metrics_path"},
    "/machine-config": {
        "vcpu_count",
        "mem_size_mib",
        "smt",
        "track_dirty_pages",
        "huge_pages",
        "cpu_template",
    },
    "/boot-source": {"kernel_image_path", "boot_args", "initrd_path"},
    "/drives/rootfs": {
        "drive_id",
        "is_root_device",
        "path_on_host",
        "is_read_only",
        "partuuid",
        "cache_type",
        "io_engine",
        "rate_limiter",
        "socket",
    },
    "/network-interfaces/eth0": {
        "iface_id",
        "host_dev_name",
        "guest_mac",
        "rx_rate_limiter",
        "tx_rate_limiter",
        "mtu",
    },
    "/actions": {"action_type"},
}


def test_configure_calls_order_and_bodies(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    spec = spec_for(cfg)
    calls = plan.configure_calls(spec)
    assert [(c.method, c.path) for c in calls] == [
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
        ("PUT", "/machine-config"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/network-interfaces/eth0"),
        ("PUT", "/actions"),
    ]
    bodies = {c.path: c.body for c in calls}
    assert bodies["/logger"] == {
        "log_path": "/firecracker.log",
        "level": "Warning",  # Firecracker's documented default: no echo of every request
        "show_level": True,
    }
    chatty = plan.configure_calls(spec, log_level="Info")[0]
    assert chatty.body is not None and chatty.body["level"] == "Info"
    assert bodies["/metrics"] == {"metrics_path": "/metrics.json"}
    assert bodies["/machine-config"] == {"vcpu_count": 2, "mem_size_mib": 256}
    assert bodies["/boot-source"] == {
        "kernel_image_path": "/vmlinux",
        "boot_args": plan.boot_args(spec),
    }
    assert bodies["/drives/rootfs"] == {
        "drive_id": "rootfs",
        "path_on_host": "/rootfs.ext4",
        "is_root_device": True,
        "is_read_only": False,
    }
    assert bodies["/network-interfaces/eth0"] == {
        "iface_id": "eth0",
        "host_dev_name": spec.tap,
        "guest_mac": "06:00:ac:1e:00:02",
    }
    assert bodies["/actions"] == {"action_type": "InstanceStart"}
    for c in calls:
        assert c.body is not None
        assert set(c.body) <= FC_FIELDS[c.path], c.path
    assert plan.vm_state_body(True) == {"state": "Paused"}
    assert plan.vm_state_body(False) == {"state": "Resumed"}
    assert plan.CTRL_ALT_DEL.body == {"action_type": "SendCtrlAltDel"}


FC_LOAD_FIELDS_V1_7 = {
    "snapshot_path",
    "mem_file_path",
    "mem_backend",
    "enable_diff_snapshots",
    "resume_vm",
}


def snapshot_files(cfg: config.Config, name: str = "s1") -> SnapshotFiles:
    lay = storelayout.layout(cfg)
    return SnapshotFiles(
        name=name,
        state_path=str(lay.snapshot_state(name)),
        memory_path=str(lay.snapshot_memory(name)),
    )


def test_configure_calls_for_a_restore_load_and_nothing_boot_specific(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    spec = spec_for(cfg, restore=snapshot_files(cfg))
    calls = plan.configure_calls(spec, "1.7.0")
    # FIRECRACKER.md §2: boot-source, drives, network, machine-config... make a load fail
    assert [(c.method, c.path) for c in calls] == [
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
        ("PUT", "/snapshot/load"),
    ]
    assert calls[0].body == plan.logger_body() and calls[1].body == plan.metrics_body()
    assert calls[2].body == {
        "snapshot_path": "/snapshot.vmstate",
        "mem_backend": {"backend_type": "File", "backend_path": "/snapshot.mem"},
        "resume_vm": True,
    }
    paused = plan.configure_calls(spec_for(cfg, restore=snapshot_files(cfg), resume=False))
    assert paused[-1].body is not None and paused[-1].body["resume_vm"] is False


def test_track_dirty_pages_goes_where_the_version_takes_it(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    restore = spec_for(cfg, restore=snapshot_files(cfg), track_dirty_pages=True)
    old = plan.configure_calls(restore, "1.7.0")[-1].body
    assert old is not None and old["enable_diff_snapshots"] is True
    assert "track_dirty_pages" not in old and set(old) <= FC_LOAD_FIELDS_V1_7
    new = plan.configure_calls(restore, "1.13.0")[-1].body
    assert new is not None and new["track_dirty_pages"] is True
    assert "enable_diff_snapshots" not in new  # deprecated from 1.13
    boot = {c.path: c.body for c in plan.configure_calls(spec_for(cfg, track_dirty_pages=True))}
    assert boot["/machine-config"] == {
        "vcpu_count": 2,
        "mem_size_mib": 256,
        "track_dirty_pages": True,
    }


def test_snapshot_create_body() -> None:
    assert plan.snapshot_create_body("full") == {
        "snapshot_path": "/snapshot.vmstate",
        "mem_file_path": "/snapshot.mem",
        "snapshot_type": "Full",
    }
    assert plan.snapshot_create_body("diff")["snapshot_type"] == "Diff"


def test_parse_version() -> None:
    assert plan.parse_version("Firecracker v1.7.0\n\n") == "1.7.0"
    assert plan.parse_version("v1.0.0\n") == "1.0.0"
    assert plan.parse_version("Firecracker v1.17.0-dev\n") == "1.17.0-dev"
    assert plan.version_tuple("1.17.0-dev") == (1, 17, 0)
    assert plan.version_tuple("1.13.0") >= plan.TRACK_DIRTY_ON_LOAD_SINCE > (1, 7, 0)
    with pytest.raises(ValueError):
        plan.parse_version("Firecracker\n")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "s2"),  # the paths are s1's
        ("state_path", "{storage}/snapshots/s1/memory"),
        ("memory_path", "{storage}/snapshots/s1/vmstate"),
        ("memory_path", "{storage}/snapshots/s1/rootfs.ext4"),
        ("state_path", "{storage}/disks/vm-1/rootfs.ext4"),
        ("state_path", "/etc/shadow"),
        ("memory_path", "{storage}/snapshots/s1/../s2/memory"),
    ],
)
def test_check_launch_refuses_restore_paths_outside_the_entry(
    tmp_path: Path, field: str, value: str
) -> None:
    cfg = make_cfg(tmp_path)
    files = msgspec.structs.replace(
        snapshot_files(cfg), **{field: value.replace("{storage}", str(cfg.state("storage")))}
    )
    with pytest.raises(InvalidArgument) as ei:
        checks.check_launch(launch_req(cfg, restore=files), cfg)
    assert ei.value.details["field"].startswith("restore.")


def test_snapshot_stage_check(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    files = snapshot_files(cfg)
    d = storelayout.layout(cfg).snapshot_dir("s1")
    with pytest.raises(InvalidArgument, match="not a snapshot"):
        checks.check_snapshot_stage(files, cfg, "ready", "restore")
    d.mkdir(parents=True)
    (d / storelayout.SNAPSHOT_PENDING).write_text("{}")
    checks.check_snapshot_stage(files, cfg, "pending", "files")
    with pytest.raises(InvalidArgument, match="pending"):
        checks.check_snapshot_stage(files, cfg, "ready", "restore")
    (d / storelayout.SNAPSHOT_MANIFEST).symlink_to(d / storelayout.SNAPSHOT_PENDING)
    with pytest.raises(InvalidArgument, match="pending"):  # a symlink is no manifest
        checks.check_snapshot_stage(files, cfg, "ready", "restore")
    (d / storelayout.SNAPSHOT_MANIFEST).unlink()
    (d / storelayout.SNAPSHOT_MANIFEST).write_text("{}")
    (d / storelayout.SNAPSHOT_PENDING).unlink()
    checks.check_snapshot_stage(files, cfg, "ready", "restore")
    with pytest.raises(InvalidArgument, match="committed"):
        checks.check_snapshot_stage(files, cfg, "pending", "files")


def test_resource_ids() -> None:
    assert plan.check_resource_id("rootfs") == "rootfs"
    assert plan.check_resource_id("eth_0") == "eth_0"
    for bad in ("eth-0", "", "a/b", "a b"):
        with pytest.raises(InvalidArgument):
            plan.check_resource_id(bad)


# --- argument re-checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tap", "fc0"),
        ("tap", "eth0"),
        ("mac", "06:00:AC:1E:00:02"),
        ("mac", "07:00:ac:1e:00:02"),  # multicast
        ("mac", "06:00:ac:1e:00"),
        ("mac", "00:00:00:00:00:00"),
        ("ip", "172.30.0.300"),
        ("ip", "172.30.0.1"),  # == gateway
        ("ip", "172.30.0.0"),  # network address
        ("ip", "172.30.255.255"),  # broadcast
        ("gateway", "10.0.0.1"),  # not in the guest's network
        ("gateway", "nope"),
        ("kernel_args", "init=/bin/sh\nroot=/dev/sda"),
        ("kernel_args", "x" * 2000),
        ("vcpu_count", 33),
        ("mem_size_mib", 65537),
        ("kernel_path", "/etc/passwd"),
        ("kernel_path", "relative/vmlinux"),
        ("rootfs_path", "{storage}/../vmm/vms/x.json"),
        ("rootfs_path", "{storage}/disks/./vm-1/rootfs.ext4"),
        ("rootfs_path", "{storage}"),
        ("rootfs_path", "{storage}/disks/vm-2/rootfs.ext4"),  # another VM's disk
        ("rootfs_path", "{storage}/templates/t1/rootfs.ext4"),  # the shared template image
        ("kernel_path", "{storage}/disks/vm-1/rootfs.ext4"),  # not a template kernel
    ],
)
def test_check_launch_refuses(tmp_path: Path, field: str, value: object) -> None:
    cfg = make_cfg(tmp_path)
    if isinstance(value, str):
        value = value.replace("{storage}", str(cfg.state("storage")))
    with pytest.raises(InvalidArgument) as ei:
        checks.check_launch(launch_req(cfg, **{field: value}), cfg)
    assert ei.value.details == {"field": field}


def test_check_launch_limits_follow_config(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    cfg = msgspec.structs.replace(
        cfg, limits=msgspec.structs.replace(cfg.limits, max_vcpu=2, max_mem_mib=512)
    )
    checks.check_launch(launch_req(cfg, vcpu_count=2, mem_size_mib=512), cfg)
    with pytest.raises(InvalidArgument, match="vcpu_count"):
        checks.check_launch(launch_req(cfg, vcpu_count=3), cfg)
    with pytest.raises(InvalidArgument, match="mem_size_mib"):
        checks.check_launch(launch_req(cfg, mem_size_mib=513), cfg)


def test_check_launch_tap_follows_prefix(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    cfg = msgspec.structs.replace(
        cfg, network=msgspec.structs.replace(cfg.network, tap_prefix="vmt")
    )
    spec = checks.check_launch(launch_req(cfg, tap=tap_name(VM, "vmt")), cfg)
    assert spec.tap.startswith("vmt")
    with pytest.raises(InvalidArgument, match="tap"):
        checks.check_launch(launch_req(cfg, tap=tap_name(VM, "fc")), cfg)
    with pytest.raises(InvalidArgument, match="tap"):  # another VM's TAP
        checks.check_launch(launch_req(cfg, tap=tap_name("vm-2", "vmt")), cfg)


def _storage_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    storage = tmp_path / "state" / "storage"
    kernel = storage / "templates" / "t1" / "vmlinux"
    disk = storage / "disks" / VM / "rootfs.ext4"
    for f in (kernel, disk):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
    return storage, kernel, disk


def test_open_storage_file_accepts_a_plain_file(tmp_path: Path) -> None:
    storage, kernel, _ = _storage_tree(tmp_path)
    f = checks.open_storage_file(str(kernel), str(storage), "kernel_path")
    try:
        assert f.st.st_ino == kernel.stat().st_ino
        assert os.readlink(f.proc_path) == str(kernel)
    finally:
        f.close()


def test_open_storage_file_refuses_symlinks_and_outside(tmp_path: Path) -> None:
    storage, _kernel, disk = _storage_tree(tmp_path)
    outside = tmp_path / "secret"
    outside.write_text("s")
    (storage / "disks" / "link-out").symlink_to(outside)
    (storage / "disks" / "link-in").symlink_to(disk)
    (storage / "disks" / "dir-out").symlink_to(tmp_path)
    (storage / "disks" / "dir-in").symlink_to(storage / "templates")
    cases = {
        storage / "disks" / "link-out": "symlink",
        storage / "disks" / "link-in": "symlink",  # even a symlink that stays inside
        storage / "disks" / "dir-out" / "secret": "symlink",
        storage / "disks" / "dir-in" / "t1" / "vmlinux": "symlink",
        storage / "disks" / VM: "regular file",
        storage / "disks" / "missing": "does not exist",
        outside: "outside",
    }
    for path, why in cases.items():
        with pytest.raises(InvalidArgument, match=why):
            checks.open_storage_file(str(path), str(storage), "rootfs_path")


def test_open_storage_file_accepts_a_symlinked_storage_root(tmp_path: Path) -> None:
    storage, _kernel, _ = _storage_tree(tmp_path)
    alias = tmp_path / "alias"
    alias.symlink_to(storage)
    f = checks.open_storage_file(str(alias / "templates" / "t1" / "vmlinux"), str(alias), "k")
    f.close()


# --- cgroups ---------------------------------------------------------------------------------

MOUNTS = """\
sysfs /sys sysfs rw 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup /sys/fs/cgroup/with\\040space cgroup rw,cpuset 0 0
"""


def test_parse_mounts_and_vm_dirs() -> None:
    mounts = cgroups.parse_mounts(MOUNTS)
    assert [m.path.name for m in mounts] == [
        "cpu",
        "memory",
        "pids",
        "systemd",
        "unified",
        "with space",
    ]
    assert cgroups.available_controllers(1, mounts) == {"cpu", "memory", "pids", "cpuset"}
    dirs = cgroups.vm_cgroup_dirs(mounts, "fcd", VM)
    assert Path("/sys/fs/cgroup/cpu/fcd/vm-1") in dirs
    assert Path("/sys/fs/cgroup/unified/fcd/vm-1") in dirs
    assert len(dirs) == len(mounts)


def test_detect_version(tmp_path: Path) -> None:
    assert cgroups.detect_version("1", tmp_path) == 1
    assert cgroups.detect_version("2", tmp_path) == 2
    from fcd_common.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition):
        cgroups.detect_version("auto", tmp_path)
    (tmp_path / "memory").mkdir()
    assert cgroups.detect_version("auto", tmp_path) == 1
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")  # hybrid: v2 without cpu/memory
    assert cgroups.detect_version("auto", tmp_path) == 1
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert cgroups.detect_version("auto", tmp_path) == 2
    assert cgroups.available_controllers(2, [], tmp_path) == {
        "cpuset",
        "cpu",
        "io",
        "memory",
        "pids",
    }


# --- Firecracker client -----------------------------------------------------------------------


def test_fault_text() -> None:
    assert fault_text(400, b'{"fault_message":"The kernel file cannot be opened"}') == (
        "The kernel file cannot be opened"
    )
    assert fault_text(400, b'{ "error": "Empty PUT request.\\nAll previous..." }').startswith(
        "Empty PUT request."
    )
    assert fault_text(500, b"") == "HTTP 500 without a body"


async def _fake_fc(
    path: Path, replies: dict[str, tuple[int, bytes]], seen: list[str]
) -> asyncio.AbstractServer:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await r.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                w.close()
                return
            lines = head.decode().split("\r\n")
            method, target, _ = lines[0].split(" ")
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":")[1])
            body = await r.readexactly(length) if length else b""
            seen.append(f"{method} {target} {body.decode()}")
            status, payload = replies.get(f"{method} {target}", (204, b""))
            extra = (
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                if payload
                else ""
            )
            w.write(
                f"HTTP/1.1 {status} \r\nServer: Firecracker API\r\n{extra}\r\n".encode() + payload
            )
            await w.drain()

    return await asyncio.start_unix_server(handle, path=str(path))


def test_client_maps_replies(tmp_path: Path) -> None:
    sock = tmp_path / "fc.sock"
    seen: list[str] = []
    replies = {
        "GET /": (
            200,
            b'{"id":"vm-1","state":"Running","vmm_version":"1.7.0","app_name":"Firecracker"}',
        ),
        "PUT /boot-source": (400, b'{"fault_message":"The kernel file cannot be opened"}'),
    }

    async def main() -> None:
        server = await _fake_fc(sock, replies, seen)
        async with server, FirecrackerClient(sock) as fc:
            info = await fc.wait_ready()
            assert info["state"] == "Running"
            await fc.put("/logger", {"log_path": "/firecracker.log"})
            with pytest.raises(FirecrackerError) as ei:
                await fc.put("/boot-source", {"kernel_image_path": "/vmlinux"})
            assert "The kernel file cannot be opened" in ei.value.message
            assert ei.value.details["path"] == "/boot-source"
            assert ei.value.details["fault_message"] == "The kernel file cannot be opened"

    asyncio.run(main())
    assert seen[1] == 'PUT /logger {"log_path":"/firecracker.log"}'


def test_client_unreachable_socket_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        async with FirecrackerClient(tmp_path / "nope.sock") as fc:
            with pytest.raises(Unavailable):
                await fc.get("/")

    asyncio.run(main())


# --- inotify waits ------------------------------------------------------------------------------


def test_wait_for_path_sees_nested_creation(tmp_path: Path) -> None:
    target = tmp_path / "run" / "firecracker.socket"

    async def main() -> None:
        waiter = asyncio.create_task(wait_for_path(target, within=tmp_path))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        (tmp_path / "run").mkdir()
        await asyncio.sleep(0.05)
        assert not waiter.done()
        target.write_text("")
        await asyncio.wait_for(waiter, 2)

    asyncio.run(main())


def test_wait_for_path_ready_predicate_and_abort(tmp_path: Path) -> None:
    pid = tmp_path / "firecracker.pid"

    async def main() -> None:
        waiter = asyncio.create_task(
            wait_for_path(pid, within=tmp_path, ready=lambda p: p.exists() and p.read_text() != "")
        )
        await asyncio.sleep(0.02)
        pid.touch()  # created empty first, like the jailer's O_EXCL create
        await asyncio.sleep(0.05)
        assert not waiter.done()
        pid.write_text("1234")
        await asyncio.wait_for(waiter, 2)
        died: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        other = asyncio.create_task(wait_for_path(tmp_path / "never", within=tmp_path, abort=died))
        await asyncio.sleep(0.02)
        died.set_result(None)
        with pytest.raises(Aborted):
            await asyncio.wait_for(other, 2)

    asyncio.run(main())


def _inotify_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return n


def test_waits_share_one_inotify_and_leave_no_watch_behind(tmp_path: Path) -> None:
    """Many waits, two at a time in one directory: one inotify instance for all of
    them, and once they end no directory is watched any more."""
    from fcd_vmm import pathwait

    async def main() -> None:
        before = _inotify_fds()
        for i in range(20):
            d = tmp_path / f"jail{i}"
            d.mkdir()
            a = asyncio.create_task(wait_for_path(d / "firecracker.pid", within=tmp_path))
            b = asyncio.create_task(wait_for_path(d / "run" / "api.sock", within=tmp_path))
            await asyncio.sleep(0.01)
            assert pathwait.watcher().watching == 1  # both on d: one watch
            (d / "firecracker.pid").write_text("1")
            await asyncio.wait_for(a, 2)
            assert not b.done()
            (d / "run").mkdir()
            (d / "run" / "api.sock").touch()
            await asyncio.wait_for(b, 2)
            assert pathwait.watcher().watching == 0
        assert _inotify_fds() - before == 1

    asyncio.run(main())


def test_a_wait_whose_directory_is_removed_watches_what_is_left(tmp_path: Path) -> None:
    """The jail directory removed under a wait (its watch ends with it): the wait
    keeps waiting on the directory above, and sees the path when it is made again."""
    from fcd_vmm import pathwait

    d = tmp_path / "jail"
    d.mkdir()
    target = d / "run" / "api.sock"

    async def main() -> None:
        waiter = asyncio.create_task(wait_for_path(target, within=tmp_path))
        await asyncio.sleep(0.02)
        d.rmdir()
        await asyncio.sleep(0.05)
        assert not waiter.done()
        assert pathwait.watcher().watching == 1  # now tmp_path
        (d / "run").mkdir(parents=True)
        target.touch()
        await asyncio.wait_for(waiter, 2)
        assert pathwait.watcher().watching == 0

    asyncio.run(main())


def test_a_cancelled_wait_removes_its_watch(tmp_path: Path) -> None:
    from fcd_vmm import pathwait

    async def main() -> None:
        waiter = asyncio.create_task(wait_for_path(tmp_path / "never", within=tmp_path))
        await asyncio.sleep(0.02)
        assert pathwait.watcher().watching == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pathwait.watcher().watching == 0

    asyncio.run(main())


def test_mounts_below_finds_only_nested_mounts_deepest_first() -> None:
    from fcd_vmm.jailfs import mounts_below

    info = """\
22 1 0:21 / / rw - ext4 /dev/root rw
30 22 0:30 / /srv/jailer/firecracker/vm-1/root/usr ro - ext4 /dev/root ro
31 30 0:31 / /srv/jailer/firecracker/vm-1/root/usr/lib ro - ext4 /dev/root ro
32 22 0:32 / /srv/jailer/firecracker/vm-10/root rw - tmpfs tmpfs rw
33 22 0:33 / /srv/jailer/firecracker/vm-1 rw - tmpfs tmpfs rw
34 22 0:34 / /srv/jailer/firecracker/vm-1/root/with\\040space rw - tmpfs tmpfs rw
"""
    jail_dir = Path("/srv/jailer/firecracker/vm-1")
    assert mounts_below(jail_dir, info) == [
        jail_dir / "root" / "usr" / "lib",
        jail_dir / "root" / "usr",
        jail_dir / "root" / "with space",
    ]


def test_client_connects_through_a_dir_fd_when_the_path_is_too_long(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    sock = deep / "firecracker.socket"
    assert len(str(sock)) > 108
    seen: list[str] = []

    async def main() -> None:
        server = await _fake_fc_at_fd(sock, seen)
        async with server, FirecrackerClient(sock) as fc:
            await fc.put("/actions", {"action_type": "InstanceStart"})

    asyncio.run(main())
    assert seen == ['PUT /actions {"action_type":"InstanceStart"}']


async def _fake_fc_at_fd(sock: Path, seen: list[str]) -> asyncio.AbstractServer:
    fd = os.open(sock.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        return await _fake_fc(Path(f"/proc/self/fd/{fd}/{sock.name}"), {}, seen)
    finally:
        os.close(fd)


# --- jailer process and copies ----------------------------------------------------------------


def test_run_jailer_reports_stderr_of_a_failure() -> None:
    from fcd_vmm.launcher import _run_jailer

    script = "echo 'Failed to canonicalize path /nope' >&2; exit 1"
    with pytest.raises(FirecrackerError, match="status 1: Failed to canonicalize path /nope") as ei:
        asyncio.run(_run_jailer(["/bin/sh", "-c", script], VM))
    assert ei.value.details["exit_code"] == 1


def test_run_jailer_does_not_wait_for_daemonized_children() -> None:
    import time

    from fcd_vmm.launcher import _run_jailer

    # a grandchild keeps the jailer's stderr open for 5 s, like a daemonized Firecracker
    t0 = time.monotonic()
    asyncio.run(_run_jailer(["/bin/sh", "-c", "sleep 5 & echo started >&2; exit 0"], VM))
    assert time.monotonic() - t0 < 3


def test_sparse_copy_fallback(tmp_path: Path) -> None:
    from fcd_vmm.jailfs import _copy_into

    src = tmp_path / "disk"
    with src.open("wb") as f:
        f.write(b"head")
        f.seek(64 << 20)
        f.write(b"tail")
    sf = checks.open_storage_file(str(src), str(tmp_path), "rootfs_path")
    try:
        method = _copy_into(sf, tmp_path / "copy", VM)
    finally:
        sf.close()
    dst = tmp_path / "copy"
    assert method in ("reflink", "copy")
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_blocks * 512 < (1 << 20)  # holes stayed holes


def suspend_files(cfg: config.Config, vm_id: str = VM, *, pending: bool) -> SnapshotFiles:
    lay = storelayout.layout(cfg)
    return SnapshotFiles(
        name=vm_id,
        state_path=str(lay.suspend_state(vm_id, pending=pending)),
        memory_path=str(lay.suspend_memory(vm_id, pending=pending)),
        kind="suspend",
    )


def test_suspend_files_are_the_vms_own_in_the_right_stage(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    storage = cfg.state("storage")
    pending, committed = suspend_files(cfg, pending=True), suspend_files(cfg, pending=False)
    assert committed.state_path == f"{storage}/disks/{VM}/suspend.vmstate"
    assert pending.memory_path == f"{storage}/disks/{VM}/suspend.memory.pending"
    # a create writes the pending files, a restore loads the committed ones
    ok = checks.check_snapshot_files(pending, cfg, "files", vm_id=VM, stage="pending")
    assert ok == pending
    spec = checks.check_launch(launch_req(cfg, restore=committed), cfg)
    assert spec.req.restore == committed
    # the stage is in the names: no manifest to read
    checks.check_snapshot_stage(committed, cfg, "ready", "restore")
    checks.check_snapshot_stage(pending, cfg, "pending", "files")
    with pytest.raises(InvalidArgument, match="pending files cannot be restored") as ei:
        checks.check_launch(launch_req(cfg, restore=pending), cfg)
    assert ei.value.details["field"] == "restore.state_path"
    with pytest.raises(InvalidArgument, match="pending suspend") as ei:
        checks.check_snapshot_files(committed, cfg, "files", vm_id=VM, stage="pending")
    assert ei.value.details["field"] == "files.state_path"


@pytest.mark.parametrize(
    ("field", "value", "bad"),
    [
        ("name", "vm-2", "name"),  # another VM's suspend, even with this VM's paths
        ("state_path", "{storage}/disks/vm-2/suspend.vmstate", "state_path"),
        ("memory_path", "{storage}/disks/vm-1/suspend.vmstate", "memory_path"),
        ("memory_path", "{storage}/disks/vm-1/rootfs.ext4", "memory_path"),
        ("state_path", "{storage}/snapshots/vm-1/vmstate", "state_path"),
        ("memory_path", "{storage}/disks/vm-1/../vm-1/suspend.memory", "memory_path"),
        ("state_path", "/etc/shadow", "state_path"),
    ],
)
def test_check_launch_refuses_suspend_files_not_this_vms(
    tmp_path: Path, field: str, value: str, bad: str
) -> None:
    cfg = make_cfg(tmp_path)
    files = msgspec.structs.replace(
        suspend_files(cfg, pending=False),
        **{field: value.replace("{storage}", str(cfg.state("storage")))},
    )
    with pytest.raises(InvalidArgument) as ei:
        checks.check_launch(launch_req(cfg, restore=files), cfg)
    assert ei.value.details["field"] == f"restore.{bad}"
    # another VM's own suspend files, complete and consistent: still not this VM's
    other = suspend_files(cfg, "vm-2", pending=False)
    with pytest.raises(InvalidArgument, match="not this VM") as ei:
        checks.check_launch(launch_req(cfg, restore=other), cfg)
    assert ei.value.details["field"] == "restore.name"
    # a snapshot entry named like the VM is still a snapshot: its own paths only
    snap = msgspec.structs.replace(other, name=VM, kind="snapshot")
    with pytest.raises(InvalidArgument):
        checks.check_launch(launch_req(cfg, restore=snap), cfg)
