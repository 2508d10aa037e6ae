"""Launch one VM: prepared jail -> jailer -> Firecracker -> configured and booted.

Sequence (each step bounded; any failure kills what started and removes the
jail and its cgroups before the error is raised):

1. open the kernel and disk without following symlinks (re-checked inside
   fcd-storage's directory) and prepare a fresh chroot with them;
2. spawn the jailer (``--new-pid-ns``, in a session of its own, stdout = the
   console FIFO: console.py): its exit status and stderr are the verdict on its
   own work;
3. await the pid file and the API socket with inotify — not a sleep loop —
   aborting at once if the Firecracker process dies (its pidfd turns readable);
4. prove the process is the jailed one (its root is the chroot, its uid the
   jail uid), then configure it over the API and ``InstanceStart``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import tempfile

from fcd_common import logs, spans
from fcd_common.config import Config
from fcd_common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FcdError,
    FirecrackerError,
    Internal,
    Unavailable,
)

from . import cgroup_limits, cgroups, console, cpuacct, fclog, hostcheck, jailfs, spawn
from .checks import StorageFile, check_snapshot_stage, open_storage_file
from .fcclient import FirecrackerClient
from .pathwait import Aborted, wait_for_path
from .plan import (
    ApiCall,
    CgroupVersion,
    FcLogLevel,
    JailPaths,
    LaunchSpec,
    cgroup_settings,
    configure_calls,
    jail_paths,
    jailer_argv,
)
from .procs import PidWatch, proc_uid, reap_orphans, same_root

log = logging.getLogger("fcd.vmm.launcher")

KILL_WAIT_S = 10.0
VERSION_TIMEOUT_S = 10.0


async def binary_output(argv: list[str]) -> str:
    """stdout of a short print-and-exit run (``firecracker --version``)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={},
            cwd="/",
            close_fds=True,
        )
    except OSError as e:
        raise Unavailable(f"cannot run {argv[0]}: {e.strerror}") from None
    try:
        async with asyncio.timeout(VERSION_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise DeadlineExceeded(f"{' '.join(argv)} did not answer in {VERSION_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip()[:500]
        raise Unavailable(f"{' '.join(argv)} exited with status {proc.returncode}: {text}")
    return out.decode(errors="replace")


async def _run_jailer(argv: list[str], vm_id: str, stdout: int | None = None) -> None:
    # stderr goes to a file, not a pipe: the forked Firecracker inherits it
    # and would otherwise hold the pipe open for the VM's whole life.
    # the command line (600+ characters) is a debug record: on every create it cost
    # more CPU than the spawn itself; a failed start logs it as an error instead
    log.debug("starting jailer: %s", " ".join(argv), extra=logs.vm(vm_id))
    with tempfile.TemporaryFile() as err:
        try:  # vfork, not uvloop's fork of the whole daemon (spawn.py)
            rc = await spawn.run(argv, stderr=err, stdout=stdout, new_session=True)
        except OSError as e:  # vanished since the check in launch(): still the host's fault
            log.error("cannot run %s: %s", " ".join(argv), e.strerror, extra=logs.vm(vm_id))
            raise FailedPrecondition(f"cannot run jailer {argv[0]}: {e.strerror}") from None
        err.seek(0)
        text = err.read(16384).decode(errors="replace").strip()
    if rc != 0:
        log.error("jailer exited with status %d: %s", rc, " ".join(argv), extra=logs.vm(vm_id))
        raise FirecrackerError(
            f"jailer exited with status {rc}: {text or '(no output)'}",
            details={"exit_code": rc, "stderr": text},
        )
    if text:
        log.info("jailer: %s", text, extra=logs.vm(vm_id))


async def teardown(cfg: Config, vm_id: str, watch: PidWatch | None) -> list[str]:
    """Kill (if alive) and reap the VM's process, remove its jail dir and cgroups."""
    problems: list[str] = []
    fclog.forwarders.stop(vm_id)
    console.registry().stop(vm_id)
    if watch is not None:
        if watch.alive:
            with spans.span("kill"):
                watch.kill(signal.SIGKILL)
                if not await watch.wait(KILL_WAIT_S):
                    problems.append(f"pid {watch.pid} survived SIGKILL")
        watch.close()
    reap_orphans()
    paths = jail_paths(cfg, vm_id)
    try:
        with spans.span("jail_dir"):
            await asyncio.to_thread(jailfs.remove_jail_dir, paths)
    except OSError as e:
        problems.append(f"{paths.jail_dir}: {e}")
        log.error("cannot remove %s: %s", paths.jail_dir, e, extra=logs.vm(vm_id))
    with spans.span("cgroups"):
        problems += await cgroups.remove_vm_cgroups(cfg.jail.parent_cgroup, vm_id)
    return problems


async def _await_process(paths: JailPaths, uid: int) -> PidWatch:
    await wait_for_path(
        paths.pid_file, within=paths.root, ready=lambda _p: jailfs.read_pid_file(paths) is not None
    )
    pid = jailfs.read_pid_file(paths)
    assert pid is not None
    try:
        watch = PidWatch(pid)
    except ProcessLookupError:
        raise FirecrackerError(
            f"Firecracker (pid {pid}) exited right after the jailer started it",
            details={"log_tail": jailfs.log_tail(paths)},
        ) from None
    try:
        await wait_for_path(paths.api_socket, within=paths.root, abort=watch.exited)
    except Aborted:
        watch.close()
        code = f" with status {watch.exit_code}" if watch.exit_code is not None else ""
        raise FirecrackerError(
            f"Firecracker (pid {pid}) exited{code} before opening its API socket",
            details={"exit_code": watch.exit_code, "log_tail": jailfs.log_tail(paths)},
        ) from None
    except BaseException:
        watch.kill()
        watch.close()
        raise
    if not same_root(pid, paths.root) or proc_uid(pid) != uid:
        watch.kill()
        watch.close()
        raise Internal(f"pid {pid} from {paths.pid_file} is not the jailed Firecracker (uid {uid})")
    return watch


async def _prepare(
    cfg: Config, spec: LaunchSpec, paths: JailPaths, kernel: StorageFile, *, uid: int, gid: int
) -> None:
    """Open (pinned, re-checked) every file the VM gets and build its chroot with them."""
    storage = str(cfg.state("storage"))
    rootfs = open_storage_file(spec.req.disk.rootfs_path, storage, "rootfs_path")
    drives: list[tuple[str, StorageFile, bool]] = []
    snapshot: list[StorageFile] = []
    try:
        for i, d in enumerate(spec.drives):
            f = open_storage_file(d.path, storage, f"drives[{i}].path")
            drives.append((d.name, f, d.read_only))
        restore = spec.req.restore
        if restore is not None:
            snapshot.append(open_storage_file(restore.state_path, storage, "restore.state_path"))
            snapshot.append(open_storage_file(restore.memory_path, storage, "restore.memory_path"))
            check_snapshot_stage(restore, cfg, "ready", "restore")
        await asyncio.to_thread(
            functools.partial(
                jailfs.prepare_jail,
                paths,
                uid,
                gid,
                kernel,
                rootfs,
                drives=drives,
                snapshot=(snapshot[0], snapshot[1]) if snapshot else None,
            )
        )
    finally:
        rootfs.close()
        for _, f, _ in drives:
            f.close()
        for f in snapshot:
            f.close()


async def _configure(
    paths: JailPaths, spec: LaunchSpec, firecracker_version: str, uid: int, log_level: FcLogLevel
) -> None:
    async with FirecrackerClient.in_jail(paths, uid) as fc:
        with spans.span("fc.get.ready"):
            await fc.wait_ready()
        for call in configure_calls(spec, firecracker_version, log_level):
            try:
                with spans.span(_span_name(call)):
                    await fc.call(call)
            except FirecrackerError as e:
                tail = jailfs.log_tail(paths)
                if tail:
                    e.details = {**(e.details or {}), "log_tail": tail}
                if call.path == "/snapshot/load":
                    raise _load_failed(spec, e) from None
                raise


async def launch(
    cfg: Config,
    spec: LaunchSpec,
    *,
    uid: int,
    gid: int,
    cgroup_version: CgroupVersion,
    controllers: frozenset[str],
    firecracker_version: str = "1.7.0",
) -> PidWatch:
    """Start and boot (or restore) the VM; returns the watch on its Firecracker process.

    The shared kernel, read-only images and a restore's state and memory files get
    an ACL entry for ``uid`` here; taking it away again as soon as this returns or
    fails (Firecracker holds them open by then) is the caller's, which recorded them.
    """
    vm_id = spec.vm_id
    # before anything is made: a missing or hidden binary is the host's state, not a bug
    missing = hostcheck.binary_problems(cfg)
    if missing:
        raise FailedPrecondition(f"cannot launch: {'; '.join(missing)}", details={"host": missing})
    paths = jail_paths(cfg, vm_id)
    kernel = open_storage_file(spec.req.disk.kernel_path, str(cfg.state("storage")), "kernel_path")
    watch: PidWatch | None = None
    try:
        with spans.span("jail_prep"):
            await _prepare(cfg, spec, paths, kernel, uid=uid, gid=gid)
        kernel.close()
        fclog.forwarders.start(vm_id, paths.log_file)
        settings = cgroup_settings(
            cgroup_version,
            controllers,
            spec.req.vcpu_count,
            spec.req.mem_size_mib,
            cfg.limits.mem_overhead_mib,
            mem_limit_mib=spec.req.mem_limit_mib,
        ) + cgroup_limits.launch_values(cgroup_version, spec.req.cpu_quota, controllers)
        argv = jailer_argv(
            cfg,
            vm_id=vm_id,
            uid=uid,
            gid=gid,
            cgroup_version=cgroup_version,
            cgroups=settings,
            netns=spec.netns,
        )
        out_fd = _console(cfg, paths, vm_id)
        try:
            async with asyncio.timeout(cfg.limits.boot_timeout_s):
                try:
                    with spans.span("jailer"):
                        await _run_jailer(argv, vm_id, out_fd)
                finally:
                    if out_fd is not None:
                        os.close(out_fd)
                with spans.span("socket"):
                    watch = await _await_process(paths, uid)
        except TimeoutError:
            raise DeadlineExceeded(
                f"Firecracker did not open its API socket within {cfg.limits.boot_timeout_s}s",
                details={"log_tail": jailfs.log_tail(paths)},
            ) from None
        if cgroup_version == 1:
            problem = cpuacct.join_cpuacct(
                cgroups.read_mounts(), cfg.jail.parent_cgroup, vm_id, watch.pid
            )
            if problem:
                log.warning("%s", problem, extra=logs.vm(vm_id))
        log.debug("firecracker pid %d is up, configuring", watch.pid, extra=logs.vm(vm_id))
        await _configure(paths, spec, firecracker_version, uid, cfg.jail.firecracker_log_level)
        log.info(
            "%s: %d vCPU, %d MiB, pid %d, uid %d",
            "booted" if spec.req.restore is None else f"restored {spec.req.restore.name}",
            spec.req.vcpu_count,
            spec.req.mem_size_mib,
            watch.pid,
            uid,
            extra=logs.vm(vm_id),
        )
        reap_orphans()
        return watch
    except BaseException as e:
        kernel.close()
        log.error("launch failed: %s", e, extra=logs.vm(vm_id))
        await asyncio.shield(teardown(cfg, vm_id, watch))
        if isinstance(e, FcdError | asyncio.CancelledError):
            raise
        if isinstance(e, OSError):
            raise Internal(f"launch failed: {e}") from e
        raise


def _console(cfg: Config, paths: JailPaths, vm_id: str) -> int | None:
    """Make the VM's console FIFO, start reading it, and return Firecracker's stdout."""
    if not cfg.jail.new_pid_ns:  # --daemonize sends stdout to /dev/null
        log.warning("jail.new_pid_ns is off: no guest console capture", extra=logs.vm(vm_id))
        return None
    path = console.fifo_path(paths)
    console.make_fifo(path)
    console.registry().start(vm_id, path)
    return console.open_for_firecracker(path)


def _span_name(call: ApiCall) -> str:
    if call.path == "/actions" and call.body is not None:
        return str(call.body.get("action_type", "/actions"))
    return f"fc.{call.method.lower()}.{call.path.strip('/').replace('/', '.')}"


def _load_failed(spec: LaunchSpec, e: FirecrackerError) -> FirecrackerError:
    """A failed ``/snapshot/load`` ends the Firecracker process (FIRECRACKER.md §2)."""
    name = spec.req.restore.name if spec.req.restore is not None else "?"
    fault = (e.details or {}).get("fault_message", e.message)
    return FirecrackerError(
        f"cannot restore snapshot {name!r}: {fault} (Firecracker exits after a failed load)",
        details={**(e.details or {}), "snapshot": name},
    )
