"""fcd-api refuses a network policy the operator does not permit (issue #9, finding 5).

fcd-api checks before anything is created -- no registry row, no helper call --
and answers 403 naming the field; fcd-net re-checks with the host's addresses
(tests/integration/test_net_security.py replays the attack on real packets).
"""

from __future__ import annotations

import asyncio

from fcd_common.config import NetworkConfig

from .api_fakes import Harness, api_harness


def _body(vm_id: str, *cidrs: str) -> dict[str, object]:
    return {
        "id": vm_id,
        "template": "base",
        "network_policy": {
            "deny": [{"cidr": "10.0.0.0/8"}],
            "allow": [{"cidr": c, "protocol": "tcp", "ports": [80]} for c in cidrs],
        },
    }


def test_finding5_api_refuses_metadata_and_lan_in_allow() -> None:
    """The default configuration: ``allow`` can open nothing -- the audit's two rules
    (cloud metadata, the whole 10/8) are refused before anything is created."""

    async def t(h: Harness) -> None:
        c = h.client
        for i, cidrs in enumerate(
            (("169.254.169.254/32",), ("10.0.0.0/8",), ("1.1.1.1/32", "192.168.1.0/24"))
        ):
            r = await c.post("/v1/vms", json=_body(f"vm{i}", *cidrs))
            assert r.status_code == 403, r.text
            err = r.json()["error"]
            assert err["code"] == "permission_denied"
            field = "network_policy.allow[0].cidr"
            assert err["details"] == {"field": field}
            assert field in err["message"] and "network.allowable_cidrs" in err["message"]
            assert (await c.get(f"/v1/vms/vm{i}")).status_code == 404
        assert h.fakes.calls == []  # nothing reached a helper
        r = await c.post("/v1/vms", json=_body("denies-only"))
        assert r.status_code == 201, r.text  # deny lists stay free

    async def main() -> None:
        async with api_harness() as h:
            await t(h)

    asyncio.run(main())


def test_finding5_api_allows_what_the_operator_lists() -> None:
    async def t(h: Harness) -> None:
        c = h.client
        r = await c.post("/v1/vms", json=_body("ok", "10.20.1.0/24"))
        assert r.status_code == 201, r.text
        r = await c.post("/v1/vms", json=_body("lan-wide", "10.20.1.0/24", "10.20.0.0/15"))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["details"] == {"field": "network_policy.allow[1].cidr"}
        r = await c.post("/v1/vms", json=_body("md", "169.254.169.254"))
        assert r.status_code == 403 and "allow_link_local" in r.json()["error"]["message"]

    async def main() -> None:
        net = NetworkConfig(allowable_cidrs=["10.20.0.0/16", "169.254.0.0/16"])
        async with api_harness(network=net) as h:
            await t(h)

    asyncio.run(main())
