"""Crash detection end to end: the registry follows a Firecracker that ends on its own."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fcd_dev import devup

from .harness import api, running_suite

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def _wait_state(
    c: httpx.Client, vm_id: str, want: str, within: float
) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    while True:
        vm: dict[str, Any] = c.get(f"/v1/vms/{vm_id}").json()
        took = time.monotonic() - t0
        if vm["state"] == want or took > within:
            return vm, took
        time.sleep(0.01)


def _ctrl_alt_del(suite: Any, vm_id: str) -> None:
    """What a guest that halts itself looks like to the host: Firecracker exits 0."""
    sock = Path(suite.cfg.paths.chroot_base) / "firecracker" / vm_id / "root/run/firecracker.socket"
    dfd = os.open(sock.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        transport = httpx.HTTPTransport(uds=f"/proc/self/fd/{dfd}/{sock.name}")
        with httpx.Client(transport=transport, base_url="http://l", timeout=5) as fc:
            r = fc.put("/actions", json={"action_type": "SendCtrlAltDel"})
            assert r.status_code == 204, r.text
    finally:
        os.close(dfd)


def test_killed_is_error_and_halted_is_stopped_without_a_request(tmp_path: Path) -> None:
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        for vm_id in ("crash", "halt"):
            r = c.post("/v1/vms", json={"id": vm_id, "template": "demo"})
            assert r.status_code == 201, r.text
        pid = c.get("/v1/vms/crash").json()["pid"]
        os.kill(pid, signal.SIGKILL)
        vm, took = _wait_state(c, "crash", "error", within=5)
        assert vm["state"] == "error" and took < 1.0, (vm, took)
        assert "SIGKILL" in vm["error"] and vm["pid"] is None

        if not os.environ.get("FCD_FIRECRACKER"):  # the minimal real guest ignores Ctrl-Alt-Del
            _ctrl_alt_del(suite, "halt")
            vm, took = _wait_state(c, "halt", "stopped", within=5)
            assert vm["state"] == "stopped" and vm["error"] is None, vm

        r = c.post("/v1/vms/crash/start")  # from error: its disk, TAP and jail are intact
        assert r.status_code == 200 and r.json()["state"] == "running", r.text
        for vm_id in ("crash", "halt"):
            assert c.delete(f"/v1/vms/{vm_id}", params={"force": "true"}).status_code == 204


def test_a_helper_outage_is_a_503_and_strands_nothing(tmp_path: Path) -> None:
    """#13: kill -9 fcd-vmm, pause within a second: 503 with Retry-After, the VM stays
    running; once fcd-vmm is back (it re-adopts the VM) the pause works."""
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        vm = c.post("/v1/vms", json={"id": "steady", "template": "demo"}).json()
        suite.procs["vmm"].kill()
        suite.procs["vmm"].wait()
        r = c.post("/v1/vms/steady/pause")
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        after = c.get("/v1/vms/steady").json()
        assert (after["state"], after["error"]) == ("running", None), after
        suite.restart("vmm")
        r = c.post("/v1/vms/steady/pause")
        assert r.status_code == 200 and r.json()["state"] == "paused", r.text
        assert c.get("/v1/vms/steady").json()["pid"] == vm["pid"]  # the same Firecracker
        assert c.delete("/v1/vms/steady", params={"force": "true"}).status_code == 204


def _quietly(call: Any) -> Any:
    """``call`` for a thread whose request dies with the fcd-api the test kills."""

    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):
            call()

    return run


def _until(c: httpx.Client, vm_id: str, within: float = 60, **want: Any) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        r = c.get(f"/v1/vms/{vm_id}")
        vm: dict[str, Any] = r.json() if r.status_code == 200 else {"status": r.status_code}
        if all(vm.get(k) == v for k, v in want.items()):
            return vm
        assert time.monotonic() < deadline, (want, vm)
        time.sleep(0.05)


def test_fcd_api_killed_mid_create_adopts_the_guest_and_mid_delete_finishes_it(
    tmp_path: Path,
) -> None:
    """#13: fcd-api killed mid-create left a live guest `error` with pid null; killed
    mid-delete it left a phantom `running` VM. Reconciliation rolls both forward."""
    import threading

    with running_suite(tmp_path) as suite, api(suite, timeout=120) as c:
        devup.import_demo_template(suite, "demo")
        # a create waiting for a guest port nobody opens: starting, Firecracker running
        body = {"id": "mid", "template": "demo", "wait_for": "tcp:9", "wait_timeout_s": 600}
        threading.Thread(target=_quietly(lambda: c.post("/v1/vms", json=body))).start()
        vm = _until(c, "mid", state="starting")
        while vm["pid"] is None:
            vm = _until(c, "mid", state="starting")
        suite.procs["api"].kill()
        suite.procs["api"].wait()
        suite.restart("api")
        with api(suite) as c2:
            adopted = _until(c2, "mid", state="running")
            assert adopted["pid"] == vm["pid"] and adopted["error"] is None
            assert Path(f"/proc/{vm['pid']}").exists()

            # a delete held up in fcd-vmm (stopped), then fcd-api killed: deleting
            vmm = suite.procs["vmm"]
            os.kill(vmm.pid, signal.SIGSTOP)
            try:
                delete = _quietly(lambda: c2.delete("/v1/vms/mid", params={"force": "true"}))
                threading.Thread(target=delete).start()
                _until(c2, "mid", state="deleting")
                suite.procs["api"].kill()
                suite.procs["api"].wait()
            finally:
                os.kill(vmm.pid, signal.SIGCONT)
        suite.restart("api")
        with api(suite) as c3:
            _until(c3, "mid", status=404)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{vm['pid']}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            stat = Path(f"/proc/{vm['pid']}/stat")
            assert not stat.exists() or ") Z " in stat.read_text()
            assert c3.post("/v1/network/reconcile").json() == {"removed": []}
