"""Env::run: the jailer's fixed sequence of effects, in the real order."""

from __future__ import annotations

import importlib
import os
import resource
import shutil
import stat
import sys
import time
from typing import Any

from . import syscalls
from .cgroups import JailerError
from .env import Env

FOLDERS = ("/", "/dev", "/dev/net", "/run")
MARKER = b"# fcd-test-double: firecracker"


def _err(e: OSError) -> str:
    return f"{os.strerror(e.errno or 0)} (os error {e.errno})"


def userfaultfd_minor() -> int | None:
    try:
        with open("/proc/misc") as f:
            for line in f:
                minor, _, name = line.strip().partition(" ")
                if name.strip() == "userfaultfd":
                    return int(minor)
    except OSError:
        return None
    return None


def load_double(exec_file: str) -> Any:
    """Import the Firecracker double's package next to ``exec_file`` (before pivot_root)."""
    with open(exec_file, "rb") as f:
        head = f.read(4096)
    if MARKER not in head:
        return None
    sys.path.insert(0, os.path.dirname(exec_file))
    pkg = importlib.import_module("fc_double")
    pkg.preload()
    return pkg


class Jail:
    def __init__(self, env: Env, start_us: int, start_cpu_us: int) -> None:
        self.env = env
        self.start_us = start_us
        self.start_cpu_us = start_cpu_us
        self.jailer_cpu_us = 0
        self.cpu_carry_us = 0
        self.report_fd: int | None = None  # --daemonize: tells the original process we are done

    # -- before the jail --------------------------------------------------------------------

    def copy_exec(self) -> None:
        target = os.path.join(self.env.chroot_dir, self.env.exec_name)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise JailerError(f"Detected hard link at: {target}")
        try:
            shutil.copyfile(self.env.exec_file, target)
            shutil.copymode(self.env.exec_file, target)
        except OSError as e:
            raise JailerError(
                f"Failed to copy {self.env.exec_file} to {target}: {_err(e)}"
            ) from None

    def join_netns(self) -> None:
        path = self.env.netns
        if path is None:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise JailerError(f"Failed to open file {path}: {_err(e)}") from None
        try:
            syscalls.setns(fd, syscalls.CLONE_NEWNET)
        except OSError as e:
            raise JailerError(f"Failed to join network namespace: netns: {_err(e)}") from None
        finally:
            os.close(fd)

    def set_limits(self) -> None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.env.no_file, self.env.no_file))
            if self.env.fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (self.env.fsize, self.env.fsize))
        except (OSError, ValueError) as e:
            raise JailerError(f"Failed to set limit for resource: {e}") from None

    def setup_cgroups(self) -> None:
        for cg in self.env.cgroups:
            cg.write_value()
        for cg in self.env.cgroups:
            cg.attach_pid(os.getpid())

    def pivot(self) -> None:
        root = self.env.chroot_dir
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
        except OSError as e:
            raise JailerError(f"Failed to unshare into new mount namespace: {_err(e)}") from None
        try:
            syscalls.mount(None, "/", None, syscalls.MS_SLAVE | syscalls.MS_REC)
        except OSError as e:
            raise JailerError(
                f"Failed to change the propagation type to slave: {_err(e)}"
            ) from None
        try:
            syscalls.mount(root, root, None, syscalls.MS_BIND | syscalls.MS_REC)
        except OSError as e:
            raise JailerError(f"Failed to bind mount the jail root directory: {_err(e)}") from None
        os.chdir(root)
        try:
            os.mkdir("old_root")
        except OSError as e:
            raise JailerError(
                f"Failed to create the jail root directory before pivoting root: {_err(e)}"
            ) from None
        try:
            syscalls.pivot_root(".", "old_root")
        except OSError as e:
            raise JailerError(f"Failed to pivot root: {_err(e)}") from None
        os.chdir("/")
        try:
            syscalls.umount2("old_root", syscalls.MNT_DETACH)
        except OSError as e:
            raise JailerError(f"Failed to unmount the old jail root: {_err(e)}") from None
        try:
            os.rmdir("old_root")
        except OSError as e:
            raise JailerError(f"Failed to remove old jail root directory: {_err(e)}") from None

    # -- inside the jail ---------------------------------------------------------------------

    def folders(self) -> None:
        for path in FOLDERS:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as e:
                raise JailerError(f"Failed to create directory {path}: {_err(e)}") from None
            try:
                os.chmod(path, 0o700)
            except OSError as e:
                raise JailerError(f'Failed to change permissions on "{path}": {_err(e)}') from None
            try:
                os.chown(path, self.env.uid, self.env.gid)
            except OSError as e:
                raise JailerError(f'Failed to change owner for "{path}": {_err(e)}') from None

    def mknod(self, path: str, major: int, minor: int) -> None:
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        except OSError as e:
            raise JailerError(
                f"Failed to create {path} via mknod inside the jail: {_err(e)}"
            ) from None
        try:
            os.chown(path, self.env.uid, self.env.gid)
        except OSError as e:
            raise JailerError(f'Failed to change owner for "{path}": {_err(e)}') from None

    def devices(self, uffd_minor: int | None) -> None:
        self.mknod("/dev/net/tun", 10, 200)
        self.mknod("/dev/kvm", 10, 232)
        try:
            self.mknod("/dev/urandom", 1, 9)
        except JailerError as e:
            print(
                f"Warning! Could not create /dev/urandom device inside jailer: {e}.\n"
                "MMDS version 2 will not be available to use.",
                file=sys.stderr,
            )
        if uffd_minor is not None:
            self.mknod("/dev/userfaultfd", 10, uffd_minor)

    def daemonize(self, dev_null: int) -> None:
        """Double fork + setsid; the original exits 0 once the pid file is written."""
        r, w = os.pipe2(os.O_CLOEXEC)
        # CPU time restarts at 0 in a forked child: carry what the jailer used so far.
        self.cpu_carry_us += time.process_time_ns() // 1000 - self.start_cpu_us
        if os.fork() > 0:
            os.close(w)
            status = os.read(r, 1)
            os._exit(0 if status == b"\x00" else 1)
        os.close(r)
        try:
            os.setsid()
        except OSError as e:
            raise JailerError(f"Failed to daemonize: setsid: {_err(e)}") from None
        if os.fork() > 0:
            os._exit(0)
        self.start_cpu_us = time.process_time_ns() // 1000
        for fd in (0, 1, 2):
            os.dup2(dev_null, fd)
        os.close(dev_null)
        self.report_fd = w

    def report(self, ok: bool) -> None:
        if self.report_fd is not None:
            try:
                os.write(self.report_fd, b"\x00" if ok else b"\x01")
            finally:
                os.close(self.report_fd)
                self.report_fd = None

    def write_pid_file(self, pid: int) -> None:
        path = f"/{self.env.exec_name}.pid"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise JailerError(f"Failed to open file {path}: {_err(e)}") from None
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)

    def exec_args(self) -> list[str]:
        return [
            f"/{self.env.exec_name}",
            "--id",
            self.env.id,
            "--start-time-us",
            str(self.start_us),
            "--start-time-cpu-us",
            str(self.start_cpu_us),
            "--parent-cpu-time-us",
            str(self.jailer_cpu_us),
            *self.env.extra_args,
        ]

    def exec(self, double: Any) -> None:
        """Drop to uid:gid and become Firecracker (execve, or the double's main in-process)."""
        os.setgid(self.env.gid)
        os.setgroups([])
        os.setuid(self.env.uid)
        argv = self.exec_args()
        if double is None:
            try:
                os.execve(argv[0], argv, {})
            except OSError as e:
                raise JailerError(f"Failed to exec into Firecracker: {_err(e)}") from None
        syscalls.set_comm(self.env.exec_name)
        sys.argv = argv
        sys.stdout.flush()
        code = double.main(argv)
        sys.stdout.flush()
        os._exit(code)

    def run(self) -> None:
        self.copy_exec()
        double = load_double(self.env.exec_file)
        uffd_minor = userfaultfd_minor()
        self.join_netns()
        self.set_limits()
        self.setup_cgroups()
        dev_null = os.open("/dev/null", os.O_RDWR) if self.env.daemonize else None
        self.pivot()
        if double is not None:
            double.block_imports()
        self.folders()
        self.devices(uffd_minor)
        if dev_null is not None:
            self.daemonize(dev_null)
        if self.env.new_pid_ns:
            self.jailer_cpu_us = (
                self.cpu_carry_us + time.process_time_ns() // 1000 - self.start_cpu_us
            )
            syscalls.unshare(syscalls.CLONE_NEWPID)
            child = os.fork()
            if child > 0:
                try:
                    self.write_pid_file(child)
                except JailerError:
                    self.report(False)
                    raise
                self.report(True)
                os._exit(0)
            self.start_cpu_us = 0
            if self.report_fd is not None:
                os.close(self.report_fd)
                self.report_fd = None
        else:
            self.write_pid_file(os.getpid())
            self.report(True)
        self.exec(double)
