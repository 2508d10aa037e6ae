"""Constrained scalar types shared by the public API, the RPC contract and the helpers.

One definition each: the API's bodies, the proto messages and the helpers'
own re-checks (``fullmatch`` on the same patterns) all use these, so a rule
cannot drift between the daemon that checks it first and the one that checks
it again. Patterns end in ``\\Z``, not ``$``: msgspec matches with
``re.search``, and ``$`` also matches before a trailing newline (``"a\\n"``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

__all__ = [
    "DRIVE_NAME_PATTERN",
    "KERNEL_ARGS_MAX",
    "KERNEL_ARGS_PATTERN",
    "MAX_MIB",
    "NAME_PATTERN",
    "SHA256_PATTERN",
    "SOURCE_PATH_PATTERN",
    "VM_ID_PATTERN",
    "Cidr",
    "DriveName",
    "HostPort",
    "KernelArgs",
    "MiB",
    "Name",
    "NetMode",
    "Port",
    "PortProtocol",
    "Sha256",
    "SourcePath",
    "Uid",
    "VcpuCount",
    "VmId",
    "fullmatch",
]

VM_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}\Z"
"""VM ids: a subset of what the jailer accepts for ``--id``, so the VM id is the jail id."""
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}\Z"
"""Template and snapshot names: the VM id alphabet plus ``_`` and ``.``; never a path."""
DRIVE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}\Z"
"""Extra drive names: also Firecracker drive ids and part of a file name."""
SHA256_PATTERN = r"^[0-9a-f]{64}\Z"
KERNEL_ARGS_PATTERN = r"^[\x20-\x7e]*\Z"
KERNEL_ARGS_MAX = 1024
"""fcd-vmm's limit for the whole (template + request) command line it is given."""


def fullmatch(pattern: str, value: object) -> bool:
    """True if ``value`` is a str the pattern matches whole (for the helpers' re-checks)."""
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


VmId = Annotated[str, msgspec.Meta(pattern=VM_ID_PATTERN, min_length=1, max_length=64)]
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, min_length=1, max_length=64)]
DriveName = Annotated[str, msgspec.Meta(pattern=DRIVE_NAME_PATTERN, min_length=1, max_length=32)]
Sha256 = Annotated[str, msgspec.Meta(pattern=SHA256_PATTERN)]
KernelArgs = Annotated[str, msgspec.Meta(pattern=KERNEL_ARGS_PATTERN, max_length=KERNEL_ARGS_MAX)]
"""Printable ASCII only: the command line goes to Firecracker verbatim."""

SOURCE_PATH_PATTERN = r"^(?:/(?!\.\.?(?:/|\Z))[^/\x00]+)+\Z"
"""Absolute and normalized: ``/``-separated non-empty parts, none ``.`` or ``..``, no NUL."""
SourcePath = Annotated[
    str, msgspec.Meta(pattern=SOURCE_PATH_PATTERN, min_length=2, max_length=4096)
]
"""A host path fcd-storage reads an import from (it checks again: absolute, normalized,
regular file or directory, inside its import directories)."""

Uid = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 2)]
MAX_MIB = 1 << 30
"""1 PiB: far above any disk, small enough for every RPC and for Firecracker."""
MiB = Annotated[int, msgspec.Meta(ge=1, le=MAX_MIB)]
VcpuCount = Annotated[int, msgspec.Meta(ge=1, le=32)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
HostPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""0 asks fcd-net to pick a free port from its range."""
PortProtocol = Literal["tcp", "udp"]
Cidr = Annotated[str, msgspec.Meta(min_length=1, max_length=18)]
"""An IPv4 network in CIDR notation; parsed (and normalised) by fcd-net."""
NetMode = Literal["bridge", "netns"]
