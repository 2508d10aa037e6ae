"""fcd_vmm.procs: each watched process keeps its own exit status when several die at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from fcd_vmm import procs


def _spawn_sleeper() -> int:
    # a session of its own, like an adopted Firecracker: reap_orphans may take it
    return os.posix_spawn("/bin/sleep", ["sleep", "60"], dict(os.environ), setsid=True)


def _zombie(pid: int) -> bool:
    stat = procs.read_stat(pid)
    return stat is not None and stat[0] == "Z"


def _until_zombies(pids: list[int]) -> None:
    """Block (the event loop too, on purpose) until every pid is a zombie."""
    deadline = time.monotonic() + 10
    while not all(_zombie(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(_zombie(p) for p in pids)


def test_a_sweep_after_one_exit_leaves_the_other_watched_status_alone() -> None:
    async def main() -> list[int | None]:
        pids = [_spawn_sleeper(), _spawn_sleeper()]
        watches = [procs.PidWatch(pid) for pid in pids]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        _until_zombies(pids)  # both dead before the loop hears of either
        # what the first exit's callback does before the second pidfd is read
        swept = procs.reap_orphans()
        assert not set(swept) & set(pids)
        for w in watches:
            assert await w.wait(5)
            w.close()
        return [w.exit_code for w in watches]

    assert asyncio.run(main()) == [-signal.SIGKILL, -signal.SIGKILL]


def test_unwatched_orphans_are_still_swept() -> None:
    pid = _spawn_sleeper()
    os.kill(pid, signal.SIGKILL)
    _until_zombies([pid])
    assert procs.reap_orphans().get(pid) == -signal.SIGKILL


def test_a_closed_watch_hands_its_process_back_to_the_sweep() -> None:
    async def main() -> int | None:
        pid = _spawn_sleeper()
        w = procs.PidWatch(pid)
        w.close()
        os.kill(pid, signal.SIGKILL)
        _until_zombies([pid])
        return procs.reap_orphans().get(pid)

    assert asyncio.run(main()) == -signal.SIGKILL
