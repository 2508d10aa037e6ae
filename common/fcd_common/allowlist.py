"""Which destinations an API user may open with ``network_policy.allow`` (pure).

The operator decides, not the API user (issue #9, finding 5): a rule's CIDR
must lie inside one of ``network.allowable_cidrs`` (empty by default, so
``allow`` opens nothing fcd-net blocks by default); link-local 169.254.0.0/16
(cloud metadata) additionally needs ``network.allow_link_local`` and the
host's own addresses ``network.allow_host_addresses``. fcd-api checks this
before anything is created (it knows no host addresses); fcd-net, which does
the action, checks it again with the addresses of its namespace.

``deny`` rules are not restricted: they only close things.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from .config import NetworkConfig
from .errors import InvalidArgument, PermissionDenied
from .proto.net import RuleSpec

LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")


def _network(cidr: str, field: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(cidr, strict=False)
    except ValueError:
        raise InvalidArgument(
            f"{cidr!r} is not an IPv4 address or CIDR", details={"field": field}
        ) from None


def refusal(
    net: NetworkConfig, cidr: str, host_addrs: Iterable[str] = (), field: str = "cidr"
) -> str | None:
    """Why an API user may not allow ``cidr``, or None if the operator permits it."""
    want = _network(cidr, field)
    allowed = [ipaddress.IPv4Network(c) for c in net.allowable_cidrs]
    if not any(want.subnet_of(a) for a in allowed):
        listed = ", ".join(net.allowable_cidrs) or "none"
        return (
            f"{want} is not inside the CIDRs the operator lets API users allow"
            f" (network.allowable_cidrs: {listed})"
        )
    if want.overlaps(LINK_LOCAL) and not net.allow_link_local:
        return (
            f"{want} includes link-local {LINK_LOCAL} (cloud metadata); the operator has"
            " not set network.allow_link_local"
        )
    if not net.allow_host_addresses:
        for a in host_addrs:
            addr = ipaddress.IPv4Address(a)
            if addr in want:
                return (
                    f"{want} includes {addr}, an address of this host; the operator has"
                    " not set network.allow_host_addresses"
                )
    return None


def check_allow(
    net: NetworkConfig,
    rules: Sequence[RuleSpec],
    field: str,
    host_addrs: Iterable[str] = (),
) -> None:
    """PermissionDenied (HTTP 403) naming ``<field>[i].cidr`` for the first rule the
    operator's configuration does not permit."""
    addrs = list(host_addrs)
    for i, rule in enumerate(rules):
        f = f"{field}[{i}].cidr"
        why = refusal(net, rule.cidr, addrs, f)
        if why is not None:
            raise PermissionDenied(f"{f}: {why}", details={"field": f})
