"""Orchestration: the create/start/stop/pause/resume/delete flows of DESIGN.md.

Every flow holds the VM's lock (operations on one VM serialize; different VMs
run concurrently), checks the transition in :mod:`fcd_api.states`, writes the
transient state, calls the helpers, and writes the final state.

Create keeps an undo stack (:class:`fcd_common.undo.Undo`): a failure runs
the undos of the steps already done in reverse (``net.teardown``,
``storage.release``, ``vmm.release``) and removes the row; if an undo itself
fails the row stays in ``error`` with both failures in its ``error`` field, so
a later (forced) delete can finish the job. The client always gets the
original error with its stable code. A step that failed or timed out may
still have left something behind on the helper side, so its undo runs too:
every undo is idempotent.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec

from fcd_common import allowlist, logs, reqid, spans
from fcd_common.config import LimitsConfig, NetworkConfig
from fcd_common.errors import (
    Conflict,
    FailedPrecondition,
    FcdError,
    Internal,
    ResourceExhausted,
    Unavailable,
    not_sent,
)
from fcd_common.ids import check_vm_id, new_vm_id
from fcd_common.locks import KeyedLocks
from fcd_common.proto import net as pnet
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm
from fcd_common.undo import Undo

from . import events, states
from .clients import Helpers
from .models import CreateVMRequest, PortMapping, VmRecord, VMState, now
from .plan import (
    Restore,
    check_kernel_args,
    check_limits,
    check_same_guest_network,
    launch_request,
)
from .registry import Registry
from .resources_plan import check_resource_spec, normalized
from .states import Action
from .supervision_models import check_wait_for

__all__ = ["Flows", "request_id"]

log = logging.getLogger("fcd.api.flows")

request_id: contextvars.ContextVar[str] = reqid.request_id
"""The X-Request-Id of the HTTP request being served (set by the app's middleware;
the one variable of :mod:`fcd_common.reqid`, so RPC calls carry it on)."""

T = TypeVar("T")

_EVENT_OF = {
    Action.START: "started",
    Action.STOP: "stopped",
    Action.PAUSE: "paused",
    Action.RESUME: "resumed",
    Action.DELETE: "deleted",
}


def _extra(vm_id: str) -> dict[str, Any]:
    return logs.vm(vm_id, request_id=request_id.get())


async def _timed(name: str, call: Awaitable[T]) -> T:
    with spans.span(name):
        return await call


def _as_fcd(exc: BaseException) -> FcdError:
    if isinstance(exc, FcdError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return Internal("operation cancelled (fcd-api shutting down)")
    return Internal(f"{type(exc).__name__}: {exc}")


class Flows:
    def __init__(
        self,
        registry: Registry,
        helpers: Helpers,
        limits: LimitsConfig,
        network: NetworkConfig | None = None,
    ) -> None:
        self.registry = registry
        self.helpers = helpers
        self.limits = limits
        self.network = network or NetworkConfig()
        """What the operator lets API users allow (fcd-net re-checks it)."""
        self.locks = KeyedLocks()
        self.ready: Callable[[VmRecord, float], Awaitable[None]] | None = None
        """Set by fcd-api's composition root (fcd_api.readiness): waits for a guest with
        ``wait_for`` to be up; a create or start answers only after it returned."""

    def write(
        self, rec: VmRecord, state: VMState | None = None, *, quiet: bool = False, **changes: Any
    ) -> VmRecord:
        """Write ``rec`` with a new state (checked against states.EDGES) and other fields.

        A state change is logged, at debug level with ``quiet`` (the flow's own lines
        say it: "creating ...", "running (pid ...)"; each record costs fcd-api CPU)."""
        if state is not None and state is not rec.state:
            states.move(rec.state, state)
            changes["state"] = state
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s -> %s",
                rec.state.value,
                state.value,
                extra=_extra(rec.id),
            )
        return self.registry.update(msgspec.structs.replace(rec, **changes))

    @contextmanager
    def guard(self, rec: VmRecord, what: str, *, back: VMState | None = None) -> Iterator[None]:
        """A helper call that fails leaves the VM in ``error``; the error goes to the client.

        With ``back``: a call that never reached its helper (it was down) changed
        nothing, so the VM goes back to that state instead (a brief outage must not
        strand a healthy VM in ``error``) and the client gets the 503."""
        try:
            yield
        except asyncio.CancelledError as exc:
            self._fail(rec, what, exc)
            raise
        except Exception as exc:
            if back is not None and not_sent(exc):
                current = self.registry.get(rec.id) or rec
                if current.state is not back:
                    self.write(current, back)
                log.warning(
                    "%s: helper unreachable; still %s", what, back.value, extra=_extra(rec.id)
                )
                raise
            err = self._fail(rec, what, exc)
            if err is exc:
                raise
            raise err from exc

    def _fail(self, rec: VmRecord, what: str, exc: BaseException) -> FcdError:
        err = _as_fcd(exc)
        log.error("%s failed: %s: %s", what, err.code, err.message, extra=_extra(rec.id))
        current = self.registry.get(rec.id) or rec
        self.write(current, VMState.ERROR, error=f"{what} failed: {err.code}: {err.message}")
        return err

    # --- reads -----------------------------------------------------------------
    def get(self, vm_id: str) -> VmRecord:
        return self.registry.require(check_vm_id(vm_id))

    def list_vms(
        self, *, state: VMState | None = None, labels: dict[str, str] | None = None
    ) -> list[VmRecord]:
        return self.registry.list_vms(state=state, labels=labels)

    def status(self) -> str:
        counts = self.registry.counts()
        total = sum(counts.values())
        return f"{total} VMs ({counts.get(VMState.RUNNING, 0)} running)"

    # --- create ----------------------------------------------------------------
    async def create(
        self, req: CreateVMRequest, source: Restore | None = None
    ) -> tuple[VmRecord, bool]:
        """Create and boot a VM (or, with ``source``, start it from a snapshot); return
        (record, created). Idempotent per id: the same spec returns the existing VM."""
        timings = spans.current.get()
        if timings is not None:
            timings.since_start("api.decode")
        vm_id = req.id or new_vm_id()
        spec = msgspec.structs.replace(req, id=vm_id)
        check_limits(spec, self.limits)
        check_resource_spec(spec, self.limits)
        spec = normalized(spec)
        if spec.network_policy is not None:
            allowlist.check_allow(self.network, spec.network_policy.allow, "network_policy.allow")
        check_wait_for(spec.wait_for)
        async with self.locks.hold(vm_id):
            with spans.span("api.registry"):
                existing = self.registry.get(vm_id)
            if existing is not None:
                if existing.spec == spec:
                    return existing, False
                raise Conflict(
                    f"VM {vm_id!r} already exists with a different spec",
                    details={"id": vm_id, "state": existing.state.value},
                )
            if self.registry.count() >= self.limits.max_vms:
                raise ResourceExhausted(
                    f"VM limit of {self.limits.max_vms} reached",
                    details={"max_vms": self.limits.max_vms},
                )
            ts = now()
            rec = VmRecord(
                id=vm_id, spec=spec, state=VMState.CREATING, created_at=ts, updated_at=ts
            )
            states.move(None, VMState.CREATING)
            with spans.span("api.registry"):
                self.registry.insert(rec)
            what = f"snapshot {source.files.name}" if source else f"template {spec.template}"
            log.info("creating from %s", what, extra=_extra(vm_id))
            undo = Undo()
            try:
                rec = await self._create_steps(rec, undo, source)
            except BaseException as exc:
                err = _as_fcd(exc)
                await asyncio.shield(self._rollback(rec, undo, err))
                if err is exc or not isinstance(exc, Exception):
                    raise
                raise err from exc
            undo.commit()
            events.publish("created", vm_id, template=spec.template, state=rec.state.value)
            if rec.state is VMState.RUNNING:
                events.publish("started", vm_id, pid=rec.runtime.pid)
            return rec, True

    async def _create_steps(self, rec: VmRecord, undo: Undo, source: Restore | None) -> VmRecord:
        h, vm_id, spec = self.helpers, rec.id, rec.spec
        if source is None:
            # unknown template: nothing to undo
            with spans.span("api.template"):
                template = await h.storage.call(
                    pstorage.TemplateGet(name=spec.template, users=False)
                )
            check_kernel_args(template.kernel_args, spec.kernel_args)
            base_args = template.kernel_args
        else:
            base_args = source.origin.kernel_args

        undo.push("vmm.release", lambda: self._release_jail(vm_id))
        with spans.span("api.uid"):
            jail = await h.vmm.call(pvmm.AllocateJail(vm_id=vm_id))
        # on record with the disk and network below, in one write: a create cut short
        # before that is undone by VM id (fcd_api.reconcile), which needs no uid
        rt = msgspec.structs.replace(
            rec.runtime,
            jail=jail,
            template_kernel_args=base_args,
            restored_from=source.files.name if source else None,
        )

        # Storage and network need only the jail's uid/gid: run them together.
        undo.push("storage.release", lambda: self._release_disk(vm_id))
        undo.push("net.teardown", lambda: self._teardown_net(vm_id))
        provision = pstorage.Provision(
            vm_id=vm_id,
            template=spec.template,
            disk_size_mib=spec.disk_size_mib,
            drives=list(spec.drives),
            snapshot=source.files.name if source else None,
        )
        setup = pnet.NetSetup(
            vm_id=vm_id,
            uid=jail.uid,
            gid=jail.gid,
            ports=list(spec.port_mappings),
            policy=spec.network_policy,
            mode=spec.network_mode,
        )
        disk, net = await asyncio.gather(
            _timed("api.storage", h.storage.call(provision)),
            _timed("api.network", h.net.call(setup)),
            return_exceptions=True,
        )
        if isinstance(disk, BaseException):
            if isinstance(net, BaseException):
                log.error("net.setup failed too: %s", net, extra=_extra(vm_id))
            raise disk
        if isinstance(net, BaseException):
            raise net
        if source is not None:
            check_same_guest_network(source.origin, net)
        rt = msgspec.structs.replace(rt, disk=disk, net=net)
        with spans.span("api.registry"):
            rec = self.write(rec, VMState.STARTING, quiet=True, runtime=rt)

        launched_at = time.time()  # readiness: console lines before it are not this boot's
        with spans.span("api.launch"):
            if source is None:
                proc = await h.vmm.call(launch_request(rec))
            else:
                proc = await h.vmm.call(launch_request(rec, source.files, resume=source.resume))
        timings = spans.current.get()
        if timings is not None:
            timings.merge("vmm.", proc.timings)
        final = VMState.PAUSED if proc.state == "paused" else VMState.RUNNING
        runtime = msgspec.structs.replace(rec.runtime, pid=proc.pid)
        ready = self.ready if final is VMState.RUNNING and spec.wait_for is not None else None
        if ready is not None:
            # the pid is on record while the guest may take long to be ready
            with spans.span("api.registry"):
                rec = self.write(rec, runtime=runtime)
            with spans.span("api.ready"):
                await ready(rec, launched_at)  # a timeout fails the create: undone
        with spans.span("api.final_write"):
            rec = self.write(rec, final, quiet=True, runtime=runtime, started_at=now(), error=None)
        log.info("%s (pid %s, ip %s)", final.value, proc.pid, net.ip, extra=_extra(vm_id))
        return rec

    # --- the undo/delete steps (each idempotent) ----------------------------------
    async def _kill(self, vm_id: str) -> None:
        try:
            await self.helpers.vmm.call(pvmm.Stop(vm_id=vm_id, force=True))
        except FcdError as e:
            log.error("could not kill it: %s", e.message, extra=_extra(vm_id))

    async def _release_jail(self, vm_id: str) -> None:
        released = await self.helpers.vmm.call(pvmm.ReleaseJail(vm_id=vm_id))
        timings = spans.current.get()
        if timings is not None:  # fcd-vmm's phases of it (kill, jail dir, cgroups)
            timings.merge("vmm.", released.timings)

    async def _teardown_net(self, vm_id: str) -> None:
        await self.helpers.net.call(pnet.NetTeardown(vm_id=vm_id))

    async def _release_disk(self, vm_id: str) -> None:
        await self.helpers.storage.call(pstorage.Release(vm_id=vm_id))

    async def _rollback(self, rec: VmRecord, undo: Undo, err: FcdError) -> None:
        vm_id = rec.id
        log.error(
            "create failed: %s: %s; undoing %d step(s)",
            err.code,
            err.message,
            len(undo),
            extra=_extra(vm_id),
        )
        failures: list[str] = []
        for failed in await undo.rollback():
            u = _as_fcd(failed.error)
            failures.append(f"{failed.name}: {u.code}: {u.message}")
            log.error("undo %s failed: %s", failed.name, u.message, extra=_extra(vm_id))
        if not failures:
            self.registry.delete(vm_id)
            return
        current = self.registry.get(vm_id) or rec
        self.write(
            current,
            VMState.ERROR,
            error=f"create failed: {err.code}: {err.message}; undo failed: {'; '.join(failures)}",
        )

    # --- lifecycle -------------------------------------------------------------
    async def _lifecycle(
        self,
        vm_id: str,
        action: Action,
        call: Callable[[VmRecord], Awaitable[dict[str, Any]]],
    ) -> VmRecord:
        """One transition from the table, under the VM's lock: enter the transient
        state, run the helper ``call`` (a failure leaves the VM in ``error``), then
        write the final state with the record changes ``call`` returned."""
        async with self.locks.hold(check_vm_id(vm_id)):
            rec = self.registry.require(vm_id)
            step = states.check(action, rec.state)
            assert step.to is not None
            was = rec.state
            if step.via is not None:
                rec = self.write(rec, step.via)
            with self.guard(rec, action.value, back=was):
                changes = await call(rec)
            rec = self.write(rec, step.to, **changes)
            events.publish(_EVENT_OF[action], vm_id, state=rec.state.value)
            return rec

    async def start(self, vm_id: str, *, restarts: int = 0) -> VmRecord:
        """stopped -> starting -> running: a fresh jailer + Firecracker on the same disk/TAP/IP.
        ``restarts``: the restart policy's attempt (0: a client's start)."""

        async def call(rec: VmRecord) -> dict[str, Any]:
            launched_at = time.time()
            proc = await self.helpers.vmm.call(launch_request(rec))
            runtime = msgspec.structs.replace(rec.runtime, pid=proc.pid, restarts=restarts)
            if self.ready is not None:
                try:
                    await self.ready(self.write(rec, runtime=runtime), launched_at)
                except BaseException:  # not up in time: it does not run on half-started
                    await asyncio.shield(self._kill(vm_id))
                    current = self.registry.get(vm_id) or rec
                    self.write(current, runtime=msgspec.structs.replace(runtime, pid=None))
                    raise
            return {"runtime": runtime, "started_at": now(), "stopped_at": None, "error": None}

        return await self._lifecycle(vm_id, Action.START, call)

    async def stop(self, vm_id: str) -> VmRecord:
        """running|paused -> stopping -> stopped; disk, TAP and IP are kept."""

        async def call(rec: VmRecord) -> dict[str, Any]:
            # fcd-vmm may wait stop_timeout_s for the guest before SIGKILL: so may we.
            h = self.helpers
            res = await h.vmm.call(pvmm.Stop(vm_id=vm_id), timeout=h.vmm.timeout + h.stop_timeout_s)
            log.info("stopped (graceful=%s)", res.graceful, extra=_extra(vm_id))
            runtime = msgspec.structs.replace(rec.runtime, pid=None, health=None)
            return {"runtime": runtime, "stopped_at": now()}

        return await self._lifecycle(vm_id, Action.STOP, call)

    async def pause(self, vm_id: str) -> VmRecord:
        async def call(_rec: VmRecord) -> dict[str, Any]:
            await self.helpers.vmm.call(pvmm.Pause(vm_id=vm_id))
            return {}

        return await self._lifecycle(vm_id, Action.PAUSE, call)

    async def resume(self, vm_id: str) -> VmRecord:
        async def call(_rec: VmRecord) -> dict[str, Any]:
            await self.helpers.vmm.call(pvmm.Resume(vm_id=vm_id))
            return {}

        return await self._lifecycle(vm_id, Action.RESUME, call)

    async def delete(self, vm_id: str, *, force: bool = False) -> None:
        """Release everything (vmm, then net, then storage) and remove the record.

        Allowed from stopped and error, from any state with ``force``. The VM is
        ``deleting`` meanwhile. A helper that cannot be reached leaves it ``deleting``
        (fcd_api.reconcile finishes the delete once the helper is back; a client may
        repeat it); a helper that refuses leaves it ``error``. Either way the error is
        returned.
        """
        async with self.locks.hold(check_vm_id(vm_id)):
            rec = self.registry.require(vm_id)
            states.check(Action.DELETE, rec.state, force=force)
            log.info("deleting (from %s, force=%s)", rec.state.value, force, extra=_extra(vm_id))
            was = rec.state
            # cut short: reconciliation finishes it
            rec = self.write(rec, VMState.DELETING, quiet=True)
            # the jail first (the process must be gone before its TAP and disk go), then
            # network and storage together: neither needs the other
            await self._delete_steps(rec, ("vmm.release", self._release_jail(vm_id)))
            await self._delete_steps(
                rec,
                ("net.teardown", self._teardown_net(vm_id)),
                ("storage.release", self._release_disk(vm_id)),
            )
            with spans.span("api.registry"):
                self.registry.delete(vm_id)
            # the event's record ("event deleted: forced=... was=...") is the log line
            events.publish("deleted", vm_id, forced=force, was=was.value)

    async def _delete_steps(self, rec: VmRecord, *steps: tuple[str, Awaitable[None]]) -> None:
        """Run idempotent delete steps concurrently. One the helper refused leaves the VM
        ``error`` (first in ``steps`` order); else one whose helper was unreachable
        leaves it ``deleting`` (reconciliation finishes it); either error is raised
        once every step has ended."""
        results = await asyncio.gather(
            *(_timed(f"api.{name}", call) for name, call in steps), return_exceptions=True
        )
        unavailable: Unavailable | None = None
        for (name, _), res in zip(steps, results, strict=True):
            if isinstance(res, Unavailable):
                log.warning(
                    "delete (%s): %s; still deleting", name, res.message, extra=_extra(rec.id)
                )
                unavailable = unavailable or res
            elif isinstance(res, BaseException):
                if not isinstance(res, Exception):
                    raise res  # cancelled: fcd-api is stopping; the VM stays deleting
                err = self._fail(rec, f"delete ({name})", res)
                if err is res:
                    raise res
                raise err from res
        if unavailable is not None:
            raise unavailable

    # --- network ---------------------------------------------------------------
    async def change_ports(self, vm_id: str, add: bool, ports: list[PortMapping]) -> VmRecord:
        """Add or remove port mappings (all or nothing) on a VM in any state but
        ``creating``; the registry keeps the mappings fcd-net reports in force."""
        async with self.locks.hold(check_vm_id(vm_id)):
            rec = self.registry.require(vm_id)
            if rec.state is VMState.CREATING or rec.runtime.net is None:
                raise FailedPrecondition(
                    f"VM {vm_id} has no network yet (state {rec.state.value})",
                    details={"state": rec.state.value},
                )
            req: pnet.NetPortsAdd | pnet.NetPortsRemove
            if add:
                req = pnet.NetPortsAdd(vm_id=vm_id, ports=ports)
            else:
                req = pnet.NetPortsRemove(vm_id=vm_id, ports=ports)
            net = await self.helpers.net.call(req)
            rec = self.write(rec, runtime=msgspec.structs.replace(rec.runtime, net=net))
            ports_now = [(p.protocol, p.host_port) for p in net.ports]
            log.info("ports: %s", ports_now, extra=_extra(vm_id))
            return rec

    async def counters(self, vm_id: str) -> pnet.Counters:
        self.registry.require(check_vm_id(vm_id))
        return await self.helpers.net.call(pnet.NetCounters(vm_id=vm_id))

    async def reconcile_network(self) -> pnet.ReconcileReport:
        """fcd-net tears down what belongs to no VM of the registry (any state)."""
        live = [r.id for r in self.registry.list_vms()]
        report = await self.helpers.net.call(pnet.NetReconcile(live=live))
        if report.removed:
            log.warning("network reconcile removed: %s", ", ".join(report.removed))
        return report
