"""A CPU quota written by fcd-vmm's cgroup code is enforced by the kernel (#11).

A busy loop is placed in a VM-like cgroup (``<mount>/<parent>/<vm id>``, made as
the jailer makes it) whose quota :func:`fcd_vmm.cgroup_limits.apply_cpu_quota`
set; after a few seconds the kernel's ``cpu.stat`` must show throttling and the
loop's CPU time must be about the quota, not a whole CPU. cgroup v1 on this
host's layout; v2 where its unified tree offers the cpu controller.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcd_vmm import cgroup_limits
from fcd_vmm.cgroups import read_mounts

pytestmark = pytest.mark.root

QUOTA = 0.2
RUN_S = 3.0


def _stat(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _vm_cgroup(mount: Path) -> Iterator[tuple[str, str, Path]]:
    parent, vm_id = f"fcdtest-cg-{secrets.token_hex(3)}", "cg-vm-1"
    leaf = mount / parent / vm_id
    leaf.mkdir(parents=True)
    try:
        yield parent, vm_id, leaf
    finally:
        for d in (leaf, leaf.parent):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # the killed loop leaves the cgroup a moment later


def _busy_loop_in(procs_file: Path) -> subprocess.Popen[bytes]:
    code = (
        f"import os\nopen({str(procs_file)!r}, 'w').write(str(os.getpid()))\n"
        "print('in', flush=True)\nwhile True:\n    pass\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"in"
    return p


def _measure(p: subprocess.Popen[bytes]) -> float:
    t0, c0 = time.monotonic(), _cpu_seconds(p.pid)
    time.sleep(RUN_S)  # the kernel's scheduler is what is measured here
    t1, c1 = time.monotonic(), _cpu_seconds(p.pid)
    return (c1 - c0) / (t1 - t0)


def test_cpu_quota_is_enforced_v1() -> None:
    mount = next((m for m in read_mounts() if m.fstype == "cgroup" and "cpu" in m.options), None)
    if mount is None:
        pytest.skip("no cgroup v1 hierarchy with the cpu controller on this host")
    with _vm_cgroup(mount.path) as (parent, vm_id, leaf):
        cgroup_limits.apply_cpu_quota(1, parent, vm_id, QUOTA)
        assert (leaf / "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert (leaf / "cpu.cfs_period_us").read_text().strip() == "100000"
        before = _stat(leaf / "cpu.stat")
        p = _busy_loop_in(leaf / "tasks")
        try:
            share = _measure(p)
            after = _stat(leaf / "cpu.stat")
            limits = cgroup_limits.read_limits(1, parent, vm_id)
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
    throttled = after["nr_throttled"] - before["nr_throttled"]
    periods = after["nr_periods"] - before["nr_periods"]
    print(
        f"v1: busy loop got {share:.3f} CPU under quota {QUOTA}; "
        f"throttled {throttled}/{periods} periods, {after['throttled_time'] / 1e9:.2f}s"
    )
    assert limits.cpu_quota == QUOTA
    assert throttled > 0.5 * periods > 0
    assert after["throttled_time"] > before["throttled_time"]
    assert 0.05 < share < QUOTA * 1.5  # about the quota, far from a whole CPU


def test_cpu_quota_is_enforced_v2() -> None:
    mount = next((m for m in read_mounts() if m.fstype == "cgroup2"), None)
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy on this host")
    controllers = (mount.path / "cgroup.controllers").read_text().split()
    if "cpu" not in controllers:
        pytest.skip(
            f"the cgroup v2 tree at {mount.path} has no cpu controller here "
            f"({' '.join(controllers) or 'none'}): cpu is bound to the v1 hierarchy"
        )
    with _vm_cgroup(mount.path) as (parent, vm_id, leaf):
        for d in (mount.path, leaf.parent):
            (d / "cgroup.subtree_control").write_text("+cpu")
        cgroup_limits.apply_cpu_quota(2, parent, vm_id, QUOTA)
        assert (leaf / "cpu.max").read_text().split() == ["20000", "100000"]
        before = _stat(leaf / "cpu.stat")
        p = _busy_loop_in(leaf / "cgroup.procs")
        try:
            share = _measure(p)
            after = _stat(leaf / "cpu.stat")
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
    print(f"v2: busy loop got {share:.3f} CPU under quota {QUOTA}")
    assert after["nr_throttled"] > before["nr_throttled"]
    assert after["usage_usec"] - before["usage_usec"] < QUOTA * 1.5 * RUN_S * 1e6 * 1.2
    assert 0.05 < share < QUOTA * 1.5
