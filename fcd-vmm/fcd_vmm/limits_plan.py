"""Firecracker request bodies for rate limiters and the balloon (pure; FIRECRACKER.md §1).

fcd's :class:`~fcd_common.proto.vmm.TokenBucket` says ``refill_time_ms``;
Firecracker's ``TokenBucket`` says ``refill_time`` (milliseconds). A bucket of
size 0 is sent as given: before boot it means no limit, in a PATCH it removes one.
"""

from __future__ import annotations

from typing import Any

from fcd_common.proto.vmm import Launch, RateLimit, RateLimits, TokenBucket

__all__ = [
    "balloon_body",
    "bucket_body",
    "drive_limit",
    "limiter_body",
    "with_drive_limiter",
    "with_net_limiters",
]


def bucket_body(b: TokenBucket) -> dict[str, int]:
    body = {"size": b.size, "refill_time": b.refill_time_ms}
    if b.one_time_burst is not None:
        body["one_time_burst"] = b.one_time_burst
    return body


def limiter_body(rl: RateLimit | None) -> dict[str, Any] | None:
    """Firecracker's ``RateLimiterConfig`` with the buckets given (None if none is)."""
    if rl is None:
        return None
    body = {k: bucket_body(b) for k, b in (("bandwidth", rl.bandwidth), ("ops", rl.ops)) if b}
    return body or None


def drive_limit(limits: RateLimits | None, drive_id: str, root_id: str) -> RateLimit | None:
    if limits is None:
        return None
    return limits.root if drive_id == root_id else limits.drives.get(drive_id)


def with_drive_limiter(
    body: dict[str, Any], limits: RateLimits | None, root_id: str
) -> dict[str, Any]:
    """A drive PUT body with its rate limiter added (if it has one)."""
    rl = limiter_body(drive_limit(limits, body["drive_id"], root_id))
    return body if rl is None else {**body, "rate_limiter": rl}


def with_net_limiters(body: dict[str, Any], limits: RateLimits | None) -> dict[str, Any]:
    net = limits.net if limits is not None else None
    if net is None:
        return body
    out = dict(body)
    for key, rl in (("rx_rate_limiter", net.rx), ("tx_rate_limiter", net.tx)):
        lb = limiter_body(rl)
        if lb is not None:
            out[key] = lb
    return out


def balloon_body(req: Launch) -> dict[str, Any] | None:
    """``PUT /balloon`` of a launch (before boot), or None without a balloon. The
    statistics interval is set here only: v1.7.0 aborts on a change after boot."""
    if req.balloon is None:
        return None
    return {
        "amount_mib": req.balloon_mib,
        "deflate_on_oom": req.balloon.deflate_on_oom,
        "stats_polling_interval_s": req.balloon.stats_interval_s,
    }
