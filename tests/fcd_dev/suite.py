"""Run the four daemons as separate processes: engine of `fcd up`, the e2e tests, the benches.

A :class:`Suite` writes a config under one base directory, optionally makes a
private network namespace for the whole suite (so a dev run or a test never
touches the host's network), starts fcd-net, fcd-storage, fcd-vmm and
fcd-api, and waits for each to report ``READY=1`` over the real sd_notify
protocol (a datagram socket per daemon given as ``NOTIFY_SOCKET``) — no
polling for socket files. ``stop()`` sends SIGTERM in reverse order and
escalates to SIGKILL after the grace period.

The namespace is entered with ``nsenter --net`` rather than ``ip netns exec``:
the latter remounts /sys, which hides the cgroup hierarchy the jailer needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from fcd_common import config as config_mod
from fcd_common.rpc.transport import bind_unix

Daemon = Literal["net", "storage", "vmm", "api"]
ORDER: tuple[Daemon, ...] = ("net", "storage", "vmm", "api")
FAKES = Path(__file__).resolve().parent.parent / "fakes"
"""The Firecracker/jailer test doubles: ``tests/fakes/`` beside this package in a checkout."""


class SuiteError(RuntimeError):
    pass


def netns_create(name: str) -> None:
    from pyroute2 import netns

    if name not in netns.listnetns():
        netns.create(name)


def netns_remove(name: str) -> None:
    from pyroute2 import netns

    if name in netns.listnetns():
        netns.remove(name)


def daemon_argv(
    daemon: Daemon, config_path: Path, netns: str | None = None, wrapper: Sequence[str] = ()
) -> list[str]:
    exe = Path(sys.executable).parent / f"fcd-{daemon}"
    argv = [*wrapper, str(exe), "--config", str(config_path)]
    if netns:
        argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
    return argv


def spawn(
    daemon: Daemon,
    config_path: Path,
    *,
    netns: str | None = None,
    out: IO[bytes] | int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
    run_as: tuple[int, int] | None = None,
    listen: socket.socket | None = None,
) -> subprocess.Popen[bytes]:
    """Start one daemon (in ``netns`` if given) and return once it has sent ``READY=1``.

    Readiness arrives over the real sd_notify protocol: a datagram socket of
    ours is the daemon's ``NOTIFY_SOCKET``. ``started`` sees the process as soon
    as it exists, so a caller can clean it up even if it never becomes ready.
    With ``run_as`` (uid, gid) the daemon runs as that user and gets ``listen`` as
    its activated socket (:mod:`fcd_dev.dropto`), as its unit would.
    """
    notify_dir = Path(tempfile.mkdtemp(prefix="fcd-notify-"))  # short: sun_path is 108 bytes
    notify_path = notify_dir / daemon
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(notify_path))
        wrapper: list[str] = []
        pass_fds: tuple[int, ...] = ()
        if run_as is not None:
            if listen is None:
                raise SuiteError(f"fcd-{daemon} as uid {run_as[0]} needs its socket bound first")
            os.chmod(notify_dir, 0o711)  # the daemon's user must reach and send to it
            os.chmod(notify_path, 0o666)
            uid, gid, fd = run_as[0], run_as[1], listen.fileno()
            wrapper = [sys.executable, "-m", "fcd_dev.dropto", "--uid", str(uid),
                       "--gid", str(gid), "--listen-fd", str(fd), "--"]  # fmt: skip
            pass_fds = (listen.fileno(),)
        full_env = {
            **os.environ,
            **(env or {}),
            "NOTIFY_SOCKET": str(notify_path),
            "FCD_CONFIG": str(config_path),
        }
        for var in ("JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"):
            full_env.pop(var, None)
        proc = subprocess.Popen(
            daemon_argv(daemon, config_path, netns, wrapper),
            env=full_env,
            pass_fds=pass_fds,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if started is not None:
            started(proc)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SuiteError(f"fcd-{daemon} not ready after {timeout:.0f}s")
            sock.settimeout(min(remaining, 0.25))
            try:
                msg = sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                if proc.poll() is not None:
                    raise SuiteError(
                        f"fcd-{daemon} exited with {proc.returncode} before READY"
                    ) from None
                continue
            if "READY=1" in msg.split("\n"):
                return proc
    finally:
        sock.close()
        shutil.rmtree(notify_dir, ignore_errors=True)


def terminate(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, up to ``grace`` seconds for a clean exit, then SIGKILL; the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class Suite:
    base: Path
    firecracker: str
    jailer: str
    netns: str | None = None
    subnet: str = "172.30.0.0/24"
    parent_cgroup: str = "fcd"
    log_to_files: bool = True
    metrics_interval_s: float = 10.0
    """fcd-api's background collection of per-VM usage (``api.metrics_interval_s``)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    storage_user: str | None = None
    """Run fcd-storage as this user (as its unit does) instead of the caller's; the
    base directory must be traversable by it. None: the caller's user (root)."""
    supervision: config_mod.SupervisionConfig | None = None
    """fcd-api's supervision settings (None: the defaults)."""
    limits: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``[limits]`` (e.g. a disk quota below the test machine's free space)."""
    jail: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``[jail]`` (e.g. ``firecracker_log_level``)."""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    # --- layout ------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.base / "fcd.toml"

    @property
    def cfg(self) -> config_mod.Config:
        return config_mod.decode(self.config_path.read_bytes(), source=str(self.config_path))

    @property
    def api_socket(self) -> Path:
        return self.cfg.socket("api")

    @property
    def api_ro_socket(self) -> Path:
        """The read-only API socket (GET routes and /metrics only)."""
        return self.cfg.socket("api-ro")

    @property
    def vm_netns_prefix(self) -> str:
        """VM namespaces (netns mode) live in the host-wide /run/netns: a prefix of this
        suite's own, so one suite's fcd-net never reconciles away another's."""
        if not self.netns:
            return "fcvm-"
        return "v" + hashlib.sha256(self.netns.encode()).hexdigest()[:5] + "-"

    @property
    def import_dir(self) -> Path:
        """The one directory template imports and builds may read from (storage.import_dirs)."""
        return self.base / "import"

    def log_path(self, daemon: str) -> Path:
        return self.base / "logs" / f"fcd-{daemon}.log"

    def write_config(self) -> config_mod.Config:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        try:
            generated = config_mod.Config(
                paths=config_mod.PathsConfig(
                    state_dir=str(self.base / "state"),
                    run_dir=str(self.base / "run"),
                    chroot_base=str(self.base / "jail"),
                ),
                network=config_mod.NetworkConfig(
                    subnet=self.subnet, netns_prefix=self.vm_netns_prefix
                ),
                jail=config_mod.JailConfig(
                    firecracker=self.firecracker,
                    jailer=self.jailer,
                    parent_cgroup=self.parent_cgroup,
                    **self.jail,
                ),
                limits=config_mod.LimitsConfig(**{"shutdown_grace_s": 5.0, **self.limits}),
                # fcd-api runs as this user here: the helpers must know it is fcd-api
                security=config_mod.SecurityConfig(api_user=pwd.getpwuid(os.getuid()).pw_name),
                storage=config_mod.StorageConfig(import_dirs=[str(self.import_dir)]),
                api=config_mod.ApiConfig(metrics_interval_s=self.metrics_interval_s),
                supervision=self.supervision or config_mod.SupervisionConfig(),
            )
        except ValueError as e:  # a __post_init__ check; the type constraints run in decode
            raise config_mod.ConfigError(f"{self.config_path}: {e}") from None
        self.config_path.write_text(config_mod.render(generated))
        cfg = self.cfg  # validates
        for d in (cfg.paths.state_dir, cfg.paths.run_dir, cfg.paths.chroot_base):
            Path(d).mkdir(parents=True, exist_ok=True)
        self.import_dir.mkdir(mode=0o755, exist_ok=True)
        return cfg

    # --- processes -----------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        if not self.config_path.exists():
            self.write_config()
        if self.netns:
            netns_create(self.netns)
        try:
            for daemon in ORDER:
                self._start_one(daemon, timeout)
        except BaseException:
            self.stop()
            raise

    def restart(self, daemon: Daemon, timeout: float = 30.0) -> None:
        """Start ``daemon`` again after it died (as systemd's ``Restart=`` would)."""
        old = self.procs.get(daemon)
        if old is not None and old.poll() is None:
            raise SuiteError(f"fcd-{daemon} is still running (pid {old.pid})")
        self._start_one(daemon, timeout)

    def _start_one(self, daemon: Daemon, timeout: float) -> None:
        out: IO[bytes] | int | None = None
        if self.log_to_files:
            self.log_path(daemon).parent.mkdir(parents=True, exist_ok=True)
            f = self.log_path(daemon).open("ab")
            self._logs.append(f)
            out = f
        run_as: tuple[int, int] | None = None
        listen: socket.socket | None = None
        if daemon == "storage" and self.storage_user is not None:
            run_as = self._storage_owner()
            listen = bind_unix(self.cfg.socket("storage"), mode=0o600)  # as fcd-storage.socket
        try:
            spawn(
                daemon,
                self.config_path,
                netns=self.netns,
                out=out,
                env=self.extra_env,
                timeout=timeout,
                started=lambda p: self.procs.__setitem__(daemon, p),
                run_as=run_as,
                listen=listen,
            )
        except SuiteError as e:
            raise SuiteError(f"{e}{self._tail(daemon)}") from None
        finally:
            if listen is not None:
                listen.close()  # the daemon has its own copy

    def _storage_owner(self) -> tuple[int, int]:
        """``storage_user``'s (uid, gid), with the store made theirs (entries root made
        in an earlier run as root are handed over; a running VM's disk stays its jail
        uid's) and the way to it checked."""
        assert self.storage_user is not None
        try:
            pw = pwd.getpwnam(self.storage_user)
        except KeyError:
            raise SuiteError(f"no user {self.storage_user!r} to run fcd-storage as") from None
        state = self.cfg.state("storage")
        for d in [*reversed(state.parents), self.import_dir]:
            if d.exists() and not os.stat(d).st_mode & 0o001:
                raise SuiteError(
                    f"{d} is not traversable by {self.storage_user}: fcd-storage cannot run as it"
                )
        state.mkdir(mode=0o750, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(state):
            for name in [".", *dirnames, *filenames]:
                p = Path(dirpath) / name
                if os.lstat(p).st_uid == 0:
                    os.lchown(p, pw.pw_uid, pw.pw_gid)
        return pw.pw_uid, pw.pw_gid

    def _tail(self, daemon: str, lines: int = 30) -> str:
        if not self.log_to_files or not self.log_path(daemon).exists():
            return ""
        text = self.log_path(daemon).read_text(errors="replace").splitlines()[-lines:]
        return "\n--- fcd-" + daemon + " log ---\n" + "\n".join(text)

    def stop(self, grace: float = 8.0) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for daemon in reversed(ORDER):
            proc = self.procs.get(daemon)
            if proc is None:
                continue
            codes[daemon] = terminate(proc, grace)
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        return codes

    def remove_netns(self) -> None:
        if self.netns:
            netns_remove(self.netns)


def fake(name: str) -> Path:
    """``tests/fakes/<name>``, or a SuiteError saying why it is missing."""
    path = FAKES / name
    if not path.exists():
        raise SuiteError(
            f"test double {path} not found: fcd_dev runs the Firecracker/jailer doubles "
            "from tests/fakes/ of a source checkout (install it with `pip install -e .`)"
        )
    return path


def test_double_paths() -> tuple[str, str]:
    """The Firecracker and jailer test doubles shipped in the repository's tests/fakes."""
    return str(fake("firecracker")), str(fake("jailer"))


def remove_parent_cgroups(parent: str) -> list[str]:
    """rmdir ``<controller mount>/<parent>`` where it exists and is empty; returns what is left."""
    left = []
    root = Path("/sys/fs/cgroup")
    leaves = sorted(root.glob(f"*/{parent}/*"))
    for d in [*leaves, *sorted(root.glob(f"*/{parent}")), root / parent]:
        if d.is_dir():
            try:
                d.rmdir()
            except OSError:
                left.append(str(d))
    return left
