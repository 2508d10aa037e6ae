"""fcctl's observability commands.

    fcctl stats ID                 one VM's usage (GET /v1/vms/{id}/metrics)
    fcctl top [--interval S] [--once]
                                   every VM, refreshed until Ctrl-C (one GET /metrics a frame)
    fcctl doctor                   host readiness (no API needed; exit 1 on a FAIL)

``top`` reads the Prometheus exposition (parsed by prometheus_client), so a frame
costs one request however many VMs there are; CPU% is the change of each VM's
CPU time between two of fcd-api's collections (``-`` until the second).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from . import tables
from .storage_cli import Handler, Request, show
from .tables import Column

__all__ = ["COMMANDS", "STANDALONE", "add_parsers", "parse_top", "render_stats", "render_top"]


def add_parsers(sub: Any, out: argparse.ArgumentParser) -> None:
    s = sub.add_parser("stats", parents=[out], help="a VM's CPU, memory, network and disk use")
    s.add_argument("id")
    t = sub.add_parser("top", parents=[out], help="every VM's usage, live (Ctrl-C ends)")
    t.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    t.add_argument("--once", action="store_true", help="print one frame and exit")
    sub.add_parser("doctor", parents=[out], help="check this host is ready for fcd")


def _mib(n: Any) -> str:
    return "-" if n is None else f"{n / (1 << 20):.1f}MiB"


def _num(n: Any, unit: str = "") -> str:
    return "-" if n is None else f"{n}{unit}"


def _secs(n: Any) -> str:
    return "-" if n is None else f"{n:.3f}s"


def render_stats(m: dict[str, Any]) -> str:
    pairs: list[tuple[str, str]] = [
        ("vm", m["vm_id"]),
        ("state", m["state"]),
        ("sampled_at", m["sampled_at"]),
    ]
    cpu = m.get("cpu")
    if cpu:
        pairs += [
            ("cpu.vcpus", str(cpu["vcpus"])),
            ("cpu.usage", _secs(cpu["usage_seconds"])),
            ("cpu.user", _secs(cpu["user_seconds"])),
            ("cpu.system", _secs(cpu["system_seconds"])),
            ("cpu.throttled", _secs(cpu["throttled_seconds"])),
        ]
    mem = m.get("memory")
    if mem:
        pairs += [
            ("memory.usage", _mib(mem["usage_bytes"])),
            ("memory.limit", _mib(mem["limit_bytes"])),
            ("memory.firecracker_rss", _mib(mem["firecracker_rss_bytes"])),
        ]
        if mem.get("balloon_target_bytes") is not None:
            pairs.append(("memory.balloon_target", _mib(mem["balloon_target_bytes"])))
            pairs.append(("memory.balloon_actual", _mib(mem["balloon_actual_bytes"])))
    net = m.get("network")
    if net:
        for d in ("rx", "tx"):
            pairs.append(
                (
                    f"network.{d}",
                    f"{net[f'{d}_bytes']}B {net[f'{d}_packets']}pkt "
                    f"dropped {net[f'{d}_dropped']} errors {net[f'{d}_errors']}",
                )
            )
    for d in m.get("disk", []):
        pairs.append(
            (
                f"disk.{d['drive_id']}",
                f"read {d['read_bytes']}B/{d['read_ops']}ops "
                f"write {d['write_bytes']}B/{d['write_ops']}ops",
            )
        )
    pairs += [("problem", p) for p in m.get("problems", [])]
    return tables.render_detail(iter(pairs))


# --- top ---------------------------------------------------------------------------------


@dataclass
class Row:
    vm_id: str
    sandbox_id: str = ""
    vcpus: float | None = None
    cpu_s: float | None = None
    cpu_pct: float | None = None
    mem: float | None = None
    limit: float | None = None
    rx: float | None = None
    tx: float | None = None
    disk_r: float = 0.0
    disk_w: float = 0.0


_FIELDS = {
    "fcd_vm_vcpus": "vcpus",
    "fcd_vm_cpu_usage_seconds_total": "cpu_s",
    "fcd_vm_memory_usage_bytes": "mem",
    "fcd_vm_memory_limit_bytes": "limit",
    "fcd_vm_network_receive_bytes_total": "rx",
    "fcd_vm_network_transmit_bytes_total": "tx",
}
_SUMS = {"fcd_vm_disk_read_bytes_total": "disk_r", "fcd_vm_disk_write_bytes_total": "disk_w"}


def parse_top(text: str) -> tuple[dict[str, Row], dict[str, float], float]:
    """Per-VM rows, ``fcd_vms`` by state and the age of the per-VM series (0 if not
    given) from one exposition."""
    rows: dict[str, Row] = {}
    states: dict[str, float] = {}
    age = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "fcd_vms":
                states[s.labels.get("state", "?")] = s.value
                continue
            if s.name == "fcd_vm_metrics_age_seconds":
                age = s.value
                continue
            vm_id = s.labels.get("vm_id")
            attr = _FIELDS.get(s.name) or _SUMS.get(s.name)
            if vm_id is None or attr is None:
                continue
            row = rows.setdefault(vm_id, Row(vm_id, s.labels.get("sandbox_id", "")))
            if s.name in _SUMS:
                setattr(row, attr, getattr(row, attr) + s.value)
            else:
                setattr(row, attr, s.value)
    return rows, states, age


def with_cpu_pct(rows: dict[str, Row], prev: dict[str, Row], elapsed: float) -> None:
    for vm_id, row in rows.items():
        old = prev.get(vm_id)
        if old and old.cpu_s is not None and row.cpu_s is not None and elapsed > 0:
            row.cpu_pct = max(0.0, (row.cpu_s - old.cpu_s) / elapsed * 100)


def _cols() -> tuple[Column[Row], ...]:
    return (
        Column("VM", lambda r: r.vm_id),
        Column("SANDBOX", lambda r: r.sandbox_id or "-"),
        Column("VCPUS", lambda r: "-" if r.vcpus is None else int(r.vcpus)),
        Column("CPU%", lambda r: "-" if r.cpu_pct is None else f"{r.cpu_pct:.1f}"),
        Column("CPU", lambda r: _secs(r.cpu_s)),
        Column("MEM", lambda r: _mib(r.mem)),
        Column("LIMIT", lambda r: _mib(r.limit)),
        Column("RX", lambda r: _num(None if r.rx is None else int(r.rx), "B")),
        Column("TX", lambda r: _num(None if r.tx is None else int(r.tx), "B")),
        Column("DISK R/W", lambda r: f"{int(r.disk_r)}B/{int(r.disk_w)}B"),
    )


def render_top(rows: dict[str, Row], states: dict[str, float]) -> str:
    summary = ", ".join(f"{int(n)} {st}" for st, n in sorted(states.items()) if n)
    body = tables.render_table(_cols(), [rows[k] for k in sorted(rows)])
    return f"VMs: {summary or 'none'}\n{body}"


class CpuRates:
    """CPU% between two *collections* (fcd-api collects every ``api.metrics_interval_s``;
    frames in between show the last rate, not a 0 from an unchanged sample)."""

    def __init__(self) -> None:
        self.prev: dict[str, Row] = {}
        self.prev_at: float | None = None
        self.pct: dict[str, float] = {}

    def update(self, rows: dict[str, Row], collected_at: float) -> None:
        if self.prev_at is None or collected_at - self.prev_at > 0.5:
            if self.prev_at is not None:
                with_cpu_pct(rows, self.prev, collected_at - self.prev_at)
                self.pct = {k: r.cpu_pct for k, r in rows.items() if r.cpu_pct is not None}
            self.prev, self.prev_at = rows, collected_at
        for vm_id, row in rows.items():
            row.cpu_pct = self.pct.get(vm_id)


def _frames(request: Request, interval: float) -> Iterator[str]:
    rates = CpuRates()
    while True:
        text = request("GET", "/metrics", raw=True)
        rows, states, age = parse_top(text)
        rates.update(rows, time.time() - age)
        yield render_top(rows, states)
        time.sleep(interval)


def _top(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    if args.once:
        rows, states, _age = parse_top(request("GET", "/metrics", raw=True))
        if as_json:
            return show([r.__dict__ for r in rows.values()], True, str)
        return render_top(rows, states)
    try:
        for frame in _frames(request, max(0.1, args.interval)):
            sys.stdout.write("\x1b[H\x1b[2J" + tables.escape_lines(frame) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return ""


def _stats(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return show(request("GET", f"/v1/vms/{args.id}/metrics"), as_json, render_stats)


def doctor(as_json: bool) -> tuple[str, int]:
    """The report and the exit status (1 if any check failed)."""
    import json

    from fcd_common import config

    from . import doctor as doc

    results = doc.run_all(config.load())
    failed = any(r.status is doc.Status.FAIL for r in results)
    if as_json:
        text = json.dumps([{**r.__dict__, "status": r.status.value} for r in results], indent=2)
    else:
        text = doc.render(results)
    return text, 1 if failed else 0


COMMANDS: dict[str, Handler] = {"stats": _stats, "top": _top}
STANDALONE = frozenset({"doctor"})
"""Commands that do not talk to fcd-api."""
