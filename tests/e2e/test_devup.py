"""`fcd up` (the README's first command) behaves like production when a daemon dies:
the daemon is restarted and no VM or state is deleted (issue #13)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.root, pytest.mark.e2e]

FCD = Path(sys.executable).parent / "fcd"


def _pids(config: Path, daemon: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(daemon.encode()) for a in argv[:2]) and str(config).encode() in argv:
                out.append(int(d.name))
    return out


def _wait(cond: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out: {what}")


def test_a_killed_daemon_is_restarted_and_nothing_is_deleted(tmp_path: Path) -> None:
    base, ns = tmp_path / "dev", f"fcdu-{secrets.token_hex(3)}"
    up = subprocess.Popen(
        [str(FCD), "up", "--dir", str(base), "--netns", ns, "--subnet", "10.78.0.0/24"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sock, config = base / "run" / "api.sock", base / "fcd.toml"
    try:
        _wait(lambda: sock.exists() and _pids(config, "fcd-api"), 60, "fcd up serving")
        c = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://f")
        from fcd_dev import devup
        from fcd_dev import suite as suite_mod

        suite = suite_mod.Suite(base=base, firecracker="", jailer="", netns=ns)
        devup.import_demo_template(suite, "demo")
        r = c.post("/v1/vms", json={"id": "keepme", "template": "demo"}, timeout=60)
        assert r.status_code == 201, r.text
        (old,) = _pids(config, "fcd-net")
        os.kill(old, signal.SIGKILL)
        _wait(lambda: _pids(config, "fcd-net") not in ([], [old]), 30, "fcd-net restarted")
        assert up.poll() is None  # fcd up kept running
        vm = c.get("/v1/vms/keepme", timeout=30).json()
        assert vm["state"] == "running" and Path(f"/proc/{vm['pid']}").exists(), vm
        assert (base / "state").exists()
    finally:
        up.send_signal(signal.SIGINT)  # the user's stop: now fcd up removes what it made
        out, _ = up.communicate(timeout=60)
    assert "fcd-net exited" in out and "restarting it" in out, out
    assert up.returncode == 0, out
    assert not base.exists(), out
