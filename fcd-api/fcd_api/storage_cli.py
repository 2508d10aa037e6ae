"""fcctl's storage commands: ``templates``, ``reclaim``, and ``--drive`` (snapshots:
:mod:`fcd_api.snapshot_cli`)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from . import tables
from .tables import Column

__all__ = [
    "COMMANDS",
    "Handler",
    "Request",
    "add_parsers",
    "drive_arg",
    "parse_drives",
    "render_templates",
    "run",
    "show",
]

Request = Callable[..., Any]
"""``Api.request``: (method, url, **httpx kwargs) -> the decoded JSON body, or None."""
Handler = Callable[[argparse.Namespace, Request, bool], str]
"""One fcctl (sub)command: (parsed args, request, as_json) -> the text to print."""


def show(value: Any, as_json: bool, render: Callable[[Any], str]) -> str:
    """An API result as indented JSON (``-o json``) or rendered for a person."""
    return json.dumps(value, indent=2) if as_json else render(value)


def parse_drives(items: Sequence[str]) -> list[dict[str, Any]]:
    """``data=512`` (a blank 512 MiB ext4) or ``tools=ro:TEMPLATE`` (shared read-only)."""
    out: list[dict[str, Any]] = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise argparse.ArgumentTypeError(f"drive {item!r} is not NAME=MiB or NAME=ro:TEMPLATE")
        if value.startswith("ro:"):
            out.append({"name": name, "template": value[3:]})
        elif value.isdigit():
            out.append({"name": name, "size_mib": int(value)})
        else:
            raise argparse.ArgumentTypeError(f"drive {item!r}: size must be a number of MiB")
    return out


def drive_arg(item: str) -> str:
    """argparse ``type`` for ``--drive``: a bad drive is a usage error (exit 2)."""
    parse_drives([item])
    return item


def add_parsers(sub: Any, out: argparse.ArgumentParser) -> None:
    t = sub.add_parser("templates", aliases=[], parents=[out], help="manage templates")
    tsub = t.add_subparsers(dest="tcmd", required=True, metavar="ACTION")
    tsub.add_parser("ls", aliases=["list"], parents=[out], help="list templates")
    for name, text in (("get", "inspect a template"), ("rm", "delete an unused template")):
        tsub.add_parser(name, parents=[out], help=text).add_argument("name")
    imp = tsub.add_parser("import", parents=[out], help="import a kernel and a rootfs image")
    imp.add_argument("name")
    imp.add_argument("--kernel", required=True, help="absolute path, read by fcd-storage")
    imp.add_argument("--rootfs", required=True, help="absolute path, read by fcd-storage")
    imp.add_argument("--kernel-args", default="")
    imp.add_argument("--sha256", help="expected sha256 of the rootfs")
    imp.add_argument("--kernel-sha256", help="expected sha256 of the kernel")
    b = tsub.add_parser("build", parents=[out], help="build a rootfs from a directory tree")
    b.add_argument("name")
    b.add_argument("--kernel", required=True)
    b.add_argument("--from", dest="source_dir", required=True, metavar="DIR")
    b.add_argument("--size", type=int, metavar="MiB", help="image size (default: tree + headroom)")
    b.add_argument("--kernel-args", default="")
    sub.add_parser("reclaim", parents=[out], help="remove partial files and orphan disks")


def _abs(path: str) -> str:
    """Paths go to fcd-storage, which resolves nothing relative: make them absolute here."""
    return os.path.abspath(path)


def _mib(size: Any) -> str:
    return f"{int(size or 0) >> 20}MiB"


TEMPLATE_COLUMNS: tuple[Column[dict[str, Any]], ...] = (
    Column("NAME", lambda t: t.get("name")),
    Column("SOURCE", lambda t: t.get("source", "import")),
    Column("ROOTFS", lambda t: _mib(t.get("rootfs_size"))),
    Column("KERNEL ARGS", lambda t: t.get("kernel_args") or "-"),
    Column("USED BY", lambda t: len(t.get("used_by") or [])),
    Column("CREATED", lambda t: t.get("created_at", "-")),
)


def render_templates(items: Sequence[dict[str, Any]]) -> str:
    return tables.render_table(TEMPLATE_COLUMNS, items)


def render_detail(obj: dict[str, Any]) -> str:
    """A template or snapshot as ``key: value`` lines (lists comma-joined)."""
    return tables.render_detail(
        (k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in obj.items()
    )


def _reclaim(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    res = request("POST", "/v1/storage/reclaim")
    return json.dumps(res, indent=2) if as_json else "\n".join(res["removed"]) or "(nothing)"


def _templates_ls(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return show(request("GET", "/v1/templates"), as_json, render_templates)


def _templates_get(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return show(request("GET", f"/v1/templates/{args.name}"), as_json, render_detail)


def _templates_rm(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    request("DELETE", f"/v1/templates/{args.name}")
    return str(args.name)


def _one_template(t: dict[str, Any]) -> str:
    return render_templates([t])


def _templates_import(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    body: dict[str, Any] = {
        "name": args.name,
        "kernel_path": _abs(args.kernel),
        "rootfs_path": _abs(args.rootfs),
        "kernel_args": args.kernel_args,
    }
    if args.sha256:
        body["rootfs_sha256"] = args.sha256.lower()
    if args.kernel_sha256:
        body["kernel_sha256"] = args.kernel_sha256.lower()
    return show(request("POST", "/v1/templates", json=body), as_json, _one_template)


def _templates_build(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    body: dict[str, Any] = {
        "name": args.name,
        "kernel_path": _abs(args.kernel),
        "source_dir": _abs(args.source_dir),
        "kernel_args": args.kernel_args,
    }
    if args.size:
        body["size_mib"] = args.size
    return show(request("POST", "/v1/templates/build", json=body), as_json, _one_template)


# ``fcctl templates ACTION``: every name and alias add_parsers()
# declares, and what it runs.
TEMPLATE_ACTIONS: dict[str, Handler] = {
    "ls": _templates_ls,
    "list": _templates_ls,
    "get": _templates_get,
    "rm": _templates_rm,
    "import": _templates_import,
    "build": _templates_build,
}


def _templates(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return TEMPLATE_ACTIONS[args.tcmd](args, request, as_json)


COMMANDS: dict[str, Handler] = {
    "templates": _templates,
    "reclaim": _reclaim,
}


def run(args: argparse.Namespace, request: Request, output: str) -> str:
    return COMMANDS[args.cmd](args, request, output == "json")
