#!/usr/bin/env python3
"""Prometheus scrape time and ``GET /v1/vms/{id}/metrics`` latency at 10 and 1,000 VMs.

Two set-ups, both printed:

* **real** (``--real N``, default 10): the four daemons (tests/fcd_dev/suite.py)
  with N VMs of the Firecracker double (FCD_FIRECRACKER/FCD_JAILER for real
  binaries), created through the API. Timed: the per-VM metrics call (fcd-vmm
  flushes Firecracker's metrics and reads cgroup, /proc and the metrics file;
  fcd-net reads the TAP), a scrape of ``/metrics``, one background collection
  (``vmm.usage_all`` + ``net.counters_all``) measured directly against the real
  helpers, and pause+resume latency alone and while scrapes run back to back.
* **helpers** (``--helpers N``, default 1,000): the helpers' reads behind one
  collection at N VMs, without RPC: fcd-net's real core in an anonymous netns
  with N leases and real TAPs (``net.counters_all``: one link dump), and
  fcd-vmm's usage reader over N real cgroups and N jails with metrics files.
* **scale** (``--scale M``, default 1,000): fcd-api's real app, registry and
  RPC clients, the VMs created through the API, but the helpers are the unit
  tests' fakes (tests/unit/api_fakes.py) on real Unix sockets: they answer
  ``vmm.usage_all``/``net.counters_all`` with M full items (msgspec over the
  socket as the real ones do), because 1,000 double processes do not fit this
  machine. The real helpers' per-VM read cost is the ``real`` set-up's
  collection time divided by N.

Figures, not assertions. Needs root for ``real``.

    .venv/bin/python bench/metrics.py --real 10 --scale 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from e2e.harness import api, running_suite  # noqa: E402
from fcd_api.app import create_asgi  # noqa: E402
from fcd_api.metrics_collect import Collector  # noqa: E402
from fcd_api.prom import Exposition  # noqa: E402
from fcd_common.config import LimitsConfig  # noqa: E402
from fcd_common.proto import net as pnet  # noqa: E402
from fcd_common.proto import vmm as pvmm  # noqa: E402
from fcd_common.proto.usage import UsageAll  # noqa: E402
from fcd_common.rpc import RpcClient  # noqa: E402
from fcd_dev import devup  # noqa: E402


def line(name: str, xs: list[float]) -> str:
    ms = sorted(x * 1000 for x in xs)
    p90 = ms[max(0, round(0.9 * len(ms)) - 1)]
    return f"  {name:<44} n={len(xs):<4} median={statistics.median(ms):8.2f} ms  p90={p90:8.2f} ms"


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def series(text: str) -> int:
    return sum(len(f.samples) for f in text_string_to_metric_families(text))


# --- real daemons -----------------------------------------------------------------------


def real(n_vms: int, n: int, tmp: Path) -> None:
    print(f"real: the four daemons, {n_vms} VMs")
    with running_suite(tmp, metrics_interval_s=1.0) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        t0 = time.perf_counter()
        for i in range(n_vms):
            r = c.post("/v1/vms", json={"id": f"b{i}", "template": "demo"})
            assert r.status_code == 201, r.text
        print(f"  created {n_vms} VMs in {time.perf_counter() - t0:.1f} s")
        time.sleep(2.5)  # a collection with every VM in it
        print(line("GET /v1/vms/{id}/metrics", timed(lambda: c.get("/v1/vms/b0/metrics"), n)))
        text = c.get("/metrics").text
        print(f"  /metrics: {len(text)} bytes, {series(text)} samples")
        print(line("GET /metrics (scrape)", timed(lambda: c.get("/metrics"), n)))

        cfg = suite.cfg

        async def collect() -> list[float]:
            vmm = RpcClient(cfg.socket("vmm"), pvmm.PROTOCOL)
            net = RpcClient(cfg.socket("net"), pnet.PROTOCOL)
            out = []
            try:
                for _ in range(n):
                    t0 = time.perf_counter()
                    got = await asyncio.gather(
                        vmm.call(UsageAll()), net.call(pnet.NetCountersAll())
                    )
                    out.append(time.perf_counter() - t0)
                    assert len(got[0].items) == n_vms and len(got[1].items) == n_vms
            finally:
                await vmm.close()
                await net.close()
            return out

        coll = asyncio.run(collect())
        print(line("collection: vmm.usage_all + net.counters_all", coll))
        per_vm = statistics.median(coll) / n_vms * 1000
        print(
            f"  -> {per_vm:.2f} ms per VM in the real helpers (x1000: ~{per_vm * 1000:.0f} ms, "
            "in the background, never in a scrape)"
        )

        def pause_resume() -> None:
            assert c.post("/v1/vms/b1/pause").status_code == 200
            assert c.post("/v1/vms/b1/resume").status_code == 200

        alone = timed(pause_resume, max(5, n // 3))
        stop = threading.Event()
        scrapes = [0]

        def scrape_loop() -> None:
            with api(suite) as c2:
                while not stop.is_set():
                    c2.get("/metrics")
                    scrapes[0] += 1

        th = threading.Thread(target=scrape_loop)
        th.start()
        busy = timed(pause_resume, max(5, n // 3))
        stop.set()
        th.join()
        print(line("pause+resume", alone))
        print(line(f"pause+resume during back-to-back scrapes ({scrapes[0]})", busy))


# --- 1,000 VMs over fake helpers ---------------------------------------------------------


def scale(m: int, n: int) -> None:
    from unit.api_fakes import api_harness

    print(f"scale: fcd-api's app and registry, {m} VMs, helpers faked on Unix sockets")

    async def main() -> None:
        async with api_harness(LimitsConfig(max_vms=m + 10)) as h:
            t0 = time.perf_counter()
            for i in range(m):
                r = await h.client.post(
                    "/v1/vms", json={"id": f"s{i}", "template": "base", "sandbox_id": f"sb{i}"}
                )
                assert r.status_code == 201, r.text
            print(f"  created {m} VMs through the API in {time.perf_counter() - t0:.1f} s")
            collector = Collector(h.flows, 10.0)
            exp = Exposition(h.registry, collector)
            app = create_asgi(h.flows, exposition=exp)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://fcd") as c:
                coll = []
                for _ in range(max(3, n // 5)):
                    t0 = time.perf_counter()
                    await collector.collect()  # includes rendering the per-VM text (a thread)
                    coll.append(time.perf_counter() - t0)
                print(line("collection (2 RPCs + registry + render)", coll))
                text = (await c.get("/metrics")).text
                print(f"  /metrics: {len(text)} bytes, {series(text)} samples")
                scrape = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    r = await c.get("/metrics")
                    scrape.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                print(line("GET /metrics (scrape, through the ASGI app)", scrape))
                print(line("Exposition.scrape() alone", timed(exp.scrape, n)))
                call = []
                for i in range(n):
                    t0 = time.perf_counter()
                    r = await c.get(f"/v1/vms/s{i * 7 % m}/metrics")
                    call.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                print(line("GET /v1/vms/{id}/metrics", call))

    asyncio.run(main())


# --- the helpers' own reads at N VMs ---------------------------------------------------------


def _net_part(cfg: Any, n_vms: int, n: int) -> Callable[[], None]:
    """fcd-net's real core with N leases (TAPs on the bridge); returns its teardown."""
    from fcd_net import counters
    from fcd_net.core import NetCore
    from fcd_net.firewall import Firewall
    from fcd_net.leases import LeaseStore
    from fcd_net.links import Links

    core = NetCore(cfg, LeaseStore(cfg.state("net")), Links(), Firewall(cfg.network))
    core.start()
    t0 = time.perf_counter()
    for i in range(n_vms):
        core.setup(f"vm-{i}", 900_001, 900_001)
    print(f"  fcd-net: {n_vms} leases with TAPs in {time.perf_counter() - t0:.1f} s")
    leases = list(core.store)
    assert len(counters.collect(leases).items) == n_vms
    name = f"net.counters_all's read ({n_vms} TAPs, /proc/net/dev)"
    print(line(name, timed(lambda: counters.collect(leases), n)))

    def teardown() -> None:
        for lease in list(core.store):
            core.teardown(lease.vm_id)

    return teardown


async def _vmm_part(cfg: Any, n_vms: int, n: int, made: list[Path]) -> None:
    """fcd-vmm's usage reader over N real cgroups and N jails with metrics files."""
    import json
    import os

    from tests.fakes.fc_double.telemetry import Metrics

    from fcd_vmm import cgroups
    from fcd_vmm.plan import jail_paths
    from fcd_vmm.procs import PidWatch
    from fcd_vmm.uidpool import JailRecord
    from fcd_vmm.usage_rpc import Live, UsageReader

    version = cgroups.detect_version("auto")
    mounts = cgroups.read_mounts()
    ctrls = cgroups.available_controllers(version, mounts)
    parent = cfg.jail.parent_cgroup
    for base in {m.path for m in mounts if (version == 1 and m.fstype == "cgroup"
                 and {"cpu", "cpuacct", "memory"} & m.options)
                 or (version == 2 and m.fstype == "cgroup2")}:  # fmt: skip
        made.append(base / parent)
        for i in range(n_vms):
            (base / parent / f"vm-{i}").mkdir(parents=True, exist_ok=True)
            made.insert(0, base / parent / f"vm-{i}")
    m = Metrics(1, 1)
    m.block_ids, m.net_ids = ["rootfs"], ["eth0"]
    one_line = (json.dumps(m.snapshot(), separators=(",", ":")) + "\n").encode()
    uid = os.getuid()
    me = PidWatch(os.getpid())  # this process stands in as every VM's Firecracker
    lives = []
    for i in range(n_vms):
        paths = jail_paths(cfg, f"vm-{i}")
        paths.root.mkdir(parents=True)
        paths.metrics_file.write_bytes(one_line * 10)
        lives.append(Live(JailRecord(vm_id=f"vm-{i}", uid=uid, gid=uid, state="running"), me))
    reader = UsageReader(cfg)

    def read_all() -> None:
        out = reader._read(lives, (version, ctrls), {})
        assert len(out) == n_vms and out[0].cgroup is not None, out[0]

    print(line(f"vmm.usage_all's read, first ({n_vms} x 10 lines)", timed(read_all, 1)))
    for live in lives:  # one new line per VM, as a flush between collections adds
        fd = os.open(jail_paths(cfg, live.rec.vm_id).metrics_file, os.O_WRONLY | os.O_APPEND)
        os.write(fd, one_line)
        os.close(fd)
    print(line(f"vmm.usage_all's read, then ({n_vms} cgroups + files)", timed(read_all, n)))
    me.close()


def helpers_inside(n_vms: int, n: int) -> None:
    """In an anonymous netns (see main): the reads behind one collection at N VMs, without
    the RPC -- fcd-net's ``net.counters_all`` and fcd-vmm's ``vmm.usage_all``."""
    import logging
    import secrets
    import shutil

    from fcd_common.config import Config, JailConfig, NetworkConfig, PathsConfig

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="fcd-metricsbench-"))
    cfg = Config(
        paths=PathsConfig(state_dir=str(tmp), run_dir=str(tmp), chroot_base=str(tmp / "jail")),
        network=NetworkConfig(subnet="10.200.0.0/16"),
        jail=JailConfig(
            uid_min=900_000, uid_max=901_000, parent_cgroup=f"fcdbench-{secrets.token_hex(3)}"
        ),
    )
    made: list[Path] = []
    teardown = _net_part(cfg, n_vms, n)
    try:
        asyncio.run(_vmm_part(cfg, n_vms, n, made))
    finally:
        teardown()
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--real", type=int, default=10, help="VMs with the real daemons (0: skip)")
    p.add_argument("--scale", type=int, default=1000, help="VMs over fake helpers (0: skip)")
    p.add_argument(
        "--helpers", type=int, default=1000, help="the helpers' reads at N VMs (0: skip)"
    )
    p.add_argument("--n", type=int, default=30, help="repetitions per figure")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inside:
        helpers_inside(args.helpers, args.n)
        return
    if args.real:
        with tempfile.TemporaryDirectory(prefix="fcd-bench-metrics-") as tmp:
            real(args.real, args.n, Path(tmp))
    if args.scale:
        scale(args.scale, args.n)
    if args.helpers:
        print(f"helpers: fcd-net's core and fcd-vmm's usage reader at {args.helpers} VMs")
        sys.stdout.flush()
        argv = [sys.executable, __file__, "--inside", "--helpers", str(args.helpers)]
        subprocess.run(["unshare", "--net", "--", *argv, "--n", str(args.n)], check=True)


if __name__ == "__main__":
    main()
