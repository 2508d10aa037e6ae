"""Logs, events and request ids end to end: the four daemons under ``fcd up`` (file store).

With FCD_FIRECRACKER/FCD_JAILER set (e.g. /opt/fc17) the real binaries run the
minimal guest; otherwise the doubles (the Firecracker double runs the same guest's
UART loop). The booted-systemd test reads the same logs through journald.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fcd_dev import devup
from fcd_dev import suite as suite_mod

from .harness import api, running_suite

pytestmark = [pytest.mark.root, pytest.mark.e2e]

MESSAGE = "fcd-guest: hello"
WAIT_S = 60.0


class Follower:
    """A follow stream read in a thread: its NDJSON lines as they come, and its end."""

    def __init__(self, suite: suite_mod.Suite, url: str, params: dict[str, str]) -> None:
        self.lines: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.status = 0
        self._t = threading.Thread(target=self._run, args=(suite, url, params), daemon=True)
        self._t.start()

    def _run(self, suite: suite_mod.Suite, url: str, params: dict[str, str]) -> None:
        timeout = httpx.Timeout(30.0, read=None)
        try:
            with api(suite) as c, c.stream("GET", url, params=params, timeout=timeout) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line:
                        self.lines.append(json.loads(line))
        except BaseException as e:  # reported by wait()
            self.error = e
        finally:
            self.ended.set()

    def wait(self, cond: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not cond(list(self.lines)):
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"no {what} in {self.lines[-20:]}"
            time.sleep(0.05)


def test_logs_follow_gets_the_console_and_firecracker_and_ends_on_delete(tmp_path: Path) -> None:
    # Info: Firecracker logs the pause this test waits for (the default, Warning, does not)
    jail = {"firecracker_log_level": "Info"}
    with running_suite(tmp_path, jail=jail) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        r = c.post("/v1/vms", json={"id": "logvm", "template": "demo"})
        assert r.status_code == 201, r.text
        logs = Follower(suite, "/v1/vms/logvm/logs", {"follow": "true"})
        logs.wait(lambda ls: any(e["source"] == "console" for e in ls), "console line")
        console = [e["message"] for e in logs.lines if e["source"] == "console"]
        assert console == [MESSAGE]
        logs.wait(lambda ls: any(e["source"] == "firecracker" for e in ls), "Firecracker line")
        logs.wait(lambda ls: any(e["source"] == "fcd" for e in ls), "fcd record")
        seen = len(logs.lines)
        assert c.post("/v1/vms/logvm/pause").status_code == 200
        # a new line of Firecracker's, after the stream started (its log of the pause)
        logs.wait(
            lambda ls: any(e["source"] == "firecracker" for e in ls[seen:]), "line after pause"
        )
        assert all(set(e) >= {"time", "source", "message"} for e in logs.lines)
        times = [e["time"] for e in logs.lines]
        assert times[: len(times) // 2] == sorted(times[: len(times) // 2])  # backlog ordered
        only = c.get("/v1/vms/logvm/logs", params={"source": "console", "format": "text"})
        assert only.text.rstrip("\n").endswith(f"console {MESSAGE}"), only.text
        assert c.delete("/v1/vms/logvm", params={"force": "true"}).status_code == 204
        assert logs.ended.wait(WAIT_S), "the follow stream did not end when the VM was deleted"
        assert logs.error is None and logs.status == 200


def test_events_follow_in_order_including_a_crash(tmp_path: Path) -> None:
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        evs = Follower(suite, "/v1/events", {"follow": "true"})
        time.sleep(0.5)  # let it subscribe (what it misses it reads from the store anyway)
        assert c.post("/v1/vms", json={"id": "ev1", "template": "demo"}).status_code == 201
        assert c.post("/v1/vms/ev1/pause").status_code == 200
        assert c.post("/v1/vms/ev1/resume").status_code == 200
        assert c.delete("/v1/vms/ev1", params={"force": "true"}).status_code == 204
        r = c.post("/v1/vms", json={"id": "ev2", "template": "demo"})
        assert r.status_code == 201, r.text
        os.kill(r.json()["pid"], signal.SIGKILL)
        evs.wait(lambda ls: any(e["type"] == "died" for e in ls), "died event")
        got = [(e["type"], e["vm_id"]) for e in evs.lines]
        assert got == [
            ("created", "ev1"),
            ("started", "ev1"),
            ("paused", "ev1"),
            ("resumed", "ev1"),
            ("deleted", "ev1"),
            ("created", "ev2"),
            ("started", "ev2"),
            ("died", "ev2"),
        ], got
        died = evs.lines[-1]
        assert died["data"]["signal"] == "SIGKILL" and died["data"]["exit_code"] is None
        ids = [e["id"] for e in evs.lines]
        assert ids == sorted(ids)
        # a client that reconnects with since= misses nothing still stored
        again = c.get("/v1/events", params={"since": str(ids[3])})
        assert [json.loads(x)["id"] for x in again.text.splitlines()] == ids[4:]
        assert not evs.ended.is_set()


def test_one_request_id_in_all_four_daemons_records(tmp_path: Path) -> None:
    rid = "e2e-rid-4d"
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "demo")
        r = c.post(
            "/v1/vms", json={"id": "ridvm", "template": "demo"}, headers={"X-Request-Id": rid}
        )
        assert r.status_code == 201 and r.headers["x-request-id"] == rid, r.text
        # each daemon's own record of the create, in its log (stderr under fcd up) ...
        found = {
            d: [
                ln for ln in suite.log_path(d).read_text().splitlines() if f"request_id={rid}" in ln
            ]
            for d in ("api", "net", "storage", "vmm")
        }
        assert all(found.values()), {d: len(v) for d, v in found.items()}
        # ... and in the VM's file store, which the logs API serves
        got = c.get("/v1/vms/ridvm/logs", params={"source": "fcd"})
        daemons = {json.loads(x)["daemon"] for x in got.text.splitlines() if rid in x}
        assert daemons == {"fcd-api", "fcd-net", "fcd-storage", "fcd-vmm"}, daemons
        assert c.delete("/v1/vms/ridvm", params={"force": "true"}).status_code == 204
