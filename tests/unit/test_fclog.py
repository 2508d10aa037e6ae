"""fcd-vmm's forwarding of Firecracker's log FIFO to the daemon's log (journal fields)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from fcd_common import config
from fcd_vmm import fclog, jailfs
from fcd_vmm.plan import jail_paths


def test_line_level() -> None:
    assert fclog.line_level("2024-01-01T00:00:00.1 [vm-a:main:WARN] x") == logging.WARNING
    assert fclog.line_level("2024-01-01T00:00:00.1 [vm-a:fc_api:ERROR:src/a.rs:1] x") == (
        logging.ERROR
    )
    assert fclog.line_level("2024-01-01T00:00:00.1 [vm-a:main] Running Firecracker") == (
        logging.INFO
    )


def test_forwards_lines_with_vm_id_and_survives_reader_gap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_forwarding(tmp_path, caplog))


async def _forwarding(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fifo = tmp_path / "firecracker.log"
    fclog.make_fifo(fifo, os.getuid(), os.getgid())
    assert fclog.is_fifo(fifo) and (fifo.stat().st_mode & 0o777) == 0o600
    caplog.set_level(logging.DEBUG, logger="fcd.vmm.firecracker")
    fws = fclog.Forwarders()
    fws.start("vm-abc", fifo)
    # Firecracker v1.7 opens its log read-write and non-blocking
    fc = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fc, b"t [vm-abc:main:INFO] one\nt [vm-abc:main:WARN] tw")
        await asyncio.sleep(0.05)
        os.write(fc, b"o\n")
        await asyncio.sleep(0.05)
        recs = [r for r in caplog.records if r.name == "fcd.vmm.firecracker"]
        assert [r.getMessage() for r in recs] == [
            "t [vm-abc:main:INFO] one",
            "t [vm-abc:main:WARN] two",
        ]
        assert [r.levelno for r in recs] == [logging.INFO, logging.WARNING]
        assert all(r.FCD_VM_ID == "vm-abc" and r.FCD_SOURCE == "firecracker" for r in recs)
        assert "two" in fws.tail(fifo)
        # the daemon goes away (restart): Firecracker's writes still succeed, buffered ...
        fws.close()
        os.write(fc, b"t [vm-abc:main:INFO] while away\n")
        # ... and the next instance forwards them
        caplog.clear()
        fws.start("vm-abc", fifo)
        await asyncio.sleep(0.05)
        assert [r.getMessage() for r in caplog.records] == ["t [vm-abc:main:INFO] while away"]
        os.write(fc, b"unterminated")
        fws.stop("vm-abc")  # drains, including a last line without newline
        assert caplog.records[-1].getMessage() == "unterminated"
    finally:
        os.close(fc)
        fws.close()


def test_plain_file_is_not_forwarded(tmp_path: Path) -> None:
    paths = jail_paths(config.decode(f'[paths]\nchroot_base = "{tmp_path}"\n'), "vm-abc")
    paths.root.mkdir(parents=True)
    f = paths.log_file
    f.write_text("old jail\n")

    async def run() -> None:
        fws = fclog.Forwarders()
        fws.start("vm-abc", f)
        assert fws.tail(f) == "" and jailfs.log_tail(paths) == "old jail"

    asyncio.run(run())
