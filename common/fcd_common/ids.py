"""Identifier rules used by every daemon.

One VM id rule for all of fcd: 1-64 characters of ``[a-z0-9-]`` starting with
a letter or digit. It is a subset of what the jailer accepts for ``--id``
(``[A-Za-z0-9-]``, 1-64 bytes), so the VM id is the jail id unchanged.

Names derived from an id are pure functions, so any daemon can recompute
them and none has to trust another's word for them.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets

from .errors import InvalidArgument
from .types import NAME_PATTERN, VM_ID_PATTERN

_VM_ID_RE = re.compile(VM_ID_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)

TAP_PREFIX = "fc"
IFNAMSIZ = 16  # including the trailing NUL: names are at most 15 bytes


def is_vm_id(value: str) -> bool:
    return bool(_VM_ID_RE.fullmatch(value))


def check_vm_id(value: str) -> str:
    """Return ``value`` if it is a valid VM id, else raise InvalidArgument."""
    if not isinstance(value, str) or not is_vm_id(value):
        raise InvalidArgument(
            f"invalid vm id {value!r}: 1-64 of [a-z0-9-], starting with a letter or digit",
            details={"field": "id"},
        )
    return value


def check_name(value: str, field: str = "name") -> str:
    """Validate a template/snapshot name; refuses anything path-like."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or value in {".", ".."}:
        raise InvalidArgument(
            f"invalid {field} {value!r}: 1-64 of [a-z0-9_.-], starting with a letter or digit",
            details={"field": field},
        )
    if ".." in value:
        raise InvalidArgument(
            f"invalid {field} {value!r}: '..' not allowed", details={"field": field}
        )
    return value


def new_vm_id() -> str:
    """A fresh random id (``vm-`` + 12 base32 chars)."""
    return "vm-" + base64.b32encode(secrets.token_bytes(10)).decode().lower().rstrip("=")[:12]


def tap_name(vm_id: str, prefix: str = TAP_PREFIX) -> str:
    """TAP device name for a VM: prefix + 13 chars of a hash of the id, <= 15 bytes.

    Ids are up to 64 chars and interface names at most 15 bytes, so the name is
    a digest; 13 base32 chars are 65 bits, collisions are not a practical concern
    (and fcd-net still refuses to reuse a name held by another VM).
    """
    check_vm_id(vm_id)
    digest = hashlib.sha256(vm_id.encode()).digest()
    tail = base64.b32encode(digest).decode().lower()[: 15 - len(prefix)]
    name = prefix + tail
    assert len(name.encode()) < IFNAMSIZ
    return name


def guest_mac(ip: str) -> str:
    """Locally administered unicast MAC derived from the guest IPv4 address.

    ``06:00:`` + the four address bytes: unique because addresses are, and
    recomputable by anyone who knows the address (the anti-spoofing rules).
    """
    packed = ipaddress.IPv4Address(ip).packed
    return "06:00:" + ":".join(f"{b:02x}" for b in packed)


NETNS_DIR = "/run/netns"


def netns_name(vm_id: str, prefix: str) -> str:
    """netns mode: the VM's network namespace, ``<prefix>`` + 13 chars of a digest of the id."""
    return prefix + tap_name(vm_id, "")[:13]


def netns_path(vm_id: str, prefix: str) -> str:
    return f"{NETNS_DIR}/{netns_name(vm_id, prefix)}"


def netns_tap(tap_prefix: str = TAP_PREFIX) -> str:
    """netns mode: the TAP name inside every VM namespace (the same for all clones)."""
    return f"{tap_prefix}tap0"
