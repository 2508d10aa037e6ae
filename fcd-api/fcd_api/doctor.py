"""``fcctl doctor``: is this host ready to run fcd? One line per check, PASS/WARN/FAIL
and, unless it passed, the fix.

Each check is a pure function of what a probe read (``check_*``: facts in, a
:class:`Result` out), so the tests feed them made-up hosts; the probes
(``probe_*``) are thin and only read. Nothing here changes the host. The exit
status is nonzero if any check FAILs (WARN: works, but not as it should).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import grp
import os
import pwd
import re
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fcd_common.config import Config
from fcd_common.subids import subid_overlaps

__all__ = [
    "KVM_REQUIRED_CAPS",
    "Result",
    "Status",
    "check_binary",
    "check_cgroups",
    "check_forwarding",
    "check_kvm",
    "check_nftables",
    "check_port_range",
    "check_reflink",
    "check_socket",
    "check_subid_overlap",
    "check_tun",
    "render",
    "run_all",
]


class Status(enum.Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Result:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _ok(name: str, detail: str) -> Result:
    return Result(name, Status.PASS, detail)


# --- KVM --------------------------------------------------------------------------------

KVM_API_VERSION = 12
KVM_GET_API_VERSION = 0xAE00
KVM_CHECK_EXTENSION = 0xAE03
KVM_REQUIRED_CAPS = {
    # what Firecracker v1.7 checks on x86_64 before it creates a VM
    "IRQCHIP": 0,
    "USER_MEMORY": 3,
    "SET_TSS_ADDR": 4,
    "EXT_CPUID": 7,
    "MP_STATE": 14,
    "IRQFD": 32,
    "PIT2": 33,
    "PIT_STATE2": 35,
    "IOEVENTFD": 36,
    "ADJUST_CLOCK": 39,
    "VCPU_EVENTS": 41,
    "DEBUGREGS": 50,
    "XSAVE": 55,
    "XCRS": 56,
}


@dataclass(frozen=True)
class KvmFacts:
    exists: bool
    is_char: bool
    open_error: int | None = None
    api_version: int | None = None
    missing_caps: tuple[str, ...] = ()


def check_kvm(f: KvmFacts) -> Result:
    name = "kvm"
    if not f.exists:
        return Result(
            name,
            Status.FAIL,
            "/dev/kvm does not exist",
            "load kvm_intel or kvm_amd (modprobe kvm_intel); enable virtualization in the "
            "firmware, or nested virtualization on a cloud VM",
        )
    if not f.is_char:
        return Result(name, Status.FAIL, "/dev/kvm is not a character device", "remove it; reboot")
    if f.open_error is not None:
        return Result(
            name,
            Status.FAIL,
            f"cannot open /dev/kvm: {os.strerror(f.open_error)}",
            "run as root (fcd-vmm does), or grant the user rw on /dev/kvm (group kvm)",
        )
    if f.api_version != KVM_API_VERSION:
        return Result(
            name, Status.FAIL, f"KVM API version {f.api_version}, not 12", "use a newer kernel"
        )
    if f.missing_caps:
        return Result(
            name,
            Status.FAIL,
            f"KVM lacks {', '.join(f.missing_caps)}",
            "use a host kernel with these KVM extensions (Linux 5.10+)",
        )
    return _ok(name, f"/dev/kvm: API {f.api_version}, {len(KVM_REQUIRED_CAPS)} extensions")


def probe_kvm(path: str = "/dev/kvm") -> KvmFacts:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return KvmFacts(exists=False, is_char=False)
    if not stat.S_ISCHR(st.st_mode):
        return KvmFacts(exists=True, is_char=False)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return KvmFacts(exists=True, is_char=True, open_error=e.errno)
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        missing = tuple(
            n
            for n, cap in KVM_REQUIRED_CAPS.items()
            if fcntl.ioctl(fd, KVM_CHECK_EXTENSION, cap) <= 0
        )
    finally:
        os.close(fd)
    return KvmFacts(exists=True, is_char=True, api_version=version, missing_caps=missing)


# --- cgroups ----------------------------------------------------------------------------


def check_cgroups(version: int | None, controllers: Iterable[str], error: str = "") -> Result:
    name = "cgroups"
    if version is None:
        return Result(
            name,
            Status.FAIL,
            error or "no usable cgroup hierarchy",
            "mount cgroup2 at /sys/fs/cgroup with cpu and memory enabled "
            "(or the v1 cpu and memory hierarchies)",
        )
    have = set(controllers)
    missing = [c for c in ("cpu", "memory") if c not in have]
    if missing:
        return Result(
            name,
            Status.FAIL,
            f"cgroup v{version}: no {', '.join(missing)} controller",
            "enable it: v2 '+cpu +memory' in cgroup.subtree_control up to the root; "
            "v1 mount the hierarchy",
        )
    optional = ["pids"] + (["cpuacct"] if version == 1 else [])
    lacking = [c for c in optional if c not in have]
    if lacking:
        return Result(
            name,
            Status.WARN,
            f"cgroup v{version}: no {', '.join(lacking)} controller",
            "pids limits a VM's threads; cpuacct (v1) gives VM CPU metrics: mount them",
        )
    return _ok(name, f"cgroup v{version}: {' '.join(sorted(have))}")


# --- network ----------------------------------------------------------------------------


def check_nftables(available: bool, error: str = "") -> Result:
    if available:
        return _ok("nftables", "libnftables answers (python3-nftables)")
    return Result(
        "nftables",
        Status.FAIL,
        error or "libnftables is not usable",
        "apt-get install nftables python3-nftables (and load nf_tables: modprobe nf_tables)",
    )


def check_tun(exists: bool, is_char: bool) -> Result:
    if exists and is_char:
        return _ok("tun", "/dev/net/tun is a character device")
    return Result(
        "tun",
        Status.FAIL,
        "/dev/net/tun is missing" if not exists else "/dev/net/tun is not a character device",
        "modprobe tun (and mknod /dev/net/tun c 10 200 in a container)",
    )


def check_forwarding(
    ip_forward: str | None, bridge_loaded: bool, br_nf_iptables: str | None
) -> Result:
    name = "forwarding"
    if not bridge_loaded:
        return Result(name, Status.FAIL, "the bridge module is not loaded", "modprobe bridge")
    if ip_forward != "1":
        return Result(
            name,
            Status.WARN,
            f"net.ipv4.ip_forward = {ip_forward or '?'}: guests have no egress until fcd-net "
            "turns it on",
            "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/)",
        )
    if br_nf_iptables == "1":
        return Result(
            name,
            Status.WARN,
            "net.bridge.bridge-nf-call-iptables = 1: bridged guest frames also pass iptables",
            "sysctl -w net.bridge.bridge-nf-call-iptables=0, or make sure iptables accepts them",
        )
    return _ok(name, "ip_forward = 1, bridge loaded")


# --- binaries -----------------------------------------------------------------------------

_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


def check_binary(
    name: str,
    path: str,
    *,
    exists: bool,
    executable: bool,
    output: str | None,
    error: str = "",
) -> Result:
    if not exists:
        return Result(
            name,
            Status.FAIL,
            f"{path} does not exist",
            f"install {name} v1.7+ from github.com/firecracker-microvm/firecracker/releases "
            f"at {path} (or set jail.{name} in /etc/fcd/fcd.toml)",
        )
    if not executable:
        return Result(name, Status.FAIL, f"{path} is not executable", f"chmod 0755 {path}")
    if output is None:
        return Result(name, Status.FAIL, f"{path} --version failed: {error}", "reinstall it")
    m = _VERSION.search(output)
    if m is None:
        return Result(
            name, Status.WARN, f"{path}: no version in {output.strip()[:60]!r}", "reinstall it"
        )
    ver = tuple(int(x) for x in m.groups())
    if ver < (1, 7, 0):
        return Result(
            name, Status.FAIL, f"{path}: v{'.'.join(map(str, ver))} is older than v1.7", "upgrade"
        )
    return _ok(name, f"{path}: {m.group(0)}")


def probe_binary(name: str, path: str) -> Result:
    exists = os.path.exists(path)
    executable = exists and os.access(path, os.X_OK)
    output: str | None = None
    error = ""
    if executable:
        try:
            p = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
            if p.returncode == 0:
                output = p.stdout + p.stderr
            else:
                error = f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[:80]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            error = str(e)
    return check_binary(
        name, path, exists=exists, executable=executable, output=output, error=error
    )


# --- uid and port ranges ---------------------------------------------------------------------


def check_subid_overlap(
    uid_min: int, uid_max: int, subuid: str, subgid: str, users_in_range: Sequence[str] = ()
) -> Result:
    """The jail uid/gid pool must be nobody else's: not in /etc/subuid or /etc/subgid
    (user namespaces would map it) and no account in it."""
    name = "jail-uids"
    clashes = [
        f"{file} {r.owner}:{r.start}-{r.last}"
        for file, text in (("/etc/subuid", subuid), ("/etc/subgid", subgid))
        for r in subid_overlaps(text, uid_min, uid_max)
    ]
    if clashes or users_in_range:
        what = clashes + [f"account {u}" for u in users_in_range]
        return Result(
            name,
            Status.WARN,
            f"jail uids {uid_min}-{uid_max} also belong to: {', '.join(what)}",
            "move those ranges (usermod --del-subuids/--del-subgids) or set "
            "jail.uid_min/uid_max to a free range",
        )
    return _ok(name, f"jail uids {uid_min}-{uid_max} are reserved for fcd")


def _port_ranges(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        lo, _, hi = item.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out.append((int(lo), int(hi or lo)))
    return out


def check_port_range(port_min: int, port_max: int, reserved: str, ephemeral: str) -> Result:
    """Host ports of port mappings must not be handed out as ephemeral ports."""
    name = "host-ports"
    covered: set[int] = set()
    for lo, hi in _port_ranges(reserved):
        covered.update(range(max(lo, port_min), min(hi, port_max) + 1))
    if len(covered) == port_max - port_min + 1:
        return _ok(name, f"ports {port_min}-{port_max} are in ip_local_reserved_ports")
    eph = ephemeral.split()
    overlap = len(eph) == 2 and int(eph[0]) <= port_max and int(eph[1]) >= port_min
    fix = (
        f"sysctl -w net.ipv4.ip_local_reserved_ports={port_min}-{port_max} "
        "(persist it in /etc/sysctl.d/)"
    )
    detail = f"ports {port_min}-{port_max} are not reserved"
    if overlap:
        detail += f" and overlap the ephemeral range {eph[0]}-{eph[1]}"
    return Result(name, Status.WARN, detail, fix)


# --- storage --------------------------------------------------------------------------------


def check_reflink(directory: str, supported: bool | None, error: str = "") -> Result:
    if supported:
        return _ok("reflink", f"{directory}: copy-on-write clones (FICLONE) work")
    if supported is None:
        return Result(
            "reflink",
            Status.WARN,
            f"{directory}: cannot test ({error})",
            "create it, or run doctor as root",
        )
    return Result(
        "reflink",
        Status.WARN,
        f"{directory}: no reflink ({error or 'FICLONE refused'}); every VM disk is a full copy",
        "put paths.state_dir on XFS (reflink=1) or btrfs",
    )


FICLONE = 0x40049409


def probe_reflink(directory: str) -> Result:
    d = Path(directory)
    if not d.is_dir():
        return check_reflink(directory, None, "no such directory")
    try:
        with (
            tempfile.NamedTemporaryFile(dir=d, prefix=".doctor-") as a,
            tempfile.NamedTemporaryFile(dir=d, prefix=".doctor-") as b,
        ):
            a.write(b"x" * 4096)
            a.flush()
            try:
                fcntl.ioctl(b.fileno(), FICLONE, a.fileno())
            except OSError as e:
                return check_reflink(directory, False, os.strerror(e.errno or errno.EINVAL))
    except OSError as e:
        return check_reflink(directory, None, e.strerror or str(e))
    return check_reflink(directory, True)


# --- sockets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SocketFacts:
    path: str
    exists: bool
    is_socket: bool = False
    mode: int = 0
    uid: int = 0
    gid: int = 0
    group: str | None = None
    accepts: bool | None = None
    """Whether a connect() succeeded (None: not tried)."""


def check_socket(
    name: str,
    f: SocketFacts,
    *,
    group: str,
    peer: str,
    peer_uid: int | None,
    peer_gids: Sequence[int],
) -> Result:
    """The daemon's socket: there, answering, 0660 and its group ``group``; and ``peer``
    (who must use it) allowed in by owner or group."""
    if not f.exists:
        return Result(
            name,
            Status.WARN,
            f"{f.path} does not exist (not running?)",
            f"systemctl start {name}.socket",
        )
    if not f.is_socket:
        return Result(name, Status.FAIL, f"{f.path} is not a socket", f"remove it; restart {name}")
    if f.mode & 0o007:
        return Result(
            name,
            Status.FAIL,
            f"{f.path} is mode {f.mode:04o}: anyone may connect",
            f"chmod 0660 {f.path} (SocketMode=0660)",
        )
    if f.group != group:
        return Result(
            name,
            Status.WARN,
            f"{f.path} group is {f.group or f.gid}, not {group}",
            f"chgrp {group} {f.path} (SocketGroup={group})",
        )
    if peer_uid is not None:
        allowed = (peer_uid == f.uid and f.mode & 0o600 == 0o600) or (
            f.gid in peer_gids and f.mode & 0o060 == 0o060
        )
        if not allowed and peer_uid != 0:
            return Result(
                name,
                Status.FAIL,
                f"{peer} cannot connect to {f.path} (mode {f.mode:04o})",
                f"usermod -aG {group} {peer}",
            )
    if f.accepts is False:
        return Result(
            name, Status.FAIL, f"{f.path}: nothing accepts connections", f"systemctl restart {name}"
        )
    return _ok(name, f"{f.path}: {f.mode:04o} group {f.group}, {peer} may connect")


def probe_socket(path: Path) -> SocketFacts:
    try:
        st = os.stat(path)
    except OSError:
        return SocketFacts(str(path), exists=False)
    try:
        group: str | None = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = None
    accepts = None
    if stat.S_ISSOCK(st.st_mode):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(str(path))
            accepts = True
        except PermissionError:
            accepts = None  # we may not; the peer check says who may
        except OSError:
            accepts = False
        finally:
            s.close()
    return SocketFacts(
        str(path),
        exists=True,
        is_socket=stat.S_ISSOCK(st.st_mode),
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        group=group,
        accepts=accepts,
    )


def _user(name: str) -> tuple[int | None, list[int]]:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None, []
    gids = [pw.pw_gid] + [g.gr_gid for g in grp.getgrall() if name in g.gr_mem]
    return pw.pw_uid, gids


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# --- all of it -------------------------------------------------------------------------------


_V1_NAMES = frozenset({"cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices"})


def cgroup_facts(
    setting: str, mounts_text: str, unified_controllers: str | None
) -> tuple[int | None, frozenset[str], str]:
    """(version, controllers, why-none) from /proc/mounts and the unified root's
    ``cgroup.controllers``, decided as fcd-vmm decides (``jail.cgroup_version``)."""
    v1: set[str] = set()
    v2_mounted = False
    for line in mounts_text.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == "cgroup":
            v1.update(o for o in f[3].split(",") if o in _V1_NAMES)
        elif len(f) >= 4 and f[2] == "cgroup2":
            v2_mounted = True
    v2 = frozenset((unified_controllers or "").split())
    if setting == "2" or (setting == "auto" and {"cpu", "memory"} <= v2):
        if not v2_mounted and not v2:
            return None, frozenset(), "cgroup v2 is configured but not mounted"
        return 2, v2, ""
    if setting == "1" or (setting == "auto" and "memory" in v1):
        return 1, frozenset(v1), ""
    return None, frozenset(), "no cgroup2 root with cpu and memory, and no v1 memory hierarchy"


def _probe_cgroups(cfg: Config) -> Result:
    version, ctrls, why = cgroup_facts(
        cfg.jail.cgroup_version,
        _read("/proc/mounts") or "",
        _read("/sys/fs/cgroup/cgroup.controllers"),
    )
    return check_cgroups(version, ctrls, why)


def _probe_nftables() -> Result:
    try:
        import nftables

        nft = nftables.Nftables()
        rc, _out, err = nft.cmd("list tables")
    except Exception as e:
        return check_nftables(False, f"{type(e).__name__}: {e}")
    return check_nftables(rc == 0, err.strip())


def _probe_uids(cfg: Config) -> Result:
    lo, hi = cfg.jail.uid_min, cfg.jail.uid_max
    users = [p.pw_name for p in pwd.getpwall() if lo <= p.pw_uid <= hi]
    return check_subid_overlap(
        lo, hi, _read("/etc/subuid") or "", _read("/etc/subgid") or "", users
    )


def _probe_sockets(cfg: Config) -> list[Result]:
    api_uid, api_gids = _user(cfg.security.api_user)
    try:
        api_primary = grp.getgrgid(pwd.getpwnam(cfg.security.api_user).pw_gid).gr_name
    except KeyError:
        api_primary = cfg.security.api_user
    out = []
    for daemon in ("net", "storage", "vmm"):
        out.append(
            check_socket(
                f"fcd-{daemon}",
                probe_socket(cfg.socket(daemon)),
                group=api_primary,
                peer=cfg.security.api_user,
                peer_uid=api_uid,
                peer_gids=api_gids,
            )
        )
    out.append(
        check_socket(
            "fcd-api",
            probe_socket(cfg.socket("api")),
            group=cfg.security.api_group,
            peer=f"group {cfg.security.api_group}",
            peer_uid=None,
            peer_gids=(),
        )
    )
    if cfg.api.readonly_socket:
        out.append(
            check_socket(
                "fcd-api-ro",
                probe_socket(cfg.socket("api-ro")),
                group=cfg.security.readers_group,
                peer=f"group {cfg.security.readers_group}",
                peer_uid=None,
                peer_gids=(),
            )
        )
    return out


def run_all(cfg: Config) -> list[Result]:
    tun = os.path.exists("/dev/net/tun")
    checks: list[Callable[[], Result | list[Result]]] = [
        lambda: check_kvm(probe_kvm()),
        lambda: _probe_cgroups(cfg),
        _probe_nftables,
        lambda: check_tun(tun, tun and stat.S_ISCHR(os.stat("/dev/net/tun").st_mode)),
        lambda: check_forwarding(
            _read("/proc/sys/net/ipv4/ip_forward"),
            os.path.isdir("/sys/module/bridge"),
            _read("/proc/sys/net/bridge/bridge-nf-call-iptables"),
        ),
        lambda: probe_binary("firecracker", cfg.jail.firecracker),
        lambda: probe_binary("jailer", cfg.jail.jailer),
        lambda: _probe_uids(cfg),
        lambda: check_port_range(
            cfg.network.port_min,
            cfg.network.port_max,
            _read("/proc/sys/net/ipv4/ip_local_reserved_ports") or "",
            _read("/proc/sys/net/ipv4/ip_local_port_range") or "",
        ),
        lambda: probe_reflink(str(cfg.state("storage"))),
        lambda: _probe_sockets(cfg),
    ]
    out: list[Result] = []
    for fn in checks:
        try:
            got = fn()
        except Exception as e:  # a probe that breaks is itself a finding
            got = Result(getattr(fn, "__name__", "check"), Status.FAIL, f"probe failed: {e}")
        out.extend(got if isinstance(got, list) else [got])
    return out


def render(results: Sequence[Result]) -> str:
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        line = f"{r.status.value:<4}  {r.name:<{width}}  {r.detail}"
        if r.fix and r.status is not Status.PASS:
            line += f"\n      {'':<{width}}  fix: {r.fix}"
        lines.append(line)
    fails = sum(r.status is Status.FAIL for r in results)
    warns = sum(r.status is Status.WARN for r in results)
    lines.append(f"{len(results)} checks: {fails} FAIL, {warns} WARN")
    return "\n".join(lines)
