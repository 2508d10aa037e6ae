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


def test_proc_net_dev_table() -> None:
    text = (
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop"
        " fifo colls carrier compressed\n"
        "    lo:  100  2 0 0 0 0 0 0   100 2 0 0 0 0 0 0\n"
        "fcabc:  60 1 3 4 0 0 0 1  1128 16 5 6 0 0 0 0\n"
    )
    got = counters.parse_proc_net_dev(text)
    assert got["fcabc"] == {
        "rx_bytes": 60, "rx_packets": 1, "rx_errors": 3, "rx_dropped": 4,
        "tx_bytes": 1128, "tx_packets": 16, "tx_errors": 5, "tx_dropped": 6,
    }  # fmt: skip
    assert got["lo"]["tx_packets"] == 2


def test_the_table_agrees_with_rtnetlink() -> None:
    """Both are the kernel's dev_get_stats: every link of this namespace, same keys; a
    counter only grows between the two reads."""
    table = counters.dump_stats()
    dump = counters.dump_stats_netlink()
    assert set(table) == set(dump) and "lo" in table
    for name, stats in table.items():
        assert set(stats) == set(counters.STAT_KEYS)
        assert all(dump[name][k] >= v for k, v in stats.items()), name
