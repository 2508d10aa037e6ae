"""Reserve the host-port range in the kernel: ``net.ipv4.ip_local_reserved_ports``.

Ports of a reserved range are never handed out as ephemeral ports (``bind``
to port 0, ``connect`` without ``bind``), so no client socket or
"any free port" service lands on a port a mapping may take later (issue #9,
finding 1). A service that binds a *fixed* port in the range still can: such
ports are refused when a mapping is added (:mod:`fcd_net.listeners`), and the
range should be chosen clear of them.

The sysctl is per network namespace; fcd-net writes it in its own (the
host's, in production). What is reserved already (by the operator, another
service) is kept: the new value is the union. Nothing is un-reserved when
fcd-net stops or the range is changed -- remove an old range by hand.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("fcd.net.ports")

RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")

Range = tuple[int, int]


def parse(text: str) -> list[Range]:
    """``"5000,20000-29999"`` -> [(5000, 5000), (20000, 29999)]."""
    out: list[Range] = []
    for raw in text.replace("\n", ",").split(","):
        part = raw.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b or a)
        out.append((min(lo, hi), max(lo, hi)))
    return out


def merge(ranges: list[Range]) -> list[Range]:
    """Sorted, with overlapping and adjacent ranges joined."""
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def render(ranges: list[Range]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def with_range(text: str, lo: int, hi: int) -> str | None:
    """The value to write so that ``[lo, hi]`` is reserved too; None if it already is."""
    have = merge(parse(text))
    if any(a <= lo and hi <= b for a, b in have):
        return None
    return render(merge([*have, (lo, hi)]))


def reserve(lo: int, hi: int, path: Path = RESERVED) -> bool:
    """Reserve ``[lo, hi]`` on top of what is reserved; True if the value changed."""
    before = path.read_text().strip()
    value = with_range(before, lo, hi)
    if value is None:
        return False
    path.write_text(value + "\n")
    log.info("reserved host ports %d-%d (ip_local_reserved_ports: %s)", lo, hi, value)
    return True
