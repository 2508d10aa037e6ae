"""fcd-vmm's state and RPC handlers: one record and at most one live process per VM.

Each handler is marked with the request it answers (``@handles``); the reply
types are the ones the requests in :mod:`fcd_common.proto.vmm` name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from pathlib import Path

import msgspec

from fcd_common import logs, spans
from fcd_common.config import Config
from fcd_common.errors import (
    Conflict,
    FailedPrecondition,
    FcdError,
    Internal,
    InvalidArgument,
    Unavailable,
)
from fcd_common.ids import check_vm_id
from fcd_common.locks import KeyedLocks
from fcd_common.proto.common import ProbeResult
from fcd_common.proto.console import ConsoleLines, ConsoleRead
from fcd_common.proto.usage import Usage, UsageAll, VmUsage, VmUsageList
from fcd_common.proto.vmm import (
    AllocateJail,
    Info,
    JailInfo,
    Launch,
    ListVms,
    Pause,
    Probe,
    ProcState,
    ReleaseJail,
    Resume,
    SnapshotCreate,
    SnapshotTaken,
    Status,
    Stop,
    StopResult,
    VmExits,
    VmmInfo,
    VmProcess,
    VmProcessList,
    WatchExits,
)
from fcd_common.rpc import Peer, handles

from . import cgroups, console, fclog, hostcheck, jailfs, launcher
from .checks import (
    StorageFile,
    check_launch,
    check_snapshot_files,
    check_snapshot_stage,
    open_storage_file,
)
from .exits import ExitLog
from .fcclient import FirecrackerClient
from .jailfs import read_pid_file
from .plan import (
    CTRL_ALT_DEL,
    FC_STATES,
    CgroupVersion,
    acl_paths,
    jail_paths,
    parse_version,
    snapshot_create_body,
    vm_state_body,
)
from .procs import PidWatch, proc_uid, reap_orphans, same_root
from .resources import ResourceHandlers, check_launch_resources
from .uidpool import JailRecord, UidPool
from .usage_rpc import Live, UsageReader

log = logging.getLogger("fcd.vmm")

STATUS_TIMEOUT_S = 2.0
TAIL_LINES = 20
"""Firecracker log lines an exit carries to fcd-api."""
API_TIMEOUT_S = 10.0
SNAPSHOT_TIMEOUT_S = 600.0
"""A Full snapshot writes all guest memory (~390 ms for 128 MiB, FIRECRACKER.md §9)."""


class VmmService(ResourceHandlers):
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pool = UidPool(
            cfg.state("vmm"), cfg.jail.uid_min, cfg.jail.uid_max, cfg.limits.max_vms
        )
        self.watches: dict[str, PidWatch] = {}
        self.exits = ExitLog()
        self._locks = KeyedLocks()
        self._cgroup: tuple[CgroupVersion, frozenset[str]] | None = None
        self._info: VmmInfo | None = None
        self._info_lock = asyncio.Lock()
        self.warnings: list[str] = []
        self.usage = UsageReader(cfg)

    # --- start-up ----------------------------------------------------------------------
    def start(self) -> None:
        """Reload records; re-adopt every Firecracker still running in its jail.

        A process is ours if its root directory is the VM's chroot and it runs
        as the VM's uid. Besides the recorded pid, the jailer's pid file is
        tried, which finds a VM whose launch was cut short by a daemon crash.
        """
        Path(self.cfg.paths.chroot_base).mkdir(mode=0o711, parents=True, exist_ok=True)
        # reported, not fatal: the daemon still becomes ready so the STATUS line says why
        # launches will fail (and what it has keeps running and can be stopped)
        for problem in hostcheck.problems(self.cfg):
            log.error("cannot launch VMs: %s", problem)
        self.warnings = hostcheck.subid_warnings(self.cfg)
        for w in self.warnings:
            log.warning(
                "jail uid range %d-%d overlaps a subordinate id range, whose owner can run"
                " processes as a VM's jail uid (reserve the range): %s",
                self.cfg.jail.uid_min,
                self.cfg.jail.uid_max,
                w,
            )
        for rec in self.pool.load():
            if rec.acl_files:  # a crash cut a launch short: no launch is in flight now
                for problem in self._revoke_acls_sync(rec):
                    log.warning("%s", problem, extra=logs.vm(rec.vm_id))
            paths = jail_paths(self.cfg, rec.vm_id)
            candidates = [p for p in (rec.pid, read_pid_file(paths)) if p is not None]
            adopted = False
            for pid in dict.fromkeys(candidates):
                if not (same_root(pid, paths.root) and proc_uid(pid) == rec.uid):
                    continue
                try:
                    watch = PidWatch(pid)
                except ProcessLookupError:
                    continue
                self._watch(rec, watch)
                fclog.forwarders.start(rec.vm_id, paths.log_file)
                console.registry().start(rec.vm_id, console.fifo_path(paths))
                log.info("re-adopted firecracker pid %d", pid, extra=logs.vm(rec.vm_id))
                if (rec.pid, rec.state) != (pid, "running"):
                    rec.pid, rec.state, rec.exit_code = pid, "running", None
                    self.pool.save(rec)
                adopted = True
                break
            if not adopted and rec.pid is not None:
                log.info("firecracker pid %d is gone", rec.pid, extra=logs.vm(rec.vm_id))
                self.exits.record(rec.vm_id, rec.pid, None, [])
                self._mark_exited(rec, None)
        try:
            self._cgroup = self._detect_cgroups()
            log.info(
                "cgroup v%d, controllers: %s", self._cgroup[0], " ".join(sorted(self._cgroup[1]))
            )
        except FcdError as e:
            log.error("%s", e)
        reap_orphans()

    def _detect_cgroups(self) -> tuple[CgroupVersion, frozenset[str]]:
        version = cgroups.detect_version(self.cfg.jail.cgroup_version)
        return version, cgroups.available_controllers(version, cgroups.read_mounts())

    async def close(self) -> None:
        """Running VMs outlive the daemon: only stop watching them."""
        for w in self.watches.values():
            w.close()
        self.watches.clear()
        fclog.forwarders.close()
        console.registry().close()

    def status_line(self) -> str:
        """``N VMs running``, preceded by ``degraded: <problems>`` while the host
        lacks something a launch needs (re-checked each time: a fix shows at once)."""
        running = sum(1 for w in self.watches.values() if w.alive)
        problems = hostcheck.problems(self.cfg)
        degraded = f"degraded: {'; '.join(problems)}; " if problems else ""
        warning = ""
        if self.warnings:
            shown = "; ".join(self.warnings[:3]) + ("; ..." if len(self.warnings) > 3 else "")
            warning = f"warning: jail uids overlap subids ({shown}); "
        return f"{degraded}{warning}{running} VMs running"

    # --- bookkeeping -------------------------------------------------------------------
    def _watch(self, rec: JailRecord, watch: PidWatch) -> None:
        self.watches[rec.vm_id] = watch

        def exited(_f: asyncio.Future[None]) -> None:
            ours = self.watches.get(rec.vm_id) is watch  # else fcd-vmm ended it itself
            tail: list[str] = []
            if ours:
                log_file = jail_paths(self.cfg, rec.vm_id).log_file
                tail = fclog.forwarders.tail(log_file).splitlines()[-TAIL_LINES:]
                fclog.forwarders.stop(rec.vm_id)
                console.registry().stop(rec.vm_id)
            if ours and self.pool.get(rec.vm_id) is rec:
                log.info(
                    "firecracker pid %d exited (code %s)",
                    watch.pid,
                    watch.exit_code,
                    extra=logs.vm(rec.vm_id),
                )
                self.exits.record(rec.vm_id, watch.pid, watch.exit_code, tail)
                with contextlib.suppress(OSError):
                    self._mark_exited(rec, watch.exit_code)
            reap_orphans()

        watch.exited.add_done_callback(exited)

    def _mark_exited(self, rec: JailRecord, code: int | None) -> None:
        rec.pid = None
        rec.state = "exited"
        rec.exit_code = code
        self.pool.save(rec)

    def _require(self, vm_id: str) -> JailRecord:
        rec = self.pool.get(check_vm_id(vm_id))
        if rec is None:
            raise FailedPrecondition(f"VM {vm_id} has no jail (AllocateJail first)")
        return rec

    def _cgroup_version(self) -> CgroupVersion:
        if self._cgroup is None:
            self._cgroup = self._detect_cgroups()
        return self._cgroup[0]

    def _api_socket(self, vm_id: str) -> str:
        return str(jail_paths(self.cfg, vm_id).api_socket)

    def _live(self, vm_id: str) -> PidWatch | None:
        w = self.watches.get(vm_id)
        return w if w is not None and w.alive else None

    async def _process(self, vm_id: str) -> VmProcess:
        rec = self.pool.get(vm_id)
        if rec is None:
            return VmProcess(vm_id=vm_id, state="absent")
        paths = jail_paths(self.cfg, vm_id)
        watch = self._live(vm_id)
        state: ProcState
        if watch is not None:
            state = "running"
            if paths.api_socket.exists() or paths.api_socket.is_symlink():
                try:
                    fc_ = FirecrackerClient.in_jail(paths, rec.uid, timeout=STATUS_TIMEOUT_S)
                    async with fc_ as fc:
                        info = await fc.get("/")
                    state = FC_STATES.get(str(info.get("state")), "running")
                except FcdError as e:
                    log.warning("GET / failed: %s", e, extra=logs.vm(vm_id))
        else:
            state = "exited" if rec.state != "allocated" else "not_started"
        return self._describe(rec, watch, state)

    def _describe(self, rec: JailRecord, watch: PidWatch | None, state: ProcState) -> VmProcess:
        paths = jail_paths(self.cfg, rec.vm_id)
        return VmProcess(
            vm_id=rec.vm_id,
            state=state,
            pid=watch.pid if watch else None,
            uid=rec.uid,
            gid=rec.gid,
            chroot_dir=str(paths.root),
            api_socket=str(paths.api_socket) if watch else None,
            exit_code=None if watch else rec.exit_code,
        )

    # --- handlers ----------------------------------------------------------------------
    @handles(AllocateJail)
    async def allocate_jail(self, req: AllocateJail, _peer: Peer) -> JailInfo:
        async with self._locks.hold(req.vm_id):
            rec = self.pool.allocate(req.vm_id)
        return JailInfo(
            vm_id=rec.vm_id,
            uid=rec.uid,
            gid=rec.gid,
            chroot_dir=str(jail_paths(self.cfg, rec.vm_id).root),
        )

    @handles(Launch)
    async def launch(self, req: Launch, _peer: Peer) -> VmProcess:
        timings = spans.Spans()
        token = spans.current.set(timings)
        try:
            proc = await self._launch(req)
        finally:
            spans.current.reset(token)
        timings.log(log, "launch", logs.vm(req.vm_id))
        return msgspec.structs.replace(proc, timings=timings.as_ms())

    async def _launch(self, req: Launch) -> VmProcess:
        with spans.span("check"):
            spec = check_launch(req, self.cfg)
            check_launch_resources(req, self.cfg)
        async with self._locks.hold(spec.vm_id):
            rec = self._require(spec.vm_id)
            live = self._live(spec.vm_id)
            if live is not None:
                raise Conflict(f"VM {spec.vm_id} is already running (pid {live.pid})")
            if self._cgroup is None:
                self._cgroup = self._detect_cgroups()
            old = self.watches.pop(spec.vm_id, None)
            if old is not None:
                old.close()
            version, controllers = self._cgroup
            restore = spec.req.restore
            launch_kw: dict[str, str] = {}
            if restore is not None:
                # a boot does not depend on the version; a load's fields do (plan.py)
                launch_kw["firecracker_version"] = (await self._vmm_info()).firecracker_version
            # recorded before the ACL entries exist: release finds them after a crash
            new = [p for p in acl_paths(spec) if p not in rec.acl_files]
            if new:
                rec.acl_files = [*rec.acl_files, *new]
                self.pool.save(rec)
            launched = False
            try:
                watch = await launcher.launch(
                    self.cfg,
                    spec,
                    uid=rec.uid,
                    gid=rec.gid,
                    cgroup_version=version,
                    controllers=controllers,
                    **launch_kw,
                )
                launched = True
            finally:
                # by the end of a launch Firecracker holds every granted file open (a
                # restore's memory mapped), and a failed launch needs none: the entries go
                # now, so a shared file's ACL lists only the launches in flight
                if rec.acl_files:  # on success recorded with the pid below (a crash
                    # before that: start() revokes again, which is idempotent)
                    left = await asyncio.shield(self._revoke_acls(rec, save=not launched))
                    for problem in left:  # retried at release (still in rec.acl_files)
                        log.warning("%s", problem, extra=logs.vm(spec.vm_id))
            rec.pid, rec.state, rec.exit_code = watch.pid, "running", None
            self.record_launch(rec, spec.req)
            self._watch(rec, watch)
            try:
                with spans.span("record"):
                    self.pool.save(rec)
            except OSError as e:
                await launcher.teardown(self.cfg, spec.vm_id, watch)
                self._mark_exited(rec, None)
                raise Internal(f"cannot record VM state: {e}") from e
            with spans.span("state"):
                # the launch's last call succeeded (InstanceStart, or a load with or
                # without resume_vm): the state is known without asking Firecracker
                if self._live(spec.vm_id) is watch:
                    known: ProcState = "running" if restore is None or spec.req.resume else "paused"
                    return self._describe(rec, watch, known)
                return await self._process(spec.vm_id)  # it exited meanwhile

    async def _set_paused(self, vm_id: str, paused: bool) -> VmProcess:
        async with self._locks.hold(vm_id):
            rec = self._require(vm_id)
            if self._live(vm_id) is None:
                raise FailedPrecondition(f"VM {vm_id} is not running")
            paths = jail_paths(self.cfg, vm_id)
            async with FirecrackerClient.in_jail(paths, rec.uid, timeout=API_TIMEOUT_S) as fc:
                await fc.patch("/vm", vm_state_body(paused))
            log.info("%s", "paused" if paused else "resumed", extra=logs.vm(vm_id))
            return await self._process(vm_id)

    @handles(Pause)
    async def pause(self, req: Pause, _peer: Peer) -> VmProcess:
        return await self._set_paused(req.vm_id, True)

    @handles(Resume)
    async def resume(self, req: Resume, _peer: Peer) -> VmProcess:
        return await self._set_paused(req.vm_id, False)

    @handles(Stop)
    async def stop(self, req: Stop, _peer: Peer) -> StopResult:
        timeout = req.timeout_s or self.cfg.limits.stop_timeout_s
        async with self._locks.hold(req.vm_id):
            rec = self._require(req.vm_id)
            vm = logs.vm(req.vm_id)
            watch = self._live(req.vm_id)
            graceful = not req.force
            if watch is not None and req.force:
                # a suspend: the guest must not run (or write its disk) after its memory
                # was saved, so no resume and no Ctrl-Alt-Del; teardown kills and reaps
                log.info("forced stop: SIGKILL", extra=vm)
            elif watch is not None:
                graceful = await self._shutdown(req.vm_id, rec.uid, watch, timeout)
                if not graceful:
                    log.info("no shutdown within %.1fs: SIGKILL", timeout, extra=vm)
            old = self.watches.pop(req.vm_id, None)
            problems = await launcher.teardown(self.cfg, req.vm_id, old)
            if problems:
                raise Internal(f"VM {req.vm_id} stopped, cleanup incomplete: {'; '.join(problems)}")
            code = old.exit_code if old is not None else rec.exit_code
            if rec.state != "allocated" or old is not None:
                self._mark_exited(rec, code)
            log.info("stopped (%s)", "graceful" if graceful else "killed", extra=vm)
            return StopResult(vm_id=req.vm_id, graceful=graceful)

    async def _shutdown(self, vm_id: str, uid: int, watch: PidWatch, timeout: float) -> bool:
        """Ctrl-Alt-Del (resuming a paused guest first); True if it exited in time."""
        paths = jail_paths(self.cfg, vm_id)
        try:
            async with FirecrackerClient.in_jail(paths, uid, timeout=API_TIMEOUT_S) as fc:
                info = await fc.get("/")
                if info.get("state") == "Paused":
                    await fc.patch("/vm", vm_state_body(False))
                elif info.get("state") != "Running":
                    return False
                await fc.call(CTRL_ALT_DEL)
        except FcdError as e:
            if not watch.alive:
                return True
            log.info("Ctrl-Alt-Del not delivered: %s", e, extra=logs.vm(vm_id))
            return False
        return await watch.wait(timeout)

    @handles(ReleaseJail)
    async def release_jail(self, req: ReleaseJail, _peer: Peer) -> VmProcess:
        timings = spans.Spans()
        token = spans.current.set(timings)
        try:
            proc = await self._release_jail(req)
        finally:
            spans.current.reset(token)
        timings.log(log, "release", logs.vm(req.vm_id))
        return msgspec.structs.replace(proc, timings=timings.as_ms())

    async def _release_jail(self, req: ReleaseJail) -> VmProcess:
        vm_id = check_vm_id(req.vm_id)
        async with self._locks.hold(vm_id):
            old = self.watches.pop(vm_id, None)
            problems = await launcher.teardown(self.cfg, vm_id, old)
            rec = self.pool.get(vm_id)
            if rec is not None and rec.acl_files:
                # before the uid is free: its next holder must not read this snapshot
                problems += await self._revoke_acls(rec)
            if problems:
                raise Internal(f"cannot release VM {vm_id}: {'; '.join(problems)}")
            self.pool.release(vm_id)
            console.registry().forget(vm_id)
        return VmProcess(vm_id=vm_id, state="absent")

    async def _revoke_acls(self, rec: JailRecord, *, save: bool = True) -> list[str]:
        """Take the VM's uid out of the ACL of every store file it was given
        (``save=False``: the caller records ``rec`` next)."""
        kept, problems = await asyncio.to_thread(self._revoke_acl_files, rec)
        if not save:
            rec.acl_files = kept
            return problems
        return problems + self._save_acl_files(rec, kept)

    def _revoke_acls_sync(self, rec: JailRecord) -> list[str]:
        kept, problems = self._revoke_acl_files(rec)
        return problems + self._save_acl_files(rec, kept)

    def _revoke_acl_files(self, rec: JailRecord) -> tuple[list[str], list[str]]:
        """Blocking (one thread hop for all files): (the paths still granted, problems)."""
        storage = str(self.cfg.state("storage"))
        kept: list[str] = []
        problems: list[str] = []
        for path in rec.acl_files:
            try:
                f = open_storage_file(path, storage, "acl")
            except InvalidArgument as e:  # deleted (or no longer a plain file): nothing to read
                log.warning("ACL of %s: %s", path, e.message, extra=logs.vm(rec.vm_id))
                continue
            try:
                if jailfs.revoke(f.proc_path, rec.uid):
                    log.debug(
                        "uid %d removed from the ACL of %s", rec.uid, path, extra=logs.vm(rec.vm_id)
                    )
            except OSError as e:
                kept.append(path)
                problems.append(f"ACL of {path}: {e.strerror or e}")
            finally:
                f.close()
        return kept, problems

    def _save_acl_files(self, rec: JailRecord, kept: list[str]) -> list[str]:
        rec.acl_files = kept
        if self.pool.get(rec.vm_id) is rec:
            try:
                self.pool.save(rec)
            except OSError as e:
                return [f"cannot record VM state: {e}"]
        return []

    # --- snapshots -----------------------------------------------------------------------
    async def _vmm_info(self) -> VmmInfo:
        """``--version`` and ``--snapshot-version`` of the configured binary, asked once:
        it cannot change under a running daemon."""
        async with self._info_lock:
            if self._info is None:
                fc = self.cfg.jail.firecracker
                try:
                    version = parse_version(await launcher.binary_output([fc, "--version"]))
                    snap = parse_version(await launcher.binary_output([fc, "--snapshot-version"]))
                except ValueError as e:
                    raise Unavailable(f"{fc}: {e}") from None
                self._info = VmmInfo(firecracker_version=version, snapshot_version=snap)
                log.info("firecracker %s, snapshot format %s", version, snap)
            return self._info

    @handles(Info)
    async def info(self, _req: Info, _peer: Peer) -> VmmInfo:
        return await self._vmm_info()

    @handles(SnapshotCreate)
    async def snapshot_create(self, req: SnapshotCreate, _peer: Peer) -> SnapshotTaken:
        vm_id = check_vm_id(req.vm_id)
        files = check_snapshot_files(req.files, self.cfg, "files", vm_id=vm_id, stage="pending")
        info = await self._vmm_info()
        async with self._locks.hold(vm_id):
            rec = self._require(vm_id)
            if self._live(vm_id) is None:
                raise FailedPrecondition(f"VM {vm_id} is not running")
            paths = jail_paths(self.cfg, vm_id)
            async with FirecrackerClient.in_jail(paths, rec.uid, timeout=SNAPSHOT_TIMEOUT_S) as fc:
                state = (await fc.get("/") or {}).get("state")
                if state != "Paused":
                    raise FailedPrecondition(
                        f"VM {vm_id} is {state or 'in an unknown state'}, not Paused: "
                        "pause it before taking a snapshot",
                        details={"state": FC_STATES.get(str(state), state)},
                    )
                storage = str(self.cfg.state("storage"))
                opened: list[StorageFile] = []
                try:
                    opened.append(open_storage_file(files.state_path, storage, "files.state_path"))
                    opened.append(
                        open_storage_file(files.memory_path, storage, "files.memory_path")
                    )
                    check_snapshot_stage(files, self.cfg, "pending", "files")
                    for f, field in zip(opened, ("state_path", "memory_path"), strict=True):
                        if f.st.st_nlink != 1:  # another name would be written through too
                            raise InvalidArgument(
                                f"files.{field}: {f.path} has {f.st.st_nlink} links",
                                details={"field": f"files.{field}"},
                            )
                    return await self._take_snapshot(
                        req, uid=rec.uid, gid=rec.gid, files=opened, fc=fc, info=info
                    )
                finally:
                    for f in opened:
                        f.close()

    async def _take_snapshot(
        self,
        req: SnapshotCreate,
        *,
        uid: int,
        gid: int,
        files: list[StorageFile],
        fc: FirecrackerClient,
        info: VmmInfo,
    ) -> SnapshotTaken:
        vm = logs.vm(req.vm_id)
        paths = jail_paths(self.cfg, req.vm_id)
        state, memory = files
        lent = await asyncio.to_thread(
            functools.partial(jailfs.lend_snapshot_files, paths, state, memory, uid, gid)
        )
        t0 = time.monotonic()
        try:
            await fc.put("/snapshot/create", snapshot_create_body(req.type))
            took_ms = (time.monotonic() - t0) * 1000
        finally:
            problems = await asyncio.shield(asyncio.to_thread(jailfs.return_snapshot_files, lent))
            if problems:
                log.error("snapshot files not handed back: %s", "; ".join(problems), extra=vm)
        if problems:
            raise Internal(f"snapshot taken, files not handed back: {'; '.join(problems)}")
        sizes = [os.stat(f.proc_path).st_size for f in files]
        log.info(
            "%s %s %s taken in %.1f ms (%d bytes of memory)",
            req.type,
            req.files.kind,
            req.files.name,
            took_ms,
            sizes[1],
            extra=vm,
        )
        return SnapshotTaken(
            vm_id=req.vm_id,
            type=req.type,
            state_size=sizes[0],
            memory_size=sizes[1],
            firecracker_version=info.firecracker_version,
            snapshot_version=info.snapshot_version,
            took_ms=round(took_ms, 3),
        )

    @handles(Status)
    async def status(self, req: Status, _peer: Peer) -> VmProcess:
        return await self._process(check_vm_id(req.vm_id))

    @handles(Probe)
    async def probe(self, req: Probe, _peer: Peer) -> ProbeResult:
        """Health probe ``api``: Firecracker answers ``GET /`` within the timeout."""
        vm_id = check_vm_id(req.vm_id)
        self._require(vm_id)
        if self._live(vm_id) is None:
            return ProbeResult(ok=False, detail="Firecracker is not running")
        t0 = time.monotonic()
        try:
            sock = jail_paths(self.cfg, vm_id).api_socket
            async with FirecrackerClient(sock, timeout=req.timeout_s) as fc:
                info = await asyncio.wait_for(fc.get("/"), req.timeout_s)
            ok, detail = True, f"state {info.get('state')}"
        except TimeoutError:
            ok, detail = False, f"GET / not answered within {req.timeout_s:g}s"
        except FcdError as e:
            ok, detail = False, f"GET /: {e.message}"
        took = round((time.monotonic() - t0) * 1000, 3)
        return ProbeResult(ok=ok, detail=detail, took_ms=took)

    @handles(WatchExits)
    async def watch_exits(self, req: WatchExits, _peer: Peer) -> VmExits:
        """Firecracker exits fcd-vmm did not cause (long poll; see :mod:`fcd_vmm.exits`)."""
        return await self.exits.wait(req.since, req.epoch, req.wait_s)

    @handles(ListVms)
    async def list_vms(self, _req: ListVms, _peer: Peer) -> VmProcessList:
        items = await asyncio.gather(*(self._process(r.vm_id) for r in self.pool))
        return VmProcessList(items=sorted(items, key=lambda p: p.vm_id))

    @handles(ConsoleRead)
    async def console(self, req: ConsoleRead, _peer: Peer) -> ConsoleLines:
        """The VM's guest console lines (long poll; see :mod:`fcd_vmm.console`)."""
        return await console.registry().read(
            check_vm_id(req.vm_id), req.after, req.epoch, req.wait_s, req.max_lines
        )

    @handles(Usage)
    async def vm_usage(self, req: Usage, _peer: Peer) -> VmUsage:
        rec = self._require(req.vm_id)
        live = [Live(rec, self._live(rec.vm_id))]
        return (await self.usage.sample(live, self._cgroup, flush=req.flush))[0]

    @handles(UsageAll)
    async def vm_usage_all(self, req: UsageAll, _peer: Peer) -> VmUsageList:
        live = [Live(r, w) for r in self.pool if (w := self._live(r.vm_id)) is not None]
        self.usage.tail.retain({v.rec.vm_id for v in live})
        return VmUsageList(items=await self.usage.sample(live, self._cgroup, flush=req.flush))
