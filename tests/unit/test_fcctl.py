"""fcctl: argument parsing, rendering, diagnosis, and the commands against a live fcd-api.

The live fcd-api is the real app served by uvicorn on a Unix socket (in a
thread) over the in-memory fake helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fcd_api import cli, metrics_cli, obs_cli, snapshot_cli, storage_cli, tables
from fcd_api.__main__ import start_http
from fcd_api.app import create_asgi
from fcd_common.rpc import bind_unix

from .api_fakes import api_harness

VM = {
    "id": "vm1",
    "state": "running",
    "config": {
        "template": "base",
        "vcpu_count": 2,
        "mem_size_mib": 256,
        "disk_size_mib": None,
        "kernel_args": "",
    },
    "ip_address": "172.30.0.2",
    "pid": 4243,
    "created_at": "2024-01-01T00:00:00.000Z",
    "labels": {"team": "x"},
}


def test_parse_create() -> None:
    args = cli.build_parser().parse_args(
        [
            "--socket",
            "/x.sock",
            "create",
            "--template",
            "base",
            "--id",
            "a",
            "--vcpus",
            "2",
            "--mem",
            "256",
            "--disk",
            "512",
            "--kernel-args",
            "quiet",
            "-l",
            "a=1",
            "--label",
            "b=x=y",
            "-o",
            "json",
        ]
    )
    assert args.socket == "/x.sock" and args.output == "json"
    assert cli.create_body(args) == {
        "template": "base",
        "id": "a",
        "vcpu_count": 2,
        "mem_size_mib": 256,
        "disk_size_mib": 512,
        "kernel_args": "quiet",
        "labels": {"a": "1", "b": "x=y"},
    }
    minimal = cli.build_parser().parse_args(["create", "-t", "base"])
    assert cli.create_body(minimal) == {"template": "base"}


def test_parse_other_commands() -> None:
    p = cli.build_parser()
    assert p.parse_args(["-o", "json", "ls"]).output == "json"
    args = p.parse_args(["ls", "--state", "running", "-l", "a=b"])
    assert (args.cmd, args.state, args.label) == ("ls", "running", ["a=b"])
    assert p.parse_args(["rm", "vm1", "--force"]).force is True
    assert p.parse_args(["rm", "vm1"]).force is False
    for cmd in ["start", "stop", "pause", "resume", "get"]:
        assert p.parse_args([cmd, "vm1"]).id == "vm1"


@pytest.mark.parametrize("argv", [[], ["create"], ["get"], ["frobnicate"], ["ls", "-o", "xml"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2


def test_bad_label_is_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--socket", "/nonexistent.sock", "create", "-t", "base", "-l", "novalue"])
    assert info.value.code == 2


def test_render_table() -> None:
    now = datetime(2024, 1, 1, 0, 2, 5, tzinfo=UTC)
    lines = cli.render_table(
        [VM, {**VM, "id": "a-much-longer-id", "pid": None, "ip_address": None, "state": "stopped"}],
        now=now,
    ).splitlines()
    assert lines[0].split() == list(cli.COLUMNS)
    row = ["vm1", "running", "base", "2", "256MiB", "172.30.0.2", "4243", "2m", "-"]
    assert lines[1].split() == row  # no health check: HEALTH is "-"
    assert lines[2].split() == [
        "a-much-longer-id",
        "stopped",
        "base",
        "2",
        "256MiB",
        "-",
        "-",
        "2m",
        "-",
    ]
    # columns are aligned
    assert lines[0].index("STATE") == lines[1].index("running") == lines[2].index("stopped")
    assert cli.render_table([]).split() == list(cli.COLUMNS)


def test_render_detail() -> None:
    text = cli.render_detail(VM)
    assert "config.vcpu_count: 2" in text.replace("  ", " ").replace("  ", " ")
    assert any(line.startswith("labels:") and line.endswith("team=x") for line in text.splitlines())


def test_default_socket() -> None:
    assert cli.default_socket({"FCD_SOCKET": "/tmp/x.sock"}) == "/tmp/x.sock"


def test_diagnose_missing_and_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.sock")
    msg = cli.diagnose(missing)
    assert "does not exist" in msg and "systemctl start fcd-api.socket" in msg
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # bound but nobody listens
    assert "nothing is listening" in cli.diagnose(str(stale))
    plain = tmp_path / "file"
    plain.write_text("")
    assert "systemctl" in cli.diagnose(str(plain)) or "not a socket" in cli.diagnose(str(plain))


def test_diagnose_permission(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores socket permissions")
    path = tmp_path / "api.sock"
    sock = bind_unix(path, mode=0o000)
    try:
        assert "join the fcd-users group" in cli.diagnose(str(path))
    finally:
        sock.close()


def test_unreachable_api_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--socket", str(tmp_path / "nope.sock"), "ls"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot connect to fcd-api") and "fcd-api.socket" in err


@pytest.fixture
def live_api() -> Iterator[str]:
    """fcd-api's real app under uvicorn on a UDS, in a thread, over fake helpers."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    path: list[str] = []
    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def serve() -> None:
        async with api_harness() as h:
            sock_path = h.dir / "api.sock"
            server, task = await start_http(create_asgi(h.flows), bind_unix(sock_path), grace=1)
            path.append(str(sock_path))
            ready.set()
            await stop.wait()
            server.should_exit = True
            await task

    def runner() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as e:
            errors.append(e)
            ready.set()

    t = threading.Thread(target=runner, daemon=True)
    t.start()
    assert ready.wait(10), "fcd-api did not start"
    assert not errors, errors
    try:
        yield path[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(10)
        loop.close()


def test_commands_against_live_api(live_api: str, capsys: pytest.CaptureFixture[str]) -> None:
    def fcctl(*argv: str) -> tuple[int, str, str]:
        rc = cli.main(["--socket", live_api, *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, out, _ = fcctl("create", "--id", "vm1", "-t", "base", "--vcpus", "2", "-l", "team=x")
    assert rc == 0 and out.splitlines()[1].split()[:4] == ["vm1", "running", "base", "2"]
    rc, out, _ = fcctl("-o", "json", "ls", "--label", "team=x", "--state", "running")
    assert rc == 0 and [v["id"] for v in json.loads(out)] == ["vm1"]
    rc, out, _ = fcctl("ls", "--state", "stopped")
    assert rc == 0 and out.split() == list(cli.COLUMNS)
    rc, out, _ = fcctl("get", "vm1")
    assert rc == 0 and "ip_address:" in out
    rc, out, _ = fcctl("get", "vm1", "-o", "json")
    assert json.loads(out)["state"] == "running"
    rc, out, _ = fcctl("stats", "vm1")
    stats = dict(line.split(":", 1) for line in out.splitlines())
    assert rc == 0 and stats["cpu.vcpus"].strip() == "2" and stats["cpu.usage"].strip() == "1.500s"
    assert stats["memory.limit"].strip() == "192.0MiB" and "disk.rootfs" in stats
    rc, out, _ = fcctl("-o", "json", "stats", "vm1")
    assert json.loads(out)["cpu"]["vcpus"] == 2
    rc, out, _ = fcctl("top", "--once")  # no collection ran yet: the VM count only
    assert rc == 0 and out.splitlines()[0] == "VMs: 1 running", out
    for cmd, state in [
        ("pause", "paused"),
        ("resume", "running"),
        ("stop", "stopped"),
        ("start", "running"),
        ("stop", "stopped"),
    ]:
        rc, out, _ = fcctl(cmd, "vm1")
        assert rc == 0 and out.splitlines()[1].split()[1] == state, (cmd, out)
    rc, _, err = fcctl("resume", "vm1")
    assert rc == 1 and err.startswith(
        "error: failed_precondition: cannot resume a VM that is stopped"
    )
    rc, _, err = fcctl("create", "-t", "base", "--vcpus", "99")
    assert rc == 1 and err.startswith("error: invalid_argument:") and "vcpu_count" in err
    rc, out, _ = fcctl("rm", "vm1")
    assert rc == 0 and out.strip() == "vm1"
    rc, _, err = fcctl("get", "vm1")
    assert rc == 1 and err.startswith("error: not_found:")
    fcctl("create", "--id", "vm2", "-t", "base")
    rc, _, err = fcctl("rm", "vm2")
    assert rc == 1 and "running" in err
    rc, out, _ = fcctl("-o", "json", "rm", "vm2", "--force")
    assert rc == 0 and json.loads(out) == {"id": "vm2", "deleted": True}


def test_escape_keeps_printable_text_and_escapes_the_rest() -> None:
    assert tables.escape("plain ascii, été, 日本") == "plain ascii, été, 日本"
    assert tables.escape("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert tables.escape("a\nb\tc\rd\x7f\x00") == "a\\nb\\tc\\rd\\x7f\\x00"
    assert tables.escape("\u202eevil\u200b") == "\\u202eevil\\u200b"  # bidi override, zero width
    assert tables.escape_lines("one\x1b\ntwo") == "one\\x1b\ntwo"


HOSTILE = "\x1b[2J\x1b]0;pwned\x07"


def test_renderers_escape_control_characters() -> None:
    vm = {**VM, "id": "vm" + HOSTILE, "labels": {"k": HOSTILE}}
    vm["config"] = {**VM["config"], "kernel_args": "quiet\nroot=/dev/evil"}
    outputs = [
        cli.render_table([vm, VM]),
        cli.render_detail(vm),
        storage_cli.render_templates([{"name": "t", "kernel_args": HOSTILE}]),
        snapshot_cli.render_snapshots([{"name": "s", "vm_id": HOSTILE}]),
        storage_cli.render_detail({"name": "s", "used_by": [HOSTILE]}),
    ]
    for text in outputs:
        assert all(line.isprintable() for line in text.splitlines()), text
        assert "\\x1b[2J\\x1b]0;pwned\\x07" in text
    table = outputs[0].splitlines()
    assert len(table) == 3  # no value added a line
    assert table[0].index("STATE") == table[1].index("running") == table[2].index("running")
    assert "config.kernel_args: quiet\\nroot=/dev/evil" in outputs[1].replace("  ", "")


def test_main_prints_nothing_raw(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command's output and the error line, from an API that returns control characters."""

    class HostileApi:
        def __init__(self, path: str, timeout: float) -> None:
            pass

        def close(self) -> None:
            pass

        def request(self, method: str, url: str, **_kw: object) -> object:
            if url.endswith("/fail"):
                raise cli.CliError(f"not_found: no VM {HOSTILE}")
            item = {**VM, "name": HOSTILE, "id": HOSTILE, "used_by": [HOSTILE]}
            if method == "POST" and url == "/v1/storage/reclaim":
                return {"removed": [HOSTILE, "disk:x"], "live_vms": 0}
            return [item] if url in ("/v1/vms", "/v1/templates", "/v1/snapshots") else item

    monkeypatch.setattr(cli, "Api", HostileApi)
    for argv in (
        ["ls"],
        ["get", "x"],
        ["pause", "x"],
        ["rm", HOSTILE],
        ["templates", "ls"],
        ["templates", "get", "t"],
        ["snapshots", "get", "s"],
        ["snapshots", "rm", HOSTILE],
        ["reclaim"],
        ["get", "fail"],
        ["-o", "json", "get", "x"],
    ):
        rc = cli.main(["--socket", "/nonexistent.sock", *argv])
        out = capsys.readouterr()
        assert rc == (1 if argv[-1] == "fail" else 0), argv
        assert "\x1b" not in out.out + out.err and "\x07" not in out.out + out.err, argv
        assert ("\\x1b[2J" in out.out + out.err) or ("\\u001b[2J" in out.out), (argv, out)


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_has_a_handler() -> None:
    """The dispatch tables and the parser name the same commands, aliases included."""
    top = _choices(cli.build_parser())
    assert set(top) == set(cli.COMMANDS) | set(obs_cli.STREAMS) | metrics_cli.STANDALONE
    assert set(_choices(top["templates"])) == set(storage_cli.TEMPLATE_ACTIONS)
    assert set(_choices(top["snapshots"])) == set(snapshot_cli.ACTIONS)


def test_create_and_restore_bodies_carry_ports_mode_and_tracking() -> None:
    args = cli.build_parser().parse_args(
        [
            "create",
            "-t",
            "demo",
            "--network-mode",
            "netns",
            "--port",
            "0:8080",
            "--port",
            "53:53/udp",
            "--track-dirty-pages",
        ]
    )
    body = cli.create_body(args)
    assert body["network_mode"] == "netns" and body["track_dirty_pages"] is True
    assert body["port_mappings"] == [
        {"host_port": 0, "guest_port": 8080, "protocol": "tcp"},
        {"host_port": 53, "guest_port": 53, "protocol": "udp"},
    ]
    r = cli.build_parser().parse_args(
        ["restore", "warm", "--id", "c1", "--port", "0:80", "--paused"]
    )
    assert snapshot_cli.restore_body(r, {}) == {
        "labels": {},
        "resume": False,
        "id": "c1",
        "port_mappings": [{"host_port": 0, "guest_port": 80, "protocol": "tcp"}],
    }
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["create", "-t", "demo", "--port", "80"])


def test_logs_and_events_commands_build_their_queries() -> None:
    p = cli.build_parser()
    args = p.parse_args(["logs", "-f", "--tail", "5", "--source", "console", "vm1"])
    url, params = obs_cli.STREAMS["logs"][0](args, False)
    assert url == "/v1/vms/vm1/logs"
    assert params == [("format", "text"), ("follow", "true"), ("tail", "5"), ("source", "console")]
    args = p.parse_args(["events", "--since", "7", "--vm", "vm1", "--type", "died"])
    url, params = obs_cli.STREAMS["events"][0](args, True)
    assert (url, params) == ("/v1/events", [("since", "7"), ("vm_id", "vm1"), ("type", "died")])
    line = obs_cli.event_line(
        {"id": 9, "time": 0, "type": "died", "vm_id": "vm1", "data": {"signal": "SIGKILL"}}
    )
    assert line == "9 1970-01-01T00:00:00.000Z died vm1 signal=SIGKILL"


def test_create_supervision_options() -> None:
    args = cli.build_parser().parse_args(
        [
            "create",
            "-t",
            "base",
            "--health",
            "tcp:80",
            "--health-retries",
            "2",
            "--restart",
            "on-failure:5",
            "--wait-for",
            "tcp:22",
            "--wait-timeout",
            "30",
        ]
    )
    body = cli.create_body(args)
    assert body["health_check"] == {"check": "tcp:80", "retries": 2}
    assert body["restart_policy"] == {"mode": "on-failure", "max_retries": 5}
    assert (body["wait_for"], body["wait_timeout_s"]) == ("tcp:22", 30.0)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["create", "-t", "b", "--restart", "sometimes"])
