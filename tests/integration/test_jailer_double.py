"""The jailer double on real kernel objects: chroot, device nodes, netns, cgroups, pid ns.

Runs as root in a fresh network namespace with a temp chroot base and a unique parent
cgroup; everything is removed in ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKES = Path(__file__).resolve().parent.parent / "fakes"
JAILER = FAKES / "jailer"
FIRECRACKER = FAKES / "firecracker"
sys.path.insert(0, str(FAKES))

import guest_kernel  # noqa: E402

CGROUP_V1 = Path("/sys/fs/cgroup")


def http(
    sock_path: Path, method: str, path: str, body: object | None = None
) -> tuple[int, dict[str, object] | None]:
    payload = b"" if body is None else json.dumps(body).encode()
    req = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    if payload:
        req += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendall(req.encode() + b"\r\n" + payload)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.decode().split("\r\n")[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        while len(rest) < length:
            rest += s.recv(65536)
    status = int(head.split(b" ")[1])
    return status, (json.loads(rest) if length else None)


def run_jailer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JAILER), *args], check=False, capture_output=True, text=True, timeout=30
    )


def wait_for(cond: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def proc_state(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except FileNotFoundError:
        return None
    return None


def status_field(pid: int, name: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split()[1:]
    raise AssertionError(name)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"fcdt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def base() -> Iterator[Path]:
    """A short chroot base: the API socket path must fit in sun_path (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fcdt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def jail_uid() -> int:
    return 40000 + secrets.randbelow(20000)


def kill_jailed(chroot: Path) -> None:
    pid_file = chroot / "firecracker.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_for(lambda: proc_state(pid) in (None, "Z"))


def remove_cgroups(parent: str, instance_id: str) -> None:
    for ctrl in ("memory", "cpu", "cpuset"):
        for d in (CGROUP_V1 / ctrl / parent / instance_id, CGROUP_V1 / ctrl / parent):
            deadline = time.monotonic() + 5
            while d.exists():
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


@pytest.mark.root
def test_jailed_double_daemonized_in_pid_ns(  # noqa: PLR0915 -- one jail's whole layout, checked in one place
    tmp_path: Path, base: Path, netns: str, jail_uid: int
) -> None:
    instance_id = f"vm-{secrets.token_hex(3)}"
    parent = f"fcdt-{secrets.token_hex(3)}"
    chroot = base / "firecracker" / instance_id / "root"
    uid = gid = jail_uid
    tap = "fcdt-tap0"
    subprocess.run(
        [
            "ip",
            "-n",
            netns,
            "tuntap",
            "add",
            "dev",
            tap,
            "mode",
            "tap",
            "user",
            str(uid),
            "group",
            str(gid),
        ],
        check=True,
    )
    # like fcd-vmm: pre-create the chroot and hard-link the kernel and disk into it
    chroot.mkdir(parents=True)
    kernel = guest_kernel.build(tmp_path / "vmlinux")
    os.link(kernel, chroot / "vmlinux")
    disk = guest_kernel.build_rootfs(tmp_path / "rootfs.ext4", size_mib=8)
    os.link(disk, chroot / "rootfs.ext4")
    os.chown(chroot / "rootfs.ext4", uid, gid)
    for name in ("fc.log", "fc.metrics"):
        (chroot / name).touch()
        os.chown(chroot / name, uid, gid)
    try:
        r = run_jailer(
            "--id",
            instance_id,
            "--exec-file",
            str(FIRECRACKER),
            "--uid",
            str(uid),
            "--gid",
            str(gid),
            "--chroot-base-dir",
            str(base),
            "--netns",
            f"/var/run/netns/{netns}",
            "--daemonize",
            "--new-pid-ns",
            "--cgroup-version",
            "1",
            "--parent-cgroup",
            parent,
            "--cgroup",
            "memory.limit_in_bytes=268435456",
            "--cgroup",
            "cpu.shares=512",
            "--cgroup",
            "cpuset.cpus=0",
            "--",
            "--api-sock",
            "/run/firecracker.socket",
        )
        assert r.returncode == 0, r.stderr
        # the pid file exists once the jailer has exited
        pid_text = (chroot / "firecracker.pid").read_text()
        assert pid_text.isdigit()
        pid = int(pid_text)
        api = chroot / "run" / "firecracker.socket"
        wait_for(api.exists)

        # layout, modes, owners
        for d in ("", "dev", "dev/net", "run"):
            st = (chroot / d).stat()
            assert stat.S_IMODE(st.st_mode) == 0o700, d
            assert (st.st_uid, st.st_gid) == (uid, gid), d
        for node, dev in (
            ("dev/net/tun", (10, 200)),
            ("dev/kvm", (10, 232)),
            ("dev/urandom", (1, 9)),
        ):
            st = (chroot / node).stat()
            assert stat.S_ISCHR(st.st_mode), node
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == dev, node
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o600), node
        if Path("/dev/userfaultfd").exists():
            assert stat.S_ISCHR((chroot / "dev/userfaultfd").stat().st_mode)
        copy = (chroot / "firecracker").stat()
        assert copy.st_uid == 0 and copy.st_mode & stat.S_IXUSR and copy.st_nlink == 1

        # the process: uid X, inside the chroot, pid 1 of its own pid namespace
        assert status_field(pid, "Uid") == [str(uid)] * 4
        assert status_field(pid, "Gid") == [str(gid)] * 4
        assert status_field(pid, "NSpid") == [str(pid), "1"]
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "firecracker"
        root_st, chroot_st = os.stat(f"/proc/{pid}/root"), chroot.stat()
        assert (root_st.st_dev, root_st.st_ino) == (chroot_st.st_dev, chroot_st.st_ino)
        ns_inode = os.stat(f"/var/run/netns/{netns}").st_ino
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == ns_inode

        # cgroups
        for ctrl, file, value in (
            ("memory", "memory.limit_in_bytes", "268435456"),
            ("cpu", "cpu.shares", "512"),
            ("cpuset", "cpuset.cpus", "0"),
        ):
            cg = CGROUP_V1 / ctrl / parent / instance_id
            assert (cg / file).read_text().strip() == value
            assert str(pid) in (cg / "tasks").read_text().split()

        # the API works inside the jail; paths resolve inside the chroot
        status, body = http(api, "GET", "/")
        assert status == 200 and body is not None
        assert body["id"] == instance_id and body["state"] == "Not started"
        assert http(api, "PUT", "/logger", {"log_path": "/fc.log"})[0] == 204
        assert http(api, "PUT", "/metrics", {"metrics_path": "/fc.metrics"})[0] == 204
        status, body = http(api, "PUT", "/boot-source", {"kernel_image_path": str(kernel)})
        assert status == 400 and "The kernel file cannot be opened" in str(body)
        assert http(api, "PUT", "/boot-source", {"kernel_image_path": "/vmlinux"})[0] == 204
        assert http(api, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64})[0] == 204
        assert (
            http(
                api,
                "PUT",
                "/drives/rootfs",
                {"drive_id": "rootfs", "is_root_device": True, "path_on_host": "/rootfs.ext4"},
            )[0]
            == 204
        )
        assert (
            http(
                api,
                "PUT",
                "/network-interfaces/eth0",
                {"iface_id": "eth0", "host_dev_name": tap, "guest_mac": "AA:FC:00:00:00:01"},
            )[0]
            == 204
        )
        status, body = http(
            api,
            "PUT",
            "/network-interfaces/eth1",
            {"iface_id": "eth1", "host_dev_name": "fcdt-nosuch"},
        )
        assert status == 400 and "Operation not permitted (os error 1)" in str(body)
        assert http(api, "PUT", "/actions", {"action_type": "InstanceStart"})[0] == 204
        assert http(api, "GET", "/")[1] == {
            "id": instance_id,
            "state": "Running",
            "vmm_version": "1.7.0",
            "app_name": "Firecracker",
        }
        metrics = (chroot / "fc.metrics").read_text().splitlines()
        assert len(metrics) == 1 and metrics[0].startswith('{"utc_timestamp_ms":')
        assert (chroot / "fc.log").read_text().startswith("20")

        # pid 1 of its namespace: SIGTERM is ignored, SIGKILL is not
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        assert proc_state(pid) not in (None, "Z")
        assert http(api, "GET", "/")[0] == 200
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: proc_state(pid) in (None, "Z"))
    finally:
        kill_jailed(chroot)
        shutil.rmtree(base, ignore_errors=True)
        remove_cgroups(parent, instance_id)


@pytest.mark.root
def test_exec_in_place_without_daemonize(base: Path, jail_uid: int) -> None:
    chroot = base / "firecracker" / "inplace" / "root"
    proc = subprocess.Popen(
        [
            str(JAILER),
            "--id",
            "inplace",
            "--exec-file",
            str(FIRECRACKER),
            "--uid",
            str(jail_uid),
            "--gid",
            str(jail_uid),
            "--chroot-base-dir",
            str(base),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        api = chroot / "run" / "firecracker.socket"
        wait_for(api.exists)
        # launched pid == firecracker pid == pid file
        assert (chroot / "firecracker.pid").read_text() == str(proc.pid)
        assert http(api, "GET", "/")[0] == 200
        os.kill(proc.pid, signal.SIGTERM)  # not a pid-ns init: SIGTERM ends it
        proc.wait(timeout=5)
        assert proc.returncode == -signal.SIGTERM
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert "[inplace:main] Running Firecracker v1.7.0" in out
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert "lazy import" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.root
def test_leftover_chroot_fails(tmp_path: Path, jail_uid: int) -> None:
    base = tmp_path / "jailer"
    base.mkdir()
    chroot = base / "firecracker" / "again" / "root"
    args = [
        "--id",
        "again",
        "--exec-file",
        str(FIRECRACKER),
        "--uid",
        str(jail_uid),
        "--gid",
        str(jail_uid),
        "--chroot-base-dir",
        str(base),
        "--new-pid-ns",
    ]
    try:
        # the jailed child keeps stdio: don't wait for EOF on pipes (same with the real one)
        first = subprocess.run(
            [str(JAILER), *args],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        assert first.returncode == 0
        kill_jailed(chroot)
        second = run_jailer(*args)
        assert second.returncode == -signal.SIGABRT  # a Rust panic: 134 in a shell
        assert (
            "Failed to create /dev/net/tun via mknod inside the jail: File exists (os error 17)"
        ) in second.stderr
    finally:
        kill_jailed(chroot)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.root
def test_copy_refused_over_a_hard_link(tmp_path: Path, jail_uid: int) -> None:
    base = tmp_path / "jailer"
    chroot = base / "firecracker" / "linked" / "root"
    chroot.mkdir(parents=True)
    other = tmp_path / "other"
    other.write_text("x")
    os.link(other, chroot / "firecracker")
    r = run_jailer(
        "--id",
        "linked",
        "--exec-file",
        str(FIRECRACKER),
        "--uid",
        str(jail_uid),
        "--gid",
        str(jail_uid),
        "--chroot-base-dir",
        str(base),
    )
    assert r.returncode == -signal.SIGABRT
    assert "Detected hard link at:" in r.stderr
    assert other.read_text() == "x"


# -- validation (no privileges needed: the jailer checks everything before acting) -------------


def test_invalid_id_panics(tmp_path: Path) -> None:
    r = run_jailer(
        "--id",
        "bad_id",
        "--exec-file",
        str(FIRECRACKER),
        "--uid",
        "1",
        "--gid",
        "1",
        "--chroot-base-dir",
        str(tmp_path),
    )
    assert r.returncode == -signal.SIGABRT
    assert "Invalid instance ID: Invalid char (_) at position 3" in r.stderr
    shell = subprocess.run(
        [
            "sh",
            "-c",
            f"{JAILER} --id {'a' * 65} --exec-file {FIRECRACKER} "
            f"--uid 1 --gid 1 --chroot-base-dir {tmp_path} 2>&1; echo rc=$?",
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert "Invalid instance ID: Invalid len (65)" in shell.stdout
    assert shell.stdout.strip().endswith("rc=134")
    assert list(tmp_path.iterdir()) == []


def test_argument_errors_exit_1(tmp_path: Path) -> None:
    r = run_jailer("--id", "a", "--exec-file", str(FIRECRACKER), "--gid", "1")
    assert r.returncode == 1
    assert "Argument 'uid' required, but not found." in r.stdout
    r = run_jailer("--id", "a", "--id", "b")
    assert r.returncode == 1
    assert "The argument 'id' was provided more than once." in r.stdout
    r = run_jailer("--version")
    assert r.returncode == 0 and r.stdout.startswith("Jailer v1.7.0")


def test_exec_file_checks(tmp_path: Path) -> None:
    vmm = tmp_path / "vmm"
    shutil.copy(FIRECRACKER, vmm)
    common = ["--id", "a", "--uid", "1", "--gid", "1", "--chroot-base-dir", str(tmp_path)]
    r = run_jailer("--exec-file", str(vmm), *common)
    assert r.returncode == -signal.SIGABRT
    assert 'The filename of `--exec-file` option must contain "firecracker": vmm' in r.stderr
    r = run_jailer("--exec-file", str(tmp_path / "firecracker-missing"), *common)
    assert r.returncode == -signal.SIGABRT
    assert (
        f"Failed to canonicalize path {tmp_path}/firecracker-missing: No such file or "
        "directory (os error 2)" in r.stderr
    )
    r = run_jailer(
        "--exec-file",
        str(FIRECRACKER),
        "--id",
        "a",
        "--uid",
        "1",
        "--gid",
        "1",
        "--chroot-base-dir",
        str(tmp_path / "nope"),
    )
    assert r.returncode == -signal.SIGABRT
    assert "Failed to canonicalize path" in r.stderr


def test_cgroup_argument_checks(tmp_path: Path) -> None:
    common = [
        "--id",
        "a",
        "--exec-file",
        str(FIRECRACKER),
        "--uid",
        "1",
        "--gid",
        "1",
        "--chroot-base-dir",
        str(tmp_path),
    ]
    r = run_jailer(*common, "--cgroup", "cpu.shares")
    assert r.returncode == -signal.SIGABRT
    assert "Invalid format for cgroups: cpu.shares" in r.stderr
    r = run_jailer(*common, "--parent-cgroup", "../x")
    assert "Parent cgroup path is invalid" in r.stderr
    unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if unified.exists() and "cpu" not in unified.read_text().split():
        r = run_jailer(*common, "--cgroup-version", "2", "--cgroup", "cpu.weight=100")
        assert r.returncode == -signal.SIGABRT
        assert "Controller cpu is unavailable" in r.stderr
    assert not (tmp_path / "firecracker").exists()


def _jailers() -> list[tuple[str, Path, Path]]:
    out = [("double", JAILER, FIRECRACKER)]
    fc, jl = os.environ.get("FCD_FIRECRACKER"), os.environ.get("FCD_JAILER")
    if fc and jl:
        out.append(("real", Path(jl), Path(fc)))
    return out


@pytest.mark.root
@pytest.mark.parametrize("which", _jailers(), ids=lambda w: w[0])
def test_v1_cgroup_values_are_copied_from_the_parent_first(
    which: tuple[str, Path, Path], base: Path, jail_uid: int
) -> None:
    """The v1 jailer writes the parent's value into a new cgroup before the asked one: a
    parent that ran anything has a non-zero cpuacct.usage, which the kernel refuses in
    the child, and the failed write is an unwrap panic (checked against v1.7.0)."""
    acct = CGROUP_V1 / "cpuacct"
    if not (acct / "cpuacct.usage").exists():
        pytest.skip("no cgroup v1 cpuacct hierarchy")
    _, jailer, fc = which
    parent = f"fcdt-{secrets.token_hex(3)}"
    busy = acct / parent / "busy"
    exe = base / "bin" / "firecracker"  # the jailer names the chroot after the exec file
    exe.parent.mkdir()
    shutil.copy2(fc, exe)
    try:
        busy.mkdir(parents=True)
        subprocess.run(
            [
                "sh",
                "-c",
                f"echo $$ > {busy}/cgroup.procs; i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done",
            ],
            check=True,
        )
        assert int((acct / parent / "cpuacct.usage").read_text()) > 0
        r = subprocess.run(
            [
                str(jailer),
                "--id",
                "acct1",
                "--exec-file",
                str(exe),
                "--uid",
                str(jail_uid),
                "--gid",
                str(jail_uid),
                "--chroot-base-dir",
                str(base),
                "--cgroup-version",
                "1",
                "--parent-cgroup",
                parent,
                "--cgroup",
                "cpuacct.usage=0",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == -signal.SIGABRT, r.stderr
        target = acct / parent / "acct1" / "cpuacct.usage"
        assert "panicked at src/jailer/src/env.rs:622:34:" in r.stderr, r.stderr
        assert (
            f'called `Result::unwrap()` on an `Err` value: Write("{target}", Os {{ code: 22, '
            'kind: InvalidInput, message: "Invalid argument" })'
        ) in r.stderr, r.stderr
    finally:
        for d in (busy, acct / parent / "acct1", acct / parent):
            with contextlib.suppress(OSError):
                d.rmdir()
