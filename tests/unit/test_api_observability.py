"""Request ids across RPC, the event store and its routes, the logs route on the file store."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from fcd_api import events, log_routes, logstore
from fcd_common import logs, reqid, vmlogstore

from .api_fakes import Harness, api_harness

CREATE = {"id": "vm1", "template": "base", "vcpu_count": 1, "mem_size_mib": 128}


def run(test: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with api_harness() as h:
            store = events.EventStore.open(h.dir / "events.db")
            events.install(store)
            log_routes.install(logstore.FileStore(h.dir / "logs"))
            try:
                await test(h)
            finally:
                log_routes.shutdown()
                events.install(None)
                store.close()

    asyncio.run(main())


def test_every_helper_call_carries_the_request_id() -> None:
    async def t(h: Harness) -> None:
        r = await h.client.post("/v1/vms", json=CREATE, headers={"X-Request-Id": "rid-create-1"})
        assert r.status_code == 201, r.text
        seen = [(tag, rid) for tag, rid in h.fakes.request_ids if tag != "vmm.watch_exits"]
        assert seen and all(rid == "rid-create-1" for _, rid in seen), seen
        h.fakes.request_ids.clear()
        r = await h.client.post("/v1/vms/vm1/pause")  # no header: one is made and carried
        rid = r.headers["x-request-id"]
        assert [x for x in h.fakes.request_ids if x[0] == "vmm.pause"] == [("vmm.pause", rid)]

    run(t)


def test_events_in_order_with_filters_and_since() -> None:
    async def t(h: Harness) -> None:
        c = h.client
        assert (await c.post("/v1/vms", json=CREATE)).status_code == 201
        for action in ("pause", "resume", "stop"):
            assert (await c.post(f"/v1/vms/vm1/{action}")).status_code == 200
        assert (await c.delete("/v1/vms/vm1")).status_code == 204
        r = await c.get("/v1/events")
        assert r.headers["content-type"].startswith("application/x-ndjson")
        evs = [json.loads(x) for x in r.text.splitlines()]
        kinds = [e["type"] for e in evs]
        assert kinds == ["created", "started", "paused", "resumed", "stopped", "deleted"]
        ids = [e["id"] for e in evs]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert all(e["vm_id"] == "vm1" for e in evs)
        r = await c.get("/v1/events", params={"since": ids[2], "type": "stopped,deleted"})
        assert [json.loads(x)["type"] for x in r.text.splitlines()] == ["stopped", "deleted"]
        assert (await c.get("/v1/events", params={"vm_id": "vm2"})).text == ""
        bad = await c.get("/v1/events", params={"type": "Bad Type"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_argument"

    run(t)


def test_event_store_prunes_and_cuts_off_a_slow_follower(tmp_path: Path) -> None:
    async def t() -> None:
        store = events.EventStore.open(tmp_path / "e.db", keep=20)
        slow = store.subscribe(size=3)
        fast = store.subscribe(size=1000)
        for i in range(50):
            store.add("started", f"vm-{i}", {})
        assert slow.cut and store.subscribers == 1  # dropped, not waited for
        assert fast.queue.qsize() == 50
        assert store.first_id() > 1 and store.last_id() == 50
        assert [e.id for e in store.query(since=45)] == [46, 47, 48, 49, 50]
        store.close()
        again = events.EventStore.open(tmp_path / "e.db", keep=20)
        assert again.add("died", "vm-x", {"signal": "SIGKILL"}).id == 51  # ids never reused
        again.close()

    asyncio.run(t())


def test_publish_logs_with_a_fixed_message_id(caplog: pytest.LogCaptureFixture) -> None:
    events.install(None)
    with caplog.at_level(logging.INFO, logger="fcd.api.events"):
        assert events.publish("paused", "vm-a", state="paused") is None
    (rec,) = caplog.records
    assert rec.MESSAGE_ID == events.MESSAGE_IDS["paused"] == events.message_id("paused")  # type: ignore[attr-defined]
    assert len(set(events.MESSAGE_IDS.values())) == len(events.KINDS)


def test_logs_route_reads_the_file_store_with_tail_source_and_text() -> None:
    async def t(h: Harness) -> None:
        assert (await h.client.post("/v1/vms", json=CREATE)).status_code == 201
        root = h.dir / "logs"
        handler = vmlogstore.VmFileHandler(root, "fcd-vmm", max_bytes=400)
        lg = logging.getLogger("test.vmlogs")
        lg.addHandler(handler)
        lg.propagate = False
        try:
            lg.warning("fcd line", extra=logs.vm("vm1"))
            for i in range(6):
                lg.warning("console %d", i, extra=logs.vm("vm1", source="console"))
            lg.warning("not ours", extra=logs.vm("vm2"))
        finally:
            lg.removeHandler(handler)
            handler.close()
        assert (root / "fcd-vmm" / "vm1.ndjson.1").exists()  # rotated at 400 bytes
        r = await h.client.get("/v1/vms/vm1/logs", params={"source": "console", "tail": 2})
        got = [json.loads(x) for x in r.text.splitlines()]
        assert [e["message"] for e in got] == ["console 4", "console 5"]
        assert {e["source"] for e in got} == {"console"} and got[0]["daemon"] == "fcd-vmm"
        r = await h.client.get("/v1/vms/vm1/logs", headers={"Accept": "text/plain"})
        assert r.headers["content-type"].startswith("text/plain")
        assert r.text.splitlines()[-1].endswith(" console console 5")
        missing = await h.client.get("/v1/vms/nope/logs")
        assert missing.status_code == 404
        bad = await h.client.get("/v1/vms/vm1/logs", params={"source": "kernel"})
        assert bad.status_code == 400

    run(t)


def test_the_request_id_filter_adds_the_field() -> None:
    logs.setup("fcd-test", force_stderr=True)
    token = reqid.request_id.set("rid-7")
    try:
        rec = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        for h in logging.getLogger().handlers:
            for f in h.filters:
                f.filter(rec)
        assert rec.FCD_REQUEST_ID == "rid-7"  # type: ignore[attr-defined]
    finally:
        reqid.request_id.reset(token)
    assert reqid.current() is None


def test_tailer_follows_a_file_across_its_rotation(tmp_path: Path) -> None:
    handler = vmlogstore.VmFileHandler(tmp_path, "fcd-vmm", max_bytes=300)
    lg = logging.getLogger("test.tailer")
    lg.addHandler(handler)
    lg.propagate = False
    tailer = vmlogstore.Tailer(tmp_path / "fcd-vmm" / "vm1.ndjson")
    got: list[str] = []
    try:
        for i in range(12):
            lg.warning("line %d", i, extra=logs.vm("vm1", source="console"))
            if i % 2 == 0:  # more often than the file rotates (every 3 lines here)
                got += [e.message for e in tailer.poll()]
    finally:
        lg.removeHandler(handler)
        handler.close()
    got += [e.message for e in tailer.poll()]
    assert got == [f"line {i}" for i in range(12)]
    assert (tmp_path / "fcd-vmm" / "vm1.ndjson.1").exists()


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir())


def test_the_store_of_one_daemon_stays_under_its_cap_oldest_vms_first(tmp_path: Path) -> None:
    """Deleted VMs' files stay, but not without bound: past ``max_total_bytes`` the
    VMs written to least recently lose their files (current and rotated), the VM
    being written never does, and a VM written again is young again. A new handler
    (a restart) counts what is there and goes on from it."""
    d = tmp_path / "fcd-vmm"

    def handler() -> vmlogstore.VmFileHandler:
        return vmlogstore.VmFileHandler(tmp_path, "fcd-vmm", max_bytes=400, max_total_bytes=3000)

    h = handler()
    lg = logging.getLogger("test.cap")
    lg.addHandler(h)
    lg.propagate = False
    try:
        for i in range(40):
            for k in range(4):
                lg.warning("vm %d line %d", i, k, extra=logs.vm(f"vm{i}"))
            if i >= 3:
                lg.warning("still here", extra=logs.vm("vm0"))  # vm0 keeps being written
            assert _dir_bytes(d) <= 3000
        names = {f.name for f in d.iterdir()}
        assert {"vm0.ndjson", "vm39.ndjson.1"} <= names  # 4 lines rotate once at 400 bytes
        assert "vm1.ndjson" not in names and "vm1.ndjson.1" not in names
        assert any(n.endswith(".ndjson.1") for n in names)  # rotation still happens
        lg.removeHandler(h)
        h.close()
        h = handler()  # a restart: it counts the files that are there
        lg.addHandler(h)
        before = {f.name for f in d.iterdir()}
        for i in range(40, 50):
            for k in range(4):
                lg.warning("vm %d line %d", i, k, extra=logs.vm(f"vm{i}"))
            assert _dir_bytes(d) <= 3000
        after = {f.name for f in d.iterdir()}
        assert "vm49.ndjson.1" in after and before - after  # older ones made room
    finally:
        lg.removeHandler(h)
        h.close()


def test_the_store_keeps_the_files_of_at_most_max_vms(tmp_path: Path) -> None:
    """Many VMs with a line each stay far under the byte cap; the count cap bounds
    the files (and the handler's one directory read at start)."""
    d = tmp_path / "fcd-vmm"
    h = vmlogstore.VmFileHandler(tmp_path, "fcd-vmm", max_vms=5)
    lg = logging.getLogger("test.capvms")
    lg.addHandler(h)
    lg.propagate = False
    try:
        for i in range(12):
            lg.warning("hello", extra=logs.vm(f"vm{i}"))
            assert len(list(d.iterdir())) <= 5
        assert {f.name for f in d.iterdir()} == {f"vm{i}.ndjson" for i in range(7, 12)}
    finally:
        lg.removeHandler(h)
        h.close()


def test_events_follow_of_one_vm_ends_with_its_deletion() -> None:
    async def t(h: Harness) -> None:
        follow = asyncio.create_task(
            h.client.get("/v1/events", params={"follow": "true", "vm_id": "vm1"}, timeout=60)
        )
        await asyncio.sleep(0.2)
        assert (await h.client.post("/v1/vms", json=CREATE)).status_code == 201
        assert (await h.client.post("/v1/vms", json={**CREATE, "id": "vm2"})).status_code == 201
        assert (await h.client.delete("/v1/vms/vm1", params={"force": "true"})).status_code == 204
        r = await asyncio.wait_for(follow, 60)
        got = [(e["type"], e["vm_id"]) for e in map(json.loads, r.text.splitlines())]
        assert got == [("created", "vm1"), ("started", "vm1"), ("deleted", "vm1")]

    run(t)
