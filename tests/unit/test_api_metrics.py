"""fcd-api's metrics over fake helpers: the per-VM route, a helper that cannot answer,
the Prometheus exposition (parsed by prometheus_client), operations counting, the
listener policy of the read-only socket, and fcctl top's frame."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fcd_api import listeners, metrics_cli
from fcd_api.__main__ import start_http
from fcd_api.app import create_asgi
from fcd_api.metrics_collect import Collector
from fcd_api.prom import Exposition
from fcd_api.readonly import Access, ListenerPolicy
from fcd_common import config
from fcd_common.errors import Unavailable

from .api_fakes import Harness, api_harness


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _get(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    for (n, lv), v in samples.items():
        if n == name and all(dict(lv).get(k) == x for k, x in labels.items()):
            return v
    return None


def test_vm_metrics_route_and_a_helper_down() -> None:
    async def t(h: Harness) -> None:
        c = h.client
        r = await c.post("/v1/vms", json={"id": "vm1", "template": "base", "vcpu_count": 2})
        assert r.status_code == 201, r.text
        m = (await c.get("/v1/vms/vm1/metrics")).json()
        assert m["problems"] == []
        assert m["cpu"]["vcpus"] == 2 and m["cpu"]["usage_seconds"] == 1.5
        assert m["memory"]["usage_bytes"] == 64 << 20
        assert m["memory"]["firecracker_rss_bytes"] == 30 << 20
        assert m["memory"]["balloon_target_bytes"] is None
        assert m["network"]["iface"].startswith("fc")
        assert m["network"]["firecracker"]["rx_packets"] == 1
        assert m["disk"] == [
            {
                "drive_id": "rootfs",
                "sampled_at": m["disk"][0]["sampled_at"],
                "read_bytes": 4096,
                "write_bytes": 0,
                "read_ops": 1,
                "write_ops": 0,
                "flush_ops": 0,
            }
        ]
        assert ("vmm.usage", "vm1") in h.fakes.calls
        # fcd-vmm cannot answer: still 200, its sections null, the reason named
        h.fakes.fail["vmm.usage"] = Unavailable("fcd-vmm is restarting")
        r = await c.get("/v1/vms/vm1/metrics")
        assert r.status_code == 200
        m = r.json()
        assert m["cpu"] is None and m["memory"] is None and m["disk"] == []
        assert m["network"] is not None
        assert m["problems"] == ["fcd-vmm: unavailable: fcd-vmm is restarting"]
        assert (await c.get("/v1/vms/nope/metrics")).status_code == 404
        # a VM with a balloon: its target and actual size from Firecracker's statistics
        h.fakes.fail.pop("vmm.usage")
        body = {"id": "vm2", "template": "base", "mem_size_mib": 256, "mem_target_mib": 200}
        r = await c.post("/v1/vms", json={**body, "balloon": {"stats_interval_s": 1}})
        assert r.status_code == 201, r.text
        mem = (await c.get("/v1/vms/vm2/metrics")).json()["memory"]
        assert mem["balloon_target_bytes"] == mem["balloon_actual_bytes"] == 56 << 20
        assert ("vmm.resources", "vm2") in h.fakes.calls
        assert ("vmm.resources", "vm1") not in h.fakes.calls  # no balloon: not asked

    async def main() -> None:
        async with api_harness() as h:
            await t(h)

    asyncio.run(main())


def test_exposition_and_fcctl_top() -> None:
    async def t(h: Harness) -> None:
        c = h.client
        for i in range(3):
            body = {"id": f"vm{i}", "template": "base", "sandbox_id": f"sb{i}"}
            assert (await c.post("/v1/vms", json=body)).status_code == 201
        assert (await c.post("/v1/vms/vm2/pause")).status_code == 200
        assert (await c.post("/v1/vms/missing/stop")).status_code == 404
        collector = Collector(h.flows, 10.0)
        exp = Exposition(h.registry, collector)
        before = _samples(exp.scrape().decode())
        assert _get(before, "fcd_vms", state="running") == 2
        assert _get(before, "fcd_vms", state="paused") == 1
        assert _get(before, "fcd_vm_cpu_usage_seconds_total") is None  # no collection yet
        col = await collector.collect()
        assert col.helpers_up == {"vmm": True, "net": True, "storage": True}
        assert h.fakes.calls.count(("vmm.usage_all", "")) == 1  # one call for every VM
        after = _samples(exp.scrape().decode())
        for i in range(3):
            lv = {"vm_id": f"vm{i}", "sandbox_id": f"sb{i}"}
            assert _get(after, "fcd_vm_cpu_usage_seconds_total", **lv) == 1.5
            assert _get(after, "fcd_vm_memory_limit_bytes", **lv) == 192 << 20
            assert _get(after, "fcd_vm_disk_read_bytes_total", drive="rootfs", **lv) == 4096
            assert _get(after, "fcd_vm_network_receive_bytes_total", **lv) == 0
        assert _get(after, "fcd_helper_up", helper="vmm") == 1
        assert (_get(after, "fcd_operations_total", kind="pause_vm", outcome="ok") or 0) >= 1
        assert (_get(after, "fcd_operations_total", kind="stop_vm", outcome="not_found") or 0) >= 1
        assert (_get(after, "fcd_operation_duration_seconds_count", kind="create_vm") or 0) >= 3
        # fcctl top: one frame from one exposition
        rows, states, age = metrics_cli.parse_top(exp.scrape().decode())
        assert 0 <= age < 60
        assert sorted(rows) == ["vm0", "vm1", "vm2"] and states["running"] == 2
        frame = metrics_cli.render_top(rows, states)
        assert frame.splitlines()[0] == "VMs: 1 paused, 2 running"
        assert "sb1" in frame and "192.0MiB" in frame

        # a collection that stopped coming: its per-VM series are left out, not served stale
        latest = collector.latest
        assert latest is not None
        collector.latest = dataclasses.replace(latest, at=latest.at - 31)
        stale = _samples(exp.scrape().decode())
        assert _get(stale, "fcd_vm_cpu_usage_seconds_total") is None
        assert (_get(stale, "fcd_vm_metrics_age_seconds") or 0) > 30
        collector.latest = latest
        # helpers down: the collection says so
        h.fakes.fail["vmm.usage_all"] = Unavailable("down")
        col = await collector.collect()
        assert col.helpers_up["vmm"] is False and col.helpers_up["net"] is True
        assert _get(_samples(exp.scrape().decode()), "fcd_helper_up", helper="vmm") == 0
        # the route serves the same format
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert _get(_samples(r.text), "fcd_vms", state="running") == 2

    async def main() -> None:
        async with api_harness() as h:
            await t(h)

    asyncio.run(main())


def test_listener_policy() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    policy = ListenerPolicy(
        app,
        {"/run/fcd/api.sock": Access.FULL, "/run/fcd/api-ro.sock": Access.READ},
        default=Access.SCRAPE,
    )

    async def call(server: tuple[str, int | None], method: str, path: str) -> tuple[int, bytes]:
        out: list[dict[str, Any]] = []

        async def send(m: dict[str, Any]) -> None:
            out.append(m)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "method": method, "path": path, "server": server}
        await policy(scope, receive, send)
        return out[0]["status"], out[1]["body"]

    async def main() -> None:
        full, ro, tcp = (
            ("/run/fcd/api.sock", None),
            ("/run/fcd/api-ro.sock", None),
            ("0.0.0.0", 9464),
        )
        assert (await call(full, "POST", "/v1/vms"))[0] == 200
        assert (await call(ro, "GET", "/v1/vms"))[0] == 200
        assert (await call(ro, "GET", "/metrics"))[0] == 200
        for method in ("POST", "DELETE", "PUT", "PATCH"):
            status, body = await call(ro, method, "/v1/vms/x")
            assert status == 403 and b'"code":"permission_denied"' in body
        assert (await call(tcp, "GET", "/metrics"))[0] == 200
        assert (await call(tcp, "GET", "/v1/vms"))[0] == 403
        assert (await call(("/elsewhere", None), "GET", "/v1/vms"))[0] == 403  # unknown: strictest

    asyncio.run(main())
    assert seen == ["POST /v1/vms", "GET /v1/vms", "GET /metrics", "GET /metrics"]


def test_listeners_over_real_sockets(tmp_path: Path) -> None:
    """api.sock, api-ro.sock and a TCP scrape listener, bound by fcd-api and served
    by one uvicorn: each grants what its listener allows."""
    cfg = config.Config(
        paths=config.PathsConfig(state_dir=str(tmp_path / "state"), run_dir=str(tmp_path / "run")),
        api=config.ApiConfig(metrics_listen="127.0.0.1:0"),
    )

    async def main() -> None:
        async with api_harness() as h:
            socks = listeners.api_sockets(cfg)
            assert [a for _, a in socks] == [Access.FULL, Access.READ, Access.SCRAPE]
            ro_path = cfg.socket("api-ro")
            assert stat.S_IMODE(os.stat(ro_path).st_mode) == 0o660
            port = socks[2][0].getsockname()[1]
            app = create_asgi(h.flows, listeners={listeners.key(s): a for s, a in socks})
            server, task = await start_http(app, [s for s, _ in socks], grace=1)
            try:

                def unix(path: Path) -> httpx.AsyncClient:
                    t = httpx.AsyncHTTPTransport(uds=str(path))
                    return httpx.AsyncClient(transport=t, base_url="http://fcd")

                async with (
                    unix(cfg.socket("api")) as rw,
                    unix(ro_path) as ro,
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as tcp,
                ):
                    r = await rw.post("/v1/vms", json={"id": "vm1", "template": "base"})
                    assert r.status_code == 201, r.text
                    assert (await ro.get("/v1/vms/vm1")).json()["state"] == "running"
                    r = await ro.post("/v1/vms/vm1/stop")
                    assert r.status_code == 403
                    assert r.json()["error"]["code"] == "permission_denied"
                    assert r.headers["x-request-id"]
                    assert (await tcp.get("/metrics")).status_code == 200
                    assert (await tcp.get("/v1/vms")).status_code == 403
                    assert (await tcp.post("/v1/vms/vm1/stop")).status_code == 403
                    assert (await rw.get("/v1/vms/vm1")).json()["state"] == "running"
            finally:
                server.should_exit = True
                await task

    asyncio.run(main())


def test_top_cpu_rate_is_between_collections() -> None:
    rates = metrics_cli.CpuRates()

    def rows(cpu: float) -> dict[str, metrics_cli.Row]:
        return {"vm": metrics_cli.Row("vm", cpu_s=cpu)}

    first = rows(10.0)
    rates.update(first, 100.0)
    assert first["vm"].cpu_pct is None
    again = rows(10.0)  # a frame before the next collection: same sample
    rates.update(again, 100.2)
    assert again["vm"].cpu_pct is None
    nxt = rows(15.0)  # 5 CPU seconds over 10 s of collections
    rates.update(nxt, 110.0)
    assert nxt["vm"].cpu_pct == 50.0
    between = rows(15.0)
    rates.update(between, 110.1)
    assert between["vm"].cpu_pct == 50.0  # the last rate, not 0
