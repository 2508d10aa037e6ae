#!/usr/bin/env python3
"""The bare create/delete sequence, no daemon: the floor fcd's figures are divided by.

What one bare create does (issue #14), timed from the first step to
InstanceStart's 204:

1. a TAP owned by the jail uid via netlink (pyroute2), attached to a bridge and up;
2. one nftables element (libnftables JSON) naming the guest's address;
3. a clone of the template's rootfs (reflink, else a sparse copy) into the jail;
4. a hard link of the template's kernel into the jail;
5. the jailer (``--daemonize --new-pid-ns``, the same cgroup arguments fcd passes);
6. an inotify wait for Firecracker's API socket;
7. four PUTs (machine-config, boot-source, root drive, network interface) and
   InstanceStart over one HTTP/1.1 connection.

A bare delete: SIGKILL through a pidfd, wait for the exit, reap, remove the jail
directory (the disk was cloned into it) and the cgroup, delete the TAP and the nft
element.

Same VMM binaries as fcd (the test double unless FCD_FIRECRACKER/FCD_JAILER name
real ones), same template, same approach to the network: a private network
namespace with a bridge, entered by the worker threads that do the work (so the
jailer and Firecracker start in it, as they do under fcd-vmm in the suite's
namespace). Jail uids come from a range outside fcd's pool.

Importable: ``with Baseline.from_suite(suite, "bench") as b: b.create(i)`` lets
every bench print its figures as ratios to a baseline measured in the same run.
Standalone it starts a suite only to import the template and prints its own figures:

    .venv/bin/python bench/baseline.py --vms 20 --concurrency 1 8
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import errno
import http.client
import json
import os
import secrets
import select
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from asyncinotify import Inotify, Mask  # noqa: E402

from fcd_storage import fileio  # noqa: E402
from fcd_vmm import cgroups  # noqa: E402
from fcd_vmm.plan import cgroup_settings  # noqa: E402
from fcd_vmm.procs import set_child_subreaper  # noqa: E402

_closer = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="bare-close")


@contextlib.contextmanager
def closed_later(ino: Inotify) -> Iterator[Inotify]:
    """``ino``, closed by a worker thread afterwards: closing an inotify descriptor that
    had a watch waits in the kernel for an SRCU grace period (~12 ms), which is not
    the create's work (fcd-vmm keeps one instance instead: fcd_vmm.pathwait)."""
    try:
        yield ino
    finally:
        _closer.submit(ino.close)


BARE_UID = 980_000
"""Jail uids of the bare sequence: above fcd's default pool and snapshot.py's 970000+."""
MEM_MIB = 128
BOOT_TIMEOUT_S = 60.0
PHASES = ("network", "disk+kernel", "jailer+socket", "4 PUTs+InstanceStart")
"""The phases of a bare create, in ms, appended to ``Baseline.phases`` per create."""


@dataclass
class BareVm:
    index: int
    vm_id: str
    uid: int
    tap: str
    ip: str
    jail: Path
    pidfd: int
    pid: int
    pgid: int


class _UnixHTTP(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket (the jail path is reached through a dir fd)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self._path)
        self.sock = s


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _put(conn: _UnixHTTP, path: str, body: bytes) -> None:
    conn.request("PUT", path, body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 204:
        raise RuntimeError(f"bare PUT {path}: {r.status} {data!r}")


class Baseline:
    """Bare creates and deletes in a network namespace of their own."""

    def __init__(
        self,
        *,
        firecracker: str,
        jailer: str,
        kernel: str,
        rootfs: str,
        kernel_args: str,
        mem_overhead_mib: int = 64,
    ) -> None:
        self.fc, self.jailer = firecracker, jailer
        self.kernel, self.rootfs, self.kernel_args = kernel, rootfs, kernel_args
        self.mem_overhead_mib = mem_overhead_mib
        tag = secrets.token_hex(3)
        self.ns = f"fcdb-{tag}"
        self.bridge = "fcdbbr0"
        self.table = f"fcdb{tag}"
        self.parent_cgroup = f"fcdbase-{tag}"
        self.base = Path(tempfile.mkdtemp(prefix="fcd-base-", dir="/var/tmp"))
        self.base.chmod(0o755)
        self.version = cgroups.detect_version("auto")
        self.mounts = cgroups.read_mounts()
        self.controllers = cgroups.available_controllers(self.version, self.mounts)
        self._local = threading.local()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._workers = 0
        self._live: dict[int, BareVm] = {}
        self._lock = threading.Lock()
        self._bridge_index = 0
        self.phases: list[dict[str, float]] = []

    @classmethod
    def from_suite(cls, suite: Any, template: str) -> Baseline:
        """The suite's binaries and ``template``'s kernel, rootfs and kernel args."""
        import asyncio

        from fcd_common.proto import storage as sp
        from fcd_common.rpc import RpcClient

        async def get() -> sp.TemplateInfo:
            c = RpcClient(suite.cfg.socket("storage"), sp.PROTOCOL, timeout=60)
            try:
                return await c.call(sp.TemplateGet(name=template))
            finally:
                await c.close()

        t = asyncio.run(get())
        return cls(
            firecracker=suite.firecracker,
            jailer=suite.jailer,
            kernel=t.kernel_path,
            rootfs=t.rootfs_path,
            kernel_args=t.kernel_args,
            mem_overhead_mib=suite.cfg.limits.mem_overhead_mib,
        )

    # --- set-up (untimed) ------------------------------------------------------------
    def __enter__(self) -> Baseline:
        from pyroute2 import netns

        set_child_subreaper()  # the jailer's orphans come back to us, as to fcd-vmm
        netns.create(self.ns)
        try:
            self._workers_for(1)
            self._run(self._setup_ns)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _workers_for(self, n: int) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None or self._workers < n:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = concurrent.futures.ThreadPoolExecutor(
                n, thread_name_prefix="bare", initializer=self._enter_ns
            )
            self._workers = n
        return self._pool

    def _enter_ns(self) -> None:
        """Each worker thread joins the namespace (setns is per thread; children inherit)."""
        from pyroute2 import netns

        netns.setns(self.ns)

    def _ipr(self) -> Any:
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            from pyroute2 import IPRoute

            ipr = self._local.ipr = IPRoute()
        return ipr

    def _nft(self) -> Any:
        nft = getattr(self._local, "nft", None)
        if nft is None:
            import nftables

            nft = self._local.nft = nftables.Nftables()
            nft.set_json_output(True)
        return nft

    def _nft_cmd(self, *cmds: dict[str, Any]) -> None:
        rc, _out, err = self._nft().json_cmd({"nftables": list(cmds)})
        if rc != 0:
            raise RuntimeError(f"nft: {err}")

    def _run(self, fn: Any, *args: Any) -> Any:
        assert self._pool is not None
        return self._pool.submit(fn, *args).result()

    def _setup_ns(self) -> None:
        ipr = self._ipr()
        ipr.link("add", ifname=self.bridge, kind="bridge")
        self._bridge_index = ipr.link("get", ifname=self.bridge)[0]["index"]
        ipr.addr("add", index=self._bridge_index, address="10.99.0.1", prefixlen=16)
        ipr.link("set", index=self._bridge_index, state="up")
        self._nft_cmd(
            {"add": {"table": {"family": "inet", "name": self.table}}},
            {
                "add": {
                    "set": {
                        "family": "inet",
                        "table": self.table,
                        "name": "vms",
                        "type": "ipv4_addr",
                    }
                }
            },
        )

    # --- the timed sequence ------------------------------------------------------------
    def create(self, i: int) -> float:
        """One bare create on a worker thread; its seconds."""
        return float(self._run(self._create, i)[1])

    def delete(self, i: int) -> float:
        return float(self._run(self._delete, i))

    def creates(self, indices: list[int], concurrency: int) -> float:
        """Create ``indices`` ``concurrency`` at a time; the wall-clock seconds for all."""
        pool = self._workers_for(concurrency)
        t0 = time.perf_counter()
        for f in [pool.submit(self._create, i) for i in indices]:
            f.result()
        return time.perf_counter() - t0

    def deletes(self, indices: list[int], concurrency: int) -> float:
        pool = self._workers_for(concurrency)
        t0 = time.perf_counter()
        for f in [pool.submit(self._delete, i) for i in indices]:
            f.result()
        return time.perf_counter() - t0

    def _create(self, i: int) -> tuple[BareVm, float]:
        uid = BARE_UID + i
        vm_id = f"bare-{i}-{secrets.token_hex(3)}"
        tap, ip = f"fcb{i}", f"10.99.{1 + i // 250}.{1 + i % 250}"
        jail = self.base / Path(self.fc).name / vm_id
        t0 = time.perf_counter()
        self._network(tap, ip, uid)  # 1, 2
        t1 = time.perf_counter()
        self._files(jail / "root", uid)  # 3, 4
        t2 = time.perf_counter()
        pid, pidfd = self._start(vm_id, jail / "root", uid)  # 5, 6
        t3 = time.perf_counter()
        vm = BareVm(i, vm_id, uid, tap, ip, jail, pidfd, pid, os.getpgid(pid))
        with self._lock:
            self._live[i] = vm
        self._configure(vm, jail / "root" / "run" / "firecracker.socket")  # 7
        t4 = time.perf_counter()
        ms = [(b - a) * 1000 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))]
        with self._lock:
            self.phases.append(dict(zip(PHASES, ms, strict=True)))
        return vm, t4 - t0

    def _network(self, tap: str, ip: str, uid: int) -> None:
        """A TAP owned by the jail uid, on the bridge, up; one nft element."""
        ipr = self._ipr()
        ipr.link("add", ifname=tap, kind="tuntap", mode="tap", uid=uid, gid=uid)
        idx = ipr.link("get", ifname=tap)[0]["index"]
        ipr.link("set", index=idx, master=self._bridge_index, state="up")
        elem = {"family": "inet", "table": self.table, "name": "vms", "elem": [ip]}
        self._nft_cmd({"add": {"element": elem}})

    def _files(self, root: Path, uid: int) -> None:
        """The disk cloned into the jail (reflink, else sparse copy), the kernel linked."""
        root.mkdir(parents=True, mode=0o700)
        src = os.open(self.rootfs, os.O_RDONLY | os.O_CLOEXEC)
        dst = os.open(root / "rootfs.ext4", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if not fileio.reflink(src, dst):
                fileio.copy_sparse(src, dst)
            os.fchown(dst, uid, uid)
        finally:
            os.close(src)
            os.close(dst)
        if os.stat(self.kernel).st_mode & 0o004:
            os.link(self.kernel, root / "vmlinux")
        else:
            shutil.copyfile(self.kernel, root / "vmlinux")
            os.chown(root / "vmlinux", uid, uid)

    def _start(self, vm_id: str, root: Path, uid: int) -> tuple[int, int]:
        """The jailer, then inotify until the pid file (the real jailer may exit before
        it is written) and the API socket exist; (pid, pidfd)."""
        settings = cgroup_settings(
            self.version, self.controllers, 1, MEM_MIB, self.mem_overhead_mib
        )
        argv = [
            self.jailer, "--id", vm_id, "--exec-file", self.fc, "--uid", str(uid),
            "--gid", str(uid), "--chroot-base-dir", str(self.base),
            "--cgroup-version", str(self.version), "--parent-cgroup", self.parent_cgroup,
        ]  # fmt: skip
        for name, value in settings:
            argv += ["--cgroup", f"{name}={value}"]
        argv += ["--daemonize", "--new-pid-ns", "--", "--api-sock", "/run/firecracker.socket"]
        pid_file = root / f"{Path(self.fc).name}.pid"
        sock = root / "run" / "firecracker.socket"
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        with closed_later(Inotify()) as ino:  # closing waits ~12 ms in the kernel: not here
            ino.sync_timeout = 1.0
            ino.add_watch(root, Mask.CREATE | Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.ONLYDIR)
            rc = os.spawnv(os.P_WAIT, self.jailer, argv)
            if rc != 0:
                raise RuntimeError(f"bare jailer exited {rc}")
            while not (text := _read(pid_file)):
                if time.monotonic() > deadline:
                    raise RuntimeError("bare: no pid file")
                ino.sync_get()
            pid = int(text)
            pidfd = os.pidfd_open(pid)
            ino.add_watch(sock.parent, Mask.CREATE | Mask.ONLYDIR)
            while not sock.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bare: no API socket from pid {pid}")
                ino.sync_get()
        return pid, pidfd

    def _configure(self, vm: BareVm, sock: Path) -> None:
        """Four PUTs and InstanceStart over one connection."""
        dfd = os.open(sock.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            conn = _UnixHTTP(f"/proc/self/fd/{dfd}/{sock.name}")
            for attempt in range(200):  # bound, not yet listening: retried like fcd-vmm
                try:
                    conn.connect()
                    break
                except OSError as e:
                    if e.errno != errno.ECONNREFUSED or attempt == 199:
                        raise
                    time.sleep(0.001)
            boot_args = f"console=ttyS0 reboot=k panic=1 {self.kernel_args}".strip()
            mac = "06:00:" + ":".join(f"{b:02x}" for b in (vm.index + 1).to_bytes(4, "big"))
            for path, body in (
                ("/machine-config", {"vcpu_count": 1, "mem_size_mib": MEM_MIB}),
                ("/boot-source", {"kernel_image_path": "/vmlinux", "boot_args": boot_args}),
                (
                    "/drives/rootfs",
                    {
                        "drive_id": "rootfs",
                        "path_on_host": "/rootfs.ext4",
                        "is_root_device": True,
                        "is_read_only": False,
                    },
                ),
                (
                    "/network-interfaces/eth0",
                    {"iface_id": "eth0", "host_dev_name": vm.tap, "guest_mac": mac},
                ),
                ("/actions", {"action_type": "InstanceStart"}),
            ):
                _put(conn, path, json.dumps(body).encode())
            conn.close()
        finally:
            os.close(dfd)

    def _delete(self, i: int) -> float:
        with self._lock:
            vm = self._live.pop(i)
        t0 = time.perf_counter()
        self._kill(vm)
        shutil.rmtree(vm.jail)
        for cg in cgroups.vm_cgroup_dirs(self.mounts, self.parent_cgroup, vm.vm_id):
            for _ in range(1000):  # a killed task leaves its cgroup a moment after its exit
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    time.sleep(0.0005)
        self._ipr().link("del", ifname=vm.tap)
        elem = {"family": "inet", "table": self.table, "name": "vms", "elem": [vm.ip]}
        self._nft_cmd({"delete": {"element": elem}})
        return time.perf_counter() - t0

    @staticmethod
    def _kill(vm: BareVm) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(vm.pidfd, signal.SIGKILL)
        select.select([vm.pidfd], [], [], 10)
        os.close(vm.pidfd)
        # Firecracker and the jailer's two forks share its process group: reap them all
        while True:
            try:
                got, _ = os.waitpid(-vm.pgid, os.WNOHANG)
            except ChildProcessError:
                break
            if got == 0:
                break

    # --- clean-up ---------------------------------------------------------------------
    def close(self) -> None:
        from pyroute2 import netns

        for i in list(self._live):
            with contextlib.suppress(Exception):
                self._kill(self._live.pop(i))
        for pid_file in self.base.glob("*/*/root/*.pid"):  # a create that failed half-way
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                if os.stat(f"/proc/{pid}/root").st_ino == pid_file.parent.stat().st_ino:
                    os.kill(pid, signal.SIGKILL)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with contextlib.suppress(Exception):
            netns.remove(self.ns)
        shutil.rmtree(self.base, ignore_errors=True)
        for d in sorted(Path("/sys/fs/cgroup").glob(f"**/{self.parent_cgroup}/*"), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        for d in Path("/sys/fs/cgroup").glob(f"**/{self.parent_cgroup}"):
            with contextlib.suppress(OSError):
                d.rmdir()


def stats_ms(xs: list[float]) -> tuple[float, float]:
    """(median, p90) in ms."""
    ms = sorted(x * 1000 for x in xs)
    return statistics.median(ms), ms[max(0, round(0.9 * len(ms)) - 1)]


def measure(b: Baseline, n: int, offset: int = 0) -> tuple[list[float], list[float]]:
    """``n`` sequential bare creates, then their deletes: (create s, delete s)."""
    creates = [b.create(offset + k) for k in range(n)]
    deletes = [b.delete(offset + k) for k in range(n)]
    return creates, deletes


def throughput(b: Baseline, n: int, concurrency: int, offset: int = 0) -> float:
    """VMs per second for ``n`` creates ``concurrency`` at a time (deleted afterwards)."""
    idx = list(range(offset, offset + n))
    took = b.creates(idx, concurrency)
    b.deletes(idx, concurrency)
    return n / took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vms", type=int, default=20)
    p.add_argument("--concurrency", type=int, nargs="*", default=[])
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    from e2e.harness import running_suite
    from fcd_dev import devup

    with tempfile.TemporaryDirectory(prefix="fcd-bench-") as tmp, running_suite(Path(tmp)) as suite:
        devup.import_demo_template(suite, "bench")
        real = bool(os.environ.get("FCD_FIRECRACKER"))
        print(f"backend: {'real Firecracker' if real else 'Firecracker TEST DOUBLE'}")
        with Baseline.from_suite(suite, "bench") as b:
            creates, deletes = measure(b, args.vms)
            for name, xs in (("create", creates), ("delete", deletes)):
                med, p90 = stats_ms(xs)
                print(f"bare {name:<7} n={len(xs):<4} median={med:7.1f} ms  p90={p90:7.1f} ms")
            for c in args.concurrency:
                vps = throughput(b, max(c, args.vms), c, offset=args.vms)
                print(f"bare {c} concurrent creates: {vps:.1f} VMs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
