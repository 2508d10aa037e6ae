"""fcd_vmm.spawn: a vfork'd child awaited through a pidfd, killed and reaped on cancel."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest

from fcd_vmm import spawn


def test_exit_status_and_stderr() -> None:
    with tempfile.TemporaryFile() as err:
        rc = asyncio.run(spawn.run(["/bin/sh", "-c", "echo oops >&2; exit 3"], stderr=err))
        err.seek(0)
        assert (rc, err.read()) == (3, b"oops\n")


def test_environment_is_empty_and_cwd_is_root() -> None:
    with tempfile.TemporaryFile() as err:
        rc = asyncio.run(
            spawn.run(["/bin/sh", "-c", 'test "$(pwd)" = / && test -z "$HOME"'], stderr=err)
        )
    assert rc == 0


def test_missing_binary_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        asyncio.run(spawn.run([str(tmp_path / "nope")], stderr=-3))


def test_cancelled_wait_kills_and_reaps_the_child() -> None:
    r, w = os.pipe()

    async def main() -> int:
        task = asyncio.create_task(
            spawn.run(["/bin/sh", "-c", "echo $$ >&2; exec sleep 60"], stderr=w)
        )
        pid = int(await asyncio.to_thread(os.read, r, 64))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid

    try:
        pid = asyncio.run(main())
    finally:
        os.close(r)
        os.close(w)
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped: not even a zombie
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
