"""The console capture of fcd_vmm.console on the jailer + Firecracker, double and real.

The jailer runs as fcd-vmm runs it: ``--new-pid-ns`` without ``--daemonize``, in a new
session, stdout = the console FIFO opened read-write and non-blocking. With
``FCD_FIRECRACKER``/``FCD_JAILER`` set (e.g. /opt/fc17) the same test drives the real
v1.7.0 binaries and boots the minimal guest under KVM; otherwise the doubles.

Shown for both: the jailer exits 0 at once (the pid file names Firecracker), Firecracker's
start-up lines and the guest's console line arrive in the FIFO, and with the pipe full
and nobody reading (fcd-vmm down) the guest's output is dropped but Firecracker stays
alive and answers its API.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcd_vmm import console

FAKES = Path(__file__).resolve().parent.parent / "fakes"
sys.path.insert(0, str(FAKES))

import guest_kernel  # noqa: E402

from integration.test_jailer_double import http, remove_cgroups  # noqa: E402

pytestmark = pytest.mark.root

F_GETPIPE_SZ = 1032


def binaries() -> tuple[str, str]:
    fc, jailer = os.environ.get("FCD_FIRECRACKER"), os.environ.get("FCD_JAILER")
    if fc and jailer:
        return fc, jailer
    return str(FAKES / "firecracker"), str(FAKES / "jailer")


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fcdc-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_fifo(fd: int) -> bytes:
    out = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


def launch(base: Path, vm: str, fifo: Path, *, chatty: bool = False) -> tuple[Path, int]:
    """Jail + start Firecracker the way fcd-vmm does; returns (chroot, firecracker pid)."""
    fc, jailer = binaries()
    uid = 40000 + os.getpid() % 20000
    out_fd = console.open_for_firecracker(fifo)
    # stderr a file, as fcd-vmm has it: Firecracker inherits it and keeps it open
    err = tempfile.TemporaryFile()  # noqa: SIM115 -- closed below, after the jailer ran
    try:
        proc = subprocess.run(
            [
                jailer,
                "--id",
                vm,
                "--exec-file",
                fc,
                "--uid",
                str(uid),
                "--gid",
                str(uid),
                "--chroot-base-dir",
                str(base),
                "--parent-cgroup",
                f"fcdc-{vm}",
                "--new-pid-ns",
                "--",
                "--api-sock",
                "/run/firecracker.socket",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=err,
            start_new_session=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(out_fd)
    err.seek(0)
    assert proc.returncode == 0, err.read()
    err.close()
    chroot = base / os.path.basename(fc) / vm / "root"
    pid = int((chroot / f"{os.path.basename(fc)}.pid").read_text())
    deadline = time.monotonic() + 20
    while not (chroot / "run" / "firecracker.socket").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)  # a foreign binary's socket, in a test
    kernel = guest_kernel.build(chroot / "vmlinux", chatty=chatty)
    os.chown(kernel, uid, uid)
    return chroot, pid


def boot(chroot: Path) -> None:
    api = chroot / "run" / "firecracker.socket"
    assert http(api, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})[0] == 204
    status, body = http(
        api, "PUT", "/boot-source", {"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0"}
    )
    assert status == 204, body
    status, body = http(api, "PUT", "/actions", {"action_type": "InstanceStart"})
    assert status == 204, body


def stop(pid: int, vm: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    remove_cgroups(f"fcdc-{vm}", vm)


def test_console_reaches_the_fifo_from_the_first_byte(base: Path) -> None:
    vm = f"cc{os.getpid()}"
    fifo = base / "console.fifo"
    console.make_fifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    chroot, pid = launch(base, vm, fifo)
    try:
        assert fcntl.fcntl(rfd, F_GETPIPE_SZ) == console.PIPE_SIZE
        boot(chroot)
        got = b""
        deadline = time.monotonic() + 20
        while guest_kernel.MESSAGE.encode() not in got:
            assert time.monotonic() < deadline, got[-2000:]
            time.sleep(0.05)
            got += read_fifo(rfd)
        text = got.decode(errors="replace")
        assert f"[{vm}:main] Running Firecracker v" in text  # its log, before PUT /logger
        assert Path(f"/proc/{pid}").exists()
    finally:
        os.close(rfd)
        stop(pid, vm)


def test_a_full_console_pipe_never_stops_the_guest(base: Path) -> None:
    """Nobody reads (fcd-vmm down) and the pipe is full: Firecracker stays up, answers."""
    vm = f"cf{os.getpid()}"
    fifo = base / "console.fifo"
    console.make_fifo(fifo)
    chroot, pid = launch(base, vm, fifo)
    try:
        # fill the pipe through a second writer, as a long chatty outage would
        wfd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        try:
            while True:
                os.write(wfd, b"x" * 65536)
        except BlockingIOError:
            pass
        finally:
            os.close(wfd)
        boot(chroot)
        time.sleep(1.0)  # the guest has printed into a full pipe by now
        status, body = http(chroot / "run" / "firecracker.socket", "GET", "/")
        assert status == 200 and body is not None and body["state"] == "Running"
        assert Path(f"/proc/{pid}").exists()
        # a reader that comes back finds what was buffered before the pipe filled
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert read_fifo(rfd).startswith(b"20")  # FC's first log line
        finally:
            os.close(rfd)
    finally:
        stop(pid, vm)


@pytest.mark.skipif(
    not os.environ.get("FCD_FIRECRACKER"), reason="the double prints the first line only"
)
def test_a_chatty_guest_is_rate_limited_and_never_blocked(base: Path) -> None:
    """A guest printing in a loop: with nobody reading for 2 s it keeps running (the full
    pipe drops its bytes); then fcd-vmm's reader keeps the burst plus the rate and
    drops the rest, saying so in one notice line per gap."""
    vm = f"cl{os.getpid()}"
    fifo = base / "console.fifo"
    console.make_fifo(fifo)
    chroot, pid = launch(base, vm, fifo, chatty=True)
    try:
        boot(chroot)
        time.sleep(2.0)
        status, body = http(chroot / "run" / "firecracker.socket", "GET", "/")
        assert status == 200 and body is not None and body["state"] == "Running"

        rate, burst = 2048.0, 8192.0  # small, so that this guest's rate is over it

        async def read_for(seconds: float) -> console.Console:
            con = console.Console(vm)
            con.limit = console.RateLimit(rate=rate, burst=burst)
            con.attach(fifo)
            await asyncio.sleep(seconds)
            con.detach(drain=False)
            return con

        t0 = time.monotonic()
        con = asyncio.run(read_for(3.0))
        took = time.monotonic() - t0
        notices = [ln for ln in con.ring if ln.text.startswith("[fcd: ")]
        line = len(guest_kernel.MESSAGE) + 1
        kept = (con.seq - len(notices)) * line
        dropped = con.limit.dropped_total
        print(
            f"chatty guest: {(kept + dropped) / took / 1024:.1f} KiB/s read for {took:.1f}s"
            f" (the first 1 MiB pipe included), kept {kept / 1024:.1f} KiB,"
            f" dropped {dropped / 1024:.1f} KiB in {len(notices)} notices"
        )
        assert dropped > 0 and 0 < len(notices) <= took / console.NOTICE_EVERY_S + 1
        assert kept <= burst + rate * took + line
        assert guest_kernel.MESSAGE in {ln.text for ln in con.ring}
        status, body = http(chroot / "run" / "firecracker.socket", "GET", "/")
        assert status == 200 and body is not None and body["state"] == "Running"
    finally:
        stop(pid, vm)
