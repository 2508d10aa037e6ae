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
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from fcd_common import config as config_mod

Daemon = Literal["net", "storage", "vmm", "api"]
ORDER: tuple[Daemon, ...] = ("net", "storage", "vmm", "api")
REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"


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


@dataclass
class Suite:
    base: Path
    firecracker: str
    jailer: str
    netns: str | None = None
    subnet: str = "172.30.0.0/24"
    parent_cgroup: str = "fcd"
    log_to_files: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
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
    def vm_netns_prefix(self) -> str:
        """VM namespaces (netns mode) live in the host-wide /run/netns: a prefix of this
        suite's own, so one suite's fcd-net never reconciles away another's."""
        if not self.netns:
            return "fcvm-"
        return "v" + hashlib.sha256(self.netns.encode()).hexdigest()[:5] + "-"

    def log_path(self, daemon: str) -> Path:
        return self.base / "logs" / f"fcd-{daemon}.log"

    def write_config(self) -> config_mod.Config:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        text = f"""\
[paths]
state_dir = "{self.base}/state"
run_dir = "{self.base}/run"
chroot_base = "{self.base}/jail"

[network]
subnet = "{self.subnet}"
netns_prefix = "{self.vm_netns_prefix}"

[jail]
firecracker = "{self.firecracker}"
jailer = "{self.jailer}"
parent_cgroup = "{self.parent_cgroup}"

[limits]
shutdown_grace_s = 5.0
"""
        self.config_path.write_text(text)
        cfg = self.cfg  # validates
        for d in (cfg.paths.state_dir, cfg.paths.run_dir, cfg.paths.chroot_base):
            Path(d).mkdir(parents=True, exist_ok=True)
        return cfg

    # --- processes -----------------------------------------------------------------
    def _argv(self, daemon: Daemon) -> list[str]:
        exe = Path(sys.executable).parent / f"fcd-{daemon}"
        argv = [str(exe), "--config", str(self.config_path)]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        return argv

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

    def _start_one(self, daemon: Daemon, timeout: float) -> None:
        notify_path = self.base / "run" / f".notify-{daemon}"
        notify_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            notify_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify_path))
        env = {
            **os.environ,
            **self.extra_env,
            "NOTIFY_SOCKET": str(notify_path),
            "FCD_CONFIG": str(self.config_path),
        }
        for var in ("JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"):
            env.pop(var, None)
        out: IO[bytes] | int | None = None
        if self.log_to_files:
            self.log_path(daemon).parent.mkdir(parents=True, exist_ok=True)
            f = self.log_path(daemon).open("ab")
            self._logs.append(f)
            out = f
        proc = subprocess.Popen(
            self._argv(daemon),
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs[daemon] = proc
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SuiteError(
                        f"fcd-{daemon} not ready after {timeout:.0f}s{self._tail(daemon)}"
                    )
                sock.settimeout(min(remaining, 0.25))
                try:
                    msg = sock.recv(4096).decode(errors="replace")
                except TimeoutError:
                    if proc.poll() is not None:
                        rc = proc.returncode
                        raise SuiteError(
                            f"fcd-{daemon} exited with {rc} before READY{self._tail(daemon)}"
                        ) from None
                    continue
                if "READY=1" in msg.split("\n"):
                    return
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                notify_path.unlink()

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
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            codes[daemon] = proc.returncode
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        return codes

    def remove_netns(self) -> None:
        if self.netns:
            netns_remove(self.netns)


def test_double_paths() -> tuple[str, str]:
    """The Firecracker and jailer test doubles shipped in the repository's tests/fakes."""
    fc, jl = FAKES / "firecracker", FAKES / "jailer"
    if not (fc.exists() and jl.exists()):
        raise SuiteError(f"test doubles not found under {FAKES} (needs a source checkout)")
    return str(fc), str(jl)


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
