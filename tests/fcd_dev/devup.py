"""`fcd up`: the development supervisor.

Starts the four daemons in the foreground with a generated dev config (all in
one private network namespace by default, so the host's network is left
alone), prints the API socket, optionally runs a demo with ``fcctl``, and on
Ctrl-C deletes the VMs it made and stops everything.

Without ``FCD_FIRECRACKER``/``FCD_JAILER`` naming real release binaries it
runs the repository's Firecracker test double, and says so loudly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

from fcd_common.errors import FcdError, NotFound

from . import suite as suite_mod

BANNER_DOUBLE = """\
################################################################################
#  NO FIRECRACKER BINARY CONFIGURED (FCD_FIRECRACKER / FCD_JAILER are unset).   #
#  Running the Firecracker and jailer TEST DOUBLES from tests/fakes/.           #
#  They speak Firecracker's API and the jailer's CLI, but boot no real guest.   #
################################################################################"""


def _account(name: str) -> str | None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return None
    return name


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _guest_module() -> ModuleType:
    path = suite_mod.fake("guest_kernel.py")
    spec = importlib.util.spec_from_file_location("fcd_guest_kernel", path)
    if spec is None or spec.loader is None:
        raise suite_mod.SuiteError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def import_demo_template(suite: suite_mod.Suite, name: str = "demo") -> None:
    """Build the minimal guest kernel + a small ext4 rootfs and register them as a template."""
    from fcd_common.proto import storage as sp
    from fcd_common.rpc import RpcClient

    guest = _guest_module()
    work = suite.import_dir / "demo-src"
    work.mkdir(parents=True, exist_ok=True)
    kernel = guest.build(work / "vmlinux")
    rootfs = guest.build_rootfs(work / "rootfs.ext4")

    async def run() -> None:
        client = RpcClient(suite.cfg.socket("storage"), sp.PROTOCOL, timeout=60)
        try:
            with contextlib.suppress(NotFound):
                await client.call(sp.TemplateGet(name=name))
                return  # kept from an earlier run (--keep)
            await client.call(
                sp.TemplateImport(name=name, kernel_path=str(kernel), rootfs_path=str(rootfs))
            )
        finally:
            await client.close()

    asyncio.run(run())


def fcctl(
    suite: suite_mod.Suite, *args: str, show: bool = True
) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "fcctl"
    cmd = [str(exe), "--socket", str(suite.api_socket), *args]
    if show:
        _out(f"$ fcctl {' '.join(args)}")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if show:
        for line in (res.stdout + res.stderr).rstrip().splitlines():
            _out("  " + line)
    return res


def demo(suite: suite_mod.Suite) -> bool:
    _out("== demo: create, list, inspect, pause, resume, delete a microVM with fcctl ==")
    try:
        import_demo_template(suite)
    except FcdError as e:
        _out(f"demo FAILED importing the template: {e.code}: {e.message}")
        return False
    steps = [
        ("create", "--id", "demo-1", "--template", "demo", "--vcpus", "1", "--mem", "128"),
        ("ls",),
        ("get", "demo-1"),
        ("pause", "demo-1"),
        ("resume", "demo-1"),
        ("rm", "--force", "demo-1"),
        ("ls",),
    ]
    for step in steps:
        if fcctl(suite, *step).returncode != 0:
            _out(f"demo FAILED at: fcctl {' '.join(step)}")
            return False
    _out("== demo OK ==")
    return True


def delete_all(suite: suite_mod.Suite) -> None:
    res = fcctl(suite, "-o", "json", "ls", show=False)
    if res.returncode != 0:
        return
    try:
        vms = json.loads(res.stdout)
    except json.JSONDecodeError:
        return
    for vm in vms:
        fcctl(suite, "rm", "--force", vm["id"])


RESTARTS = 5
RESTART_WINDOW_S = 60.0


def supervise(suite: suite_mod.Suite, stop: threading.Event) -> bool:
    """Restart a daemon that dies, as systemd's ``Restart=`` does (at most RESTARTS times
    a minute per daemon); True if one kept dying and fcd up gives up."""
    recent: dict[str, list[float]] = {}
    while not stop.wait(0.5):
        for daemon in suite_mod.ORDER:
            proc = suite.procs.get(daemon)
            if proc is None or proc.poll() is None:
                continue
            now = time.monotonic()
            times = [t for t in recent.get(daemon, []) if now - t < RESTART_WINDOW_S]
            if len(times) >= RESTARTS:
                _out(f"fcd-{daemon} keeps exiting (code {proc.returncode}); giving up")
                return True
            recent[daemon] = [*times, now]
            _out(f"fcd-{daemon} exited (code {proc.returncode}); restarting it")
            try:
                suite.restart(daemon)
            except suite_mod.SuiteError as e:
                _out(f"restarting fcd-{daemon} failed: {e}")
    return False


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 -- a linear script: set up, demo, tear down
    p = argparse.ArgumentParser(prog="fcd", description="fcd development supervisor")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="run the four daemons in the foreground with a dev config")
    up.add_argument(
        "--dir", default="/var/tmp/fcd-dev", help="base dir for config, state, sockets, jails"
    )
    up.add_argument("--netns", default="fcd-dev", help="private network namespace for the suite")
    up.add_argument(
        "--host-network", action="store_true", help="run in the host's network namespace"
    )
    up.add_argument("--subnet", default="172.30.0.0/24")
    up.add_argument("--demo", action="store_true", help="create, list and delete a VM with fcctl")
    up.add_argument("--exit-after-demo", action="store_true", help="stop once the demo is done")
    up.add_argument("--keep", action="store_true", help="leave VMs and state in place at exit")
    up.add_argument(
        "--storage-user",
        default=None,
        help="run fcd-storage as this user, as its unit does (default: fcd-storage if that "
        "account exists, else root)",
    )
    args = p.parse_args(argv)

    if os.geteuid() != 0:
        _out("fcd up must run as root (it starts fcd-net and fcd-vmm, which need privileges)")
        return 1
    fc, jl = os.environ.get("FCD_FIRECRACKER"), os.environ.get("FCD_JAILER")
    if fc and jl:
        _out(f"using real binaries: firecracker={fc} jailer={jl}")
    else:
        _out(BANNER_DOUBLE)
        fc, jl = suite_mod.test_double_paths()

    base = Path(args.dir)  # an existing dir is resumed: its VMs are adopted, never wiped
    storage_user = args.storage_user or _account("fcd-storage")
    if storage_user is None:
        _out("fcd-storage runs as root here (no fcd-storage account; --storage-user to choose)")
    suite = suite_mod.Suite(
        base=base,
        firecracker=fc,
        jailer=jl,
        netns=None if args.host_network else args.netns,
        subnet=args.subnet,
        log_to_files=False,
        storage_user=storage_user,
    )
    suite.write_config()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    rc = 0
    crashed = False
    try:
        suite.start()
        _out(
            f"fcd is up (config {suite.config_path}"
            + (f", network namespace {suite.netns})" if suite.netns else ")")
        )
        _out(f"API socket: {suite.api_socket}")
        _out(f"  export FCD_SOCKET={suite.api_socket}; fcctl ls")
        _out(f"read-only API socket: {suite.api_ro_socket} (GET routes and /metrics)")
        if args.demo:
            rc = 0 if demo(suite) else 1
        if not args.exit_after_demo:
            _out("serving; Ctrl-C to stop")
            crashed = supervise(suite, stop)
    except suite_mod.SuiteError as e:
        _out(f"error: {e}")
        rc = 1
        crashed = True
    finally:
        # Only the user's stop removes what fcd up made; a crash never does (#13).
        keep = args.keep or crashed
        if crashed and not args.keep:
            _out(f"keeping VMs and state in {base} (a daemon failed); fcd up again to resume")
        if not keep and suite.procs.get("api") is not None:
            delete_all(suite)
        codes = suite.stop()
        if not keep:
            suite.remove_netns()
            suite_mod.remove_parent_cgroups(suite.parent_cgroup)
            shutil.rmtree(base, ignore_errors=True)
        _out("stopped: " + ", ".join(f"fcd-{d}={c}" for d, c in codes.items()))
    return rc


if __name__ == "__main__":
    sys.exit(main())
