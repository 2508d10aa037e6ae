"""fcctl's resource flags and ``update`` command.

fcctl update ID [--cpu-quota 0.5] [--mem-target 256] [--mem-limit 512] [--vcpus N --mem MiB]
               [--disk-bw 10M] [--disk-iops 500] [--drive-bw NAME=RATE] [--drive-iops NAME=N]
               [--net-rx-bw RATE] [--net-tx-bw RATE] [--net-rx-pps N] [--net-tx-pps N]
fcctl create ... with the same limit flags, plus --balloon [--balloon-stats S] [--deflate-on-oom]

A RATE is bytes per second with an optional K/M/G (x1000) or Ki/Mi/Gi (x1024) suffix
(``10M``, ``512Ki``); it becomes a token bucket of that size refilled every second.
0 removes a limit (``update``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from typing import Any

from . import tables
from .storage_cli import Handler, Request, show

__all__ = ["COMMANDS", "add_limit_args", "add_parsers", "limit_fields", "parse_rate"]

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]i?)?(?:B)?(?:/s)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
REFILL_MS = 1000


def parse_rate(text: str) -> int:
    m = _RATE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate such as 10M, 512Ki or 0")
    return int(float(m[1]) * _UNITS[(m[2] or "").lower()])


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return n


def _named(kind: str) -> Any:
    def parse(text: str) -> tuple[str, int]:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"{text!r} is not NAME={kind.upper()}")
        return name, parse_rate(value) if kind == "rate" else _count(value)

    return parse


def add_limit_args(p: argparse.ArgumentParser, *, create: bool) -> None:
    g = p.add_argument_group("resource limits")
    g.add_argument("--cpu-quota", type=float, metavar="CPUS", help="share of one host CPU")
    g.add_argument("--mem-limit", type=int, metavar="MiB", help="guest memory the cgroup allows")
    g.add_argument("--mem-target", type=int, metavar="MiB", help="guest memory via the balloon")
    g.add_argument("--disk-bw", type=parse_rate, metavar="RATE", help="root disk bytes/s")
    g.add_argument("--disk-iops", type=_count, metavar="N", help="root disk operations/s")
    g.add_argument(
        "--drive-bw",
        action="append",
        default=[],
        type=_named("rate"),
        metavar="NAME=RATE",
        help="an extra drive's bytes/s",
    )
    g.add_argument(
        "--drive-iops",
        action="append",
        default=[],
        type=_named("count"),
        metavar="NAME=N",
        help="an extra drive's operations/s",
    )
    for d, what in (("rx", "into"), ("tx", "out of")):
        g.add_argument(
            f"--net-{d}-bw", type=parse_rate, metavar="RATE", help=f"bytes/s {what} the guest"
        )
        g.add_argument(
            f"--net-{d}-pps", type=_count, metavar="N", help=f"packets/s {what} the guest"
        )
    if create:
        g.add_argument("--balloon", action="store_true", help="add a balloon device")
        g.add_argument(
            "--balloon-stats",
            type=int,
            metavar="S",
            help="balloon statistics every S seconds (implies --balloon)",
        )
        g.add_argument(
            "--deflate-on-oom",
            action="store_true",
            help="let the guest deflate the balloon under memory pressure",
        )


def _bucket(n: int | None) -> dict[str, int] | None:
    return None if n is None else {"size": n, "refill_time_ms": REFILL_MS if n else 0}


def _limit(bw: int | None, ops: int | None) -> dict[str, Any] | None:
    out = {k: b for k, b in (("bandwidth", _bucket(bw)), ("ops", _bucket(ops))) if b is not None}
    return out or None


def _rate_limits(args: argparse.Namespace) -> dict[str, Any] | None:
    limits: dict[str, Any] = {}
    root = _limit(args.disk_bw, args.disk_iops)
    if root:
        limits["root"] = root
    bw, ops = dict(args.drive_bw), dict(args.drive_iops)
    drives = {n: _limit(bw.get(n), ops.get(n)) for n in sorted({*bw, *ops})}
    if drives:
        limits["drives"] = drives
    net = {
        d: lim
        for d in ("rx", "tx")
        if (lim := _limit(getattr(args, f"net_{d}_bw"), getattr(args, f"net_{d}_pps")))
    }
    if net:
        limits["net"] = net
    return limits or None


def limit_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The resource fields of a create or update body from the flags given."""
    body: dict[str, Any] = {}
    for key, attr in (
        ("cpu_quota", "cpu_quota"),
        ("mem_limit_mib", "mem_limit"),
        ("mem_target_mib", "mem_target"),
    ):
        if getattr(args, attr, None) is not None:
            body[key] = getattr(args, attr)
    limits = _rate_limits(args)
    if limits:
        body["rate_limits"] = limits
    stats = getattr(args, "balloon_stats", None)
    if (
        getattr(args, "balloon", False)
        or stats is not None
        or getattr(args, "deflate_on_oom", False)
    ):
        body["balloon"] = {
            "deflate_on_oom": bool(args.deflate_on_oom),
            "stats_interval_s": stats or 0,
        }
    return body


def add_parsers(sub: Any, out: argparse.ArgumentParser) -> None:
    u = sub.add_parser(
        "update",
        parents=[out],
        help="change a VM's limits live (vCPUs/memory: stopped VMs, at the next start)",
    )
    u.add_argument("id")
    u.add_argument("--vcpus", type=int, help="vCPU count (stopped VM: at the next start)")
    u.add_argument("--mem", type=int, metavar="MiB", help="memory size (stopped VM)")
    add_limit_args(u, create=False)


def _pairs(view: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in view.items():
        if isinstance(value, dict) and key == "in_force":
            for k, v in value.items():
                yield f"in_force.{k}", _flat(v) if isinstance(v, dict) else _show(v)
        elif isinstance(value, dict):
            yield key, _flat(value)
        else:
            yield key, _show(value)


def _show(value: Any) -> Any:
    return "-" if value is None else value


def _flat(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v not in (None, {}, [])) or "-"


def _update(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    body = limit_fields(args)
    if args.vcpus is not None:
        body["vcpu_count"] = args.vcpus
    if args.mem is not None:
        body["mem_size_mib"] = args.mem
    view = request("PATCH", f"/v1/vms/{args.id}/resources", json=body)
    return show(view, as_json, lambda v: tables.render_detail(_pairs(v)))


COMMANDS: dict[str, Handler] = {"update": _update}
