"""The daemon runtime with real systemd tooling: socket activation, sd_notify, signals, bad config.

fcd-storage is the subject (it needs no privileges); the behaviour is the shared
runtime's. ``systemd-socket-activate`` (systemd's own tool) binds the socket and
passes it with LISTEN_FDS/LISTEN_PID exactly as PID 1 would.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcd_common import config
from fcd_common.config import SecurityConfig
from fcd_common.proto.common import Ping, Pong
from fcd_common.proto.storage import PROTOCOL
from fcd_common.rpc import RpcClient

from .storage_helpers import make_config

BIN = Path(sys.executable).parent / "fcd-storage"


def _write_cfg(tmp_path: Path) -> tuple[config.Config, Path]:
    cfg = make_config(tmp_path, security=SecurityConfig(api_user=getpass.getuser()))
    path = tmp_path / "fcd.toml"
    path.write_text(config.render(cfg))
    return cfg, path


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(15)
    return s, path


def _recv_until(sock: socket.socket, needle: str) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        msg = sock.recv(4096).decode()
        seen.extend(msg.split("\n"))
        if needle in seen:
            return seen
    raise AssertionError(f"{needle} not received; got {seen}")


def _ping(path: Path) -> Pong:
    async def go() -> Pong:
        client = RpcClient(path, PROTOCOL, timeout=10)
        try:
            return await client.call(Ping())
        finally:
            await client.close()

    return asyncio.run(go())


def test_ready_status_and_graceful_sigterm(tmp_path: Path) -> None:
    cfg, cfg_path = _write_cfg(tmp_path)
    nsock, npath = _notify_socket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": npath}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen([str(BIN), "--config", str(cfg_path)], env=env, stderr=subprocess.PIPE)
    try:
        seen = _recv_until(nsock, "READY=1")
        assert any(s.startswith("STATUS=") and "templates" in s for s in seen)
        pong = _ping(cfg.socket("storage"))
        assert pong.daemon == "fcd-storage" and pong.pid == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in _recv_until(nsock, "STOPPING=1")
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        nsock.close()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd tools missing")
def test_socket_activation_uses_the_passed_socket(tmp_path: Path) -> None:
    cfg, cfg_path = _write_cfg(tmp_path)
    activated = tmp_path / "activated.sock"  # not the configured path: proves the fd is used
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(activated), str(BIN), "--config", str(cfg_path)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not activated.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # waiting for systemd-socket-activate's bind, not for fcd
        assert _ping(activated).daemon == "fcd-storage"
        assert not cfg.socket("storage").exists()  # nothing bound at the configured path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bad_config_stops_at_start_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nsubnet = "10.0.0.0/40"\n')
    res = subprocess.run(
        [str(BIN), "--config", str(bad)], check=False, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 78  # EX_CONFIG
    assert "$.network" in res.stderr and "subnet" in res.stderr


def test_second_daemon_on_the_same_state_dir_refuses_naming_the_holder(tmp_path: Path) -> None:
    cfg, cfg_path = _write_cfg(tmp_path)
    nsock, npath = _notify_socket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": npath}
    env.pop("JOURNAL_STREAM", None)
    first = subprocess.Popen([str(BIN), "--config", str(cfg_path)], env=env, stderr=subprocess.PIPE)
    try:
        _recv_until(nsock, "READY=1")
        lock = cfg.state("storage") / "lock"
        assert lock.read_text().strip() == str(first.pid)
        env.pop("NOTIFY_SOCKET")
        second = subprocess.run(
            [str(BIN), "--config", str(cfg_path)],
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 75  # EX_TEMPFAIL
        assert str(lock) in second.stderr and f"pid {first.pid}" in second.stderr
        assert _ping(cfg.socket("storage")).pid == first.pid  # the first one serves on
        first.send_signal(signal.SIGTERM)
        assert first.wait(15) == 0
        env["NOTIFY_SOCKET"] = npath
        third = subprocess.Popen(
            [str(BIN), "--config", str(cfg_path)], env=env, stderr=subprocess.PIPE
        )
        try:
            _recv_until(nsock, "READY=1")
            assert _ping(cfg.socket("storage")).pid == third.pid
            assert lock.read_text().strip() == str(third.pid)
        finally:
            third.send_signal(signal.SIGTERM)
            assert third.wait(15) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        nsock.close()
