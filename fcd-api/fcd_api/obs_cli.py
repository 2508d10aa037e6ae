"""fcctl's streaming commands: a VM's logs and the event stream.

    fcctl logs [-f] [--tail N] [--since T] [--source console|firecracker|fcd]... ID
    fcctl events [-f] [--since ID] [--vm ID] [--type T]...

Lines are printed as they arrive (``-f`` keeps the stream open: logs until the VM
is deleted, events until interrupted). ``-o json`` prints the NDJSON as sent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

import httpx

from . import tables

__all__ = ["STREAMS", "add_parsers", "event_line", "run"]


def add_parsers(sub: Any, out: argparse.ArgumentParser) -> None:
    lg = sub.add_parser("logs", parents=[out], help="a VM's console, Firecracker and fcd lines")
    lg.add_argument("id")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.add_argument("--tail", type=int, metavar="N", help="only the last N stored lines")
    lg.add_argument("--since", metavar="T", help="seconds since the epoch or ISO 8601")
    lg.add_argument(
        "--source",
        action="append",
        default=[],
        choices=["console", "firecracker", "fcd"],
        help="only these sources (repeatable)",
    )
    ev = sub.add_parser("events", parents=[out], help="VM events (created ... died, deleted)")
    ev.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    ev.add_argument("--since", type=int, default=0, metavar="ID", help="events after this id")
    ev.add_argument("--vm", metavar="ID", help="only this VM's events")
    ev.add_argument("--type", action="append", default=[], metavar="T", help="repeatable")


def event_line(ev: dict[str, Any]) -> str:
    stamp = dt.datetime.fromtimestamp(float(ev.get("time", 0)), tz=dt.UTC)
    data = " ".join(f"{k}={v}" for k, v in (ev.get("data") or {}).items() if v is not None)
    when = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"{ev.get('id')} {when} {ev.get('type')} {ev.get('vm_id') or '-'} {data}".rstrip()


def _logs_request(args: argparse.Namespace, as_json: bool) -> tuple[str, list[tuple[str, str]]]:
    params: list[tuple[str, str]] = [("format", "json" if as_json else "text")]
    if args.follow:
        params.append(("follow", "true"))
    if args.tail is not None:
        params.append(("tail", str(args.tail)))
    if args.since:
        params.append(("since", args.since))
    params += [("source", s) for s in args.source]
    return f"/v1/vms/{args.id}/logs", params


def _events_request(args: argparse.Namespace, _as_json: bool) -> tuple[str, list[tuple[str, str]]]:
    params: list[tuple[str, str]] = [("since", str(args.since))]
    if args.follow:
        params.append(("follow", "true"))
    if args.vm:
        params.append(("vm_id", args.vm))
    params += [("type", t) for t in args.type]
    return "/v1/events", params


def _raw(line: str) -> str:
    return line


def _event(line: str) -> str:
    return event_line(json.loads(line))


Builder = Callable[[argparse.Namespace, bool], tuple[str, list[tuple[str, str]]]]
STREAMS: dict[str, tuple[Builder, Callable[[str], str]]] = {
    "logs": (_logs_request, _raw),
    "events": (_events_request, _event),
}


def run(args: argparse.Namespace, http: httpx.Client, out: Any = None) -> str | None:
    """Stream the command's lines to ``out`` (stdout); an error message, or None."""
    out = out or sys.stdout
    as_json = getattr(args, "output", "table") == "json"
    build, render = STREAMS[args.cmd]
    url, params = build(args, as_json)
    timeout = httpx.Timeout(args.timeout, read=None) if args.follow else args.timeout
    with http.stream("GET", url, params=tuple(params), timeout=timeout) as r:
        if r.status_code >= 400:
            r.read()
            try:
                detail = r.json()["error"]
                return f"{detail['code']}: {detail['message']}"
            except (ValueError, KeyError, TypeError):
                return f"HTTP {r.status_code}: {r.text.strip()[:200]}"
        for line in r.iter_lines():
            if line:
                out.write(tables.escape_lines(line if as_json else render(line)) + "\n")
                out.flush()
    return None
