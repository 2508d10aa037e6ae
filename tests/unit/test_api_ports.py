"""fcd-api's network routes over fake helpers: port mappings at create and on a live VM."""

from __future__ import annotations

import asyncio

from .api_fakes import Harness, api_harness

BODY = {
    "id": "vm1",
    "template": "base",
    "port_mappings": [
        {"host_port": 0, "guest_port": 80},
        {"host_port": 20005, "guest_port": 53, "protocol": "udp"},
    ],
    "network_policy": {"peers": True, "deny": [{"cidr": "1.2.3.4"}]},
}


def test_ports_at_create_and_on_a_running_vm() -> None:
    async def t(h: Harness) -> None:
        c = h.client
        r = await c.post("/v1/vms", json=BODY)
        assert r.status_code == 201, r.text
        vm = r.json()
        assert vm["port_mappings"] == [
            {"host_port": 20000, "guest_port": 80, "protocol": "tcp"},
            {"host_port": 20005, "guest_port": 53, "protocol": "udp"},
        ]
        setup = [x for x in h.fakes.calls if x[0] == "net.setup"]
        assert setup == [("net.setup", "vm1")]
        r = await c.post("/v1/vms/vm1/ports", json={"host_port": 0, "guest_port": 22})
        assert r.status_code == 200, r.text
        assert [p["host_port"] for p in r.json()["port_mappings"]] == [20000, 20005, 20001]
        # taken: 409 with the field
        r = await c.post("/v1/vms/vm1/ports", json={"host_port": 20001, "guest_port": 23})
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
        r = await c.delete("/v1/vms/vm1/ports?host_port=20000")
        assert r.status_code == 200, r.text
        assert [p["host_port"] for p in r.json()["port_mappings"]] == [20005, 20001]
        assert [p["host_port"] for p in (await c.get("/v1/vms/vm1")).json()["port_mappings"]] == [
            20005,
            20001,
        ]
        r = await c.get("/v1/vms/vm1/network/counters")
        assert r.status_code == 200 and r.json()["iface"].startswith("fc")
        r = await c.post("/v1/network/reconcile")
        assert r.status_code == 200 and r.json() == {"removed": []}
        r = await c.post("/v1/vms/nope/ports", json={"host_port": 0, "guest_port": 22})
        assert r.status_code == 404
        r = await c.post("/v1/vms", json={**BODY, "id": "vm2"})
        assert r.status_code == 409, r.text  # udp/20005 is vm1's
        assert (await c.get("/v1/vms/vm2")).status_code == 404  # rolled back

    async def main() -> None:
        async with api_harness() as h:
            await t(h)

    asyncio.run(main())
