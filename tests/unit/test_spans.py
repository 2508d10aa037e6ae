"""fcd_common.spans: phases recorded into the current recorder, nothing without one."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fcd_common import spans


def test_no_current_recorder_records_nothing() -> None:
    assert spans.current.get() is None
    with spans.span("anything"):
        pass
    assert spans.current.get() is None


def test_spans_go_to_the_current_recorder_in_order_and_add_up() -> None:
    rec = spans.Spans()
    token = spans.current.set(rec)
    try:
        with spans.span("a"):
            pass
        with spans.span("b"):
            pass
        with spans.span("a"):
            pass
    finally:
        spans.current.reset(token)
    assert [n for n, _ in rec.items] == ["a", "b", "a"]
    ms = rec.as_ms()
    assert list(ms) == ["a", "b"]
    assert ms["a"] == pytest.approx(sum(s for n, s in rec.items if n == "a") * 1000, abs=0.01)


def test_a_span_is_recorded_when_its_body_raises() -> None:
    rec = spans.Spans()
    token = spans.current.set(rec)
    try:
        with pytest.raises(ValueError), spans.span("failing"):
            raise ValueError("x")
    finally:
        spans.current.reset(token)
    assert [n for n, _ in rec.items] == ["failing"]


def test_tasks_started_under_a_recorder_record_into_it() -> None:
    async def step(name: str) -> None:
        with spans.span(name):
            await asyncio.sleep(0)

    async def main() -> spans.Spans:
        rec = spans.Spans()
        spans.current.set(rec)
        await asyncio.gather(step("storage"), step("network"))
        return rec

    rec = asyncio.run(main())
    assert sorted(n for n, _ in rec.items) == ["network", "storage"]


def test_merge_and_server_timing_header() -> None:
    rec = spans.Spans()
    rec.add("api.uid", 0.0015)
    rec.merge("vmm.", {"fc.put./drives/rootfs": 1.25, "InstanceStart": 2.0})
    header = rec.server_timing()
    assert header == "api.uid;dur=1.5, vmm.fc.put._drives_rootfs;dur=1.25, vmm.InstanceStart;dur=2"


def test_log_only_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.spans")
    rec = spans.Spans()
    rec.add("x", 0.001)
    with caplog.at_level(logging.INFO, logger="test.spans"):
        rec.log(log, "op")
    assert not caplog.records
    with caplog.at_level(logging.DEBUG, logger="test.spans"):
        rec.log(log, "op")
    assert [r.getMessage() for r in caplog.records] == ["timings of op: x;dur=1"]
