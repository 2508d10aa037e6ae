"""fcd-vmm's console capture through its RPC (``vmm.console``), across a restart.

Runs the daemon as test_vmm_daemon does (root, own netns, the doubles, or the real
binaries with FCD_FIRECRACKER/FCD_JAILER). The guest's line arrives from the first
boot; what Firecracker writes to its console while fcd-vmm is down stays in the pipe
and is read by the next fcd-vmm; the per-VM file store holds the lines too.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import pytest

from fcd_common.proto.console import ConsoleRead
from fcd_common.proto.vmm import AllocateJail, ReleaseJail

from .test_vmm_daemon import Env, alive, env, needs_doubles  # noqa: F401

pytestmark = [pytest.mark.root, needs_doubles]

MESSAGE = "fcd-guest: hello"


def test_console_lines_survive_an_fcd_vmm_restart(env: Env) -> None:  # noqa: F811
    if not env.cfg.jail.new_pid_ns:
        pytest.skip("without --new-pid-ns the jailer needs --daemonize: no console capture")
    env.start()
    vm_id = f"c-{secrets.token_hex(3)}"
    jail = env.call(AllocateJail(vm_id=vm_id))
    tap = env.make_tap(vm_id, jail.uid)
    vm = env.call(env.launch_req(vm_id, tap))
    assert vm.pid is not None
    got = env.call(ConsoleRead(vm_id=vm_id, wait_s=30), timeout=60)
    assert [ln.text for ln in got.lines] == [MESSAGE]
    assert got.capturing and got.lines[0].seq == 1
    # Firecracker's start-up lines (its stdout before PUT /logger) are not console lines
    # but are kept as source "firecracker" in the per-VM store (no journald here)
    store = Path(env.cfg.paths.state_dir) / "logs" / "fcd-vmm" / f"{vm_id}.ndjson"
    entries = [json.loads(x) for x in store.read_text().splitlines()]
    assert {"source": "console", "message": MESSAGE} in [
        {k: e[k] for k in ("source", "message")} for e in entries
    ]
    assert any(
        e["source"] == "firecracker" and "Running Firecracker" in e["message"] for e in entries
    )

    env.stop()
    assert alive(vm.pid)
    # the guest prints while nobody reads: a writer on Firecracker's own stdout pipe
    fd = os.open(f"/proc/{vm.pid}/fd/1", os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"printed while fcd-vmm was down\n")
    finally:
        os.close(fd)
    env.start()
    deadline = time.monotonic() + 30
    texts: list[str] = []
    while "printed while fcd-vmm was down" not in texts:
        assert time.monotonic() < deadline, texts
        again = env.call(ConsoleRead(vm_id=vm_id, epoch=got.epoch, wait_s=5), timeout=60)
        assert again.epoch != got.epoch  # a new fcd-vmm: seqs start over
        texts = [ln.text for ln in again.lines]
    env.call(ReleaseJail(vm_id=vm_id))
    gone = env.call(ConsoleRead(vm_id=vm_id))
    assert gone.lines == [] and not gone.capturing
