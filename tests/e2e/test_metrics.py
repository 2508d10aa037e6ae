"""End to end: a running VM's metrics from their real sources, a Prometheus scrape, and the
read-only API socket, through the four real daemons.

Sources checked against what the test reads itself: the VM's cgroup files (v1
here: cpuacct/memory under ``<parent>/<vm_id>``), the Firecracker double's metrics
lines in the jail (same format as v1.7.0's), Firecracker's /proc status (RSS) and
the TAP's kernel counters after real frames were sent to the guest's address from
the host side of the bridge (ARP resolution for UDP datagrams: they leave through
the TAP, which the booted double drains like a guest would).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fcd_dev import devup
from fcd_dev import suite as suite_mod

from .harness import api, in_ns, proc_status, running_suite

pytestmark = [pytest.mark.root, pytest.mark.e2e]

NETTOOLS = Path(__file__).parents[1] / "integration" / "nettools.py"


def _cgroup_file(parent: str, vm_id: str, ctrl: str, name: str) -> int:
    for line in Path("/proc/mounts").read_text().splitlines():
        f = line.split()
        if f[2] == "cgroup2" and ctrl in ("cpu", "memory"):
            base = Path(f[1])
            v2 = {"cpuacct.usage": "cpu.stat", "memory.limit_in_bytes": "memory.max"}
            text = (base / parent / vm_id / v2.get(name, name)).read_text()
            if name == "cpuacct.usage":
                usec = dict(x.split() for x in text.splitlines())["usage_usec"]
                return int(usec) * 1000
            return int(text)
        if f[2] == "cgroup" and ctrl in f[3].split(","):
            return int((Path(f[1]) / parent / vm_id / name).read_text())
    raise AssertionError(f"no {ctrl} hierarchy")


def _tap_stats(ns: str, tap: str) -> dict[str, int]:
    link = json.loads(in_ns(ns, "ip", "-s", "-j", "link", "show", tap))[0]
    return {f"rx_{k}": v for k, v in link["stats64"]["rx"].items()} | {
        f"tx_{k}": v for k, v in link["stats64"]["tx"].items()
    }


def _is_double(suite: Any) -> bool:
    return bool(suite.firecracker == suite_mod.test_double_paths()[0])


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(fams: dict[str, Any], name: str, **labels: str) -> float | None:
    for fam in fams.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_metrics_prometheus_and_read_only_socket(tmp_path: Path) -> None:
    with running_suite(tmp_path, metrics_interval_s=1.0) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        r = c.post(
            "/v1/vms",
            json={"id": "m1", "template": "demo", "sandbox_id": "sb-7", "mem_size_mib": 128},
        )
        assert r.status_code == 201, r.text
        vm = r.json()
        assert suite.netns is not None

        # real frames towards the guest: each datagram needs ARP, which leaves via the TAP
        for _ in range(3):
            in_ns(
                suite.netns,
                sys.executable,
                str(NETTOOLS),
                "udp-call",
                vm["ip_address"],
                "9",
                check=False,
            )
        tap = _tap_stats(suite.netns, vm["tap"])
        # A TAP counts a frame as sent when its reader takes it (tun_put_user). The
        # double drains its TAP like a guest with rx buffers; under real Firecracker the
        # minimal guest kernel has no virtio-net driver, so nothing is read: 0 is right.
        moved = 1 if _is_double(suite) else 0
        assert tap["tx_packets"] >= moved, tap

        r = c.get("/v1/vms/m1/metrics")
        assert r.status_code == 200, r.text
        limit = _check_vm_metrics(r.json(), vm, tap, suite)
        _check_scrape(c, limit, moved)
        _check_read_only(c, suite)
        assert c.get("/v1/vms/m1").json()["state"] == "running"
        assert c.delete("/v1/vms/m1", params={"force": True}).status_code == 204


def _check_vm_metrics(
    m: dict[str, Any], vm: dict[str, Any], tap: dict[str, int], suite: Any
) -> int:
    cfg = suite.cfg
    assert m["vm_id"] == "m1" and m["sandbox_id"] == "sb-7" and m["state"] == "running"
    assert m["problems"] == [], m["problems"]

    # cpu and memory: the VM's cgroup, as the kernel reports it right after
    cpu, mem = m["cpu"], m["memory"]
    assert cpu["vcpus"] == 1 and cpu["sampled_at"].endswith("Z")
    try:
        usage_ns = _cgroup_file(cfg.jail.parent_cgroup, "m1", "cpuacct", "cpuacct.usage")
    except FileNotFoundError:  # v1, cpuacct apart: no VM cgroup there, the process's times
        f = Path(f"/proc/{vm['pid']}/stat").read_text().rpartition(")")[2].split()
        usage_ns = (int(f[11]) + int(f[12])) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))
    assert 0 < round(cpu["usage_seconds"] * 1e9) <= usage_ns
    assert cpu["user_seconds"] is not None and cpu["system_seconds"] is not None
    assert cpu["throttled_seconds"] is not None
    limit = _cgroup_file(cfg.jail.parent_cgroup, "m1", "memory", "memory.limit_in_bytes")
    assert mem["limit_bytes"] == limit == (128 + cfg.limits.mem_overhead_mib) << 20
    assert 0 < mem["usage_bytes"] <= limit
    rss_kb = int(proc_status(vm["pid"])["VmRSS"].split()[0])
    assert mem["firecracker_rss_bytes"] > 0
    assert abs(mem["firecracker_rss_bytes"] - rss_kb * 1024) < 16 << 20
    assert mem["balloon_target_bytes"] is None and mem["balloon_actual_bytes"] is None

    # network: the TAP's counters (VM side: its rx is the TAP's tx) and Firecracker's
    net = m["network"]
    assert net["iface"] == vm["tap"]
    moved = 1 if _is_double(suite) else 0
    assert net["rx_packets"] >= tap["tx_packets"] >= moved
    assert net["rx_bytes"] >= tap["tx_bytes"] >= moved
    fc_net = net["firecracker"]
    assert fc_net["iface_id"] == "eth0"
    assert fc_net["rx_packets"] >= moved and fc_net["rx_bytes"] >= moved  # what the guest got

    # disk: Firecracker's block_<id> metrics, from lines in the jail's metrics file
    assert [d["drive_id"] for d in m["disk"]] == ["rootfs"]
    jail_root = Path(cfg.paths.chroot_base) / "firecracker" / "m1" / "root"
    lines = [json.loads(x) for x in (jail_root / "metrics.json").read_text().splitlines()]
    assert len(lines) >= 2  # InstanceStart's line and the flush for this call
    assert all("block_rootfs" in x and "net_eth0" in x for x in lines)
    stamps = {x["utc_timestamp_ms"] for x in lines}
    fc_at = m["disk"][0]["sampled_at"]
    assert fc_at == fc_net["sampled_at"]
    assert any(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000)) in fc_at for t in stamps)
    assert sum(x["net_eth0"]["rx_packets_count"] for x in lines) == fc_net["rx_packets"]
    rd = m["disk"][0]
    assert rd["read_bytes"] == sum(x["block_rootfs"]["read_bytes"] for x in lines)

    return int(limit)


def _check_scrape(c: httpx.Client, limit: int, moved: int) -> None:
    # Prometheus: parsed by prometheus_client, per-VM series from the collection
    deadline = time.monotonic() + 60
    while True:
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        fams = _families(r.text)
        got = _sample(fams, "fcd_vm_network_receive_packets_total", vm_id="m1")
        if (got is not None and got >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    labels = {"vm_id": "m1", "sandbox_id": "sb-7"}
    assert (_sample(fams, "fcd_vm_cpu_usage_seconds_total", **labels) or 0) > 0
    assert (_sample(fams, "fcd_vm_memory_usage_bytes", **labels) or 0) > 0
    assert _sample(fams, "fcd_vm_memory_limit_bytes", **labels) == limit
    assert (_sample(fams, "fcd_vm_firecracker_rss_bytes", **labels) or 0) > 0
    assert (_sample(fams, "fcd_vm_network_receive_packets_total", **labels) or 0) >= moved
    assert _sample(fams, "fcd_vm_disk_read_bytes_total", drive="rootfs", **labels) == 0
    assert _sample(fams, "fcd_vms", state="running") == 1
    assert _sample(fams, "fcd_vms", state="stopped") == 0
    for helper in ("net", "storage", "vmm"):
        assert _sample(fams, "fcd_helper_up", helper=helper) == 1
    assert (_sample(fams, "fcd_operations_total", kind="create_vm", outcome="ok") or 0) >= 1
    launch = _sample(fams, "fcd_rpc_duration_seconds_count", helper="fcd-vmm", method="vmm.launch")
    assert launch is not None and launch >= 1

    # an error is counted with its code
    assert c.post("/v1/vms/nope/pause").status_code == 404
    fams = _families(c.get("/metrics").text)
    assert _sample(fams, "fcd_operations_total", kind="pause_vm", outcome="not_found") == 1


def _check_read_only(c: httpx.Client, suite: Any) -> None:
    # the read-only socket: GET routes and /metrics; every mutation 403
    ro = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(suite.api_ro_socket)),
        base_url="http://fcd",
        timeout=60,
    )
    with ro:
        assert [v["id"] for v in ro.get("/v1/vms").json()] == ["m1"]
        assert ro.get("/v1/vms/m1/metrics").json()["cpu"]["usage_seconds"] > 0
        assert "fcd_vms" in _families(ro.get("/metrics").text)
        for method, path in (
            ("POST", "/v1/vms/m1/pause"),
            ("POST", "/v1/vms"),
            ("DELETE", "/v1/vms/m1?force=true"),
            ("POST", "/v1/network/reconcile"),
        ):
            r = ro.request(method, path, json={"id": "x", "template": "demo"})
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"]["code"] == "permission_denied"
            assert r.headers["x-request-id"]
