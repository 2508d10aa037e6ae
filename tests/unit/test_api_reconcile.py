"""Reconciliation: operations cut short are rolled forward or back, orphans removed."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from fcd_api.models import VmRecord, VMState
from fcd_api.reconcile import Reconciler, decide
from fcd_api.supervise import ExitWatcher
from fcd_common.errors import Unavailable
from fcd_common.proto import net as pnet
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm

from .api_fakes import Harness
from .test_api_flows import CREATE, run

S = VMState


def _rec(state: VMState, *, started: bool = True, suspend: bool = False) -> VmRecord:
    from fcd_api.models import CreateVMRequest, Runtime

    saved = None
    if suspend:
        saved = pstorage.SuspendInfo(vm_id="v", state_path="/s", memory_path="/m", pending=False)
    return VmRecord(
        id="v",
        spec=CreateVMRequest(id="v", template="base"),
        state=state,
        runtime=Runtime(pid=7, suspend=saved),
        created_at="t",
        started_at="t" if started else None,
        updated_at="t",
    )


def _proc(state: pvmm.ProcState) -> pvmm.VmProcess:
    pid = 7 if state in ("running", "paused", "not_started") else None
    return pvmm.VmProcess(vm_id="v", state=state, pid=pid)


@pytest.mark.parametrize(
    ("rec", "proc", "verb", "to"),
    [
        (_rec(S.CREATING), "running", "undo", None),
        (_rec(S.CREATING), "absent", "undo", None),
        (_rec(S.STARTING), "running", "set", S.RUNNING),
        (_rec(S.STARTING), "paused", "set", S.PAUSED),
        (_rec(S.STARTING, started=False), "exited", "undo", None),
        (_rec(S.STARTING, suspend=True), "exited", "set", S.SUSPENDED),
        (_rec(S.STARTING), "exited", "set", S.STOPPED),
        (_rec(S.PAUSING), "paused", "set", S.PAUSED),
        (_rec(S.PAUSING), "running", "set", S.RUNNING),
        (_rec(S.PAUSING), "exited", "set", S.ERROR),
        (_rec(S.STOPPING, suspend=True), "paused", "kill_then", S.SUSPENDED),
        (_rec(S.STOPPING, suspend=True), "exited", "set", S.SUSPENDED),
        (_rec(S.STOPPING), "running", "set", S.RUNNING),
        (_rec(S.STOPPING), "exited", "set", S.STOPPED),
        (_rec(S.DELETING), "running", "finish_delete", None),
        (_rec(S.ERROR), "running", "set", S.RUNNING),
        (_rec(S.ERROR), "exited", "keep", None),
        (_rec(S.ERROR, started=False), "not_started", "undo", None),
        (_rec(S.RUNNING), "running", "keep", None),
        (_rec(S.STOPPED), "exited", "keep", None),
        (_rec(S.ERROR), "not_started", "kill_then", S.ERROR),
        (_rec(S.STOPPED), "not_started", "kill_then", S.STOPPED),
        (_rec(S.SUSPENDED), "running", "kill_then", S.SUSPENDED),
    ],
)
def test_decide(rec: VmRecord, proc: pvmm.ProcState, verb: str, to: VMState | None) -> None:
    d = decide(rec, _proc(proc))
    assert (d.verb, d.to) == (verb, to)
    for state in S:  # every transient state is decided: nothing stays cut short
        if state in (S.CREATING, S.STARTING, S.PAUSING, S.STOPPING, S.DELETING):
            assert decide(_rec(state), _proc("exited")).verb != "keep"


def _put(h: Harness, vm_id: str, state: VMState, **changes: object) -> None:
    rec = h.registry.require(vm_id)
    h.registry.update(msgspec.structs.replace(rec, state=state, **changes))


def test_one_round_repairs_every_cut_short_operation_and_removes_orphans() -> None:
    async def t(h: Harness) -> None:
        f = h.fakes
        for vm_id in ("creating", "starting", "stopping", "deleting", "pausing", "keep"):
            r = await h.client.post("/v1/vms", json={**CREATE, "id": vm_id})
            assert r.status_code == 201, r.text
        _put(h, "creating", S.CREATING)
        _put(h, "starting", S.STARTING)  # Firecracker was launched: adopt it
        f.procs.pop("stopping")
        _put(h, "stopping", S.STOPPING)  # Firecracker already gone: stopped
        _put(h, "deleting", S.DELETING)
        f.procs["pausing"] = pvmm.VmProcess(vm_id="pausing", state="paused", pid=1)
        _put(h, "pausing", S.PAUSING)
        # orphans: a jail, a lease and a disk no row owns
        await f.allocate_jail(pvmm.AllocateJail(vm_id="ghost"))
        await f.net_setup(pnet.NetSetup(vm_id="ghost", uid=1, gid=1))

        rec = Reconciler(h.flows, ExitWatcher(h.flows), interval_s=0)
        report = await rec.run_once(at_start=True)
        assert report.clean
        states = {r.id: r.state for r in h.registry.list_vms()}
        assert states == {
            "starting": S.RUNNING,
            "stopping": S.STOPPED,
            "pausing": S.PAUSED,
            "keep": S.RUNNING,
        }
        for gone in ("creating", "deleting", "ghost"):
            assert gone not in f.jails and gone not in f.nets, gone
        assert sorted(report.removed) == ["jail:ghost", "lease:ghost"]
        assert "storage.reclaim" in f.tags() and "storage.snapshot_list" in f.tags()
        assert h.registry.require("starting").runtime.pid == f.procs["starting"].pid
        # a second round finds nothing to do
        again = await rec.run_once()
        assert (again.repaired, again.removed) == ([], [])

    run(t)


def test_a_helper_down_leaves_the_vm_for_the_next_round_and_other_errors_mark_error() -> None:
    async def t(h: Harness) -> None:
        f = h.fakes
        for vm_id in ("a", "b"):
            assert (await h.client.post("/v1/vms", json={**CREATE, "id": vm_id})).status_code == 201
        _put(h, "a", S.DELETING)
        f.fail["net.teardown"] = Unavailable("fcd-net is restarting", details={"sent": False})
        rec = Reconciler(h.flows, ExitWatcher(h.flows), interval_s=0)
        report = await rec.run_once()
        assert report.pending == ["a"] and h.registry.require("a").state is S.DELETING
        del f.fail["net.teardown"]
        report = await rec.run_once()
        assert report.clean and h.registry.get("a") is None

        from fcd_common.errors import Internal

        _put(h, "b", S.DELETING)
        f.fail["storage.release"] = Internal("disk busy")
        await rec.run_once()
        b = h.registry.require("b")
        assert b.state is S.ERROR and "disk busy" in (b.error or "")

    run(t)


def test_a_create_in_flight_is_never_taken_for_an_orphan() -> None:
    async def t(h: Harness) -> None:
        f = h.fakes
        gate = f.block["net.setup"] = asyncio.Event()
        create = asyncio.create_task(h.client.post("/v1/vms", json=CREATE))
        await f.arrived("net.setup").wait()  # its row and jail exist, its lease is coming
        rec = Reconciler(h.flows, ExitWatcher(h.flows), interval_s=0)
        round_ = asyncio.create_task(rec.run_once())
        await asyncio.sleep(0.2)
        gate.set()
        report = await round_
        r = await create
        assert r.status_code == 201, r.text
        assert "jail:vm1" not in report.removed and "vm1" in f.jails and "vm1" in f.nets
        assert h.registry.require("vm1").state is S.RUNNING

    run(t)


def test_periodic_rounds_run_until_closed() -> None:
    async def t(h: Harness) -> None:
        rec = Reconciler(h.flows, ExitWatcher(h.flows), interval_s=0.05)
        rec.start()
        try:
            await asyncio.wait_for(rec.done_once.wait(), 10)
            async with asyncio.timeout(10):
                while rec.rounds < 3:  # noqa: ASYNC110 -- polls a counter, not an event
                    await asyncio.sleep(0.02)
        finally:
            await rec.close()

    run(t)
