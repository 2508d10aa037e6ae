"""Does the jail uid range overlap subordinate id ranges (``/etc/subuid``, ``/etc/subgid``)?

A user who owns a subuid range can map those uids into a user namespace of
their own (``newuidmap``, ``unshare --map-auto``, rootless podman) and run
processes *as* them. If the range overlaps ``[jail.uid_min, jail.uid_max]``,
that user can act as a VM's jail uid: attach to its TAP, read what its jail
owns (issue #9, finding 12). ``useradd`` hands out subuid ranges from 100000
upwards in steps of 65536, so the default jail range (900000-965535) is reached
at the 13th user (886432-951967). The jail range must be reserved: no subuid/subgid range, no
systemd-nspawn private-users range may touch it.

:func:`subid_overlaps` is pure (text in, overlaps out) so that fcd-vmm's start
check and ``fcctl doctor`` share it; :func:`file_overlaps` reads the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SUBID_FILES = ("/etc/subuid", "/etc/subgid")


@dataclass(frozen=True, slots=True)
class SubidRange:
    """One line of a subid file that overlaps the range asked about."""

    owner: str
    """The user name or uid the line is for."""
    start: int
    count: int
    line: int
    """1-based line number in the file."""

    @property
    def last(self) -> int:
        return self.start + self.count - 1

    def describe(self, source: str = "") -> str:
        where = f"{source}:{self.line}: " if source else ""
        return f"{where}{self.owner} owns {self.start}-{self.last}"


def subid_overlaps(text: str, lo: int, hi: int) -> list[SubidRange]:
    """Lines of a subuid/subgid file (``owner:start:count``) whose range meets ``[lo, hi]``.

    Comments, blank and malformed lines are skipped (the shadow tools ignore them
    too); a count of 0 covers nothing.
    """
    out: list[SubidRange] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            continue
        owner, start_s, count_s = parts
        try:
            start, count = int(start_s), int(count_s)
        except ValueError:
            continue
        if start < 0 or count <= 0:
            continue
        if start <= hi and start + count - 1 >= lo:
            out.append(SubidRange(owner=owner, start=start, count=count, line=n))
    return out


def file_overlaps(lo: int, hi: int, files: Sequence[str] = SUBID_FILES) -> list[str]:
    """One line per overlapping range of ``files`` (a missing file has none), e.g.
    ``/etc/subuid:3: alice owns 900000-965535``."""
    out: list[str] = []
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 20)
        except FileNotFoundError:
            continue
        except OSError as e:
            out.append(f"{path}: cannot read ({e.strerror})")
            continue
        out += [r.describe(path) for r in subid_overlaps(text, lo, hi)]
    return out
