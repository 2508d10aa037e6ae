"""Helpers for tests that run the four real daemons (fcd_dev.suite.Suite) in a private netns."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from fcd_dev import suite as suite_mod


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=check).stdout


def in_ns(ns: str, *cmd: str, check: bool = True) -> str:
    """Run a command in the namespace with its own /sys (ip netns exec remounts sysfs)."""
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


def api(suite: suite_mod.Suite, timeout: float = 60.0) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(suite.api_socket)),
        base_url="http://fcd",
        timeout=timeout,
    )


def fc_get(sock: Path, path: str = "/") -> dict[str, Any]:
    """GET from a Firecracker API socket; reached through a dir fd (jail paths exceed sun_path)."""
    dfd = os.open(sock.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{dfd}/{sock.name}"
        transport = httpx.HTTPTransport(uds=short)
        with httpx.Client(transport=transport, base_url="http://localhost", timeout=5) as c:
            r = c.get(path)
            r.raise_for_status()
            out: dict[str, Any] = r.json()
            return out
    finally:
        os.close(dfd)


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def pids_with_uid_in(lo: int, hi: int, netns: str | None = None) -> list[int]:
    """Live processes running as a pool uid; with ``netns``, only those in that namespace
    (so tests running side by side do not see each other's VMs)."""
    ns_ino = os.stat(f"/run/netns/{netns}").st_ino if netns else None
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            st = proc_status(int(d.name))
            if ns_ino is not None and os.stat(d / "ns" / "net").st_ino != ns_ino:
                continue
        except OSError:
            continue
        uid = int(st["Uid"].split()[0])
        if lo <= uid <= hi and st.get("State", "").split()[0] != "Z":
            found.append(int(d.name))
    return found


def nft_ruleset(ns: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(in_ns(ns, "nft", "-j", "list", "ruleset"))
    return out


def taps(ns: str, prefix: str = "fc") -> list[str]:
    links = json.loads(sh("ip", "-n", ns, "-d", "-j", "link", "show"))
    return [
        link["ifname"]
        for link in links
        if link["ifname"].startswith(prefix) and link.get("linkinfo", {}).get("info_kind") == "tun"
    ]


def _netns_names() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except FileNotFoundError:
        return []


@contextmanager
def running_suite(tmp_path: Path, **kw: Any) -> Iterator[suite_mod.Suite]:
    fc = os.environ.get("FCD_FIRECRACKER")
    jl = os.environ.get("FCD_JAILER")
    if not (fc and jl):
        fc, jl = suite_mod.test_double_paths()
    tag = secrets.token_hex(3)
    suite = suite_mod.Suite(
        base=tmp_path / "fcd",
        firecracker=fc,
        jailer=jl,
        netns=f"fcde-{tag}",
        subnet=kw.pop("subnet", "10.77.0.0/24"),
        parent_cgroup=f"fcdtest-{tag}",
        **kw,
    )
    suite.write_config()
    try:
        suite.start()
        yield suite
    finally:
        suite.stop()
        # anything a failed test left running in the pool range is killed so cleanup can
        # proceed: in the suite's namespace, and in its netns-mode VMs' own namespaces
        cfg = suite.cfg
        vm_ns = [n for n in _netns_names() if n.startswith(suite.vm_netns_prefix)]
        namespaces = [n for n in (suite.netns, *vm_ns) if n and n in _netns_names()]
        for ns in namespaces:
            for pid in pids_with_uid_in(cfg.jail.uid_min, cfg.jail.uid_max, ns):
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
        for ns in vm_ns:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        suite.remove_netns()
        # killed tasks leave their cgroup a moment later: retry until the dirs are gone
        deadline = time.monotonic() + 10
        while suite_mod.remove_parent_cgroups(suite.parent_cgroup) and time.monotonic() < deadline:
            time.sleep(0.1)
