"""Pure checks for what a caller asks of fcd-net: port mappings and policies.

fcd-net trusts no caller: a host port outside ``[port_min, port_max]``, a
mapping that another VM holds, a port a host service listens on, a CIDR that
is not IPv4, an ``allow`` the operator does not permit
(:mod:`fcd_common.allowlist`), ports on a rule that has no ports (icmp, any)
-- all are refused here with the field named, before anything is persisted or
touches the kernel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from fcd_common import allowlist
from fcd_common.config import NetworkConfig
from fcd_common.errors import Conflict, HostPortInUse, InvalidArgument, ResourceExhausted
from fcd_common.proto.net import PolicySpec, PortMapping, RuleSpec

PRIVATE = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
"""Never reachable from a guest unless its ``allow`` list names them: RFC 1918,
CGNAT, loopback, link-local (incl. cloud metadata 169.254.169.254), multicast,
reserved. The host's own addresses are handled separately (input chain)."""


def check_ports(
    net: NetworkConfig,
    wanted: Sequence[PortMapping],
    taken: Iterable[tuple[str, int]],
    field: str = "ports",
    busy: Mapping[tuple[str, int], str] | None = None,
) -> list[PortMapping]:
    """Mappings with every host port allocated; refuses bad or conflicting ones.

    ``taken`` is (protocol, host_port) of every mapping already in force,
    ``busy`` the ports host services listen on (protocol, port -> who). An
    explicit host port must lie in the configured range, be unmapped (else
    Conflict) and have no listener (else HostPortInUse; both HTTP 409);
    ``host_port: 0`` gets the lowest port that is neither.
    """
    busy = busy or {}
    used = set(taken)
    explicit: list[tuple[int, PortMapping]] = []
    for i, p in enumerate(wanted):
        if p.host_port == 0:
            continue
        if not net.port_min <= p.host_port <= net.port_max:
            raise InvalidArgument(
                f"host port {p.host_port} is outside fcd-net's range"
                f" [{net.port_min}, {net.port_max}]",
                details={"field": f"{field}[{i}].host_port"},
            )
        key = (p.protocol, p.host_port)
        if key in used:
            raise Conflict(
                f"host port {p.protocol}/{p.host_port} is already mapped",
                details={"field": f"{field}[{i}].host_port", "host_port": p.host_port},
            )
        if key in busy:
            raise HostPortInUse(
                f"host port {p.protocol}/{p.host_port} has a listener on this host"
                f" ({busy[key]}); a mapping would take its connections",
                details={
                    "field": f"{field}[{i}].host_port",
                    "host_port": p.host_port,
                    "protocol": p.protocol,
                    "listener": busy[key],
                },
            )
        used.add(key)
        explicit.append((i, p))
    out: list[PortMapping] = []
    for i, p in enumerate(wanted):
        if p.host_port != 0:
            out.append(p)
            continue
        port = next(
            (
                x
                for x in range(net.port_min, net.port_max + 1)
                if (p.protocol, x) not in used and (p.protocol, x) not in busy
            ),
            None,
        )
        if port is None:
            raise ResourceExhausted(
                f"no free {p.protocol} host port in [{net.port_min}, {net.port_max}]",
                details={"field": f"{field}[{i}].host_port"},
            )
        used.add((p.protocol, port))
        out.append(msgspec.structs.replace(p, host_port=port))
    return out


def _check_rule(rule: RuleSpec, field: str) -> RuleSpec:
    try:
        cidr = ipaddress.IPv4Network(rule.cidr, strict=False)
    except ValueError:
        raise InvalidArgument(
            f"{rule.cidr!r} is not an IPv4 address or CIDR", details={"field": f"{field}.cidr"}
        ) from None
    if rule.ports and rule.protocol not in ("tcp", "udp"):
        raise InvalidArgument("ports need protocol tcp or udp", details={"field": f"{field}.ports"})
    ports = sorted(set(rule.ports))
    return msgspec.structs.replace(rule, cidr=str(cidr), ports=ports)


def check_policy(
    policy: PolicySpec | None, net: NetworkConfig, host_addrs: Iterable[str] = ()
) -> PolicySpec:
    """The policy normalised (CIDRs canonical, ports sorted); None is the default policy.

    Every ``allow`` rule must be one the operator permits (PermissionDenied, 403).
    """
    if policy is None:
        return PolicySpec()
    out = msgspec.structs.replace(
        policy,
        allow=[_check_rule(r, f"policy.allow[{i}]") for i, r in enumerate(policy.allow)],
        deny=[_check_rule(r, f"policy.deny[{i}]") for i, r in enumerate(policy.deny)],
    )
    allowlist.check_allow(net, out.allow, "policy.allow", host_addrs)
    return out


def same_mapping(a: PortMapping, b: PortMapping) -> bool:
    """Mappings are identified by host port and protocol."""
    return (a.protocol, a.host_port) == (b.protocol, b.host_port)
