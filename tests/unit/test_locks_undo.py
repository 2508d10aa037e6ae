"""fcd_common.locks and fcd_common.undo: the one keyed lock and the one undo stack."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from fcd_common.locks import KeyedLocks, SharedLock
from fcd_common.undo import SyncUndo, Undo, UndoFailure

# --- KeyedLocks -----------------------------------------------------------------------


def test_key_is_dropped_after_release() -> None:
    async def main() -> None:
        locks = KeyedLocks()
        async with locks.hold("a"):
            assert "a" in locks and len(locks) == 1
        assert "a" not in locks and len(locks) == 0

    asyncio.run(main())


def test_key_is_dropped_when_the_holder_raises() -> None:
    async def main() -> None:
        locks = KeyedLocks()
        with pytest.raises(RuntimeError):
            async with locks.hold("a"):
                raise RuntimeError("boom")
        assert len(locks) == 0

    asyncio.run(main())


def test_waiters_on_one_key_are_serialised_in_order() -> None:
    async def main() -> None:
        locks = KeyedLocks()
        events: list[str] = []
        inside = 0

        async def user(name: str) -> None:
            nonlocal inside
            async with locks.hold("vm"):
                inside += 1
                assert inside == 1
                events.append(f"{name}+")
                await asyncio.sleep(0.01)
                events.append(f"{name}-")
                inside -= 1

        tasks = [asyncio.create_task(user(n)) for n in "abc"]
        await asyncio.sleep(0)
        assert len(locks) == 1  # one key, however many wait for it
        await asyncio.gather(*tasks)
        assert events == ["a+", "a-", "b+", "b-", "c+", "c-"]
        assert len(locks) == 0

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_no_entry() -> None:
    async def main() -> None:
        locks = KeyedLocks()
        release = asyncio.Event()

        async def holder() -> None:
            async with locks.hold("vm"):
                await release.wait()

        async def waiter() -> None:
            async with locks.hold("vm"):
                pass

        h = asyncio.create_task(holder())
        await asyncio.sleep(0)
        w = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        release.set()
        await h
        assert len(locks) == 0

    asyncio.run(main())


def test_different_keys_run_concurrently() -> None:
    async def main() -> None:
        locks = KeyedLocks()
        both_in = asyncio.Barrier(2)

        async def user(key: str) -> None:
            async with locks.hold(key):
                # Each waits for the other while holding its own key: only
                # possible if different keys do not exclude each other.
                await asyncio.wait_for(both_in.wait(), 1.0)

        await asyncio.gather(user("a"), user("b"))
        assert len(locks) == 0

    asyncio.run(main())


def test_shared_lock_exclusive_waits_for_shared_and_blocks_new_shared() -> None:
    async def main() -> None:
        lock = SharedLock()
        events: list[str] = []
        first_in = asyncio.Event()
        go = asyncio.Event()

        async def reader(name: str, hold: asyncio.Event | None) -> None:
            async with lock.shared():
                events.append(f"{name}+")
                if hold is not None:
                    first_in.set()
                    await hold.wait()
                events.append(f"{name}-")

        async def writer() -> None:
            async with lock.exclusive():
                events.append("w")

        r1 = asyncio.create_task(reader("r1", go))
        await first_in.wait()
        w = asyncio.create_task(writer())
        await asyncio.sleep(0.01)
        r2 = asyncio.create_task(reader("r2", None))
        await asyncio.sleep(0.01)
        assert events == ["r1+"]  # the writer waits for r1, r2 waits behind the writer
        go.set()
        await asyncio.gather(r1, w, r2)
        assert events == ["r1+", "r1-", "w", "r2+", "r2-"]

    asyncio.run(main())


# --- Undo -------------------------------------------------------------------------------


def test_undo_runs_in_reverse_and_collects_failures_with_names() -> None:
    async def main() -> None:
        ran: list[str] = []

        def step(name: str, fail: bool = False) -> Callable[[], Awaitable[None]]:
            async def fn() -> None:
                ran.append(name)
                if fail:
                    raise RuntimeError(f"{name} broke")

            return fn

        undo = Undo()
        undo.push("one", step("one"))
        undo.push("two", step("two", fail=True))
        undo.push("three", step("three", fail=True))
        assert len(undo) == 3 and undo.names == ["three", "two", "one"]
        failures = await undo.rollback()
        assert ran == ["three", "two", "one"]  # every undo ran, failures or not
        assert [(f.name, str(f.error)) for f in failures] == [
            ("three", "three broke"),
            ("two", "two broke"),
        ]
        assert len(undo) == 0
        assert await undo.rollback() == failures  # nothing runs twice
        assert ran == ["three", "two", "one"]

    asyncio.run(main())


def test_undo_commit_keeps_everything() -> None:
    async def main() -> None:
        ran: list[str] = []

        async def fn() -> None:
            ran.append("x")

        undo = Undo()
        undo.push("x", fn)
        undo.commit()
        assert len(undo) == 0
        assert await undo.rollback() == []
        async with Undo() as scoped:
            scoped.push("x", fn)
            scoped.commit()
        assert ran == []

    asyncio.run(main())


def test_undo_as_context_manager_rolls_back_on_error() -> None:
    async def main() -> None:
        ran: list[str] = []

        async def fn() -> None:
            ran.append("x")

        with pytest.raises(ValueError, match="step failed"):
            async with Undo() as undo:
                undo.push("x", fn)
                raise ValueError("step failed")  # the step's error, not hidden by the undo
        assert ran == ["x"]

    asyncio.run(main())


def test_undo_cancellation_still_runs_the_rest() -> None:
    async def main() -> None:
        ran: list[str] = []

        async def ok() -> None:
            ran.append("ok")

        async def cancelled() -> None:
            ran.append("cancelled")
            raise asyncio.CancelledError

        undo = Undo()
        undo.push("ok", ok)
        undo.push("cancelled", cancelled)
        with pytest.raises(asyncio.CancelledError):
            await undo.rollback()
        assert ran == ["cancelled", "ok"]
        assert undo.failures == []  # cancellation is not an undo's failure

    asyncio.run(main())


def test_sync_undo_same_contract() -> None:
    ran: list[str] = []

    def fail() -> None:
        ran.append("b")
        raise OSError("gone")

    undo = SyncUndo()
    undo.push("a", lambda: ran.append("a"))
    undo.push("b", fail)
    undo.push("c", lambda: ran.append("c"))
    failures = undo.rollback()
    assert ran == ["c", "b", "a"]
    assert len(failures) == 1 and failures[0].name == "b"
    assert isinstance(failures[0].error, OSError)

    kept = SyncUndo()
    kept.push("a", lambda: ran.append("again"))
    kept.commit()
    assert kept.rollback() == []
    with SyncUndo() as scoped:
        scoped.push("a", lambda: ran.append("again"))
        scoped.commit()
    assert "again" not in ran


def test_undo_failure_is_a_value() -> None:
    err = RuntimeError("x")
    assert UndoFailure("a", err) == UndoFailure("a", err)
