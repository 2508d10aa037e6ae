"""fcd_net.links against the kernel, in a network namespace of the test's own."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from pyroute2 import IPRoute, netns
from pyroute2.netlink.rtnl.ifinfmsg import IFT_TAP, tuntap

from fcd_common.errors import Internal
from fcd_net import links

pytestmark = pytest.mark.root
T = TypeVar("T")


@pytest.fixture
def in_ns() -> Iterator[Callable[[Callable[[], Any]], Any]]:
    """Run a function on a thread that has joined a fresh namespace (setns is per thread)."""
    name = f"fcdt-{secrets.token_hex(3)}"
    netns.create(name)

    def run(fn: Callable[[], T]) -> T:
        out: list[Any] = []

        def body() -> None:
            netns.setns(name, flags=0)
            try:
                out.append(fn())
            except BaseException as e:
                out.append(e)

        t = threading.Thread(target=body)
        t.start()
        t.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        result: T = out[0]
        return result

    try:
        yield run
    finally:
        netns.remove(name)


def test_index_and_get_of_present_absent_and_invalid_names(in_ns: Any) -> None:
    def body() -> tuple[Any, ...]:
        ln = links.Links()
        ln.create_tap("tap0", 1234, 1234)
        present = ln.get("tap0")
        return links._index("lo"), links._index("nope0"), ln.get("nope0"), present

    lo, absent, get_absent, tap = in_ns(body)
    assert lo == 1 and absent is None and get_absent is None
    assert tap is not None and tap.is_tap and (tap.owner, tap.group) == (1234, 1234)
    with pytest.raises(Internal):
        in_ns(lambda: links._index("x" * 16))


def test_is_tap_tells_taps_from_every_other_kind_of_interface(in_ns: Any) -> None:
    """The ethtool answer teardown relies on agrees with the decoded RTM_GETLINK."""

    def body() -> dict[str, Any]:
        ln = links.Links()
        ln.create_tap("tap0", 1234, 1234)
        ln.ensure_bridge("br0", ipaddress.IPv4Interface("10.9.0.1/24"))
        with IPRoute() as ipr:
            ipr.link("add", ifname="tun0", kind="tuntap", mode="tun")
            ipr.link("add", ifname="ve0", kind="veth", peer="ve1")
        out: dict[str, Any] = {}
        for name in ("tap0", "tun0", "br0", "ve0", "lo", "nope0"):
            link = ln.get(name)
            out[name] = (ln.is_tap(name), None if link is None else link.is_tap)
        return out

    got = in_ns(body)
    assert {k: v[0] for k, v in got.items()} == {
        "tap0": True,
        "tun0": False,
        "br0": False,
        "ve0": False,
        "lo": False,
        "nope0": None,
    }
    assert all(mine == decoded for mine, decoded in got.values())
    with pytest.raises(Internal):
        in_ns(lambda: links.Links().is_tap("x" * 16))


def test_attach_uses_indexes_and_keeps_its_errors(in_ns: Any) -> None:
    def body() -> tuple[Any, ...]:
        ln = links.Links()
        br = ln.ensure_bridge("br0", ipaddress.IPv4Interface("10.9.0.1/24"))
        ln.create_tap("tap1", 1000, 1000)
        ln.attach("tap1", "br0")
        tap = ln.get("tap1")
        with open("/proc/sys/net/ipv6/conf/tap1/disable_ipv6") as f:  # this thread's netns
            v6_off = f.read().strip()
        with IPRoute() as ipr:
            info = ipr.link("get", index=br.index)[0].get_attr("IFLA_LINKINFO")
            snooping = info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_BR_MCAST_SNOOPING")
        errors = []
        for tap_name, bridge in (("tap1", "nobr0"), ("gone0", "br0")):
            try:
                ln.attach(tap_name, bridge)
            except Internal as e:
                errors.append(e.message)
        return br, tap, errors, v6_off, snooping

    br, tap, errors, v6_off, snooping = in_ns(body)
    assert tap.master == br.index and tap.up
    # a bridge port has no IPv6 of its own; the bridge keeps no multicast state
    assert (v6_off, snooping) == ("1", 0)
    assert errors == ["bridge nobr0 is missing", "gone0 vanished while attaching it to br0"]


def test_attach_again_or_to_another_bridge_takes_the_netlink_way(in_ns: Any) -> None:
    """SIOCBRADDIF refuses a TAP that is a port already (EBUSY): attach then keeps it
    on the same bridge, or moves it, as the netlink request always did."""

    def body() -> tuple[Any, ...]:
        ln = links.Links()
        br0 = ln.ensure_bridge("br0", ipaddress.IPv4Interface("10.9.0.1/24"))
        br1 = ln.ensure_bridge("br1", ipaddress.IPv4Interface("10.9.1.1/24"))
        ln.create_tap("tap1", 1000, 1000)
        ln.attach("tap1", "br0")
        ln.attach("tap1", "br0")
        again = ln.get("tap1")
        ln.attach("tap1", "br1")
        moved = ln.get("tap1")
        return br0.index, br1.index, again, moved

    br0, br1, again, moved = in_ns(body)
    assert again.master == br0 and again.up
    assert moved.master == br1 and moved.up


def test_delete_removes_idle_taps_held_taps_and_other_kinds(in_ns: Any) -> None:
    """An idle TAP goes through /dev/net/tun; one a process holds open (as a running
    Firecracker does), and any other kind of interface, through netlink: each is
    gone afterwards, and a missing name is False."""

    def body() -> tuple[Any, ...]:
        ln = links.Links()
        ln.ensure_bridge("br0", ipaddress.IPv4Interface("10.9.0.1/24"))
        ln.create_tap("idle0", 1000, 1000)
        ln.attach("idle0", "br0")
        ln.create_tap("held0", 1000, 1000)
        holder = os.open("/dev/net/tun", os.O_RDWR)  # as the jailed Firecracker does
        fcntl.ioctl(holder, tuntap.TUNSETIFF, links._IFREQ_FLAGS.pack(b"held0", IFT_TAP))
        with IPRoute() as ipr:
            ipr.link("add", ifname="ve0", kind="veth", peer="ve1")
            ipr.link("add", ifname="tun0", kind="tuntap", mode="tun")
        assert links._drop_tap("held0") is False  # EBUSY: left as it was
        assert ln.is_tap("held0") is True
        out = [ln.delete(n) for n in ("idle0", "held0", "ve0", "tun0", "nope0")]
        os.close(holder)
        left = sorted(ln.names())
        return out, left

    out, left = in_ns(body)
    assert out == [True, True, True, True, False]
    assert left == ["br0", "lo"]
