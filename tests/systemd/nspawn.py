"""Boot a real systemd in a container: systemd-nspawn on a tmpfs overlay of the host's own /.

See ../shared/SYSTEMD.md for why each flag is there. ``booted()`` yields a
:class:`Container` once ``systemctl is-system-running`` says running/degraded,
and always tears everything down: SIGTERM (then SIGKILL) to nspawn, the
overlay and tmpfs unmounted, the work dir and the cgroup directories removed.
nspawn is started inside a cgroup of our own (in every hierarchy it touches),
so whatever it leaves behind is found in one place.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
BOOT_TIMEOUT_S = 60.0
# Host services that must not start inside (they would need the host's data or devices).
MASKED = ("postgresql.service", "systemd-timesyncd.service", "e2scrub_reap.service")


class ContainerError(RuntimeError):
    pass


@dataclass
class Container:
    root: Path
    """The merged overlay, as the host sees it (the container's /)."""
    nspawn: subprocess.Popen[bytes]
    leader: int
    log: Path
    binds: list[str] = field(default_factory=list)

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside every namespace of the container (not in a unit's sandbox)."""
        cp = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and cp.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} -> {cp.returncode}\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
            )
        return cp

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run("systemctl", *args, check=check).stdout.strip()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str) -> int:
        """The unit's main pid as the host sees it (nsenter shares the pid namespace)."""
        return int(self.show(unit, "MainPID")["MainPID"])

    def wait_for(self, what: str, pred: object, timeout: float = 30.0) -> None:
        assert callable(pred)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.1)
        raise ContainerError(f"timed out waiting for {what}")


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                data = Path(f"/proc/{entry}/stat").read_text()
                if int(data[data.rfind(")") + 2 :].split()[1]) == pid:
                    out.append(int(entry))
    return out


def _remove_cgroup_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(Path(t[0]).parts)):
        d = Path(dirpath)
        deadline = time.monotonic() + 5
        while True:
            procs = d / "cgroup.procs"
            with contextlib.suppress(OSError, ValueError):
                for pid in procs.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _enter_cgroups(dirs: Sequence[Path]) -> None:
    for d in dirs:
        (d / "cgroup.procs").write_text(str(os.getpid()))
    os.setsid()


@contextlib.contextmanager
def booted(  # noqa: PLR0915 -- boot, wait, tear down a container: one sequence
    *,
    binds_ro: Sequence[Path] = (),
    binds: Sequence[str] = ("/dev/kvm", "/dev/userfaultfd"),
    setup: object = None,
) -> Iterator[Container]:
    """Boot; ``setup(root)`` may write into the container's / before systemd starts."""
    tag = secrets.token_hex(3)
    work = Path(f"/var/tmp/fcd-nspawn-{tag}")
    tmpfs, root = work / "rw", work / "root"
    cgroups = [h / f"fcd-nspawn-{tag}" for h in CGROUP_HIERARCHIES if h.is_dir()]
    mounted: list[Path] = []
    nspawn: subprocess.Popen[bytes] | None = None
    try:
        tmpfs.mkdir(parents=True)
        root.mkdir()
        # no nodev: the jailer mknods /dev/kvm and /dev/net/tun inside its jails
        _mount("-t", "tmpfs", "-o", "mode=0755,size=2g", "tmpfs", str(tmpfs))
        mounted.append(tmpfs)
        (tmpfs / "upper").mkdir()
        (tmpfs / "work").mkdir()
        _mount(
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir=/,upperdir={tmpfs / 'upper'},workdir={tmpfs / 'work'}",
            str(root),
        )
        mounted.append(root)
        getty = root / "etc/systemd/system/console-getty.service"
        getty.unlink(missing_ok=True)
        getty.symlink_to("/dev/null")
        if setup is not None:
            assert callable(setup)
            setup(root)
        for d in cgroups:
            d.mkdir()
        log = work / "nspawn.log"
        argv = [
            "systemd-nspawn",
            "-D",
            str(root),
            f"--machine=fcd-test-{tag}",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--system-call-filter=bpf",
            "--console=passive",
            *(f"--bind={b}" for b in binds if os.path.exists(b)),
            *(f"--bind-ro={p}" for p in binds_ro),
            "--boot",
            *(f"systemd.mask={u}" for u in MASKED),
        ]
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with open(log, "wb") as out:
            nspawn = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=lambda: _enter_cgroups(cgroups),  # noqa: PLW1509 (single-threaded here)
            )
        leader = 0
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not leader and time.monotonic() < deadline:
            if nspawn.poll() is not None:
                raise ContainerError(f"nspawn exited {nspawn.returncode}: {log.read_text()}")
            kids = _children(nspawn.pid)
            leader = kids[0] if kids else 0
            time.sleep(0.05)
        c = Container(root=root, nspawn=nspawn, leader=leader, log=log)
        state = ""
        while time.monotonic() < deadline:
            state = c.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.1)
        else:
            raise ContainerError(f"systemd did not boot (state {state!r}): {log.read_text()}")
        yield c
    finally:
        if nspawn is not None and nspawn.poll() is None:
            # a clean poweroff takes ~1.5 s; a VM left running (pid-namespace init,
            # ignores SIGTERM) would hold systemd-shutdown for long: then SIGKILL
            # nspawn, which takes the container's whole pid namespace with it
            nspawn.send_signal(signal.SIGTERM)
            try:
                nspawn.wait(5)
            except subprocess.TimeoutExpired:
                nspawn.kill()
                nspawn.wait(5)
        for d in cgroups:
            _remove_cgroup_tree(d)
        for m in reversed(mounted):
            _umount(m)
        shutil.rmtree(work, ignore_errors=True)
