"""fcctl's storage commands: ``templates``, ``snapshots``, ``reclaim``, and ``--drive``."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["COMMANDS", "add_parsers", "parse_drives", "render_templates", "run"]

COMMANDS = ("templates", "snapshots", "reclaim")

Request = Callable[..., Any]


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
    s = sub.add_parser("snapshots", parents=[out], help="list or delete snapshot files")
    ssub = s.add_subparsers(dest="scmd", required=True, metavar="ACTION")
    ssub.add_parser("ls", aliases=["list"], parents=[out], help="list snapshots")
    for name in ("get", "rm"):
        ssub.add_parser(name, parents=[out]).add_argument("name")
    sub.add_parser("reclaim", parents=[out], help="remove partial files and orphan disks")


def _abs(path: str) -> str:
    """Paths go to fcd-storage, which resolves nothing relative: make them absolute here."""
    return os.path.abspath(path)


def render_templates(items: Sequence[dict[str, Any]]) -> str:
    rows = [("NAME", "SOURCE", "ROOTFS", "KERNEL ARGS", "USED BY", "CREATED")]
    for t in items:
        rows.append(
            (
                str(t.get("name")),
                str(t.get("source", "import")),
                f"{int(t.get('rootfs_size', 0)) >> 20}MiB",
                str(t.get("kernel_args") or "-"),
                str(len(t.get("used_by") or [])),
                str(t.get("created_at", "-")),
            )
        )
    return _table(rows)


def render_snapshots(items: Sequence[dict[str, Any]]) -> str:
    rows = [("NAME", "STATE", "VM", "TEMPLATE", "MEMORY", "USED BY")]
    for s in items:
        rows.append(
            (
                str(s.get("name")),
                str(s.get("state")),
                str(s.get("vm_id")),
                str(s.get("template")),
                f"{int(s.get('memory_size', 0)) >> 20}MiB",
                str(len(s.get("used_by") or [])),
            )
        )
    return _table(rows)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _detail(obj: dict[str, Any]) -> str:
    width = max(len(k) for k in obj) + 1
    return "\n".join(
        f"{(k + ':').ljust(width)} {', '.join(v) if isinstance(v, list) else v}"
        for k, v in obj.items()
    )


def run(args: argparse.Namespace, request: Request, output: str) -> str:
    as_json = output == "json"
    if args.cmd == "reclaim":
        res = request("POST", "/v1/storage/reclaim")
        return json.dumps(res, indent=2) if as_json else "\n".join(res["removed"]) or "(nothing)"
    if args.cmd == "snapshots":
        if args.scmd in ("ls", "list"):
            items = request("GET", "/v1/snapshots")
            return json.dumps(items, indent=2) if as_json else render_snapshots(items)
        if args.scmd == "get":
            s = request("GET", f"/v1/snapshots/{args.name}")
            return json.dumps(s, indent=2) if as_json else _detail(s)
        request("DELETE", f"/v1/snapshots/{args.name}")
        return str(args.name)
    tcmd = args.tcmd
    if tcmd in ("ls", "list"):
        items = request("GET", "/v1/templates")
        return json.dumps(items, indent=2) if as_json else render_templates(items)
    if tcmd == "get":
        t = request("GET", f"/v1/templates/{args.name}")
        return json.dumps(t, indent=2) if as_json else _detail(t)
    if tcmd == "rm":
        request("DELETE", f"/v1/templates/{args.name}")
        return str(args.name)
    if tcmd == "import":
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
        t = request("POST", "/v1/templates", json=body)
    else:
        body = {
            "name": args.name,
            "kernel_path": _abs(args.kernel),
            "source_dir": _abs(args.source_dir),
            "kernel_args": args.kernel_args,
        }
        if args.size:
            body["size_mib"] = args.size
        t = request("POST", "/v1/templates/build", json=body)
    return json.dumps(t, indent=2) if as_json else render_templates([t])
