"""Rate limits, balloon, CPU quota and memory limit of a VM: at launch and while it runs.

Pure parts (request bodies, re-checks, reading Firecracker's config back) and
the :class:`ResourceHandlers` mixin of :class:`fcd_vmm.service.VmmService`,
which applies ``vmm.update_resources`` and answers ``vmm.resources``.

Firecracker facts used (FIRECRACKER.md §1, §9, checked against v1.7.0 and v1.14.2):
rate limiters go in the drive/interface PUT before boot and in ``PATCH
/drives/{id}`` / ``PATCH /network-interfaces/{id}`` after it (an omitted bucket
stays, a bucket of size 0 is removed); ``PATCH /balloon {amount_mib}`` works
only after boot and fails with ``DeviceNotActive`` (v1.14: "Device not
activated yet") when the guest has no balloon driver; ``PATCH
/balloon/statistics`` is never sent (v1.7.0 aborts on it after boot).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fcd_common import logs
from fcd_common.config import Config
from fcd_common.errors import (
    BalloonInactive,
    FailedPrecondition,
    FirecrackerError,
    InvalidArgument,
)
from fcd_common.ids import check_vm_id
from fcd_common.proto.vmm import (
    BalloonState,
    Launch,
    NetRateLimits,
    RateLimit,
    RateLimits,
    ReadResources,
    ResourcesInForce,
    TokenBucket,
    UpdateResources,
)
from fcd_common.rpc import Peer, handles

from . import cgroup_limits
from .fcclient import FirecrackerClient
from .limits_plan import limiter_body
from .plan import IFACE_ID, MIB, ROOT_DRIVE_ID, ApiCall, CgroupVersion, check_resource_id

if TYPE_CHECKING:
    from fcd_common.locks import KeyedLocks

    from .procs import PidWatch
    from .uidpool import JailRecord, UidPool

log = logging.getLogger("fcd.vmm.resources")

API_TIMEOUT_S = 10.0
INACTIVE_FAULTS = ("DeviceNotActive", "Device not activated yet")
"""v1.7.0 and v1.14.2 wording of a balloon PATCH on a guest without a balloon driver."""


# --- bodies (pure) -------------------------------------------------------------------------


def rate_limit_calls(limits: RateLimits) -> list[ApiCall]:
    """The post-boot PATCHes for an update: one per device that has a bucket to change."""
    calls: list[ApiCall] = []
    for drive_id, rl in [(ROOT_DRIVE_ID, limits.root), *sorted(limits.drives.items())]:
        body = limiter_body(rl)
        if body is not None:
            did = check_resource_id(drive_id)
            calls.append(
                ApiCall("PATCH", f"/drives/{did}", {"drive_id": did, "rate_limiter": body})
            )
    if limits.net is not None:
        net: dict[str, Any] = {"iface_id": IFACE_ID}
        for key, rl in (("rx_rate_limiter", limits.net.rx), ("tx_rate_limiter", limits.net.tx)):
            lb = limiter_body(rl)
            if lb is not None:
                net[key] = lb
        if len(net) > 1:
            calls.append(ApiCall("PATCH", f"/network-interfaces/{IFACE_ID}", net))
    return calls


# --- re-checks (pure) ----------------------------------------------------------------------


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", details={"field": field})


def check_drive_names(limits: RateLimits | None, drives: list[str], field: str) -> None:
    """Rate limits may name only this VM's own extra drives."""
    if limits is None:
        return
    for name in limits.drives:
        if name not in drives:
            raise _bad(
                f"{field}.drives.{name}",
                f"VM has no drive {name!r} (its drives: {', '.join(drives) or 'none'})",
            )


def check_launch_resources(req: Launch, cfg: Config) -> None:
    check_drive_names(req.rate_limits, [d.name for d in req.disk.drives], "rate_limits")
    if req.balloon is None and req.balloon_mib:
        raise _bad("balloon_mib", "a balloon size needs a balloon")
    if req.balloon_mib > req.mem_size_mib:
        raise _bad("balloon_mib", f"{req.balloon_mib} is more than the VM's {req.mem_size_mib} MiB")
    _check_common(req.mem_limit_mib, req.cpu_quota, cfg)


def _check_common(mem_limit_mib: int | None, cpu_quota: float | None, cfg: Config) -> None:
    if mem_limit_mib is not None and mem_limit_mib > cfg.limits.max_mem_mib:
        raise _bad("mem_limit_mib", f"{mem_limit_mib} is over {cfg.limits.max_mem_mib}")
    if cpu_quota is not None and cpu_quota > cfg.limits.max_vcpu:
        raise _bad("cpu_quota", f"{cpu_quota} is more than {cfg.limits.max_vcpu} CPUs")


def check_update(req: UpdateResources, rec: JailRecord, cfg: Config) -> None:
    check_drive_names(req.rate_limits, rec.drives, "rate_limits")
    if req.balloon_mib is not None:
        if not rec.balloon:
            raise FailedPrecondition(
                f"VM {rec.vm_id} was launched without a balloon: its memory target cannot change",
                details={"field": "balloon_mib"},
            )
        if rec.mem_size_mib is not None and req.balloon_mib > rec.mem_size_mib:
            raise _bad(
                "balloon_mib", f"{req.balloon_mib} is more than the VM's {rec.mem_size_mib} MiB"
            )
    _check_common(req.mem_limit_mib, req.cpu_quota, cfg)


def balloon_error(e: FirecrackerError, vm_id: str) -> Exception:
    fault = str((e.details or {}).get("fault_message", e.message))
    if any(t in fault for t in INACTIVE_FAULTS):
        return BalloonInactive(
            f"VM {vm_id}: the guest has no active balloon driver (virtio-balloon), so its"
            " memory cannot be reclaimed; nothing changed",
            details={"fault_message": fault},
        )
    if "TooManyPagesRequested" in fault:
        return _bad("balloon_mib", f"more than the guest's memory ({fault})")
    return e


# --- reading Firecracker's view back (pure) ------------------------------------------------


def _bucket(obj: Any) -> TokenBucket | None:
    if not isinstance(obj, dict):
        return None
    return TokenBucket(
        size=int(obj.get("size") or 0),
        refill_time_ms=int(obj.get("refill_time") or 0),
        one_time_burst=obj.get("one_time_burst"),
    )


def _limit(obj: Any) -> RateLimit | None:
    if not isinstance(obj, dict):
        return None
    rl = RateLimit(bandwidth=_bucket(obj.get("bandwidth")), ops=_bucket(obj.get("ops")))
    return rl if (rl.bandwidth or rl.ops) else None


def rate_limits_from_config(vm_config: dict[str, Any]) -> RateLimits:
    """``GET /vm/config``'s limiters as fcd's :class:`RateLimits`."""
    root: RateLimit | None = None
    drives: dict[str, RateLimit] = {}
    for d in vm_config.get("drives") or []:
        rl = _limit(d.get("rate_limiter"))
        if d.get("drive_id") == ROOT_DRIVE_ID:
            root = rl
        elif rl is not None:
            drives[str(d.get("drive_id"))] = rl
    net = None
    for n in vm_config.get("network-interfaces") or []:
        if n.get("iface_id") == IFACE_ID:
            rx, tx = _limit(n.get("rx_rate_limiter")), _limit(n.get("tx_rate_limiter"))
            net = NetRateLimits(rx=rx, tx=tx) if (rx or tx) else None
    return RateLimits(root=root, drives=drives, net=net)


def balloon_state(balloon: Any, stats: Any) -> BalloonState | None:
    if not isinstance(balloon, dict):
        return None
    s = stats if isinstance(stats, dict) else {}
    return BalloonState(
        requested_mib=int(balloon.get("amount_mib") or 0),
        deflate_on_oom=bool(balloon.get("deflate_on_oom")),
        stats_interval_s=int(balloon.get("stats_polling_interval_s") or 0),
        target_mib=s.get("target_mib"),
        actual_mib=s.get("actual_mib"),
        target_pages=s.get("target_pages"),
        actual_pages=s.get("actual_pages"),
    )


def mem_limit_bytes(guest_mib: int, overhead_mib: int) -> int:
    return (guest_mib + overhead_mib) * MIB


# --- the handlers -------------------------------------------------------------------------


class ResourceHandlers:
    """Mixed into :class:`fcd_vmm.service.VmmService` (which provides these attributes)."""

    cfg: Config
    pool: UidPool
    _locks: KeyedLocks

    def _require(self, vm_id: str) -> JailRecord:
        raise NotImplementedError

    def _live(self, vm_id: str) -> PidWatch | None:
        raise NotImplementedError

    def _cgroup_version(self) -> CgroupVersion:
        raise NotImplementedError

    def _api_socket(self, vm_id: str) -> str:
        raise NotImplementedError

    def record_launch(self, rec: JailRecord, req: Launch) -> None:
        """What an update is later checked against (kept in the VM's record)."""
        rec.mem_size_mib = req.mem_size_mib
        rec.drives = [d.name for d in req.disk.drives]
        rec.balloon = req.balloon is not None

    async def _in_force(self, vm_id: str, fc: FirecrackerClient | None = None) -> ResourcesInForce:
        version = self._cgroup_version()
        if fc is None:
            async with FirecrackerClient(self._api_socket(vm_id), timeout=API_TIMEOUT_S) as own:
                return await self._in_force(vm_id, own)
        vm_config = await fc.get("/vm/config") or {}
        balloon = vm_config.get("balloon")
        stats = None
        if isinstance(balloon, dict) and balloon.get("stats_polling_interval_s"):
            try:
                stats = await fc.get("/balloon/statistics")
            except FirecrackerError as e:
                log.warning("balloon statistics: %s", e.message, extra=logs.vm(vm_id))
        cg = await asyncio.to_thread(
            cgroup_limits.read_limits, version, self.cfg.jail.parent_cgroup, vm_id
        )
        return ResourcesInForce(
            vm_id=vm_id,
            cgroup_version=version,
            cpu_quota=cg.cpu_quota,
            cpu_period_us=cg.cpu_period_us,
            mem_limit_bytes=cg.mem_limit_bytes,
            mem_usage_bytes=cg.mem_usage_bytes,
            rate_limits=rate_limits_from_config(vm_config),
            balloon=balloon_state(balloon, stats),
        )

    def _require_live(self, vm_id: str) -> JailRecord:
        rec = self._require(vm_id)
        if self._live(vm_id) is None:
            raise FailedPrecondition(f"VM {vm_id} is not running")
        return rec

    @handles(ReadResources)
    async def read_resources(self, req: ReadResources, _peer: Peer) -> ResourcesInForce:
        vm_id = check_vm_id(req.vm_id)
        self._require_live(vm_id)
        return await self._in_force(vm_id)

    @handles(UpdateResources)
    async def update_resources(self, req: UpdateResources, _peer: Peer) -> ResourcesInForce:
        vm_id = check_vm_id(req.vm_id)
        vm = logs.vm(vm_id)
        async with self._locks.hold(vm_id):
            rec = self._require_live(vm_id)
            check_update(req, rec, self.cfg)
            version = self._cgroup_version()
            parent = self.cfg.jail.parent_cgroup
            limit = None
            if req.cpu_quota is not None:
                await asyncio.to_thread(cgroup_limits.check_cpu, version, parent, vm_id)
            if req.mem_limit_mib is not None:
                limit = mem_limit_bytes(req.mem_limit_mib, self.cfg.limits.mem_overhead_mib)
                # before anything changes: a limit below usage changes nothing at all
                await asyncio.to_thread(
                    cgroup_limits.check_mem_limit, version, parent, vm_id, limit
                )
            async with FirecrackerClient(self._api_socket(vm_id), timeout=API_TIMEOUT_S) as fc:
                if req.balloon_mib is not None:
                    try:
                        await fc.patch("/balloon", {"amount_mib": req.balloon_mib})
                    except FirecrackerError as e:
                        raise balloon_error(e, vm_id) from None
                    log.info("balloon target %d MiB", req.balloon_mib, extra=vm)
                if req.rate_limits is not None:
                    for call in rate_limit_calls(req.rate_limits):
                        await fc.call(call)
                        log.info("rate limiter %s %s", call.path, call.body, extra=vm)
            if req.cpu_quota is not None:
                quota = req.cpu_quota or None
                await asyncio.to_thread(
                    cgroup_limits.apply_cpu_quota, version, parent, vm_id, quota
                )
                log.info("cpu quota %s", quota if quota else "none", extra=vm)
            if limit is not None:
                await asyncio.to_thread(
                    cgroup_limits.apply_mem_limit, version, parent, vm_id, limit
                )
                log.info("memory limit %d bytes", limit, extra=vm)
            return await self._in_force(vm_id)


__all__ = [
    "ResourceHandlers",
    "balloon_error",
    "balloon_state",
    "check_launch_resources",
    "check_update",
    "rate_limit_calls",
    "rate_limits_from_config",
]
