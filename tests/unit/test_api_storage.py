"""fcd-api's storage routes and extra drives, against the helper fakes; fcctl's parsing."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

import pytest

from fcd_api import cli, storage_cli

from .api_fakes import Harness, api_harness


def run(test: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with api_harness() as h:
            await test(h)

    asyncio.run(main())


def test_templates_routes() -> None:
    async def t(h: Harness) -> None:
        c = h.client
        r = await c.get("/v1/templates")
        assert r.status_code == 200 and r.json()[0]["name"] == "base"
        r = await c.get("/v1/templates/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        body = {"name": "b", "kernel_path": "/k", "source_dir": "/tree", "size_mib": 64}
        r = await c.post("/v1/templates/build", json=body)
        assert r.status_code == 201 and r.json()["source"] == "build"
        r = await c.post("/v1/templates", json={"name": "../x", "kernel_path": "/k"})
        assert r.status_code == 400
        r = await c.post(
            "/v1/templates",
            json={"name": "x", "kernel_path": "/k", "rootfs_path": "/r", "rootfs_sha256": "zz"},
        )
        assert r.status_code == 400 and r.json()["error"]["details"]["field"] == "rootfs_sha256"
        r = await c.post(
            "/v1/vms",
            json={"id": "vm1", "template": "base", "drives": [{"name": "data", "size_mib": 64}]},
        )
        assert r.status_code == 201, r.text
        assert r.json()["config"]["drives"] == [{"name": "data", "size_mib": 64, "template": None}]
        r = await c.delete("/v1/templates/base")
        assert r.status_code == 409 and r.json()["error"]["details"]["used_by"] == ["vm:vm1"]
        r = await c.post("/v1/storage/reclaim")
        assert r.status_code == 200 and r.json() == {"removed": [], "live_vms": 1}
        r = await c.get("/v1/snapshots")
        assert r.status_code == 200 and r.json() == []
        r = await c.delete("/v1/snapshots/s1")
        assert r.status_code == 404

    run(t)


def test_parse_drives() -> None:
    assert storage_cli.parse_drives(["data=512", "tools=ro:base"]) == [
        {"name": "data", "size_mib": 512},
        {"name": "tools", "template": "base"},
    ]
    for bad in ("data", "data=", "data=big"):
        with pytest.raises(argparse.ArgumentTypeError):
            storage_cli.parse_drives([bad])


def test_fcctl_parses_storage_commands() -> None:
    p = cli.build_parser()
    a = p.parse_args(["templates", "build", "t1", "--kernel", "/k", "--from", "/tree"])
    assert (a.cmd, a.tcmd, a.source_dir) == ("templates", "build", "/tree")
    a = p.parse_args(["create", "-t", "base", "--drive", "data=64"])
    assert cli.create_body(a)["drives"] == [{"name": "data", "size_mib": 64}]
    a = p.parse_args(["-o", "json", "snapshots", "ls"])
    assert a.scmd == "ls"
    calls: list[tuple[str, str]] = []

    def fake(method: str, url: str, **_kw: object) -> object:
        calls.append((method, url))
        return [] if method == "GET" else {"removed": ["disk:x"], "live_vms": 0}

    assert storage_cli.run(p.parse_args(["reclaim"]), fake, "table") == "disk:x"
    assert "NAME" in storage_cli.run(p.parse_args(["templates", "ls"]), fake, "table")
    assert calls == [("POST", "/v1/storage/reclaim"), ("GET", "/v1/templates")]
