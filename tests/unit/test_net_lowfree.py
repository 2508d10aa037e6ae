"""fcd_net.lowfree and the allocation through it: the same answers as a scan from the bottom."""

from __future__ import annotations

import random
from pathlib import Path

from fcd_common import ids
from fcd_common.config import NetworkConfig
from fcd_net import plan
from fcd_net.leases import LeaseStore
from fcd_net.lowfree import LowestFree
from fcd_net.plan import Lease


def _scan(lo: int, hi: int, step: int, used: set[int]) -> int | None:
    return next((v for v in range(lo, hi + 1, step) if v not in used), None)


def test_it_agrees_with_a_scan_through_random_churn() -> None:
    rng = random.Random(20261203)
    for lo, hi, step in ((10, 400, 1), (11, 401, 2)):
        used = set(rng.sample(range(lo, hi + 1, step), 40))
        index = LowestFree(lo, hi, step, used)
        for _ in range(3000):
            want = _scan(lo, hi, step, used)
            assert index.lowest(used.__contains__) == want
            if want is not None and rng.random() < 0.6:
                used.add(want)  # a setup that stores its lease
            elif used and rng.random() < 0.7:
                gone = rng.choice(sorted(used))
                used.discard(gone)
                index.release(gone)
            # else: a setup that failed before storing its lease: nothing changes


def test_a_value_the_index_thinks_free_but_is_used_is_skipped() -> None:
    index = LowestFree(1, 10, 1, [1, 2])
    index.release(1)  # told wrongly: 1 is still used
    assert index.lowest({1, 2}.__contains__) == 3
    assert index.lowest(set(range(1, 11)).__contains__) is None


def _lease(vm_id: str, ip: str) -> Lease:
    return Lease(vm_id=vm_id, ip=ip, tap=ids.tap_name(vm_id), mac=ids.guest_mac(ip), uid=1, gid=1)


def test_the_store_index_gives_the_pure_functions_answer(tmp_path: Path) -> None:
    net = NetworkConfig(subnet="10.213.0.0/24")
    store = LeaseStore(tmp_path)
    for i in range(20):
        ip = str(plan.allocate_ip(net, store.used_ips(), store.pool))
        assert ip == str(plan.allocate_ip(net, store.used_ips()))
        store.put(_lease(f"vm-{i}", ip))
    for i in (3, 11, 7):
        store.remove(f"vm-{i}")
    got = []
    for i in range(20, 24):
        ip = str(plan.allocate_ip(net, store.used_ips(), store.pool))
        assert ip == str(plan.allocate_ip(net, store.used_ips()))
        store.put(_lease(f"vm-{i}", ip))
        got.append(ip)
    assert got == ["10.213.0.5", "10.213.0.9", "10.213.0.13", "10.213.0.22"]
