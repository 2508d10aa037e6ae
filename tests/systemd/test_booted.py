"""The suite under a real systemd: nspawn on a tmpfs overlay of / (see nspawn.py, SYSTEMD.md).

One container per module: ``systemd/install`` (the documented command) inside
it, ``systemctl start fcd.target``, then the checks — units active,
capabilities and seccomp as the units say, API socket access by group, a VM
created through the API with the Firecracker test double and followed with
``journalctl FCD_VM_ID=``, restart of fcd-vmm with the VM kept, watchdog,
SIGKILL recovery, SIGSYS from the seccomp filter, the VM deleted, and netns
mode through the opt-in drop-in (``systemd/install --netns-mode``).
The checks share the container but not an order: each one that needs a VM gets
it from the ``vm`` fixture (which makes one when there is none), and none
assumes which other VMs exist. Everything booted is torn down by
``nspawn.booted`` even when a check fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fcd_api import events
from fcd_common.config import NetworkConfig
from fcd_common.ids import netns_path

from .booted_suite import API, MEMBER, OTHER, Suite
from .conftest import REPORT
from .nspawn import booted
from .units import DAEMONS, REPO, VENV, cap_mask

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="needs systemd-nspawn"),
    pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm"),
    pytest.mark.timeout(240),
]

SRC = Path("/srv/fcd-test-src")  # template sources, readable by fcd-storage (not in /tmp)

# No cgroup controllers inside nspawn here (the host keeps them on v1): cgroup v2
# without --cgroup arguments, so each VM stays in fcd-vmm.service's cgroup.
CONFIG = f"""
[paths]
chroot_base = "/var/lib/fcd/jailer"
[network]
subnet = "10.99.0.0/24"
[jail]
firecracker = "{REPO}/tests/fakes/firecracker"
jailer = "{REPO}/tests/fakes/jailer"
cgroup_version = "2"
# the tests follow Firecracker's own lines (a pause, a restart); Warning logs none of them
firecracker_log_level = "Info"
# away from the default pool: the e2e harness kills leftovers in that range, host-wide
uid_min = 2000000
uid_max = 2000999
"""


def _guest() -> Any:
    spec = importlib.util.spec_from_file_location("fcd_guest", REPO / "tests/fakes/guest_kernel.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _prepare(root: Path) -> None:
    (root / "root/fcd-test.toml").write_text(CONFIG)
    src = root / SRC.relative_to("/")
    src.mkdir(parents=True)
    guest = _guest()
    guest.build(src / "vmlinux")
    guest.build_rootfs(src / "rootfs.ext4")
    for f in src.iterdir():
        f.chmod(0o644)


@pytest.fixture(scope="module")
def suite() -> Iterator[Suite]:
    t0 = time.monotonic()
    with booted(binds_ro=sorted({REPO, VENV}), setup=_prepare) as c:
        REPORT.append(f"container booted in {time.monotonic() - t0:.1f}s")
        # Debian's udev makes /dev/net/tun 0666; nspawn copies the host's node (0600 here)
        c.run("chmod", "0666", "/dev/net/tun")
        c.run(str(REPO / "systemd/install"), "--venv", str(VENV),
              "--config", "/root/fcd-test.toml", "--force-config")  # fmt: skip
        c.run("useradd", "-M", "-G", "fcd-users", MEMBER)
        c.run("useradd", "-M", OTHER)
        c.systemctl("start", "fcd.target")
        started = time.monotonic()
        c.run("runuser", "-u", "fcd-storage", "--", str(VENV / "bin/fcd-storage"), "import",
              "--name", "demo", "--kernel", f"{SRC}/vmlinux",
              "--rootfs", f"{SRC}/rootfs.ext4")  # fmt: skip
        s = Suite(c)
        s.state["started"] = started
        yield s
        if "vm" in s.state:  # the shared VM: deleted so the container powers off cleanly
            s.fcctl("rm", "--force", s.state["vm"]["id"], check=False)
        t1 = time.monotonic()
    REPORT.append(f"booted-systemd checks: {t1 - t0:.1f}s; teardown {time.monotonic() - t1:.1f}s")


def _create_vm(suite: Suite) -> dict[str, Any]:
    vm: dict[str, Any] = suite.fcctl("create", "--template", "demo", "--vcpus", "1", "--mem", "128")
    return vm


def _vm_ids(suite: Suite) -> list[str]:
    return sorted(v["id"] for v in suite.fcctl("ls"))


@pytest.fixture
def vm(suite: Suite) -> dict[str, Any]:
    """The module's shared running VM: made by the first check that needs it, and made
    again if a check deleted it (``test_vm_deleted_through_the_api`` does)."""
    if "vm" not in suite.state or suite.state["vm"]["id"] not in _vm_ids(suite):
        suite.state["vm"] = _create_vm(suite)
    shared: dict[str, Any] = suite.state["vm"]
    return shared


def test_every_unit_active(suite: Suite) -> None:
    for d in DAEMONS:
        suite.wait_active(d)
        assert suite.active(f"{d}.socket")
    assert suite.active("fcd.target")
    for d in DAEMONS:
        info = suite.c.show(d, "StatusText", "WatchdogUSec", "Type", "NRestarts")
        assert info["Type"] == "notify" and info["WatchdogUSec"] == "10s"
        assert info["StatusText"], d
        REPORT.append(f"{d} STATUS: {info['StatusText']}")


def test_capabilities_and_seccomp_as_the_unit_says(suite: Suite) -> None:
    for d in DAEMONS:
        unit = suite.c.show(
            d, "User", "CapabilityBoundingSet", "AmbientCapabilities", "NoNewPrivileges",
            "SystemCallFilter",
        )  # fmt: skip
        st = suite.status(suite.c.main_pid(d))
        bnd = cap_mask(unit["CapabilityBoundingSet"])
        amb = cap_mask(unit["AmbientCapabilities"])
        eff = bnd if unit["User"] == "root" else amb
        assert int(st["CapBnd"], 16) == bnd, d
        assert int(st["CapEff"], 16) == eff, d
        assert int(st["CapAmb"], 16) == amb, d
        assert st["NoNewPrivs"] == ("1" if unit["NoNewPrivileges"] == "yes" else "0"), d
        assert st["Seccomp"] == "2", d  # filter mode
        assert unit["SystemCallFilter"], d
        names = unit["CapabilityBoundingSet"] or "(none)"
        REPORT.append(f"{d}: CapEff={st['CapEff']} CapBnd={st['CapBnd']} [{names}]")


def test_api_socket_only_for_fcd_users(suite: Suite) -> None:
    assert isinstance(suite.fcctl("ls"), list)
    cp = suite.fcctl("ls", user=OTHER, check=False)
    assert cp.returncode != 0
    assert "ermission denied" in cp.stderr or "EACCES" in cp.stderr, cp.stderr


def test_read_only_socket_for_fcd_readers(suite: Suite, vm: dict[str, Any]) -> None:
    """fcd-api-ro.socket: a member of fcd-readers reads VMs, their metrics and /metrics
    there; every mutation is 403; anyone else cannot connect."""
    reader = "fcdreader"
    suite.c.run("useradd", "-M", "-G", "fcd-readers", reader, check=False)

    def ro(*args: str, user: str = reader) -> Any:
        return suite.c.run(
            "runuser", "-u", user, "--", "env", "FCD_SOCKET=/run/fcd/api-ro.sock",
            str(VENV / "bin/fcctl"), "-o", "json", *args, check=False,
        )  # fmt: skip

    assert suite.active("fcd-api-ro.socket")
    cp = ro("ls")
    assert cp.returncode == 0 and vm["id"] in cp.stdout, cp.stderr
    cp = ro("stats", vm["id"])
    assert cp.returncode == 0 and '"memory"' in cp.stdout, cp.stderr
    cp = ro("top", "--once")
    assert cp.returncode == 0, cp.stderr
    cp = ro("pause", vm["id"])
    assert cp.returncode == 1 and "permission_denied" in cp.stderr, cp.stderr
    cp = ro("ls", user=OTHER)
    assert cp.returncode != 0 and "ermission denied" in cp.stderr, cp.stderr
    assert suite.fcctl("get", vm["id"])["state"] == "running"


def test_vm_created_through_the_api(suite: Suite) -> None:
    vm = _create_vm(suite)
    assert vm["state"] == "running" and vm["pid"]
    assert suite.alive(vm["pid"])
    assert vm["id"] in _vm_ids(suite)
    if "vm" in suite.state:
        suite.fcctl("rm", "--force", vm["id"])
    else:
        suite.state["vm"] = vm  # the checks after this one share it (see the vm fixture)


def test_journal_follows_the_vm_across_daemons(suite: Suite, vm: dict[str, Any]) -> None:
    vm_id = vm["id"]
    entries = suite.journal(f"FCD_VM_ID={vm_id}")
    daemons = {e.get("FCD_DAEMON") for e in entries}
    assert {"fcd-api", "fcd-net", "fcd-vmm"} <= daemons, daemons
    fc = [e for e in entries if e.get("FCD_SOURCE") == "firecracker"]
    assert fc, "no Firecracker log line in the journal"
    # Firecracker's own line format: "<time> [<instance id>:<thread>:<LEVEL>] <message>"
    assert all(f"[{vm_id}:" in e["MESSAGE"] for e in fc), [e["MESSAGE"] for e in fc]
    assert any(e.get("FCD_REQUEST_ID") for e in entries if e.get("FCD_DAEMON") == "fcd-api")
    REPORT.append(
        f"journalctl FCD_VM_ID={vm_id}: {len(entries)} entries, {len(fc)} from Firecracker"
    )


def test_logs_and_events_api_read_the_journal(suite: Suite, vm: dict[str, Any]) -> None:
    """GET /v1/vms/{id}/logs (fcctl logs) is served from journald here: the guest's
    console line, Firecracker's lines, a follow that sees a new line; events are in the
    journal under their MESSAGE_ID."""
    vm_id = vm["id"]

    def ndjson(*args: str) -> list[dict[str, Any]]:
        cp = suite.fcctl("logs", *args, vm_id, check=False)
        assert cp.returncode == 0, cp.stderr
        return [json.loads(x) for x in cp.stdout.splitlines() if x.strip()]

    console = ndjson("--source", "console")
    assert "fcd-guest: hello" in [e["message"] for e in console], console
    assert {e["daemon"] for e in console} == {"fcd-vmm"}
    fc = ndjson("--source", "firecracker", "--tail", "3")
    assert 0 < len(fc) <= 3 and all(f"[{vm_id}:" in e["message"] for e in fc), fc
    assert {"fcd-api", "fcd-vmm"} <= {e["daemon"] for e in ndjson("--source", "fcd")}
    # a follow through Reader.wait(): once it runs, a pause/resume shows up in it
    out = "/run/fcd-logs-follow.out"
    follow = (
        f"timeout 60 runuser -u {MEMBER} -- env FCD_SOCKET=/run/fcd/api.sock"
        f" {VENV}/bin/fcctl -o json logs -f --tail 0 --source firecracker {vm_id}"
        f" > {out} 2>/dev/null < /dev/null &"
    )
    suite.c.run("sh", "-c", follow)
    deadline = time.monotonic() + 45
    got: list[str] = []
    while not any("resume vm" in m for m in got):
        assert time.monotonic() < deadline, got
        suite.fcctl("pause", vm_id)
        suite.fcctl("resume", vm_id)
        time.sleep(1.0)
        text = suite.c.run("cat", out, check=False).stdout
        got = [json.loads(x)["message"] for x in text.splitlines() if x.strip()]
    created = suite.journal(f"MESSAGE_ID={events.message_id('created')}", f"FCD_VM_ID={vm_id}")
    assert [e["FCD_EVENT"] for e in created] == ["created"], created
    REPORT.append(f"logs API via journald: {len(console)} console, {len(got)} followed lines")


def test_vmm_restart_keeps_the_vm(suite: Suite, vm: dict[str, Any]) -> None:
    running = sum(1 for v in suite.fcctl("ls") if v["state"] in ("running", "paused"))
    old = suite.c.main_pid("fcd-vmm")
    suite.c.systemctl("restart", "fcd-vmm")
    new = suite.wait_active("fcd-vmm", not_pid=old)
    assert suite.alive(vm["pid"])
    got = suite.fcctl("get", vm["id"])
    assert (got["state"], got["pid"]) == ("running", vm["pid"])
    assert f"{running} VMs running" in suite.c.show("fcd-vmm", "StatusText")["StatusText"]
    # the new instance forwards Firecracker's log again
    suite.fcctl("pause", vm["id"])
    suite.fcctl("resume", vm["id"])
    fc = suite.journal(f"FCD_VM_ID={vm['id']}", "FCD_SOURCE=firecracker", f"_PID={new}")
    assert fc, "no Firecracker line forwarded after the restart"


def test_watchdog_restarts_a_stuck_daemon(suite: Suite) -> None:
    suite.dropin("fcd-storage", "[Service]\nWatchdogSec=2s\n")
    try:
        suite.c.systemctl("restart", "fcd-storage")
        pid = suite.wait_active("fcd-storage")
        time.sleep(2.5)  # pings at 1 s keep it alive past one period
        assert suite.c.main_pid("fcd-storage") == pid
        suite.c.run("kill", "-STOP", str(pid))
        suite.wait_active("fcd-storage", not_pid=pid, timeout=15)
        msgs = [e["MESSAGE"] for e in suite.journal("-u", "fcd-storage", "_PID=1")]
        assert any("Watchdog timeout" in m for m in msgs)
    finally:
        suite.dropin("fcd-storage", None)
        suite.c.systemctl("restart", "fcd-storage")
        suite.wait_active("fcd-storage")


@pytest.mark.parametrize("daemon", DAEMONS)
def test_sigkill_is_restarted_and_the_suite_serves(
    suite: Suite, vm: dict[str, Any], daemon: str
) -> None:
    vms = _vm_ids(suite)
    old = suite.wait_active(daemon)
    before = int(suite.c.show(daemon, "NRestarts")["NRestarts"])
    suite.c.run("kill", "-KILL", str(old))
    suite.wait_active(daemon, not_pid=old)
    assert int(suite.c.show(daemon, "NRestarts")["NRestarts"]) == before + 1
    assert suite.alive(vm["pid"])
    assert _vm_ids(suite) == vms  # none lost, none doubled
    assert suite.fcctl("get", vm["id"])["state"] == "running"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_forbidden_syscall_is_killed_with_sigsys(
    suite: Suite, vm: dict[str, Any], daemon: str
) -> None:
    # The unit's own sandbox and filter, with the daemon's interpreter making one
    # call outside it: reboot(2) (@reboot). Unfiltered it would fail EPERM/EINVAL.
    probe = "import ctypes; ctypes.CDLL(None).syscall(169, 0, 0, 0, 0); print('not killed')"
    suite.dropin(daemon, f'[Service]\nExecStart=\nExecStart={VENV}/bin/python -c "{probe}"\n'
                 "Restart=no\n")  # fmt: skip
    try:
        suite.c.systemctl("restart", daemon, check=False)
        # Read the result in the same query that sees the probe end: fcd-api keeps
        # calling fcd-vmm (its exit watcher), so the socket may start it again at once.
        ended: dict[str, str] = {}

        def probe_ended() -> bool:
            info = suite.c.show(daemon, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
            if info["ActiveState"] in ("failed", "inactive"):
                ended.update(info)
                return True
            return False

        suite.c.wait_for(f"{daemon} probe to end", probe_ended, 15)
        info = ended
        # ExecMainCode 2 = CLD_KILLED; 31 = SIGSYS
        assert (info["Result"], info["ExecMainCode"], info["ExecMainStatus"]) == (
            "signal", "2", "31",
        ), info  # fmt: skip
    finally:
        suite.dropin(daemon, None)
        suite.c.systemctl("reset-failed", daemon, check=False)
        suite.c.systemctl("start", daemon)
        suite.wait_active(daemon)
    assert suite.alive(vm["pid"])


_POST_PORT = """
import json, sys, httpx
t = httpx.HTTPTransport(uds=sys.argv[1])
with httpx.Client(transport=t, base_url="http://fcd") as c:
    body = {"host_port": int(sys.argv[3]), "guest_port": 80}
    r = c.post(f"/v1/vms/{sys.argv[2]}/ports", json=body)
print(json.dumps({"status": r.status_code, "body": r.json()}))
"""

_LISTEN = "import socket, time; s = socket.create_server(('127.0.0.1', 20005)); time.sleep(600)"


def test_port_mappings_check_listeners_under_the_unit_sandbox(
    suite: Suite, vm: dict[str, Any]
) -> None:
    """Issue #9 finding 1 as fcd-net.service runs it: the host-port range is reserved in
    the (container's) namespace, and the listener dump (sock_diag over AF_NETLINK) works
    inside the unit's sandbox -- a port with a listener is refused, naming it."""
    c = suite.c
    reserved = c.run("sysctl", "-n", "net.ipv4.ip_local_reserved_ports").stdout.strip()
    assert "20000-29999" in reserved.split(","), reserved
    c.run("systemd-run", "--unit=fcd-test-listener", "--uid=nobody",
          str(VENV / "bin/python"), "-c", _LISTEN)  # fmt: skip
    try:
        probe = "import socket; socket.create_connection(('127.0.0.1', 20005), 1)"
        c.wait_for(
            "listener on 127.0.0.1:20005",
            lambda: c.run(str(VENV / "bin/python"), "-c", probe, check=False).returncode == 0,
            10,
        )

        def post(port: int) -> Any:
            out = c.run("runuser", "-u", MEMBER, "--", str(VENV / "bin/python"), "-c",
                        _POST_PORT, API, vm["id"], str(port)).stdout  # fmt: skip
            return json.loads(out)

        got = post(20005)
        assert got["status"] == 409, got
        assert got["body"]["error"]["code"] == "host_port_in_use", got
        assert "127.0.0.1:20005" in got["body"]["error"]["details"]["listener"], got
        got = post(20006)
        assert got["status"] == 200, got
        assert {"host_port": 20006, "guest_port": 80, "protocol": "tcp"} in got["body"][
            "port_mappings"
        ]
        REPORT.append(f"fcd-net.service: port with a listener refused; reserved ports {reserved}")
    finally:
        c.run("systemctl", "stop", "fcd-test-listener", check=False)


def test_tcp_probes_reach_guests_from_fcd_net_sandbox(suite: Suite) -> None:
    """#13: fcd-net.service denies every IP address but the guest pools (systemd/install's
    drop-in, from the configuration) and has AF_INET for tcp: probes. The double runs no
    guest, so a wait_for tcp: create gets no answer and times out -- it is not refused by
    the sandbox (EPERM) -- and is undone."""
    cp = suite.fcctl("create", "--template", "demo", "--id", "probe", "--wait-for", "tcp:22",
                     "--wait-timeout", "2", check=False)  # fmt: skip
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1 and "deadline_exceeded" in out, out
    assert "not permitted" not in out and "IPAddressAllow" not in out, out
    assert "probe" not in _vm_ids(suite)
    dropin = suite.c.run("systemctl", "cat", "fcd-net.service").stdout
    assert "IPAddressAllow=10.99.0.0/24" in dropin, dropin
    REPORT.append("fcd-net.service: tcp: probes reach the guest pool (IPAddressAllow drop-in)")


def test_vm_deleted_through_the_api(suite: Suite, vm: dict[str, Any]) -> None:
    others = [i for i in _vm_ids(suite) if i != vm["id"]]
    suite.fcctl("rm", "--force", vm["id"])
    del suite.state["vm"]  # the next check that needs one gets a new VM from the fixture
    assert _vm_ids(suite) == others
    suite.c.wait_for("firecracker gone", lambda: not suite.alive(vm["pid"]), 10)
    jails = suite.c.run("ls", "/var/lib/fcd/jailer/firecracker").stdout.split()
    assert sorted(jails) == others, jails  # this VM's chroot gone, the others' kept


def test_netns_mode_with_the_opt_in_dropin(suite: Suite) -> None:
    # `systemd/install --netns-mode` (the documented opt-in) and network.mode = "netns"
    c = suite.c
    c.run("tee", "/root/fcd-test-netns.toml",
          input=CONFIG.replace("[network]\n", '[network]\nmode = "netns"\n'))  # fmt: skip
    c.run(str(REPO / "systemd/install"), "--venv", str(VENV), "--netns-mode",
          "--config", "/root/fcd-test-netns.toml", "--force-config")  # fmt: skip
    vm: dict[str, Any] = {}
    try:
        old = c.main_pid("fcd-net")
        c.systemctl("restart", "fcd-net")
        pid = suite.wait_active("fcd-net", not_pid=old)
        # no private mount namespace: fcd-net's mounts are the host's (the container's)
        mnt = c.run("readlink", f"/proc/{pid}/ns/mnt", "/proc/1/ns/mnt").stdout.split()
        assert mnt[0] == mnt[1], mnt
        st = suite.status(pid)
        assert int(st["CapEff"], 16) == cap_mask("cap_net_admin cap_sys_admin"), st["CapEff"]
        vm = _create_vm(suite)
        assert vm["state"] == "running" and suite.alive(vm["pid"])
        path = netns_path(vm["id"], NetworkConfig().netns_prefix)
        ns_inode = c.run("stat", "-L", "-c", "%i", path).stdout.strip()
        fc_ns = c.run("readlink", f"/proc/{vm['pid']}/ns/net").stdout.strip()
        assert fc_ns == f"net:[{ns_inode}]", (fc_ns, ns_inode)
        host_ns = c.run("readlink", "/proc/1/ns/net").stdout.strip()
        assert fc_ns != host_ns
        REPORT.append(f"netns mode under systemd: VM {vm['id']} Firecracker in {path} ({fc_ns})")
        suite.fcctl("rm", "--force", vm["id"])
        c.wait_for("firecracker gone", lambda: not suite.alive(vm["pid"]), 10)
        assert c.run("test", "-e", path, check=False).returncode != 0, f"{path} left behind"
        assert vm["id"] not in _vm_ids(suite)
        vm = {}
    finally:
        if vm:
            suite.fcctl("rm", "--force", vm["id"], check=False)
        c.run(str(REPO / "systemd/install"), "--venv", str(VENV), "--no-netns-mode",
              "--config", "/root/fcd-test.toml", "--force-config")  # fmt: skip
        c.systemctl("restart", "fcd-net")
        suite.wait_active("fcd-net")


def test_stopping_the_target_returns_after_every_daemon_stopped(suite: Suite) -> None:
    # issue #13: a script that stops fcd and then acts must not race the daemons.
    # Stop and look in one shell inside the container, so no latency can hide a race.
    services = [f"{d}.service" for d in DAEMONS]
    for d in DAEMONS:
        suite.wait_active(d)
    t0 = time.monotonic()
    cp = suite.c.run(
        "sh", "-c", 'systemctl stop fcd.target; systemctl is-active "$@"', "sh", *services,
        check=False,
    )  # fmt: skip
    took = time.monotonic() - t0
    try:
        states = cp.stdout.split()
        assert states == ["inactive"] * len(services), (states, cp.stderr)
        REPORT.append(f"systemctl stop fcd.target: {took:.2f}s, all four daemons inactive")
    finally:
        suite.c.systemctl("start", "fcd.target")
        for d in DAEMONS:
            suite.wait_active(d)


def test_net_table_guard_works_in_its_sandbox(suite: Suite) -> None:
    """fcd-net's periodic table check (a netlink dump of the table list) runs under
    the unit's seccomp filter and address families: after a few checks its journal
    has no failed dump and no rebuild of tables that were there all along."""
    from fcd_net.service import TABLE_CHECK_S

    time.sleep(max(0.0, suite.state["started"] + 3 * TABLE_CHECK_S - time.monotonic()))
    msgs = [e["MESSAGE"] for e in suite.journal("-u", "fcd-net")]
    assert msgs, "no journal of fcd-net"
    bad = [m for m in msgs if "cannot dump the nft tables" in m or "tables are gone" in m]
    assert not bad, bad
