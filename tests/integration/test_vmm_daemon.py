"""fcd-vmm as a real daemon driving the jailer and Firecracker test doubles (or the
real binaries when FCD_FIRECRACKER/FCD_JAILER name them).

Each test gets a fresh network namespace (where the TAP lives and the daemon
runs), a temp dir for state and chroots, its own uid range and a unique
parent cgroup; all of it is removed in the fixture's finally, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fcd_common import config, ids, storelayout
from fcd_common.errors import FailedPrecondition, FirecrackerError, InvalidArgument
from fcd_common.proto.vmm import (
    PROTOCOL,
    AllocateJail,
    Info,
    Launch,
    ListVms,
    Pause,
    ReleaseJail,
    Resume,
    SnapshotCreate,
    SnapshotFiles,
    Status,
    Stop,
    VmmInfo,
)
from fcd_common.rpc import Reply, Request, RpcClient
from fcd_dev.suite import SuiteError, spawn, terminate
from fcd_vmm import acl, cgroups, jailfs
from fcd_vmm.fcclient import FirecrackerClient

from .. import jailrecords
from ..launches import drive, make_launch

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"
FCD_VMM = REPO / ".venv" / "bin" / "fcd-vmm"
R = TypeVar("R", bound=Reply)


def _binaries() -> tuple[str, str] | None:
    fc = os.environ.get("FCD_FIRECRACKER") or str(FAKES / "firecracker")
    jl = os.environ.get("FCD_JAILER") or str(FAKES / "jailer")
    if not (os.access(fc, os.X_OK) and os.access(jl, os.X_OK)):
        return None
    if not (FAKES / "guest_kernel.py").exists():
        return None
    return fc, jl


needs_doubles = pytest.mark.skipif(
    _binaries() is None, reason="jailer/firecracker doubles (tests/fakes) not available yet"
)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@dataclass
class Env:
    tmp: Path
    ns: str
    cfg: config.Config
    cfg_path: Path
    proc: subprocess.Popen[bytes] | None = None
    vm_namespaces: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.tmp / "fcd-vmm.log"

    def start(self) -> None:
        # nsenter (in spawn), not `ip netns exec`: the latter also unshares the mount
        # namespace and remounts /sys, hiding /sys/fs/cgroup from the daemon and the jailer.
        self.cfg.socket("vmm").unlink(missing_ok=True)
        env = {"FCD_FIRECRACKER": "", "FCD_JAILER": ""}  # the config names the binaries
        with self.log.open("ab") as out:
            try:
                self.proc = spawn("vmm", self.cfg_path, netns=self.ns, out=out, env=env, timeout=15)
            except SuiteError as e:
                raise AssertionError(f"{e}:\n{self.log.read_text()}") from None

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 20)
        self.proc = None

    def call(self, req: Request[R], timeout: float = 30) -> R:
        async def go() -> R:
            client = RpcClient(self.cfg.socket("vmm"), PROTOCOL, timeout=timeout)
            try:
                return await client.call(req)
            finally:
                await client.close()

        return asyncio.run(go())

    # --- fixtures for a VM --------------------------------------------------------
    def storage_files(self, vm_id: str) -> tuple[Path, Path]:
        from fakes import guest_kernel  # type: ignore[import-not-found]

        storage = self.cfg.state("storage")
        kernel = storage / "templates" / "mini" / "vmlinux"
        disk = storage / "disks" / vm_id / "rootfs.ext4"
        if not kernel.exists():
            kernel.parent.mkdir(parents=True, exist_ok=True)
            guest_kernel.build(kernel)
            os.chmod(kernel, 0o644)
            guest_kernel.build_rootfs(kernel.parent / "rootfs.ext4")
        if not disk.exists():
            disk.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kernel.parent / "rootfs.ext4", disk)
            os.chmod(disk, 0o600)
        return kernel, disk

    def make_tap(self, vm_id: str, uid: int) -> str:
        tap = ids.tap_name(vm_id, self.cfg.network.tap_prefix)
        sh("ip", "-n", self.ns, "tuntap", "add", tap, "mode", "tap", "user", str(uid),
           "group", str(uid))  # fmt: skip
        sh("ip", "-n", self.ns, "link", "set", tap, "up")
        return tap

    def make_vm_netns(self, vm_id: str, uid: int) -> tuple[str, str]:
        """netns mode, as fcd-net sets it up: the VM's own namespace holding TAP
        ``fctap0`` (the same name for every clone of a snapshot)."""
        name = ids.netns_name(vm_id, self.cfg.network.netns_prefix)
        tap = ids.netns_tap(self.cfg.network.tap_prefix)
        sh("ip", "netns", "add", name)
        self.vm_namespaces.append(name)
        sh("ip", "-n", name, "tuntap", "add", tap, "mode", "tap", "user", str(uid),
           "group", str(uid))  # fmt: skip
        sh("ip", "-n", name, "link", "set", tap, "up")
        return ids.netns_path(vm_id, self.cfg.network.netns_prefix), tap

    def pending_snapshot(self, name: str, vm_id: str, owner: int) -> SnapshotFiles:
        """What fcd-storage's SnapshotPrepare publishes: empty state and memory files
        (0660, its own) and ``pending.json``."""
        lay = storelayout.layout(self.cfg)
        d = lay.snapshot_dir(name)
        d.mkdir(parents=True)
        for f in (lay.snapshot_state(name), lay.snapshot_memory(name)):
            f.touch(mode=0o660)
            os.chmod(f, 0o660)
            os.chown(f, owner, owner)
        (d / storelayout.SNAPSHOT_PENDING).write_text(json.dumps({"name": name, "vm_id": vm_id}))
        return SnapshotFiles(
            name=name,
            state_path=str(lay.snapshot_state(name)),
            memory_path=str(lay.snapshot_memory(name)),
        )

    def commit_snapshot(self, name: str) -> None:
        """SnapshotCommit's effect on the two files: 0400, then the manifest."""
        lay = storelayout.layout(self.cfg)
        for f in (lay.snapshot_state(name), lay.snapshot_memory(name)):
            os.chmod(f, 0o400)
        d = lay.snapshot_dir(name)
        (d / storelayout.SNAPSHOT_MANIFEST).write_text(json.dumps({"name": name}))
        (d / storelayout.SNAPSHOT_PENDING).unlink()

    def pending_suspend(self, vm_id: str, owner: int) -> SnapshotFiles:
        """What fcd-storage's SuspendPrepare makes: empty ``*.pending`` files (0660,
        its own) in the VM's disk directory."""
        lay = storelayout.layout(self.cfg)
        state = lay.suspend_state(vm_id, pending=True)
        memory = lay.suspend_memory(vm_id, pending=True)
        for f in (state, memory):
            f.unlink(missing_ok=True)
            f.touch(mode=0o660)
            os.chmod(f, 0o660)
            os.chown(f, owner, owner)
        return suspend_files(self.cfg, vm_id, pending=True)

    def commit_suspend(self, vm_id: str) -> SnapshotFiles:
        """SuspendCommit's effect: 0400, then renamed over the committed names."""
        lay = storelayout.layout(self.cfg)
        for name in ("suspend_state", "suspend_memory"):
            src = getattr(lay, name)(vm_id, pending=True)
            os.chmod(src, 0o400)
            os.rename(src, getattr(lay, name)(vm_id))
        return suspend_files(self.cfg, vm_id, pending=False)

    def launch_req(self, vm_id: str, tap: str, **kw: Any) -> Launch:
        kernel, disk = self.storage_files(vm_id)
        args: dict[str, Any] = {
            "vm_id": vm_id,
            "vcpu_count": 1,
            "mem_size_mib": 128,
            "kernel_path": str(kernel),
            "rootfs_path": str(disk),
            "kernel_args": "",
            "tap": tap,
            "mac": ids.guest_mac("172.30.0.2"),
            "ip": "172.30.0.2",
            "gateway": "172.30.0.1",
            "prefix_len": 16,
        }
        args.update(kw)
        return make_launch(**args)

    def cgroup_dirs(self, vm_id: str) -> list[Path]:
        dirs = cgroups.vm_cgroup_dirs(cgroups.read_mounts(), self.cfg.jail.parent_cgroup, vm_id)
        return [d for d in dirs if d.exists()]


def suspend_files(cfg: config.Config, vm_id: str, *, pending: bool) -> SnapshotFiles:
    lay = storelayout.layout(cfg)
    return SnapshotFiles(
        name=vm_id,
        state_path=str(lay.suspend_state(vm_id, pending=pending)),
        memory_path=str(lay.suspend_memory(vm_id, pending=pending)),
        kind="suspend",
    )


def fc_get(sock: str | Path, path: str = "/") -> Any:
    async def go() -> Any:
        async with FirecrackerClient(sock) as fc:
            return await fc.get(path)

    return asyncio.run(go())


def proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def same_root(pid: int, root: Path) -> bool:
    a, b = os.stat(f"/proc/{pid}/root"), os.stat(root)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_uid_range(lo: int, hi: int) -> None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, AssertionError):
                if lo <= proc_uid(int(entry)) <= hi:
                    os.kill(int(entry), signal.SIGKILL)


@pytest.fixture(params=[True, False], ids=["new-pid-ns", "same-pid-ns"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    new_pid_ns = bool(request.param)
    bins = _binaries()
    assert bins is not None
    fc, jl = bins
    ns = f"fcdt-{secrets.token_hex(4)}"
    parent = f"fcdtest-{secrets.token_hex(4)}"
    uid_min = 940_000 + secrets.randbelow(500) * 100
    cfg_path = tmp_path / "fcd.toml"
    cfg_path.write_text(
        f"""
[paths]
state_dir = "{tmp_path}/state"
run_dir = "{tmp_path}/run"
chroot_base = "{tmp_path}/jail"

[network]
netns_prefix = "v{secrets.token_hex(2)}-"  # its own: an fcd-net elsewhere reconciles fcvm-*

[jail]
firecracker = "{fc}"
jailer = "{jl}"
uid_min = {uid_min}
uid_max = {uid_min + 99}
parent_cgroup = "{parent}"
new_pid_ns = {"true" if new_pid_ns else "false"}
firecracker_log_level = "Info"  # tests read which calls Firecracker saw from its log

[limits]
boot_timeout_s = 15.0
stop_timeout_s = 5.0
"""
    )
    cfg = config.decode(cfg_path.read_text())
    sh("ip", "netns", "add", ns)
    e = Env(tmp_path, ns, cfg, cfg_path)
    try:
        yield e
    finally:
        e.stop()
        _kill_uid_range(uid_min, uid_min + 99)
        time.sleep(0.2)
        shutil.rmtree(tmp_path / "jail", ignore_errors=True)
        for m in cgroups.read_mounts():
            top = m.path / parent
            if top.is_dir():
                for d in top.iterdir():
                    if d.is_dir():
                        with contextlib.suppress(OSError):
                            d.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()
        for name in [ns, *e.vm_namespaces]:
            subprocess.run(["ip", "netns", "del", name], check=False)


def zombies_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] == "Z" and int(fields[1]) == pid:
                    out.append(int(entry))
    return out


@needs_doubles
def test_lifecycle_allocate_launch_pause_resume_stop_relaunch_release(env: Env) -> None:  # noqa: PLR0915 -- one VM's whole life, checked step by step
    env.start()
    vm_id = f"t-{secrets.token_hex(3)}"
    jail = env.call(AllocateJail(vm_id=vm_id))
    assert env.call(AllocateJail(vm_id=vm_id)) == jail  # idempotent
    uid = jail.uid
    assert env.cfg.jail.uid_min <= uid <= env.cfg.jail.uid_max and jail.gid == uid
    root = Path(env.cfg.paths.chroot_base) / Path(env.cfg.jail.firecracker).name / vm_id / "root"
    assert jail.chroot_dir == str(root)
    before = env.call(Status(vm_id=vm_id))
    assert before.state == "not_started" and before.pid is None
    tap = env.make_tap(vm_id, uid)

    vm = env.call(env.launch_req(vm_id, tap))
    assert vm.state == "running", env.log.read_text()
    assert vm.pid is not None and alive(vm.pid)
    pid = vm.pid
    assert proc_uid(pid) == uid
    assert same_root(pid, root)
    assert vm.api_socket == str(root / "run" / "firecracker.socket")
    info = fc_get(vm.api_socket)
    assert info["state"] == "Running" and info["id"] == vm_id
    assert os.stat(root / "rootfs.ext4").st_uid == uid
    assert (root / "vmlinux").stat().st_ino == Path(
        env.launch_req(vm_id, tap).disk.kernel_path
    ).stat().st_ino
    assert env.cgroup_dirs(vm_id), "the jailer made no cgroup for the VM"

    assert env.call(Pause(vm_id=vm_id)).state == "paused"
    assert fc_get(vm.api_socket)["state"] == "Paused"
    assert env.call(Resume(vm_id=vm_id)).state == "running"
    listed = env.call(ListVms())
    assert [(p.vm_id, p.state, p.pid) for p in listed.items] == [(vm_id, "running", pid)]

    stopped = env.call(Stop(vm_id=vm_id))
    assert stopped.vm_id == vm_id
    if not os.environ.get("FCD_FIRECRACKER"):
        assert stopped.graceful  # the double exits on Ctrl-Alt-Del like a reboot=k guest
    assert not alive(pid)
    assert not root.exists()
    assert env.cgroup_dirs(vm_id) == []
    after = env.call(Status(vm_id=vm_id))
    assert after.state == "exited" and after.pid is None and after.uid == uid
    with pytest.raises(FailedPrecondition):
        env.call(Pause(vm_id=vm_id))

    # start again: a fresh jail on the same disk, same uid
    again = env.call(env.launch_req(vm_id, tap))
    assert again.state == "running" and again.pid not in (None, pid)
    assert again.uid == uid and proc_uid(again.pid or 0) == uid

    gone = env.call(ReleaseJail(vm_id=vm_id))
    assert gone.state == "absent"
    assert again.pid is not None and not alive(again.pid)
    assert not root.parent.exists()
    assert env.cgroup_dirs(vm_id) == []
    assert env.call(Status(vm_id=vm_id)).state == "absent"
    assert jailrecords.record(env.cfg.state("vmm"), vm_id) is None
    assert env.call(ReleaseJail(vm_id=vm_id)).state == "absent"  # idempotent
    assert env.call(ListVms()).items == []
    assert env.proc is not None
    assert zombies_of(env.proc.pid) == []  # the subreaper reaped the jailer's forks and VMs
    # the storage files are untouched apart from the disk's owner
    kernel, disk = env.storage_files(vm_id)
    assert kernel.exists() and disk.exists()


@needs_doubles
def test_failed_launch_leaves_nothing_behind(env: Env) -> None:
    env.start()
    vm_id = f"t-{secrets.token_hex(3)}"
    jail = env.call(AllocateJail(vm_id=vm_id))
    tap = ids.tap_name(vm_id, env.cfg.network.tap_prefix)  # never created: the PUT must fail
    with pytest.raises(FirecrackerError) as ei:
        env.call(env.launch_req(vm_id, tap))
    assert "network-interfaces" in ei.value.message
    root = Path(jail.chroot_dir)
    assert not root.parent.exists()
    assert env.cgroup_dirs(vm_id) == []
    st = env.call(Status(vm_id=vm_id))
    assert st.pid is None and st.uid == jail.uid  # the jail uid is kept for a retry
    env.make_tap(vm_id, jail.uid)
    ok = env.call(env.launch_req(vm_id, tap))
    assert ok.state == "running"
    env.call(ReleaseJail(vm_id=vm_id))


@needs_doubles
def test_missing_jailer_is_reported_at_start_and_refused_at_launch(env: Env) -> None:
    # issue #13: a missing (or ProtectHome=-hidden) binary was `internal: launch
    # failed: [Errno 2] ...` naming neither file nor cause
    real = env.cfg.jail.jailer
    jailer = env.tmp / "bin" / "jailer"
    env.cfg_path.write_text(env.cfg_path.read_text().replace(f'"{real}"', f'"{jailer}"'))
    env.start()  # still ready: the status and the log say why launches will fail
    assert f"jailer {jailer}: No such file or directory" in env.log.read_text()
    vm_id = f"t-{secrets.token_hex(3)}"
    jail = env.call(AllocateJail(vm_id=vm_id))
    tap = env.make_tap(vm_id, jail.uid)
    with pytest.raises(FailedPrecondition) as ei:
        env.call(env.launch_req(vm_id, tap))
    assert f"jailer {jailer}: No such file or directory" in ei.value.message
    assert not Path(jail.chroot_dir).parent.exists()
    jailer.parent.mkdir()
    jailer.symlink_to(real)  # fixed on the host: the next launch works, no restart
    assert env.call(env.launch_req(vm_id, tap)).state == "running"
    env.call(ReleaseJail(vm_id=vm_id))


@needs_doubles
def test_daemon_restart_readopts_running_vm(env: Env) -> None:
    env.start()
    vm_id = f"t-{secrets.token_hex(3)}"
    jail = env.call(AllocateJail(vm_id=vm_id))
    tap = env.make_tap(vm_id, jail.uid)
    vm = env.call(env.launch_req(vm_id, tap))
    assert vm.pid is not None
    env.stop()
    assert alive(vm.pid), "a VM must outlive its daemon"
    env.start()
    st = env.call(Status(vm_id=vm_id))
    assert (st.state, st.pid, st.uid) == ("running", vm.pid, jail.uid)
    assert env.call(Pause(vm_id=vm_id)).state == "paused"
    # a crash between boot and recording the pid: the jailer's pid file still finds it
    env.stop()
    jailrecords.edit(env.cfg.state("vmm"), vm_id, pid=None, state="allocated")
    env.start()
    st = env.call(Status(vm_id=vm_id))
    assert (st.state, st.pid) == ("paused", vm.pid)
    rec = jailrecords.record(env.cfg.state("vmm"), vm_id)
    assert rec is not None and rec.pid == vm.pid
    env.call(ReleaseJail(vm_id=vm_id))
    assert not alive(vm.pid)
    assert not Path(jail.chroot_dir).parent.exists()


def open_fd_inodes(pid: int) -> set[tuple[int, int]]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{pid}/fd/{fd}")
            out.add((st.st_dev, st.st_ino))
    return out


def acl_uids(path: Path) -> list[int]:
    return [e.id for e in jailfs.read_acl(str(path)) if e.tag == acl.USER]


@needs_doubles
def test_snapshot_create_then_restore_clones_through_the_acl(env: Env) -> None:  # noqa: PLR0915 -- one snapshot's whole life, checked step by step
    env.start()
    if not os.environ.get("FCD_FIRECRACKER"):
        assert env.call(Info()) == VmmInfo(firecracker_version="1.7.0", snapshot_version="1.0.0")
    owner = env.cfg.jail.uid_max + 1000  # fcd-storage's user: not a jail uid
    src = f"t-{secrets.token_hex(3)}"
    jail = env.call(AllocateJail(vm_id=src))
    netns, tap = env.make_vm_netns(src, jail.uid)
    vm = env.call(env.launch_req(src, tap, netns=netns))
    assert vm.state == "running", env.log.read_text()
    files = env.pending_snapshot("s1", src, owner)
    state, memory = Path(files.state_path), Path(files.memory_path)
    root = Path(jail.chroot_dir)

    with pytest.raises(FailedPrecondition, match="Running"):
        env.call(SnapshotCreate(vm_id=src, files=files))
    assert env.call(Pause(vm_id=src)).state == "paused"
    with pytest.raises(InvalidArgument):  # a file of the store that is not this entry's
        env.call(
            SnapshotCreate(
                vm_id=src, files=SnapshotFiles(**{**_fields(files), "memory_path": str(state)})
            )
        )
    taken = env.call(SnapshotCreate(vm_id=src, files=files))
    assert (taken.vm_id, taken.type) == (src, "full")
    assert taken.memory_size == 128 << 20 == memory.stat().st_size
    assert taken.state_size == state.stat().st_size > 0
    info = env.call(Info())
    assert (taken.firecracker_version, taken.snapshot_version) == (
        info.firecracker_version,
        info.snapshot_version,
    )
    assert taken.took_ms >= 0
    for f in (state, memory):  # handed back: owner again, no link left in the jail
        st = f.stat()
        assert (st.st_uid, st.st_gid, st.st_nlink) == (owner, owner, 1)
    assert not (root / "snapshot.vmstate").exists() and not (root / "snapshot.mem").exists()
    assert env.call(Status(vm_id=src)).state == "paused"  # the VM stays paused

    # before 1.13 (v1.7.0 included) a diff needs dirty page tracking: Firecracker's
    # refusal comes back as such; from 1.13 it falls back to mincore (FIRECRACKER.md)
    if tuple(int(x) for x in info.firecracker_version.split(".")[:2]) < (1, 13):
        with pytest.raises(FirecrackerError, match="dirty page tracking"):
            env.call(SnapshotCreate(vm_id=src, files=files, type="diff"))
        assert state.stat().st_uid == owner and not (root / "snapshot.mem").exists()

    clone = f"t-{secrets.token_hex(3)}"
    cjail = env.call(AllocateJail(vm_id=clone))
    cnetns, ctap = env.make_vm_netns(clone, cjail.uid)
    with pytest.raises(InvalidArgument, match="pending"):  # not committed yet
        env.call(env.launch_req(clone, ctap, netns=cnetns, restore=files))
    env.commit_snapshot("s1")
    env.call(ReleaseJail(vm_id=src))
    with pytest.raises(InvalidArgument):  # a path outside the entry
        env.call(
            env.launch_req(
                clone,
                ctap,
                netns=cnetns,
                restore=SnapshotFiles(
                    **{
                        **_fields(files),
                        "memory_path": env.launch_req(clone, ctap).disk.rootfs_path,
                    }
                ),
            )
        )

    paused = env.call(env.launch_req(clone, ctap, netns=cnetns, restore=files, resume=False))
    assert paused.state == "paused", env.log.read_text()
    assert paused.pid is not None
    assert fc_get(paused.api_socket or "")["state"] == "Paused"
    croot = Path(cjail.chroot_dir)
    assert (croot / "snapshot.mem").stat().st_ino == memory.stat().st_ino
    st = memory.stat()
    assert st.st_uid == owner != cjail.uid
    assert st.st_mode & 0o7 == 0 and st.st_mode & 0o700 == 0o400  # not world-readable
    # the entry lasted as long as the launch: its Firecracker (the jail uid) read the
    # memory file through it and holds it open (mapped), so the entry is gone now
    assert acl_uids(memory) == [] == acl_uids(state)
    assert (st.st_dev, st.st_ino) in open_fd_inodes(paused.pid)
    assert env.call(Resume(vm_id=clone)).state == "running"

    # a second clone shares the same inodes, read through an entry of its own while
    # it launched: the ACL does not grow with the clones running
    clone2 = f"t-{secrets.token_hex(3)}"
    c2jail = env.call(AllocateJail(vm_id=clone2))
    c2netns, c2tap = env.make_vm_netns(clone2, c2jail.uid)
    running = env.call(env.launch_req(clone2, c2tap, netns=c2netns, restore=files))
    assert running.state == "running", env.log.read_text()
    assert acl_uids(memory) == [] == acl_uids(state)
    assert running.pid is not None
    assert (st.st_dev, st.st_ino) in open_fd_inodes(running.pid)

    env.call(ReleaseJail(vm_id=clone))
    assert acl_uids(memory) == [] == acl_uids(state)
    env.call(ReleaseJail(vm_id=clone2))
    assert acl_uids(memory) == [] == acl_uids(state)
    assert memory.stat().st_mode & 0o777 == 0o400  # the ACL collapsed back to the mode


@needs_doubles
def test_failed_restore_is_torn_down_and_leaves_no_acl(env: Env) -> None:
    env.start()
    owner = env.cfg.jail.uid_max + 1000
    vm_id = f"t-{secrets.token_hex(3)}"
    jail = env.call(AllocateJail(vm_id=vm_id))
    netns, tap = env.make_vm_netns(vm_id, jail.uid)
    files = env.pending_snapshot("junk", vm_id, owner)
    Path(files.state_path).write_bytes(b"not a snapshot state file" * 4)
    env.commit_snapshot("junk")
    with pytest.raises(FirecrackerError, match="cannot restore snapshot 'junk'") as ei:
        env.call(env.launch_req(vm_id, tap, netns=netns, restore=files))
    assert "exits" in ei.value.message
    assert not Path(jail.chroot_dir).parent.exists()
    assert acl_uids(Path(files.memory_path)) == [] == acl_uids(Path(files.state_path))
    st = env.call(Status(vm_id=vm_id))
    assert st.pid is None
    env.call(ReleaseJail(vm_id=vm_id))


def _fields(files: SnapshotFiles) -> dict[str, str]:
    return {"name": files.name, "state_path": files.state_path, "memory_path": files.memory_path}


@needs_doubles
def test_diff_snapshot_of_a_vm_launched_with_dirty_page_tracking(env: Env) -> None:
    env.start()
    owner = env.cfg.jail.uid_max + 1000
    vm_id = f"t-{secrets.token_hex(3)}"
    jail = env.call(AllocateJail(vm_id=vm_id))
    tap = env.make_tap(vm_id, jail.uid)
    vm = env.call(env.launch_req(vm_id, tap, track_dirty_pages=True))
    assert fc_get(vm.api_socket or "", "/machine-config")["track_dirty_pages"] is True
    env.call(Pause(vm_id=vm_id))
    files = env.pending_snapshot("d1", vm_id, owner)
    taken = env.call(SnapshotCreate(vm_id=vm_id, files=files, type="diff"))
    assert taken.type == "diff" and taken.state_size > 0
    assert Path(files.memory_path).stat().st_uid == owner
    env.call(ReleaseJail(vm_id=vm_id))


def _files(files: SnapshotFiles, **kw: str) -> SnapshotFiles:
    return SnapshotFiles(**{**_fields(files), "kind": files.kind, **kw})


@needs_doubles
def test_suspend_kill_without_resume_then_wake_under_the_same_id(env: Env) -> None:  # noqa: PLR0915 -- one suspend/wake cycle, checked step by step
    env.start()
    owner = env.cfg.jail.uid_max + 1000  # fcd-storage's user: not a jail uid
    vm_id = f"t-{secrets.token_hex(3)}"
    jail = env.call(AllocateJail(vm_id=vm_id))
    root = Path(jail.chroot_dir)
    tap = env.make_tap(vm_id, jail.uid)
    _, disk = env.storage_files(vm_id)
    data = disk.with_name("drive-data.ext4")
    shutil.copyfile(disk, data)
    launch = env.launch_req(vm_id, tap, drives=[drive(str(data))])
    vm = env.call(launch)
    assert vm.state == "running", env.log.read_text()
    assert env.call(Pause(vm_id=vm_id)).state == "paused"

    files = env.pending_suspend(vm_id, owner)
    state, memory = Path(files.state_path), Path(files.memory_path)
    assert state.parent == disk.parent  # in the VM's own disk directory
    committed = suspend_files(env.cfg, vm_id, pending=False)
    with pytest.raises(InvalidArgument, match="pending suspend") as ei:  # nothing writes those
        env.call(SnapshotCreate(vm_id=vm_id, files=committed))
    assert ei.value.details["field"] == "files.state_path"
    other = f"t-{secrets.token_hex(3)}"
    with pytest.raises(InvalidArgument, match="not this VM") as ei:  # another VM's suspend
        env.call(SnapshotCreate(vm_id=vm_id, files=suspend_files(env.cfg, other, pending=True)))
    assert ei.value.details["field"] == "files.name"
    with pytest.raises(InvalidArgument):  # this VM's name, another file of its disk dir
        env.call(SnapshotCreate(vm_id=vm_id, files=_files(files, memory_path=str(disk))))

    taken = env.call(SnapshotCreate(vm_id=vm_id, files=files))
    assert taken.memory_size == 128 << 20 == memory.stat().st_size
    assert taken.state_size == state.stat().st_size > 0
    for f in (state, memory):  # handed back: owner again, no link left in the jail
        st = f.stat()
        assert (st.st_uid, st.st_gid, st.st_nlink) == (owner, owner, 1)
    assert not (root / "snapshot.vmstate").exists() and not (root / "snapshot.mem").exists()

    # the forced stop: SIGKILL at once, the paused guest never resumed
    assert fc_get(vm.api_socket or "")["state"] == "Paused"
    t0 = time.monotonic()
    stopped = env.call(Stop(vm_id=vm_id, force=True))
    assert stopped.graceful is False
    assert time.monotonic() - t0 < env.cfg.limits.stop_timeout_s
    assert vm.pid is not None and not alive(vm.pid)
    after = env.call(Status(vm_id=vm_id))
    assert after.state == "exited" and after.exit_code != 0
    assert not root.parent.exists()  # the same teardown as a normal stop
    log_text = env.log.read_text()
    assert "'pause vm' VMM action" in log_text  # Firecracker's lines do reach the log ...
    assert "'resume vm' VMM action" not in log_text  # ... and no resume was asked
    assert "SendCtrlAltDel" not in log_text

    woken_files = env.commit_suspend(vm_id)
    assert woken_files == committed
    with pytest.raises(InvalidArgument, match="pending files cannot be restored") as ei:
        env.call(env.launch_req(vm_id, tap, drives=[drive(str(data))], restore=files))
    assert ei.value.details["field"] == "restore.state_path"
    with pytest.raises(InvalidArgument, match="not this VM"):
        env.call(
            env.launch_req(
                vm_id, tap, restore=_files(committed, name=other), drives=[drive(str(data))]
            )
        )

    # wake: a fresh Firecracker loads the VM's own files with its own disk, drive and TAP
    woken = env.call(env.launch_req(vm_id, tap, drives=[drive(str(data))], restore=committed))
    assert woken.state == "running", env.log.read_text()
    assert woken.pid is not None and woken.pid != vm.pid
    mem = Path(committed.memory_path)
    st = mem.stat()
    assert (root / "snapshot.mem").stat().st_ino == st.st_ino
    assert st.st_uid == owner != jail.uid
    assert st.st_mode & 0o7 == 0 and st.st_mode & 0o700 == 0o400  # (the group bits: the mask)
    assert acl_uids(mem) == [] == acl_uids(Path(committed.state_path))  # launch only
    assert (st.st_dev, st.st_ino) in open_fd_inodes(woken.pid)  # read through the ACL
    assert os.stat(root / "rootfs.ext4").st_ino == disk.stat().st_ino
    assert os.stat(root / "drive-data.ext4").st_ino == data.stat().st_ino

    # suspended again: new pending inodes are written, the mapped memory is not touched
    env.call(Pause(vm_id=vm_id))
    files2 = env.pending_suspend(vm_id, owner)
    env.call(SnapshotCreate(vm_id=vm_id, files=files2))
    assert mem.stat().st_mtime_ns == st.st_mtime_ns and mem.stat().st_ino == st.st_ino
    assert env.call(Stop(vm_id=vm_id, force=True)).graceful is False
    env.commit_suspend(vm_id)
    assert mem.stat().st_ino != st.st_ino

    env.call(ReleaseJail(vm_id=vm_id))
    assert acl_uids(mem) == [] == acl_uids(Path(committed.state_path))
    assert env.call(Status(vm_id=vm_id)).state == "absent"
