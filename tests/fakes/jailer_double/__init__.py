"""A faithful test double of Firecracker's jailer v1.7.0 (CLI, checks, chroot, cgroups, exec).

If ``--exec-file`` carries the ``# fcd-test-double: firecracker`` marker, the Firecracker
double is imported before pivot_root and run in-process after the uid drop (the jail has no
Python); any other exec file is really ``execve``'d.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time

from . import syscalls
from .cgroups import CgroupWritePanic, JailerError
from .env import VERSION, ArgError, build_env, parse_args
from .run import Jail

PANIC_AT = "src/jailer/src/main.rs:351:6"


def panic(msg: str, *, at: str = PANIC_AT, prefix: str = "Jailer error: ") -> None:
    """A Rust panic with panic=abort: message on stderr, then SIGABRT (134 in a shell)."""
    sys.stderr.write(
        f"thread 'main' panicked at {at}:\n{prefix}{msg}\n"
        "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
    )
    sys.stderr.flush()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGABRT, signal.SIG_DFL)
    os.abort()


def sanitize() -> None:
    """Close inherited fds above stderr, then clear the environment."""
    syscalls.close_range(3)
    os.environ.clear()


def main(argv: list[str]) -> int:
    start_us = time.monotonic_ns() // 1000
    start_cpu_us = time.process_time_ns() // 1000
    sanitize()
    try:
        args = parse_args(argv)
    except ArgError as e:
        print(f"Arguments parsing error: {e} \n\nFor more information try --help.")
        return 1
    if "help" in args.flags:
        print(f"Jailer v{VERSION}\n")
        print("Any arguments after the -- separator will be supplied to the jailed binary.\n")
        return 0
    if "version" in args.flags:
        print(f"Jailer v{VERSION}\n")
        return 0
    try:
        env = build_env(args)
        try:
            os.makedirs(env.chroot_dir, exist_ok=True)
        except OSError as e:
            raise JailerError(
                f"Failed to create directory {env.chroot_dir}: "
                f"{os.strerror(e.errno or 0)} (os error {e.errno})"
            ) from None
        jail = Jail(env, start_us, start_cpu_us)
        try:
            jail.run()
        except (JailerError, CgroupWritePanic):
            jail.report(False)
            raise
    except JailerError as e:
        panic(str(e))
    except CgroupWritePanic as e:
        panic(
            str(e), at=CgroupWritePanic.AT, prefix="called `Result::unwrap()` on an `Err` value: "
        )
    return 0


__all__ = ["main"]
