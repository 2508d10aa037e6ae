"""Issue #9, network side: the pure checks behind findings 1, 5 and 12."""

from __future__ import annotations

import os
import socket

import pytest

from fcd_common import allowlist
from fcd_common.config import NetworkConfig
from fcd_common.errors import Conflict, HostPortInUse, InvalidArgument, PermissionDenied
from fcd_common.proto.net import PolicySpec, PortMapping, RuleSpec
from fcd_common.subids import subid_overlaps
from fcd_net import checks, reserved_ports
from fcd_net.listeners import Listeners

NET = NetworkConfig(port_min=20000, port_max=20009)


def test_finding1_check_ports_refuses_a_port_with_a_listener() -> None:
    busy = {("tcp", 20003): "tcp 127.0.0.1:20003 (uid 999)"}
    with pytest.raises(HostPortInUse) as e:
        checks.check_ports(NET, [PortMapping(host_port=20003, guest_port=1)], [], busy=busy)
    assert isinstance(e.value, Conflict) and e.value.code == "host_port_in_use"
    assert e.value.details == {
        "field": "ports[0].host_port",
        "host_port": 20003,
        "protocol": "tcp",
        "listener": "tcp 127.0.0.1:20003 (uid 999)",
    }
    assert "tcp 127.0.0.1:20003 (uid 999)" in e.value.message
    udp = checks.check_ports(
        NET, [PortMapping(host_port=20003, guest_port=1, protocol="udp")], [], busy=busy
    )
    assert udp[0].host_port == 20003  # only tcp listens there
    picked = checks.check_ports(
        NET,
        [PortMapping(host_port=0, guest_port=1)],
        [("tcp", 20000)],
        busy={("tcp", 20001): "x"},
    )
    assert picked[0].host_port == 20002


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", "20000-29999"),
        ("5000", "5000,20000-29999"),
        ("20000-29999", None),
        ("1-65535", None),
        ("21000-22000,40000", "20000-29999,40000"),
        ("19000-20100,29990-30010", "19000-30010"),
        ("19999", "19999-29999"),
    ],
)
def test_finding1_reserved_ports_merge_never_clobbers(before: str, after: str | None) -> None:
    assert reserved_ports.with_range(before, 20000, 29999) == after


def _allow(net: NetworkConfig, cidr: str, host: tuple[str, ...] = ()) -> None:
    pol = PolicySpec(allow=[RuleSpec(cidr="203.0.113.0/24"), RuleSpec(cidr=cidr)])
    checks.check_policy(pol, net, host)


def test_finding5_allow_needs_the_operators_list() -> None:
    for cidr in ("169.254.169.254", "10.0.0.0/8", "8.8.8.8"):
        with pytest.raises(PermissionDenied) as e:
            _allow(NetworkConfig(allowable_cidrs=["203.0.113.0/24"]), cidr)
        assert e.value.details == {"field": "policy.allow[1].cidr"}
    net = NetworkConfig(allowable_cidrs=["10.1.0.0/16", "203.0.113.0/24"])
    _allow(net, "10.1.2.0/24")
    with pytest.raises(PermissionDenied):
        _allow(net, "10.0.0.0/8")  # wider than what is listed
    # link-local and the host's own addresses need their own switch, even under 0/0
    wide = NetworkConfig(allowable_cidrs=["0.0.0.0/0"])
    with pytest.raises(PermissionDenied, match="allow_link_local"):
        _allow(wide, "169.254.169.254")
    with pytest.raises(PermissionDenied, match="allow_host_addresses"):
        _allow(wide, "192.0.2.0/24", host=("192.0.2.10",))
    _allow(wide, "192.0.2.0/24")  # fcd-api knows no host addresses: fcd-net re-checks
    opened = NetworkConfig(
        allowable_cidrs=["0.0.0.0/0"], allow_link_local=True, allow_host_addresses=True
    )
    _allow(opened, "169.254.169.254")
    _allow(opened, "192.0.2.0/24", host=("192.0.2.10",))
    # deny is never restricted, and no policy is the default
    checks.check_policy(PolicySpec(deny=[RuleSpec(cidr="169.254.0.0/16")]), NetworkConfig())
    assert checks.check_policy(None, NetworkConfig()) == PolicySpec()
    with pytest.raises(InvalidArgument):
        allowlist.refusal(wide, "not-a-cidr")


def test_allowable_cidrs_are_validated_at_load() -> None:
    with pytest.raises(ValueError, match=r"allowable_cidrs\[0\]"):
        NetworkConfig(allowable_cidrs=["10.0.0.1/8"])


def test_finding12_subid_overlaps() -> None:
    text = (
        "# comment\n"
        "alice:100000:65536\n"
        "bob:886000:65536\n"  # 886000-951535: overlaps the start
        "carol:965535:1\n"  # the last jail uid
        "dave:965536:65536\n"  # just after
        "broken line\n"
        "eve:x:1\n"
        "zero:900000:0\n"
        "\n"
    )
    got = subid_overlaps(text, 900_000, 965_535)
    assert [(r.owner, r.start, r.last, r.line) for r in got] == [
        ("bob", 886000, 951535, 3),
        ("carol", 965535, 965535, 4),
    ]
    assert got[0].describe("/etc/subuid") == "/etc/subuid:3: bob owns 886000-951535"
    assert subid_overlaps("alice:100000:65536\n", 900_000, 965_535) == []


def test_finding1_listeners_are_found_with_real_sockets() -> None:
    """The sock_diag dump (no privilege needed) sees TCP listeners and bound UDP sockets,
    IPv4 and IPv6, and names them; a connected client socket is not a listener."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    client = socket.create_connection(tcp.getsockname())
    six: socket.socket | None = None
    try:
        six = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pass  # no IPv6 here
    try:
        tport, uport, cport = tcp.getsockname()[1], udp.getsockname()[1], client.getsockname()[1]
        busy = Listeners().busy(1, 65535)
        assert busy[("tcp", tport)] == f"tcp 127.0.0.1:{tport} (uid {os.getuid()})"
        assert busy[("udp", uport)] == f"udp 127.0.0.1:{uport} (uid {os.getuid()})"
        assert ("tcp", cport) not in busy
        if six is not None:
            sport = six.getsockname()[1]
            assert busy[("tcp", sport)] == f"tcp [::1]:{sport} (uid {os.getuid()})"
        assert ("tcp", tport) not in Listeners().busy(tport + 1, 65535)
    finally:
        for s in (tcp, udp, client, six):
            if s is not None:
                s.close()
