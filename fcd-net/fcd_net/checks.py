"""Pure checks for what a caller asks of fcd-net: port mappings and policies.

fcd-net trusts no caller: a host port outside ``[port_min, port_max]``, a
mapping that another VM holds, a CIDR that is not IPv4, ports on a rule that
has no ports (icmp, any) -- all are refused here with the field named,
before anything is persisted or touches the kernel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import msgspec

from fcd_common.config import NetworkConfig
from fcd_common.errors import Conflict, InvalidArgument, ResourceExhausted
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
) -> list[PortMapping]:
    """Mappings with every host port allocated; refuses bad or conflicting ones.

    ``taken`` is (protocol, host_port) of every mapping already in force. An
    explicit host port must lie in the configured range and be free (else
    Conflict: HTTP 409); ``host_port: 0`` gets the lowest free one.
    """
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
        used.add(key)
        explicit.append((i, p))
    out: list[PortMapping] = []
    for i, p in enumerate(wanted):
        if p.host_port != 0:
            out.append(p)
            continue
        port = next(
            (x for x in range(net.port_min, net.port_max + 1) if (p.protocol, x) not in used), None
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


def check_policy(policy: PolicySpec | None) -> PolicySpec:
    """The policy normalised (CIDRs canonical, ports sorted); None is the default policy."""
    if policy is None:
        return PolicySpec()
    return msgspec.structs.replace(
        policy,
        allow=[_check_rule(r, f"policy.allow[{i}]") for i, r in enumerate(policy.allow)],
        deny=[_check_rule(r, f"policy.deny[{i}]") for i, r in enumerate(policy.deny)],
    )


def same_mapping(a: PortMapping, b: PortMapping) -> bool:
    """Mappings are identified by host port and protocol."""
    return (a.protocol, a.host_port) == (b.protocol, b.host_port)
