#!/usr/bin/env python3
"""Create and delete latency and cost through the public API, next to the bare sequence.

Starts the suite in a private network namespace (as `fcd up` does), imports
the minimal guest template, then in ``--rounds`` rounds, interleaved so load on
the machine hits both alike: the bare sequence of bench/baseline.py creates and
deletes ``--vms`` VMs, then fcd does (POST /v1/vms until it answers `running`,
DELETE /v1/vms/{id}?force=true), one after another. Printed:

- create and delete median/p90 for both, fcd's ratio to the bare figure and the
  difference in ms (the control plane's own latency);
- per-phase medians of a create and a delete, from the ``Server-Timing`` header
  fcd-api returns (its own phases, ``api.*``, and fcd-vmm's, ``vmm.*``);
- the CPU (user+sys from /proc, threads included, children not) each daemon
  spent per create+delete, and the bare sequence's own CPU for the same work
  (this process's, its jailer children not counted): the floor the four
  daemons' sum is compared with.

``--concurrency C``: C creates at once through fcd and through the bare
sequence; VMs per second and their ratio. ``--scale N``: N VMs kept alive;
create/delete latency with 10 vs N alive, ``GET /v1/vms`` with N, and the
daemons' RSS (stops early, and says so, if the machine runs short of memory).

Figures, not assertions. Runs against the Firecracker test double unless
FCD_FIRECRACKER/FCD_JAILER name real binaries. Needs root.

    .venv/bin/python bench/create_delete.py --vms 20 --rounds 3
    .venv/bin/python bench/create_delete.py --vms 10 --concurrency 32 --scale 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline import Baseline  # noqa: E402
from e2e.harness import api, running_suite  # noqa: E402
from fcd_dev import devup  # noqa: E402

DAEMONS = ("api", "net", "storage", "vmm")
TICK = os.sysconf("SC_CLK_TCK")
LOW_MEMORY_MIB = 3072
"""--scale stops creating when MemAvailable drops below this."""


def ms_stats(xs: list[float]) -> tuple[float, float]:
    """(median, p90) in ms of durations in seconds."""
    ms = sorted(x * 1000 for x in xs)
    return statistics.median(ms), ms[max(0, round(0.9 * len(ms)) - 1)]


def summary(name: str, xs: list[float]) -> str:
    """One line of figures for durations in seconds (bench/resources.py prints these)."""
    xs_ms = sorted(x * 1000 for x in xs)
    p90 = xs_ms[max(0, round(0.9 * len(xs_ms)) - 1)]
    return (
        f"{name:<7} n={len(xs_ms):<4} median={statistics.median(xs_ms):8.1f} ms  "
        f"p90={p90:8.1f} ms  max={xs_ms[-1]:8.1f} ms  mean={statistics.fmean(xs_ms):8.1f} ms"
    )


def cpu_s(pid: int) -> float:
    """utime + stime of the process (all its threads, not its children), seconds."""
    data = Path(f"/proc/{pid}/stat").read_text()
    rest = data[data.rfind(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parse_timing(header: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in (header or "").split(","):
        name, _, rest = item.strip().partition(";dur=")
        if name and rest:
            out[name] = float(rest)
    return out


def phase_medians(rows: list[dict[str, float]]) -> list[tuple[str, float]]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return [(n, statistics.median(r.get(n, 0.0) for r in rows)) for n in names]


def wrap(items: Iterable[str], indent: str = "    ", width: int = 100) -> str:
    lines, cur = [], indent
    for it in items:
        if len(cur) + len(it) + 2 > width and cur.strip():
            lines.append(cur.rstrip())
            cur = indent
        cur += it + "  "
    lines.append(cur.rstrip())
    return "\n".join(lines)


class Fcd:
    """The suite's daemons as seen by the bench: its API client, pids and counters."""

    def __init__(self, suite: Any, client: httpx.Client) -> None:
        self.suite, self.c = suite, client
        self.pids = {d: suite.procs[d].pid for d in DAEMONS}
        self.create_phases: list[dict[str, float]] = []
        self.delete_phases: list[dict[str, float]] = []

    def cpu(self) -> dict[str, float]:
        return {d: cpu_s(p) for d, p in self.pids.items()}

    def rss(self) -> dict[str, float]:
        return {d: rss_mib(p) for d, p in self.pids.items()}

    def create(self, vm_id: str) -> float:
        t0 = time.perf_counter()
        r = self.c.post("/v1/vms", json={"id": vm_id, "template": "bench"})
        took = time.perf_counter() - t0
        if r.status_code != 201:
            raise SystemExit(f"create {vm_id} failed: {r.status_code} {r.text}")
        self.create_phases.append(parse_timing(r.headers.get("server-timing")))
        return took

    def delete(self, vm_id: str) -> float:
        t0 = time.perf_counter()
        r = self.c.delete(f"/v1/vms/{vm_id}", params={"force": "true"})
        took = time.perf_counter() - t0
        if r.status_code not in (200, 204):
            raise SystemExit(f"delete {vm_id} failed: {r.status_code} {r.text}")
        self.delete_phases.append(parse_timing(r.headers.get("server-timing")))
        return took


def run_rounds(fcd: Fcd, bare: Baseline, n: int, rounds: int) -> None:
    fc_c: list[float] = []
    fc_d: list[float] = []
    b_c: list[float] = []
    b_d: list[float] = []
    cpu = dict.fromkeys(DAEMONS, 0.0)
    bare_cpu = 0.0
    for r in range(rounds):
        idx = range(r * n, (r + 1) * n)
        c0 = time.process_time()
        b_c += [bare.create(i) for i in idx]
        b_d += [bare.delete(i) for i in idx]
        bare_cpu += time.process_time() - c0
        before = fcd.cpu()
        ids = [f"bench-{i}" for i in idx]
        fc_c += [fcd.create(v) for v in ids]
        fc_d += [fcd.delete(v) for v in ids]
        after = fcd.cpu()
        for d in DAEMONS:
            cpu[d] += after[d] - before[d]
    print(
        f"{'':8}{'fcd median':>12}{'p90':>9}  {'bare median':>12}{'p90':>9}  {'ratio':>6}  fcd-bare"
    )
    for name, fx, bx in (("create", fc_c, b_c), ("delete", fc_d, b_d)):
        fm, fp = ms_stats(fx)
        bm, bp = ms_stats(bx)
        print(
            f"{name:<8}{fm:9.1f} ms{fp:6.1f} ms  {bm:9.1f} ms{bp:6.1f} ms  "
            f"{fm / bm:5.2f}x  {fm - bm:+7.1f} ms"
        )
    print("create phases, median ms (Server-Timing; storage and network run concurrently):")
    print(wrap(f"{k} {v:.2f}" for k, v in phase_medians(fcd.create_phases)))
    print("bare create phases, median ms:")
    print(wrap(f"{k} {v:.2f}" for k, v in phase_medians(bare.phases)))
    print("delete phases, median ms:")
    print(wrap(f"{k} {v:.2f}" for k, v in phase_medians(fcd.delete_phases)))
    total = rounds * n
    per = {d: cpu[d] * 1000 / total for d in DAEMONS}
    print(
        "CPU per create+delete (user+sys, ms): "
        + "  ".join(f"fcd-{d} {per[d]:.1f}" for d in DAEMONS)
        + f"  total {sum(per.values()):.1f}"
        + f"  (bare sequence's own, children excluded: {bare_cpu * 1000 / total:.1f})"
    )


async def _fcd_burst(suite: Any, ids: list[str], concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = httpx.AsyncHTTPTransport(uds=str(suite.api_socket), limits=limits)
    async with httpx.AsyncClient(transport=transport, base_url="http://fcd", timeout=300) as c:
        sem = asyncio.Semaphore(concurrency)

        async def one(vm_id: str) -> int:
            async with sem:
                r = await c.post("/v1/vms", json={"id": vm_id, "template": "bench"})
                return r.status_code

        t0 = time.perf_counter()
        codes = await asyncio.gather(*(one(v) for v in ids))
        took = time.perf_counter() - t0
    bad = [c for c in codes if c != 201]
    if bad:
        print(f"  {len(bad)} of {len(ids)} concurrent creates failed: {sorted(set(bad))}")
    return took


def run_concurrency(fcd: Fcd, bare: Baseline, concurrency: int, offset: int) -> None:
    n = concurrency
    bare_took = bare.creates(list(range(offset, offset + n)), concurrency)
    bare.deletes(list(range(offset, offset + n)), concurrency)
    ids = [f"conc-{i}" for i in range(n)]
    took = asyncio.run(_fcd_burst(fcd.suite, ids, concurrency))
    for v in ids:
        fcd.delete(v)
    print(
        f"{n} concurrent creates: fcd {n / took:.1f} VMs/s, bare {n / bare_took:.1f} VMs/s "
        f"({bare_took / took:.0%} of bare)"
    )


def _bare_ten(bare: Baseline, offset: int) -> tuple[float, float, dict[str, float]]:
    """Median create and delete of 10 bare VMs, one after another (ms), and the
    median of each phase of those creates."""
    idx = range(offset, offset + 10)
    p0 = len(bare.phases)
    creates = [bare.create(i) for i in idx]
    deletes = [bare.delete(i) for i in idx]
    return ms_stats(creates)[0], ms_stats(deletes)[0], dict(phase_medians(bare.phases[p0:]))


def run_scale(fcd: Fcd, bare: Baseline, target: int, offset: int) -> None:
    """Keep up to ``target`` VMs alive: latency and CPU at 10 vs N, GET /v1/vms, RSS.

    The bare sequence creates and deletes 10 VMs before the population grows and
    again with it alive: what the same kernel work and the same jailer and
    Firecracker cost with N VMs around, without fcd."""
    bare_lo = _bare_ten(bare, offset)
    rss0 = fcd.rss()
    c0 = len(fcd.create_phases)
    creates: list[float] = []
    snaps: list[dict[str, float]] = []  # CPU before create i, then after the last
    for i in range(target):
        if i % 50 == 0 and mem_available_mib() < LOW_MEMORY_MIB:
            print(f"scale: stopping at {i} VMs, MemAvailable below {LOW_MEMORY_MIB} MiB")
            break
        snaps.append(fcd.cpu())
        creates.append(fcd.create(f"scale-{i}"))
    snaps.append(fcd.cpu())
    n = len(creates)
    lists = []
    for _ in range(5):
        t0 = time.perf_counter()
        r = fcd.c.get("/v1/vms")
        lists.append(time.perf_counter() - t0)
        r.raise_for_status()
    rss_n = fcd.rss()
    bare_hi = _bare_ten(bare, offset + 10)
    deletes: list[float] = []
    dsnaps: list[dict[str, float]] = []
    d0 = len(fcd.delete_phases)
    for i in range(n):
        dsnaps.append(fcd.cpu())
        deletes.append(fcd.delete(f"scale-{i}"))
    dsnaps.append(fcd.cpu())
    if n < 20:
        print(f"scale: only {n} VMs, too few to compare")
        return

    def med(xs: list[float]) -> float:
        return ms_stats(xs)[0]

    lo_c, hi_c = med(creates[:10]), med(creates[-10:])
    hi_d, lo_d = med(deletes[:10]), med(deletes[-10:])
    print(f"scale: {n} VMs alive")
    print(f"  create median with 0..9 alive {lo_c:.1f} ms, with {n - 10}..{n - 1} {hi_c:.1f} ms "
          f"({hi_c / lo_c:.2f}x)")  # fmt: skip
    print(f"  delete median with 10..1 alive {lo_d:.1f} ms, with {n}..{n - 9} {hi_d:.1f} ms "
          f"({hi_d / lo_d:.2f}x)")  # fmt: skip
    for what, lo_b, hi_b in (
        ("create", bare_lo[0], bare_hi[0]),
        ("delete", bare_lo[1], bare_hi[1]),
    ):
        print(f"  bare {what} median with 0 -> {n} alive: {lo_b:.1f} -> {hi_b:.1f} ms "
              f"({hi_b / lo_b:.2f}x)")  # fmt: skip
    print(f"  bare create phases, median ms with 0 -> {n} alive:")
    lo_ph, hi_ph = bare_lo[2], bare_hi[2]
    print(wrap((f"{k} {lo_ph[k]:.2f}->{hi_ph.get(k, 0.0):.2f}" for k in lo_ph), "    "))
    cph, dph = fcd.create_phases[c0:], fcd.delete_phases[d0:]
    for what, few, many in (
        ("create", cph[:10], cph[-10:]),
        ("delete", dph[-10:], dph[:10]),
    ):
        lo_p, hi_p = dict(phase_medians(few)), dict(phase_medians(many))
        grew = sorted(hi_p, key=lambda k: hi_p[k] - lo_p.get(k, 0.0), reverse=True)[:6]
        print(f"  {what} phases that grew most, median ms with ~10 -> ~{n} alive:")
        print(wrap((f"{k} {lo_p.get(k, 0.0):.2f}->{hi_p[k]:.2f}" for k in grew), "    "))
    print(f"  GET /v1/vms with {n} VMs: median {med(lists):.1f} ms")
    total0, total_n = sum(rss0.values()), sum(rss_n.values())
    print(
        f"  RSS (MiB) with 0 -> {n} VMs: "
        + "  ".join(f"fcd-{d} {rss0[d]:.0f}->{rss_n[d]:.0f}" for d in DAEMONS)
        + f"  total {total0:.0f}->{total_n:.0f} ({(total_n - total0) * 1024 / n:.0f} KiB/VM)"
    )
    _scale_cpu(snaps, dsnaps, n)


def _scale_cpu(snaps: list[dict[str, float]], dsnaps: list[dict[str, float]], n: int) -> None:
    """CPU per create+delete of the first/last ten creates and deletes, in total and by
    daemon: growth in one daemon is its own O(N); growth in all of them, the machine's."""

    def one(d: str, a: dict[str, float], b: dict[str, float]) -> float:
        return (b[d] - a[d]) * 1000 / 10

    lo = {d: one(d, snaps[0], snaps[10]) + one(d, dsnaps[n - 10], dsnaps[n]) for d in DAEMONS}
    hi = {d: one(d, snaps[n - 10], snaps[n]) + one(d, dsnaps[0], dsnaps[10]) for d in DAEMONS}
    print(f"  CPU per create+delete, four daemons: {sum(lo.values()):.1f} ms with ~10 alive, "
          f"{sum(hi.values()):.1f} ms with ~{n}")  # fmt: skip
    print(
        "  per daemon, ~10 -> ~N: "
        + "  ".join(f"fcd-{d} {lo[d]:.1f}->{hi[d]:.1f}" for d in DAEMONS)
    )


@contextlib.contextmanager
def bench_config(max_vms: int) -> Iterator[None]:
    """Suites written meanwhile allow ``max_vms`` VMs (the default limit is 512) and
    collect per-VM usage for /metrics once an hour instead of every 10 s: that
    periodic collection is O(VMs) background work of its own (bench/metrics.py
    measures it), which must not be charged to the creates and deletes."""
    from fcd_common import config as config_mod
    from fcd_dev import suite as suite_mod

    orig = suite_mod.Suite.write_config

    def write_config(self: suite_mod.Suite) -> config_mod.Config:
        cfg = orig(self)
        limits = msgspec.structs.replace(cfg.limits, max_vms=max(max_vms, cfg.limits.max_vms))
        api_cfg = msgspec.structs.replace(cfg.api, metrics_interval_s=3600.0)
        self.config_path.write_text(
            config_mod.render(msgspec.structs.replace(cfg, limits=limits, api=api_cfg))
        )
        return self.cfg

    suite_mod.Suite.write_config = write_config  # type: ignore[method-assign]
    try:
        yield
    finally:
        suite_mod.Suite.write_config = orig  # type: ignore[method-assign]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vms", type=int, default=20, help="VMs per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=0, metavar="C")
    p.add_argument("--scale", type=int, default=0, metavar="N", help="VMs kept alive (slow)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    with (
        tempfile.TemporaryDirectory(prefix="fcd-bench-") as tmp,
        bench_config(max_vms=args.scale + 100),
        running_suite(Path(tmp), subnet="10.64.0.0/16") as suite,
    ):
        devup.import_demo_template(suite, "bench")
        backend = (
            "real Firecracker" if os.environ.get("FCD_FIRECRACKER") else "Firecracker TEST DOUBLE"
        )
        print(
            f"backend: {backend}; {args.rounds} rounds x {args.vms} VMs, 1 vCPU, 128 MiB, "
            "sequential; bare sequence (bench/baseline.py) interleaved in the same run; "
            "/metrics collection hourly (not charged to the VMs)"
        )
        with Baseline.from_suite(suite, "bench") as bare, api(suite, timeout=300) as c:
            fcd = Fcd(suite, c)
            run_rounds(fcd, bare, args.vms, args.rounds)
            if args.concurrency:
                run_concurrency(fcd, bare, args.concurrency, offset=args.vms * args.rounds)
            if args.scale:
                run_scale(fcd, bare, args.scale, offset=args.vms * args.rounds + args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
