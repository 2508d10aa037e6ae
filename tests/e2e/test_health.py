"""Health checks, restart policies and readiness with the four real daemons.

The Firecracker double runs no guest, so "the guest's service" is played by a
TCP listener at the guest's address inside the VM's own network namespace
(netns mode): exactly where fcd-net's probe connects, as a client of the
guest would. The listener is started, killed and started again to make the
check pass, fail and recover.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fcd_dev import devup

from .harness import api, running_suite

pytestmark = [pytest.mark.root, pytest.mark.e2e]

PORT = 8080
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""


def vm_netns(pid: int, prefix: str) -> str:
    ino = os.stat(f"/proc/{pid}/ns/net").st_ino
    for name in os.listdir("/run/netns"):
        if name.startswith(prefix) and os.stat(f"/run/netns/{name}").st_ino == ino:
            return name
    raise AssertionError(f"no namespace of pid {pid}")


class Guest:
    """A TCP service at the guest's address in the VM's namespace."""

    def __init__(self, ns: str, ip: str) -> None:
        self.ns, self.ip = ns, ip
        self.proc: subprocess.Popen[str] | None = None
        subprocess.run(["ip", "-n", ns, "addr", "replace", f"{ip}/32", "dev", "lo"], check=True)

    def up(self) -> None:
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.ns}",
                sys.executable,
                "-c",
                SERVER,
                self.ip,
                str(PORT),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def down(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@contextmanager
def guest_for(ns: str, ip: str) -> Iterator[Guest]:
    g = Guest(ns, ip)
    try:
        yield g
    finally:
        g.down()


def until(c: httpx.Client, vm_id: str, within: float = 60, **want: Any) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        vm: dict[str, Any] = c.get(f"/v1/vms/{vm_id}").json()
        if all(vm.get(k) == v for k, v in want.items()):
            return vm
        assert time.monotonic() < deadline, (want, vm)
        time.sleep(0.05)


def test_tcp_health_check_fails_recovers_and_gives_up(tmp_path: Path) -> None:
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        body = {
            "id": "web",
            "template": "demo",
            "network_mode": "netns",
            "port_mappings": [{"host_port": 0, "guest_port": PORT}],
            "health_check": {
                "check": f"tcp:{PORT}",
                "interval_s": 0.2,
                "timeout_s": 1,
                "retries": 2,
                "start_period_s": 5,
            },
            "restart_policy": {"mode": "on-failure", "max_retries": 1, "backoff": 0},
        }
        r = c.post("/v1/vms", json=body)
        assert r.status_code == 201, r.text
        vm = r.json()
        until(c, "web", health="starting")  # no probe has answered yet
        ns = vm_netns(vm["pid"], suite.vm_netns_prefix)
        with guest_for(ns, vm["ip_address"]) as guest:
            guest.up()
            until(c, "web", health="healthy")
            assert (
                "healthy"
                in subprocess.run(
                    [
                        str(Path(sys.executable).parent / "fcctl"),
                        "--socket",
                        str(suite.api_socket),
                        "ls",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )

            guest.down()  # the service dies: unhealthy, restarted (stop, start)
            again = until(c, "web", restarts=1, state="running")
            assert again["pid"] != vm["pid"]
            assert (again["ip_address"], again["port_mappings"]) == (
                vm["ip_address"],
                vm["port_mappings"],
            )
            assert vm_netns(again["pid"], suite.vm_netns_prefix) == ns
            guest.up()  # and comes back within the start period: healthy, counter reset
            until(c, "web", health="healthy", restarts=0)

            guest.down()  # for good: one more restart, then the policy gives up
            dead = until(c, "web", state="error")
            assert "restart policy gave up after 1 attempt(s)" in dead["error"], dead
            assert "tcp" in dead["error"] or str(PORT) in dead["error"]
            assert dead["pid"] is None and dead["health"] is None
        assert c.delete("/v1/vms/web", params={"force": "true"}).status_code == 204


def test_restart_policies_on_a_killed_and_a_halted_firecracker(tmp_path: Path) -> None:
    from .test_supervision import _ctrl_alt_del

    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        for vm_id, mode in (("onf", "on-failure"), ("alw", "always"), ("never", "no")):
            body = {
                "id": vm_id,
                "template": "demo",
                "restart_policy": {"mode": mode, "backoff": 0.1},
            }
            assert c.post("/v1/vms", json=body).status_code == 201
        pids = {v["id"]: v["pid"] for v in c.get("/v1/vms").json()}
        os.kill(pids["onf"], signal.SIGKILL)
        os.kill(pids["never"], signal.SIGKILL)
        vm = until(c, "onf", state="running", restarts=1)
        assert vm["pid"] != pids["onf"] and vm["error"] is None
        vm = until(c, "never", state="error")
        assert "SIGKILL" in vm["error"]
        if not os.environ.get("FCD_FIRECRACKER"):  # the minimal real guest ignores Ctrl-Alt-Del
            _ctrl_alt_del(suite, "alw")
            vm = until(c, "alw", state="running", restarts=1)
            assert vm["pid"] != pids["alw"]
        time.sleep(0.5)
        assert c.get("/v1/vms/never").json()["state"] == "error"
        for vm_id in ("onf", "alw", "never"):
            assert c.delete(f"/v1/vms/{vm_id}", params={"force": "true"}).status_code == 204


def test_wait_for_tcp_at_create_and_a_timeout_that_undoes_the_create(tmp_path: Path) -> None:
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        prefix = suite.vm_netns_prefix
        started: list[float] = []
        guests: list[Guest] = []

        def bring_up_guest() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                names = [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
                if names:
                    time.sleep(1.0)  # the guest "boots" a while after its VM exists
                    g = Guest(names[0], "172.31.255.2")
                    g.up()
                    guests.append(g)
                    started.append(time.monotonic())
                    return
                time.sleep(0.02)

        t = threading.Thread(target=bring_up_guest)
        t.start()
        try:
            body = {
                "id": "ready",
                "template": "demo",
                "network_mode": "netns",
                "wait_for": f"tcp:{PORT}",
                "wait_timeout_s": 60,
            }
            r = c.post("/v1/vms", json=body)
            answered = time.monotonic()
            t.join()
            assert r.status_code == 201 and r.json()["state"] == "running", r.text
            assert started and started[0] <= answered  # not before the guest was up
        finally:
            t.join()
            for g in guests:
                g.down()
        assert c.delete("/v1/vms/ready", params={"force": "true"}).status_code == 204

        body = {
            "id": "late",
            "template": "demo",
            "network_mode": "netns",
            "wait_for": f"tcp:{PORT}",
            "wait_timeout_s": 1.5,
        }
        r = c.post("/v1/vms", json=body)
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "deadline_exceeded"
        assert c.get("/v1/vms/late").status_code == 404
        assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)] == []
        assert c.post("/v1/network/reconcile").json() == {"removed": []}


def test_api_check_follows_a_firecracker_that_stops_answering(tmp_path: Path) -> None:
    """check "api": fcd-vmm's GET / on the API socket; a stopped (SIGSTOP) Firecracker does
    not answer and the VM turns unhealthy (no restart policy: it is only reported)."""
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        body = {
            "id": "frozen",
            "template": "demo",
            "health_check": {"check": "api", "interval_s": 0.2, "timeout_s": 0.5, "retries": 2},
        }
        vm = c.post("/v1/vms", json=body).json()
        until(c, "frozen", health="healthy")
        os.kill(vm["pid"], signal.SIGSTOP)
        try:
            bad = until(c, "frozen", health="unhealthy")
            assert bad["state"] == "running" and bad["restarts"] == 0
        finally:
            os.kill(vm["pid"], signal.SIGCONT)
        until(c, "frozen", health="healthy")
        assert c.delete("/v1/vms/frozen", params={"force": "true"}).status_code == 204


def test_wait_for_serial_with_the_minimal_guest(tmp_path: Path) -> None:
    """The minimal guest prints ``fcd-guest: hello`` on its serial console at boot (the
    double runs its UART loop; the real Firecracker runs it): create answers once fcd-vmm
    captured that line; a line that never comes fails the create cleanly."""
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        body = {"id": "hello", "template": "demo", "wait_for": "serial:^fcd-guest: hello$"}
        r = c.post("/v1/vms", json=body)
        assert r.status_code == 201 and r.json()["state"] == "running", r.text
        assert c.post("/v1/vms/hello/stop").status_code == 200
        r = c.post("/v1/vms/hello/start")  # the next boot prints it again
        assert r.status_code == 200 and r.json()["state"] == "running", r.text
        assert c.delete("/v1/vms/hello", params={"force": "true"}).status_code == 204

        body = {"id": "mute", "template": "demo", "wait_for": "serial:^login:", "wait_timeout_s": 2}
        r = c.post("/v1/vms", json=body)
        assert r.status_code == 504, r.text
        assert "no console line matching" in r.json()["error"]["message"]
        assert c.get("/v1/vms/mute").status_code == 404
