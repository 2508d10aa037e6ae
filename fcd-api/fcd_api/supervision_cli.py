"""fcctl create's supervision options: health check, restart policy, readiness.

    --health CHECK [--health-interval S] [--health-retries N] [--health-start-period S]
    --restart MODE[:MAX_RETRIES]     no | on-failure | always
    --wait-for tcp:PORT|serial:REGEX [--wait-timeout S]

The API checks every value again (a bad one is its 400 naming the field).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_arguments", "body"]


def _restart(text: str) -> dict[str, Any]:
    mode, _, n = text.partition(":")
    if mode not in ("no", "on-failure", "always"):
        raise argparse.ArgumentTypeError(f"{mode!r}: no, on-failure or always")
    out: dict[str, Any] = {"mode": mode}
    if n:
        if not n.isdigit():
            raise argparse.ArgumentTypeError(f"{n!r}: MAX_RETRIES is a number")
        out["max_retries"] = int(n)
    return out


def add_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--health", metavar="CHECK", help="process, api, tcp:PORT or serial:REGEX")
    c.add_argument("--health-interval", type=float, metavar="S")
    c.add_argument("--health-retries", type=int, metavar="N")
    c.add_argument("--health-start-period", type=float, metavar="S")
    c.add_argument("--restart", type=_restart, metavar="MODE[:MAX]", help="restart policy")
    c.add_argument("--wait-for", metavar="TARGET", help="answer once tcp:PORT or serial:REGEX")
    c.add_argument("--wait-timeout", type=float, metavar="S")


def body(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "health", None):
        hc: dict[str, Any] = {"check": args.health}
        for key, attr in (
            ("interval_s", "health_interval"),
            ("retries", "health_retries"),
            ("start_period_s", "health_start_period"),
        ):
            if getattr(args, attr, None) is not None:
                hc[key] = getattr(args, attr)
        out["health_check"] = hc
    if getattr(args, "restart", None):
        out["restart_policy"] = args.restart
    if getattr(args, "wait_for", None):
        out["wait_for"] = args.wait_for
    if getattr(args, "wait_timeout", None) is not None:
        out["wait_timeout_s"] = args.wait_timeout
    return out
