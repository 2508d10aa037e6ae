"""fcd-net's batch counters: every lease's host-side interface from one link dump."""

from __future__ import annotations

from fcd_net import counters
from fcd_net.plan import Lease


def _lease(vm_id: str, tap: str, veth: str | None = None) -> Lease:
    mode = "netns" if veth else "bridge"
    return Lease(
        vm_id=vm_id, ip="10.0.0.2", tap=tap, mac="06:00:0a:00:00:02", uid=1, gid=1,
        mode=mode, veth=veth, netns="/run/netns/x" if veth else None,
    )  # fmt: skip


def test_collect_maps_each_lease_to_its_host_interface() -> None:
    stats = {
        "fcaaa": dict.fromkeys(counters.STAT_KEYS, 1),
        "fv1": {**dict.fromkeys(counters.STAT_KEYS, 0), "rx_bytes": 99},
        "fcdead": dict.fromkeys(counters.STAT_KEYS, 7),  # no lease: not reported
    }
    leases = [_lease("b", "fcaaa"), _lease("a", "fctap0", veth="fv1"), _lease("c", "fcgone")]
    out = counters.collect(leases, lambda: stats)
    assert [(c.vm_id, c.iface) for c in out.items] == [("a", "fv1"), ("b", "fcaaa")]
    assert out.items[0].rx_bytes == 99 and out.items[1].tx_errors == 1
    assert out.sampled_at.endswith("Z")


def test_dump_reads_this_namespaces_links() -> None:
    got = counters.dump_stats()  # a real RTM_GETLINK dump (lo always exists)
    assert "lo" in got and set(got["lo"]) == set(counters.STAT_KEYS)
    assert all(v >= 0 for v in got["lo"].values())
