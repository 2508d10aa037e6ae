"""POSIX access ACLs as the kernel stores them in ``system.posix_acl_access``: pure code.

A restored VM's jail uid must read the snapshot's state and memory files, which
belong to fcd-storage and are mode 0400; many VMs restored from one snapshot
share those inodes, so each gets its own ``user:<uid>:r--`` entry instead of a
change of owner or mode. The xattr I/O is in :mod:`fcd_vmm.jailfs`.

Wire format (``include/uapi/linux/posix_acl_xattr.h``): a little-endian u32
version (2), then one entry per (tag, perm, id) as u16, u16, u32. Entries are
sorted by tag, then by id; ``id`` is only meaningful for USER and GROUP
(``ACL_UNDEFINED_ID`` = 0xFFFFFFFF otherwise). With any named entry a MASK is
required: it caps the named entries and GROUP_OBJ, and the file mode's group
bits show it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERSION = 2
USER_OBJ = 0x01
USER = 0x02
GROUP_OBJ = 0x04
GROUP = 0x08
MASK = 0x10
OTHER = 0x20
TAGS = (USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER)
UNDEFINED_ID = 0xFFFFFFFF
READ, WRITE, EXECUTE = 4, 2, 1

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


class AclError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Entry:
    tag: int
    id: int
    perm: int


def decode(data: bytes) -> list[Entry]:
    """Parse an xattr value; refuses anything the kernel would not have stored."""
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size:
        raise AclError(f"ACL xattr of {len(data)} bytes is not a header plus whole entries")
    (version,) = _HEADER.unpack_from(data, 0)
    if version != VERSION:
        raise AclError(f"ACL xattr version {version}, expected {VERSION}")
    out = []
    for off in range(_HEADER.size, len(data), _ENTRY.size):
        tag, perm, ident = _ENTRY.unpack_from(data, off)
        if tag not in TAGS:
            raise AclError(f"unknown ACL tag {tag:#x}")
        if perm & ~0o7:
            raise AclError(f"bad ACL permission bits {perm:#o}")
        out.append(Entry(tag, ident if tag in (USER, GROUP) else UNDEFINED_ID, perm))
    return validate(out)


def encode(entries: list[Entry]) -> bytes:
    """The xattr value for ``entries`` (sorted as the kernel expects)."""
    parts = [_HEADER.pack(VERSION)]
    for e in validate(entries):
        parts.append(_ENTRY.pack(e.tag, e.perm, e.id if e.tag in (USER, GROUP) else UNDEFINED_ID))
    return b"".join(parts)


def validate(entries: list[Entry]) -> list[Entry]:
    """Sorted copy; one each of USER_OBJ/GROUP_OBJ/OTHER, no duplicate named ids,
    a MASK exactly when there are named entries (as ``posix_acl_valid`` demands)."""
    out = sorted(entries, key=lambda e: (e.tag, e.id if e.tag in (USER, GROUP) else 0))
    for tag in (USER_OBJ, GROUP_OBJ, OTHER):
        if sum(1 for e in out if e.tag == tag) != 1:
            raise AclError(f"an ACL needs exactly one entry with tag {tag:#x}")
    named = [(e.tag, e.id) for e in out if e.tag in (USER, GROUP)]
    if len(set(named)) != len(named):
        raise AclError("duplicate named ACL entry")
    masks = sum(1 for e in out if e.tag == MASK)
    if masks > 1 or (named and masks != 1):
        raise AclError("an ACL with named entries needs exactly one MASK")
    return out


def from_mode(mode: int) -> list[Entry]:
    """The minimal ACL equivalent to a file mode (what a file without the xattr has)."""
    return [
        Entry(USER_OBJ, UNDEFINED_ID, (mode >> 6) & 0o7),
        Entry(GROUP_OBJ, UNDEFINED_ID, (mode >> 3) & 0o7),
        Entry(OTHER, UNDEFINED_ID, mode & 0o7),
    ]


def _with_mask(entries: list[Entry]) -> list[Entry]:
    """Recompute the MASK as the union of the group-class entries (as setfacl does);
    none when no named entry is left, so the ACL collapses back to the mode."""
    rest = [e for e in entries if e.tag != MASK]
    if not any(e.tag in (USER, GROUP) for e in rest):
        return validate(rest)
    mask = 0
    for e in rest:
        if e.tag in (USER, GROUP, GROUP_OBJ):
            mask |= e.perm
    return validate([*rest, Entry(MASK, UNDEFINED_ID, mask)])


def with_user(entries: list[Entry], uid: int, perm: int = READ) -> list[Entry]:
    """``entries`` plus (or with a replaced) ``user:<uid>:<perm>``; others kept."""
    if not 0 <= uid < UNDEFINED_ID:
        raise AclError(f"uid {uid} out of range")
    rest = [e for e in entries if not (e.tag == USER and e.id == uid)]
    return _with_mask([*rest, Entry(USER, uid, perm)])


def without_user(entries: list[Entry], uid: int) -> list[Entry]:
    """``entries`` without ``user:<uid>``; other uids' entries kept."""
    return _with_mask([e for e in entries if not (e.tag == USER and e.id == uid)])


def user_perm(entries: list[Entry], uid: int) -> int | None:
    for e in entries:
        if e.tag == USER and e.id == uid:
            return e.perm
    return None


def is_minimal(entries: list[Entry]) -> bool:
    return all(e.tag in (USER_OBJ, GROUP_OBJ, OTHER) for e in entries)
