"""fcd-net's LeaseStore indexes (address, TAP, host port) agree with a scan of the leases
after any sequence of puts (new, changed, refused) and removes, and after a reload."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from fcd_common import ids
from fcd_common.errors import Internal
from fcd_common.proto.net import PortMapping
from fcd_net.leases import LeaseStore
from fcd_net.plan import Lease


def _lease(vm_id: str, ip: str, ports: list[int], *, netns: bool) -> Lease:
    return Lease(
        vm_id=vm_id,
        ip=ip,
        tap="fctap0" if netns else ids.tap_name(vm_id, "fc"),  # clones share one name
        mac=ids.guest_mac(ip),
        uid=900_001,
        gid=900_001,
        ports=[PortMapping(host_port=p, guest_port=80) for p in ports],
    )


def _agrees(store: LeaseStore) -> None:
    leases = list(store)
    assert set(store.used_ips()) == {x.addr for x in leases}
    assert set(store.used_ports()) == {(p.protocol, p.host_port) for x in leases for p in x.ports}
    for x in leases:
        others = {(p.protocol, p.host_port) for y in leases if y.vm_id != x.vm_id for p in y.ports}
        assert set(store.used_ports(except_vm=x.vm_id)) == others
        holder = store.by_tap(x.tap)
        assert holder is not None and holder.tap == x.tap
    assert store.by_tap("nosuchtap") is None


@pytest.mark.parametrize("seed", range(5))
def test_indexes_follow_puts_and_removes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = LeaseStore(tmp_path)
    for _ in range(150):
        vm_id = f"vm-{rng.randrange(12)}"
        if rng.random() < 0.35:
            store.remove(vm_id)
        else:
            ip = f"10.213.0.{rng.randrange(2, 20)}"
            ports = rng.sample(range(30000, 30012), rng.randrange(3))
            new = _lease(vm_id, ip, ports, netns=rng.random() < 0.3)
            before = {x.vm_id: x for x in store}
            try:
                store.put(new)
            except Internal:  # an address or port another VM holds: nothing changed
                assert {x.vm_id: x for x in store} == before
            else:
                assert store.get(vm_id) == new
        _agrees(store)
    again = LeaseStore(tmp_path)
    assert [msgspec.to_builtins(x) for x in again] == [msgspec.to_builtins(x) for x in store]
    _agrees(again)
