"""Property: the rate limits fcd-api keeps in a VM's spec after any sequence of updates are
exactly what Firecracker shows in force (its PATCH rule, as the double implements it and
the real v1.7.0 was seen to do: test_fc_double_resources.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.fc_double.resources import limiter_view, merge_limiter
from fcd_api.resources_plan import merge_limits
from fcd_common.proto.vmm import RateLimit, RateLimits, TokenBucket
from fcd_vmm.limits_plan import limiter_body
from fcd_vmm.resources import rate_limits_from_config

sizes = st.integers(min_value=1, max_value=10**9)
buckets = st.one_of(
    st.none(),
    st.just(TokenBucket(size=0, refill_time_ms=0)),
    st.builds(
        TokenBucket,
        size=sizes,
        refill_time_ms=st.integers(min_value=1, max_value=86_400_000),
        one_time_burst=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
    ),
)
limits = st.builds(RateLimit, bandwidth=buckets, ops=buckets)


@settings(max_examples=300, deadline=None)
@given(first=limits, updates=st.lists(limits, max_size=6))
def test_spec_after_updates_equals_firecrackers_view(
    first: RateLimit, updates: list[RateLimit]
) -> None:
    spec = merge_limits(None, RateLimits(root=first))  # a create's spec (normalized)
    fc = limiter_body(first)  # the drive PUT
    for upd in updates:
        spec = merge_limits(spec, RateLimits(root=upd))
        body = limiter_body(upd)
        if body is not None:  # fcd-vmm sends a PATCH only for a limiter with buckets
            fc = merge_limiter(fc, body)
    shown = rate_limits_from_config(
        {"drives": [{"drive_id": "rootfs", "rate_limiter": limiter_view(fc)}]}
    )
    assert (spec.root if spec else None) == shown.root
