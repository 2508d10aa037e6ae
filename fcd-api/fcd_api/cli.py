"""fcctl: the command-line client of fcd-api (HTTP over the API's Unix socket).

    fcctl create --template T [--id ID] [--vcpus N] [--mem MiB] [--disk MiB]
                 [--kernel-args ARGS] [--label k=v]... [--network-mode bridge|netns]
                 [--port HOST:GUEST[/udp]]... [--track-dirty-pages]
                 [--health CHECK ...] [--restart MODE[:MAX]] [--wait-for TARGET]
    fcctl ls [--state S] [--label k=v]...
    fcctl get ID
    fcctl start|stop|pause|resume|suspend|wake ID
    fcctl rm ID [--force]
    fcctl templates ls | get NAME | rm NAME
    fcctl templates import NAME --kernel PATH --rootfs PATH [--kernel-args A] [--sha256 HEX]
    fcctl templates build NAME --kernel PATH --from DIR [--size MiB] [--kernel-args A]
    fcctl snapshot create VM NAME [--type full|diff] [--then resume|pause|stop]
    fcctl snapshot ls | get NAME | rm NAME   (or: snapshots)
    fcctl restore NAME [--id ID] [--label k=v]... [--port HOST:GUEST[/udp]]... [--paused]
    fcctl reclaim
    fcctl logs [-f] [--tail N] [--since T] [--source S]... ID
    fcctl events [-f] [--since ID] [--vm ID] [--type T]...
    fcctl stats ID | top [--interval S] [--once] | doctor

The socket is ``--socket``, else ``$FCD_SOCKET``, else the configured
``api.sock`` (``/run/fcd/api.sock``). Output is a table, or JSON with
``-o json``. API errors print ``error: <code>: <message>`` and exit 1; the
CLI says what to do when it cannot reach the socket.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from . import (
    metrics_cli,
    obs_cli,
    resources_cli,
    snapshot_cli,
    storage_cli,
    supervision_cli,
    tables,
)
from .storage_cli import Handler, Request, show
from .tables import Column

__all__ = ["COMMANDS", "build_parser", "diagnose", "main", "render_detail", "render_table"]

DEFAULT_SOCKET = "/run/fcd/api.sock"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure to report as one line on stderr, exit 1."""


# --- pure helpers ------------------------------------------------------------------
def default_socket(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    if env.get("FCD_SOCKET"):
        return env["FCD_SOCKET"]
    try:
        from fcd_common import config

        return str(config.load().socket("api"))
    except Exception:
        return DEFAULT_SOCKET


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"label {item!r} is not k=v")
        out[key] = value
    return out


def _label_arg(item: str) -> str:
    """argparse ``type`` for ``--label``: a bad ``k=v`` is a usage error (exit 2)."""
    parse_labels([item])
    return item


def _age(ts: str | None, now: datetime) -> str:
    if not ts:
        return "-"
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    secs = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _vm_columns(now: datetime) -> tuple[Column[dict[str, Any]], ...]:
    """The ``fcctl ls`` columns; AGE is counted back from ``now``."""

    def cfg(vm: dict[str, Any]) -> dict[str, Any]:
        return vm.get("config") or {}

    return (
        Column("ID", lambda vm: vm.get("id", "?")),
        Column("STATE", lambda vm: vm.get("state", "?")),
        Column("TEMPLATE", lambda vm: cfg(vm).get("template", "-")),
        Column("VCPUS", lambda vm: cfg(vm).get("vcpu_count", "-")),
        Column("MEM", lambda vm: f"{m}MiB" if (m := cfg(vm).get("mem_size_mib")) else "-"),
        Column("IP", lambda vm: vm.get("ip_address") or "-"),
        Column("PID", lambda vm: vm.get("pid") or "-"),
        Column("AGE", lambda vm: _age(vm.get("created_at"), now)),
        Column("HEALTH", lambda vm: vm.get("health") or "-"),
    )


COLUMNS = tuple(c.header for c in _vm_columns(datetime.now(UTC)))


def render_table(vms: Sequence[dict[str, Any]], *, now: datetime | None = None) -> str:
    """VMs as an aligned table (a header line even when empty)."""
    return tables.render_table(_vm_columns(now or datetime.now(UTC)), vms)


def render_detail(vm: dict[str, Any]) -> str:
    """One VM as ``key: value`` lines (nested config flattened)."""
    return tables.render_detail(_vm_pairs(vm))


def _vm_pairs(vm: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for key, value in vm.items():
        if isinstance(value, dict) and key == "config":
            yield from ((f"config.{k}", _fmt(v)) for k, v in value.items())
        else:
            yield key, _fmt(value)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return json.dumps(value) if value else "-"
    return str(value)


def diagnose(path: str, exc: BaseException | None = None) -> str:
    """Say why the API socket at ``path`` cannot be used, and what to do."""
    start = "is fcd-api running? (systemctl start fcd-api.socket)"
    if not os.path.exists(path):
        return f"cannot connect to fcd-api: {path} does not exist; {start}"
    code: int | None = None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(path)
    except OSError as e:
        code = e.errno
    finally:
        probe.close()
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied on {path}: join the fcd-users group "
            "(usermod -aG fcd-users $USER, then log in again) or use sudo"
        )
    if code in (errno.ECONNREFUSED, errno.ENOENT):
        return f"nothing is listening on {path}; {start}"
    if code == errno.ENOTSOCK:
        return f"{path} is not a socket; check --socket / $FCD_SOCKET"
    detail = f": {exc}" if exc else ""
    return f"cannot talk to fcd-api at {path}{detail}"


# --- argument parsing ---------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default=argparse.SUPPRESS,
        help="output format (default: table)",
    )
    p = argparse.ArgumentParser(
        prog="fcctl", description="Manage Firecracker microVMs through fcd-api.", parents=[out]
    )
    p.add_argument("--socket", help=f"API socket (default $FCD_SOCKET or {DEFAULT_SOCKET})")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the API")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    c = sub.add_parser("create", parents=[out], help="create and boot a VM")
    c.add_argument("--id", help="VM id (generated if omitted)")
    c.add_argument("--template", "-t", required=True)
    c.add_argument("--vcpus", type=int, help="vCPU count (default 1)")
    c.add_argument("--mem", type=int, metavar="MiB", help="memory in MiB (default 128)")
    c.add_argument("--disk", type=int, metavar="MiB", help="root disk size in MiB")
    c.add_argument("--kernel-args", help="appended to the template's kernel arguments")
    c.add_argument("--sandbox-id")
    c.add_argument("--label", "-l", action="append", default=[], metavar="K=V", type=_label_arg)
    c.add_argument("--network-mode", choices=("bridge", "netns"))
    c.add_argument(
        "--port", action="append", default=[], type=snapshot_cli.port_arg, metavar="HOST:GUEST"
    )
    c.add_argument("--track-dirty-pages", action="store_true", help="allow diff snapshots")
    resources_cli.add_limit_args(c, create=True)
    supervision_cli.add_arguments(c)

    ls = sub.add_parser("ls", aliases=["list"], parents=[out], help="list VMs")
    ls.add_argument("--state")
    ls.add_argument("--label", "-l", action="append", default=[], metavar="K=V", type=_label_arg)

    g = sub.add_parser("get", aliases=["inspect"], parents=[out], help="show one VM")
    g.add_argument("id")
    for name, text in (
        ("start", "start a stopped VM"),
        ("stop", "stop a running or paused VM"),
        ("pause", "pause a running VM"),
        ("resume", "resume a paused VM (wake a suspended one)"),
        ("suspend", "save a VM's memory to disk and end its Firecracker (same id, IP, ports)"),
        ("wake", "start a suspended VM where it left off"),
    ):
        a = sub.add_parser(name, parents=[out], help=text)
        a.add_argument("id")
    rm = sub.add_parser("rm", aliases=["delete"], parents=[out], help="delete a VM")
    rm.add_argument("id")
    rm.add_argument("--force", "-f", action="store_true", help="delete in any state")
    c.add_argument(
        "--drive",
        action="append",
        default=[],
        metavar="NAME=MiB|NAME=ro:TEMPLATE",
        type=storage_cli.drive_arg,
        help="extra drive: a blank ext4 of MiB, or a template's image read-only",
    )
    storage_cli.add_parsers(sub, out)
    snapshot_cli.add_parsers(sub, out, _label_arg)
    resources_cli.add_parsers(sub, out)
    obs_cli.add_parsers(sub, out)
    metrics_cli.add_parsers(sub, out)
    return p


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"template": args.template}
    for key, attr in (
        ("id", "id"),
        ("vcpu_count", "vcpus"),
        ("mem_size_mib", "mem"),
        ("disk_size_mib", "disk"),
        ("kernel_args", "kernel_args"),
        ("sandbox_id", "sandbox_id"),
    ):
        value = getattr(args, attr)
        if value is not None:
            body[key] = value
    if args.label:
        body["labels"] = parse_labels(args.label)
    if getattr(args, "drive", None):
        body["drives"] = storage_cli.parse_drives(args.drive)
    if getattr(args, "network_mode", None):
        body["network_mode"] = args.network_mode
    if getattr(args, "port", None):
        body["port_mappings"] = snapshot_cli.parse_ports(args.port)
    if getattr(args, "track_dirty_pages", False):
        body["track_dirty_pages"] = True
    body.update(resources_cli.limit_fields(args))
    body.update(supervision_cli.body(args))
    return body


# --- doing ----------------------------------------------------------------------------
class Api:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.http = httpx.Client(
            transport=httpx.HTTPTransport(uds=path, verify=False),
            base_url="http://fcd",
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, url: str, *, raw: bool = False, **kw: Any) -> Any:
        """The decoded JSON body (``raw``: the body as text)."""
        try:
            r = self.http.request(method, url, **kw)
        except httpx.TimeoutException:
            raise CliError(f"fcd-api at {self.path} did not answer in time") from None
        except (httpx.TransportError, OSError) as e:
            raise CliError(diagnose(self.path, e)) from None
        if r.status_code >= 400:
            try:
                detail = r.json()["error"]
                msg = f"{detail['code']}: {detail['message']}"
            except (ValueError, KeyError, TypeError):
                msg = f"HTTP {r.status_code}: {r.text.strip()[:200]}"
            raise CliError(msg)
        if raw:
            return r.text
        if r.status_code == 204 or not r.content:
            return None
        return r.json()


def _one_vm(vm: dict[str, Any]) -> str:
    return render_table([vm])


def _create(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return show(request("POST", "/v1/vms", json=create_body(args)), as_json, _one_vm)


def _restore(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    body = snapshot_cli.restore_body(args, parse_labels(args.label))
    return show(request("POST", f"/v1/snapshots/{args.name}/restore", json=body), as_json, _one_vm)


def _list(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    params: list[tuple[str, str]] = [("label", item) for item in args.label]
    if args.state:
        params.append(("state", args.state))
    return show(request("GET", "/v1/vms", params=params), as_json, render_table)


def _get(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return show(request("GET", f"/v1/vms/{args.id}"), as_json, render_detail)


def _transition(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    return show(request("POST", f"/v1/vms/{args.id}/{args.cmd}"), as_json, _one_vm)


def _delete(args: argparse.Namespace, request: Request, as_json: bool) -> str:
    params = [("force", "true")] if args.force else []
    request("DELETE", f"/v1/vms/{args.id}", params=params)
    return json.dumps({"id": args.id, "deleted": True}) if as_json else str(args.id)


# Every name and alias build_parser() accepts, and what it runs.
COMMANDS: dict[str, Handler] = {
    "create": _create,
    "ls": _list,
    "list": _list,
    "get": _get,
    "inspect": _get,
    "start": _transition,
    "stop": _transition,
    "pause": _transition,
    "resume": _transition,
    "suspend": _transition,
    "wake": _transition,
    "rm": _delete,
    "delete": _delete,
    "restore": _restore,
    **storage_cli.COMMANDS,
    **snapshot_cli.COMMANDS,
    **resources_cli.COMMANDS,
    **metrics_cli.COMMANDS,
}


def run(args: argparse.Namespace, api: Api) -> str:
    handler = COMMANDS.get(args.cmd)
    if handler is None:
        raise CliError(f"unknown command {args.cmd}")
    return handler(args, api.request, getattr(args, "output", "table") == "json")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad labels and drives exit 2 here
    if args.cmd in metrics_cli.STANDALONE:  # doctor: the host, not the API
        text, status = metrics_cli.doctor(getattr(args, "output", "table") == "json")
        print(tables.escape_lines(text))
        return status
    api = Api(args.socket or default_socket(), args.timeout)
    try:
        if args.cmd in obs_cli.STREAMS:
            try:
                err = obs_cli.run(args, api.http)
            except (httpx.TransportError, OSError) as e:
                err = diagnose(api.path, e)
            if err is not None:
                raise CliError(err)
            return EXIT_OK
        text = run(args, api)
    except CliError as e:
        print(f"error: {tables.escape(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    finally:
        api.close()
    print(tables.escape_lines(text))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
