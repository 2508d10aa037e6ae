"""fcd-vmm's usage readers: cgroup parsers (v1, v2), RSS, and the sums of Firecracker's
metrics lines -- written by the Firecracker double's own telemetry (v1.7.0's layout) --
read incrementally from a real file, never through a link."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fcd_vmm import usage
from fcd_vmm.plan import JailPaths
from tests.fakes.fc_double.telemetry import Metrics

AT = "2026-01-01T00:00:00.000Z"


def test_cgroup_v1() -> None:
    tick = 1_000_000_000 // usage.USER_HZ
    cg = usage.parse_cgroup_v1(
        {
            "cpuacct.usage": "123456789\n",
            "cpuacct.stat": "user 7\nsystem 3\n",
            "cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n",
            "memory.usage_in_bytes": "1048576\n",
            "memory.limit_in_bytes": "201326592\n",
        },
        AT,
    )
    assert (cg.version, cg.cpu_usage_ns, cg.cpu_user_ns, cg.cpu_system_ns) == (
        1,
        123456789,
        7 * tick,
        3 * tick,
    )
    assert (cg.cpu_throttled_ns, cg.cpu_throttled_periods) == (5000, 2)
    assert (cg.memory_usage_bytes, cg.memory_limit_bytes) == (1 << 20, 192 << 20)
    unlimited = usage.parse_cgroup_v1({"memory.limit_in_bytes": "9223372036854771712"}, AT)
    assert unlimited.memory_limit_bytes is None and unlimited.cpu_usage_ns is None


def test_cgroup_v2() -> None:
    cg = usage.parse_cgroup_v2(
        {
            "cpu.stat": "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\n"
            "nr_periods 0\nnr_throttled 1\nthrottled_usec 40\n",
            "memory.current": "4096\n",
            "memory.max": "max\n",
        },
        AT,
    )
    assert (cg.cpu_usage_ns, cg.cpu_user_ns, cg.cpu_system_ns) == (2_000_000, 1_500_000, 500_000)
    assert (cg.cpu_throttled_ns, cg.cpu_throttled_periods) == (40_000, 1)
    assert cg.memory_usage_bytes == 4096 and cg.memory_limit_bytes is None


def test_rss() -> None:
    assert usage.parse_rss("Name:\tfirecracker\nVmRSS:\t   2048 kB\n") == 2 << 20
    assert usage.parse_rss("Name:\tx\n") is None
    assert (usage.read_rss(os.getpid()) or 0) > 0


def test_read_cgroup_through_dir_fds(tmp_path: Path) -> None:
    """Files under <mount>/<parent>/<vm>; a symlinked VM directory is not followed."""
    mount = tmp_path / "memory"
    (mount / "fcd" / "vm1").mkdir(parents=True)
    (mount / "fcd" / "vm1" / "memory.usage_in_bytes").write_text("77\n")
    (mount / "fcd" / "vm1" / "memory.limit_in_bytes").write_text("88\n")
    got, why = usage.read_cgroup(1, {"memory": mount}, "fcd", "vm1")
    assert why is None and got is not None
    assert (got.memory_usage_bytes, got.memory_limit_bytes) == (77, 88)
    (mount / "fcd" / "vm2").symlink_to(mount / "fcd" / "vm1")
    got, why = usage.read_cgroup(1, {"memory": mount}, "fcd", "vm2")
    assert got is None and why is not None and "not found" in why


def _jail(tmp_path: Path) -> JailPaths:
    paths = JailPaths(tmp_path, "firecracker", "vm1")
    paths.root.mkdir(parents=True)
    return paths


def _double_lines(metrics: Metrics, fd: int, n: int) -> None:
    metrics.fd = fd
    for i in range(n):
        metrics.inc_device("net", "eth0", "rx_bytes_count", 100 + i)
        metrics.inc_device("net", "eth0", "rx_packets_count")
        metrics.inc_device("block", "rootfs", "read_bytes", 4096)
        metrics.inc_device("block", "rootfs", "read_count")
        metrics.write()


def test_metrics_lines_are_summed_incrementally(tmp_path: Path) -> None:
    paths = _jail(tmp_path)
    paths.metrics_file.touch()
    m = Metrics(1, 1)
    m.block_ids, m.net_ids = ["rootfs"], ["eth0"]
    fd = os.open(paths.metrics_file, os.O_WRONLY | os.O_APPEND)
    tail = usage.MetricsTail()
    try:
        _double_lines(m, fd, 3)
        totals, problem, _n = tail.read(paths, os.getuid())
        assert problem is None and totals is not None
        assert totals.lines == 3
        (net,) = totals.net_io()
        assert (net.iface_id, net.rx_bytes, net.rx_packets) == ("eth0", 100 + 101 + 102, 3)
        (disk,) = totals.drive_io()
        assert (disk.drive_id, disk.read_bytes, disk.read_ops) == ("rootfs", 3 * 4096, 3)
        # a line half written is left for the next call; only new lines are read then
        os.write(fd, b'{"utc_timestamp_ms":1,"net_eth0":{"rx_bytes_count":5')
        totals, _, _n = tail.read(paths, os.getuid())
        assert totals is not None and totals.lines == 3
        os.write(fd, b',"rx_packets_count":1}}\nnot json\n')
        totals, _, _n = tail.read(paths, os.getuid())
        assert totals is not None and (totals.lines, totals.bad_lines) == (4, 1)
        assert totals.net_io()[0].rx_bytes == 303 + 5 and totals.last_ms == 1
    finally:
        os.close(fd)
    # after an fcd-vmm restart (a fresh tail) the whole file gives the same sums
    again, _, _n = usage.MetricsTail().read(paths, os.getuid())
    assert again is not None and again.net_io() == totals.net_io()


def test_the_real_binarys_line_is_read(tmp_path: Path) -> None:
    """A line as /opt/fc17/firecracker wrote it (keys, order, *_agg objects)."""
    m = Metrics(1, 1)
    m.block_ids, m.net_ids = ["rootfs"], ["eth0"]
    line = m.snapshot()
    assert list(line)[:5] == ["utc_timestamp_ms", "api_server", "balloon", "block_rootfs", "block"]
    assert line["block_rootfs"]["read_agg"] == {"min_us": 0, "max_us": 0, "sum_us": 0}
    t = usage.Totals()
    t.add(json.loads(json.dumps(line)))
    assert [d.drive_id for d in t.drive_io()] == ["rootfs"]
    assert [n.iface_id for n in t.net_io()] == ["eth0"]


@pytest.mark.parametrize("swap", ["symlink", "hardlink", "fifo"])
def test_a_swapped_metrics_file_is_not_read(tmp_path: Path, swap: str) -> None:
    paths = _jail(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text('{"utc_timestamp_ms":1}\n')
    if swap == "symlink":
        paths.metrics_file.symlink_to(secret)
    elif swap == "hardlink":
        os.link(secret, paths.metrics_file)
    else:
        os.mkfifo(paths.metrics_file)
    totals, problem, _n = usage.MetricsTail().read(paths, os.getuid())
    assert totals is None and problem is not None


def test_a_file_of_another_uid_is_not_read(tmp_path: Path) -> None:
    paths = _jail(tmp_path)
    paths.metrics_file.write_text('{"utc_timestamp_ms":1}\n')
    totals, problem, _n = usage.MetricsTail().read(paths, os.getuid() + 1)
    assert totals is None and problem is not None and "not the file" in problem


def test_a_huge_file_is_summed_over_its_end_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage, "MAX_READ", 200)
    paths = _jail(tmp_path)
    line = b'{"utc_timestamp_ms":1,"net_eth0":{"rx_packets_count":1}}\n'
    paths.metrics_file.write_bytes(line * 20)
    totals, problem, _n = usage.MetricsTail().read(paths, os.getuid())
    assert totals is not None and problem is not None and "only its end" in problem
    assert 0 < totals.lines < 20 and totals.bad_lines == 0


def test_sums_of_vms_gone_are_dropped(tmp_path: Path) -> None:
    paths = _jail(tmp_path)
    paths.metrics_file.write_text('{"utc_timestamp_ms":1,"net_eth0":{"rx_packets_count":2}}\n')
    tail = usage.MetricsTail()
    first, _, _n = tail.read(paths, os.getuid())
    tail.retain({"vm1"})
    kept, _, _n = tail.read(paths, os.getuid())
    assert first is kept  # still summing on from where it was
    tail.retain(set())
    again, _, _n = tail.read(paths, os.getuid())
    assert again is not first and again is not None and again.net_io()[0].rx_packets == 2


def test_a_backlog_is_summed_over_several_calls(tmp_path: Path) -> None:
    """A read budget (after an fcd-vmm restart, one collection for many VMs) cuts a read at
    a line end; the next call goes on from there and the sums end up whole."""
    paths = _jail(tmp_path)
    m = Metrics(1, 1)
    m.block_ids, m.net_ids = ["rootfs"], ["eth0"]
    fd = os.open(paths.metrics_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        _double_lines(m, fd, 60)  # ~330 KiB
    finally:
        os.close(fd)
    size = paths.metrics_file.stat().st_size
    assert size > 3 * usage.MIN_CHUNK
    tail = usage.MetricsTail()
    totals, problem, n = tail.read(paths, os.getuid(), 1)  # below the minimum chunk
    assert totals is not None and n == usage.MIN_CHUNK and 0 < totals.lines < 60
    assert problem is not None and "not summed yet" in problem
    while problem is not None:
        totals, problem, n = tail.read(paths, os.getuid(), usage.MIN_CHUNK)
    assert totals is not None and totals.lines == 60
    assert totals.net_io()[0].rx_packets == 60 and totals.drive_io()[0].read_ops == 60


def test_process_cpu_times_parse_past_a_comm_with_parens_and_spaces() -> None:
    tick = 1_000_000_000 // usage.USER_HZ
    fields = ["S"] + ["0"] * 10 + ["250", "40"] + ["0"] * 30
    text = f"4242 (fire) (cracker) {' '.join(fields)}\n"
    assert usage.parse_proc_cpu(text) == (250 * tick, 40 * tick)
    assert usage.parse_proc_cpu("4242 (x) S 1 2") is None


def test_cgroup_without_cpuacct_takes_the_process_cpu_time() -> None:
    cg = usage.parse_cgroup_v1({"memory.usage_in_bytes": "4096\n"}, "2026-01-01T00:00:00Z")
    assert cg.cpu_usage_ns is None
    got = usage.with_process_cpu(cg, os.getpid())
    assert got.cpu_usage_ns is not None and got.cpu_usage_ns > 0
    assert got.cpu_usage_ns == (got.cpu_user_ns or 0) + (got.cpu_system_ns or 0)
    assert got.memory_usage_bytes == 4096
    cg2 = usage.parse_cgroup_v1({"cpuacct.usage": "77\n"}, "2026-01-01T00:00:00Z")
    assert usage.with_process_cpu(cg2, os.getpid()).cpu_usage_ns == 77
