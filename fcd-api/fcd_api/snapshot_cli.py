"""fcctl's snapshot commands.

fcctl snapshot create VM NAME [--type full|diff] [--then resume|pause|stop]
fcctl snapshot ls | get NAME | rm NAME        (``snapshots`` works too)
fcctl restore NAME [--id ID] [--label K=V]... [--port HOST:GUEST[/udp]]... [--paused]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from . import tables
from .storage_cli import Handler, Request, render_detail, show
from .tables import Column

__all__ = ["COMMANDS", "add_parsers", "parse_ports", "port_arg", "render_snapshots"]


def _mib(size: Any) -> str:
    return f"{int(size or 0) >> 20}MiB"


SNAPSHOT_COLUMNS: tuple[Column[dict[str, Any]], ...] = (
    Column("NAME", lambda s: s.get("name")),
    Column("STATE", lambda s: s.get("state")),
    Column("VM", lambda s: s.get("vm_id")),
    Column("TEMPLATE", lambda s: s.get("template")),
    Column("MEMORY", lambda s: _mib(s.get("memory_size"))),
    Column("USED BY", lambda s: len(s.get("used_by") or [])),
)


def render_snapshots(items: Sequence[dict[str, Any]]) -> str:
    return tables.render_table(SNAPSHOT_COLUMNS, items)


def parse_ports(items: Sequence[str]) -> list[dict[str, Any]]:
    """``HOST:GUEST`` or ``HOST:GUEST/udp``; HOST 0 lets fcd pick a free host port."""
    out: list[dict[str, Any]] = []
    for item in items:
        spec, _, proto = item.partition("/")
        host, sep, guest = spec.partition(":")
        if not sep or not host.isdigit() or not guest.isdigit() or proto not in ("", "tcp", "udp"):
            raise argparse.ArgumentTypeError(f"port {item!r} is not HOST:GUEST[/tcp|/udp]")
        out.append({"host_port": int(host), "guest_port": int(guest), "protocol": proto or "tcp"})
    return out


def port_arg(item: str) -> str:
    parse_ports([item])
    return item


def add_parsers(sub: Any, out: argparse.ArgumentParser, label_arg: Callable[[str], str]) -> None:
    s = sub.add_parser(
        "snapshots", aliases=["snapshot"], parents=[out], help="take, list or delete snapshots"
    )
    ssub = s.add_subparsers(dest="scmd", required=True, metavar="ACTION")
    c = ssub.add_parser("create", parents=[out], help="snapshot a VM (paused while it is taken)")
    c.add_argument("vm", metavar="VM")
    c.add_argument("name")
    c.add_argument("--type", choices=("full", "diff"), default="full")
    c.add_argument("--then", choices=("resume", "pause", "stop"), default="resume")
    ssub.add_parser("ls", aliases=["list"], parents=[out], help="list snapshots")
    for name in ("get", "rm"):
        ssub.add_parser(name, parents=[out]).add_argument("name")
    r = sub.add_parser("restore", parents=[out], help="a new VM from a snapshot")
    r.add_argument("name", help="the snapshot")
    r.add_argument("--id", help="the new VM's id (generated when absent)")
    r.add_argument("--label", action="append", default=[], type=label_arg, metavar="K=V")
    r.add_argument("--port", action="append", default=[], type=port_arg, metavar="HOST:GUEST")
    r.add_argument("--paused", action="store_true", help="leave the restored VM paused")


def _create(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    body = {"name": args.name, "type": args.type, "then": args.then}
    snap = request("POST", f"/v1/vms/{args.vm}/snapshots", json=body)
    return show(snap, as_json, lambda s: render_snapshots([s]))


def _ls(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return show(request("GET", "/v1/snapshots"), as_json, render_snapshots)


def _get(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return show(request("GET", f"/v1/snapshots/{args.name}"), as_json, render_detail)


def _rm(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    request("DELETE", f"/v1/snapshots/{args.name}")
    return str(args.name)


ACTIONS: dict[str, Handler] = {
    "create": _create,
    "ls": _ls,
    "list": _ls,
    "get": _get,
    "rm": _rm,
}


def _snapshots(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return ACTIONS[args.scmd](args, request, as_json)


def restore_body(args: argparse.Namespace, labels: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {"labels": labels, "resume": not args.paused}
    if args.id:
        body["id"] = args.id
    if args.port:
        body["port_mappings"] = parse_ports(args.port)
    return body


COMMANDS: dict[str, Handler] = {"snapshots": _snapshots, "snapshot": _snapshots}
"""``restore`` prints a VM, so :mod:`fcd_api.cli` wires it with its VM table."""
