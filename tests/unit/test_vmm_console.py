"""fcd_vmm.console without a VM: line splitting, the rate limit, the ring and its long poll."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fcd_vmm import console


def test_rate_limit_drops_over_the_burst_and_refills_at_the_rate() -> None:
    rl = console.RateLimit(rate=100, burst=300)
    assert rl.allow(300, now=0.0)
    assert not rl.allow(1, now=0.0)
    assert (rl.dropped, rl.dropped_total) == (1, 1)
    assert not rl.allow(150, now=1.0)  # 100 back after 1 s: 150 does not fit
    assert rl.allow(100, now=1.0)
    assert rl.allow(300, now=10.0)  # never more than the burst
    assert not rl.allow(1, now=10.0)


def test_lines_are_split_classified_and_kept(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> console.Consoles:
        reg = console.Consoles()
        con = reg._by_vm["vm-a"] = console.Console("vm-a")
        con.feed(b"2026-12-02T21:00:00.000000001 [vm-a:main] Running Firecracker v1.7.0\n")
        con.feed(b"fcd-guest: he")
        con.feed(b"llo\r\n\nsecond\n")
        return reg

    with caplog.at_level(logging.INFO):
        reg = asyncio.run(run())
    con = reg.get("vm-a")
    assert con is not None
    assert [ln.text for ln in con.ring] == ["fcd-guest: hello", "second"]
    assert [ln.seq for ln in con.ring] == [1, 2]
    by_source = {r.getMessage(): getattr(r, "FCD_SOURCE", None) for r in caplog.records}
    assert by_source["fcd-guest: hello"] == "console"
    assert by_source["2026-12-02T21:00:00.000000001 [vm-a:main] Running Firecracker v1.7.0"] == (
        "firecracker"
    )
    assert all(getattr(r, "FCD_VM_ID", None) == "vm-a" for r in caplog.records)


def test_over_the_limit_lines_are_dropped_then_counted_once() -> None:
    async def run() -> list[str]:
        con = console.Console("vm-b")
        con.limit = console.RateLimit(rate=1e-9, burst=20)
        con.feed(b"0123456789\n")  # 11 bytes: fits
        con.feed(b"abcdefghij\n")  # over the burst: dropped
        con.feed(b"xy\n")  # 3 bytes: fits again
        return [ln.text for ln in con.ring]

    texts = asyncio.run(run())
    assert texts[0] == "0123456789"
    assert texts[1].startswith("[fcd: 11 bytes of console output dropped")
    assert texts[2] == "xy"


def test_read_long_polls_and_reports_missed_lines() -> None:
    async def run() -> None:
        reg = console.Consoles()
        con = reg._by_vm["vm-c"] = console.Console("vm-c")
        empty = await reg.read("vm-c", 0, None, 0.0, 10)
        assert (empty.lines, empty.next_after) == ([], 0)
        waiter = asyncio.create_task(reg.read("vm-c", 0, reg.epoch, 30.0, 10))
        await asyncio.sleep(0)
        assert not waiter.done()
        con.feed(b"one\ntwo\n")
        got = await asyncio.wait_for(waiter, 30)
        assert [ln.text for ln in got.lines] == ["one", "two"] and got.next_after == 2
        again = await reg.read("vm-c", 1, reg.epoch, 0.0, 10)
        assert [ln.text for ln in again.lines] == ["two"]
        # another epoch (fcd-vmm restarted): counts from 0 again
        assert len((await reg.read("vm-c", 2, "old", 0.0, 10)).lines) == 2
        for i in range(console.RING + 5):
            con.feed(f"l{i}\n".encode())
        tail = await reg.read("vm-c", 2, reg.epoch, 0.0, 3)
        assert tail.missed == 5 and [ln.text for ln in tail.lines] == ["l5", "l6", "l7"]
        assert (await reg.read("vm-none", 0, None, 1.0, 10)).lines == []

    asyncio.run(run())
