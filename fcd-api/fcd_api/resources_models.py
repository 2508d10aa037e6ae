"""Bodies of ``PATCH /v1/vms/{id}/resources`` and ``GET /v1/vms/{id}/resources``.

The token bucket, rate limit and balloon records are the RPC contract's own
(:mod:`fcd_common.proto.vmm`): one definition from the API body to Firecracker.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from fcd_common.proto.vmm import (
    CpuQuotaUpdate,
    NetRateLimits,
    RateLimit,
    RateLimits,
    ResourcesInForce,
    TokenBucket,
)
from fcd_common.schema import Record
from fcd_common.types import VcpuCount

from .models import MAX_MEM_MIB, MIN_MEM_MIB

__all__ = [
    "NetRateLimits",
    "RateLimit",
    "RateLimits",
    "ResourcesUpdate",
    "ResourcesView",
    "TokenBucket",
]

MemMiB = Annotated[int, msgspec.Meta(ge=MIN_MEM_MIB, le=MAX_MEM_MIB)]


class ResourcesUpdate(Record):
    """What to change; absent fields stay as they are.

    On a running or paused VM the balloon target, rate limits, CPU quota and
    memory limit change at once; ``vcpu_count`` and ``mem_size_mib`` cannot
    (Firecracker fixes them at boot: 409) and change only on a stopped VM, at its
    next start. Every accepted change is kept in the VM's spec, so it also holds
    after a stop/start.
    """

    vcpu_count: VcpuCount | None = None
    mem_size_mib: MemMiB | None = None
    cpu_quota: CpuQuotaUpdate | None = None
    """A share of one host CPU; 0 removes the quota."""
    mem_limit_mib: MemMiB | None = None
    """Guest memory the cgroup allows (Firecracker's overhead is added); below what the
    VM uses now is a 409 and nothing changes."""
    mem_target_mib: Annotated[int, msgspec.Meta(ge=0, le=MAX_MEM_MIB)] | None = None
    """Memory to leave the guest: the balloon inflates to ``mem_size_mib - target``."""
    rate_limits: RateLimits | None = None
    """Only the buckets given change; a bucket of size 0 (or refill 0) removes that limit."""


class ResourcesView(Record):
    """The VM's resource spec and, while it runs, what is in force."""

    vm_id: str
    state: str
    vcpu_count: int
    mem_size_mib: int
    cpu_quota: float | None
    mem_limit_mib: int | None
    mem_target_mib: int | None
    rate_limits: RateLimits | None
    in_force: ResourcesInForce | None = None
    in_force_error: str | None = None
    """Why ``in_force`` could not be read (fcd-vmm or Firecracker did not answer)."""
