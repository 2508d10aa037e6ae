#!/usr/bin/env python3
"""Snapshot create and restore-to-running latency through fcd, next to a bare script.

For each memory size: one netns-mode VM is created through the API and
snapshotted ``--n`` times (``POST /v1/vms/{id}/snapshots``, then=resume); the
last snapshot is restored ``--n`` times (``POST /v1/snapshots/{name}/restore``
until it answers ``running``; clones are kept alive, so the last restores run
with that many clones live). Then a bare script does the same restore without
any daemon, in one run on the same machine with the same binaries: a fresh
network namespace with the TAP the snapshot names, a reflink of the snapshot's
disk and hard links of its state and memory into a jail (read through an ACL
entry), the jailer, an inotify-free wait for the API socket, and ``PUT
/snapshot/load`` with ``resume_vm``. Restore latency is printed for both and
as a ratio, and for clones 1..``--scale`` live to show whether it stays flat.
Last, full against diff snapshots of a VM with dirty-page tracking: time, and
memory written per snapshot.

Figures, not assertions. Firecracker test double unless FCD_FIRECRACKER and
FCD_JAILER name real binaries. Needs root.

    .venv/bin/python bench/snapshot.py --mem 128 1024 --n 10 --scale 50
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from e2e.harness import api, running_suite  # noqa: E402
from fcd_dev import devup  # noqa: E402
from fcd_vmm import acl  # noqa: E402

BARE_UID = 970_000
"""Jail uids for the bare script: outside fcd's pool, so the two never meet."""


def stats(xs: list[float]) -> tuple[float, float]:
    ms = sorted(x * 1000 for x in xs)
    return statistics.median(ms), ms[max(0, round(0.9 * len(ms)) - 1)]


def line(name: str, xs: list[float]) -> str:
    med, p90 = stats(xs)
    return f"  {name:<34} n={len(xs):<3} median={med:8.1f} ms  p90={p90:8.1f} ms"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Bare:
    """Restore a snapshot with the jailer and one API call, no daemon."""

    def __init__(self, suite: Any, snap: dict[str, Any], base: Path) -> None:
        self.fc, self.jailer = suite.firecracker, suite.jailer
        self.snap, self.base = snap, base
        self.tap = snap["origin"]["tap"]
        base.mkdir(parents=True, exist_ok=True)
        self.made: list[tuple[str, Path]] = []

    def restore(self, i: int) -> float:
        uid, tag = BARE_UID + i, secrets.token_hex(3)
        vm_id, ns = f"bare-{tag}", f"fcdb-{tag}"
        t0 = time.perf_counter()
        root = self.base / Path(self.fc).name / vm_id / "root"
        self.made.append((ns, root.parent))  # cleaned up by close(), also after a failure
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "tuntap", "add", self.tap, "mode", "tap", "user", str(uid),
           "group", str(uid))  # fmt: skip
        sh("ip", "-n", ns, "link", "set", self.tap, "up")
        root.mkdir(parents=True)
        disk = root / "rootfs.ext4"
        sh("cp", "--reflink=auto", "--sparse=always", self.snap["disk_path"], str(disk))
        os.chown(disk, uid, uid)
        os.chmod(disk, 0o600)
        for src, leaf in ((self.snap["state_path"], "snapshot.vmstate"),
                          (self.snap["memory_path"], "snapshot.mem")):  # fmt: skip
            os.link(src, root / leaf)
            grant(Path(src), uid)
        subprocess.run(
            [
                self.jailer,
                "--id",
                vm_id,
                "--exec-file",
                self.fc,
                "--uid",
                str(uid),
                "--gid",
                str(uid),
                "--chroot-base-dir",
                str(self.base),
                "--netns",
                f"/run/netns/{ns}",
                "--daemonize",
                "--new-pid-ns",
                "--",
                "--api-sock",
                "/run/firecracker.socket",
            ],
            check=True,
        )
        sock = root / "run" / "firecracker.socket"
        while not sock.exists():
            time.sleep(0.0005)
        body = {
            "snapshot_path": "/snapshot.vmstate",
            "mem_backend": {"backend_type": "File", "backend_path": "/snapshot.mem"},
            "resume_vm": True,
        }
        short = f"/proc/self/fd/{os.open(sock.parent, os.O_RDONLY)}/{sock.name}"
        with httpx.Client(transport=httpx.HTTPTransport(uds=short), base_url="http://l") as c:
            for _ in range(200):  # the socket exists a moment before it listens
                try:
                    r = c.put("/snapshot/load", json=body)
                    break
                except httpx.TransportError:
                    time.sleep(0.001)
            if r.status_code != 204:
                raise SystemExit(f"bare /snapshot/load: {r.status_code} {r.text}")
        return time.perf_counter() - t0

    def close(self) -> None:
        for ns, jail in self.made:
            pid_file = jail / "root" / f"{Path(self.fc).name}.pid"
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(jail, ignore_errors=True)
        for path in (self.snap["state_path"], self.snap["memory_path"]):
            for uid in {BARE_UID + i for i in range(len(self.made))}:
                revoke(Path(path), uid)
        self.made.clear()


def grant(path: Path, uid: int) -> None:
    entries = _acl(path)
    os.setxattr(path, "system.posix_acl_access", acl.encode(acl.with_user(entries, uid)))


def revoke(path: Path, uid: int) -> None:
    entries = acl.without_user(_acl(path), uid)
    os.setxattr(path, "system.posix_acl_access", acl.encode(entries))


def _acl(path: Path) -> list[acl.Entry]:
    try:
        return acl.decode(os.getxattr(path, "system.posix_acl_access"))
    except OSError:
        return acl.from_mode(path.stat().st_mode)


def run_diff(c: httpx.Client, mem: int, n: int) -> None:
    """Full vs diff snapshots of one VM created with dirty-page tracking: a diff holds
    only the pages written since the last snapshot (then layered onto its parent)."""
    vm = f"diff-{mem}"
    body = {"id": vm, "template": "bench", "mem_size_mib": mem, "network_mode": "netns",
            "track_dirty_pages": True}  # fmt: skip
    c.post("/v1/vms", json=body).raise_for_status()
    fulls: list[float] = []
    diffs: list[float] = []
    written = {"full": 0, "diff": 0}
    names = []
    for k in range(n):
        for kind, acc in (("full", fulls), ("diff", diffs)):
            name = f"{kind}{mem}-{k}"
            t0 = time.perf_counter()
            r = c.post(f"/v1/vms/{vm}/snapshots", json={"name": name, "type": kind})
            acc.append(time.perf_counter() - t0)
            r.raise_for_status()
            written[kind] += r.json()["written_bytes"]
            names.append(name)
    print(line("full snapshot (API)", fulls))
    print(line("diff snapshot on top of it (API)", diffs))
    full_mib, diff_mib = written["full"] / n / 2**20, written["diff"] / n / 2**20
    print(f"  memory written per snapshot: full {full_mib:.1f} MiB, diff {diff_mib:.1f} MiB")
    c.delete(f"/v1/vms/{vm}", params={"force": "true"})
    for name in reversed(names):
        c.delete(f"/v1/snapshots/{name}")


def run_size(c: httpx.Client, suite: Any, mem: int, n: int, scale: int) -> None:
    src = f"src-{mem}"
    r = c.post(
        "/v1/vms",
        json={"id": src, "template": "bench", "mem_size_mib": mem, "network_mode": "netns"},
    )
    r.raise_for_status()
    takes: list[float] = []
    for k in range(n):
        t0 = time.perf_counter()
        r = c.post(f"/v1/vms/{src}/snapshots", json={"name": f"s{mem}-{k}"})
        takes.append(time.perf_counter() - t0)
        r.raise_for_status()
    snap = r.json()
    for k in range(n - 1):
        c.delete(f"/v1/snapshots/s{mem}-{k}")
    fcd: list[float] = []
    for k in range(max(n, scale)):
        t0 = time.perf_counter()
        r = c.post(f"/v1/snapshots/{snap['name']}/restore", json={"id": f"r{mem}-{k}"})
        fcd.append(time.perf_counter() - t0)
        if r.status_code != 201:
            raise SystemExit(f"restore failed: {r.status_code} {r.text}")
    with tempfile.TemporaryDirectory(prefix="fcd-bare-") as base:
        bare = Bare(suite, snap, Path(base))
        try:
            bares = [bare.restore(k) for k in range(n)]
        finally:
            bare.close()  # its processes and jails first; then the directory goes
    print(f"{mem} MiB VM ({snap['memory_size'] >> 20} MiB memory file)")
    print(line("snapshot create (API, then=resume)", takes))
    print(line("restore to running (API)", fcd[:n]))
    print(line("restore to running (bare script)", bares))
    print(f"  ratio fcd/bare (median): {stats(fcd[:n])[0] / stats(bares)[0]:.2f}x")
    if scale > n:
        for lo, hi in ((0, 10), (scale // 2, scale // 2 + 10), (scale - 10, scale)):
            print(line(f"restore with {lo + 1}..{hi} clones live", fcd[lo:hi]))
    for k in range(max(n, scale)):
        c.delete(f"/v1/vms/r{mem}-{k}", params={"force": "true"})
    c.delete(f"/v1/vms/{src}", params={"force": "true"})
    c.delete(f"/v1/snapshots/{snap['name']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mem", type=int, nargs="+", default=[128, 1024], metavar="MiB")
    p.add_argument("--n", type=int, default=10, help="snapshots and restores per size")
    p.add_argument("--scale", type=int, default=0, help="restores kept live (flatness)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fcd-bench-") as tmp, running_suite(Path(tmp)) as suite:
        devup.import_demo_template(suite, "bench")
        real = bool(os.environ.get("FCD_FIRECRACKER"))
        print(f"backend: {'real Firecracker' if real else 'Firecracker TEST DOUBLE'}")
        with api(suite, timeout=300) as c:
            for mem in args.mem:
                run_size(c, suite, mem, args.n, args.scale)
                run_diff(c, mem, args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
