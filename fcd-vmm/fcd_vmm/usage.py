"""A VM's resource usage: its cgroup, Firecracker's RSS and Firecracker's metrics lines.

Everything is read by root from places a jail can reach, so nothing here follows a
path: each directory is opened with ``O_NOFOLLOW|O_DIRECTORY`` relative to the one
above it (the cgroup mount, the root-owned jail directory), and each file with
``O_NOFOLLOW|O_NONBLOCK`` relative to that. The metrics file sits in the chroot,
which the jail uid owns: it must still be a regular file of the jail uid with one
link, or it is not read (a jail could otherwise swap in a link to a host file).

Firecracker's counters are deltas since its previous line (FIRECRACKER.md §5), so
the totals are the sum over every line of the file. :class:`MetricsTail` keeps
that sum and the offset it has read to, per VM, and reads only what was appended
since; after an fcd-vmm restart it sums the file from the start again. A file
grown past :data:`MAX_READ` unread bytes is summed over its last part only (and
the reply says so).

Pure parsers (``parse_*``) are apart from the thin readers for tests.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from fcd_common.proto.usage import CgroupUsage, DriveIo, FirecrackerNetIo

from .cgroups import Mount
from .plan import METRICS_FILE, CgroupVersion, JailPaths

__all__ = [
    "MAX_READ",
    "MetricsTail",
    "Totals",
    "iso",
    "parse_cgroup_v1",
    "parse_cgroup_v2",
    "parse_metrics_lines",
    "parse_proc_cpu",
    "parse_rss",
    "read_cgroup",
    "read_rss",
    "with_process_cpu",
]

MAX_READ = 8 << 20
"""Unread bytes of a metrics file summed at most (about 1,500 lines); older lines of a
longer backlog are skipped (and the reply says so)."""
MIN_CHUNK = 64 << 10
"""A read is never cut below this (a line is ~5 KiB), so every call makes progress."""
V1_UNLIMITED = 1 << 62
"""cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything above this is that."""
USER_HZ = os.sysconf("SC_CLK_TCK")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- cgroup ----------------------------------------------------------------------------


def _kv(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_cgroup_v1(files: dict[str, str], sampled_at: str) -> CgroupUsage:
    """From the v1 files present: ``cpuacct.usage`` (ns), ``cpuacct.stat`` (USER_HZ
    ticks), ``cpu.stat`` (``throttled_time`` ns), ``memory.usage_in_bytes``,
    ``memory.limit_in_bytes``."""
    acct = _kv(files.get("cpuacct.stat", ""))
    cpu = _kv(files.get("cpu.stat", ""))
    tick_ns = 1_000_000_000 // USER_HZ
    limit = _int(files.get("memory.limit_in_bytes"))
    return CgroupUsage(
        sampled_at=sampled_at,
        version=1,
        cpu_usage_ns=_int(files.get("cpuacct.usage")),
        cpu_user_ns=acct["user"] * tick_ns if "user" in acct else None,
        cpu_system_ns=acct["system"] * tick_ns if "system" in acct else None,
        cpu_throttled_ns=cpu.get("throttled_time"),
        cpu_throttled_periods=cpu.get("nr_throttled"),
        memory_usage_bytes=_int(files.get("memory.usage_in_bytes")),
        memory_limit_bytes=None if limit is None or limit >= V1_UNLIMITED else limit,
    )


def parse_cgroup_v2(files: dict[str, str], sampled_at: str) -> CgroupUsage:
    """From ``cpu.stat`` (µs), ``memory.current`` and ``memory.max`` (``max``: None)."""
    cpu = _kv(files.get("cpu.stat", ""))

    def ns(key: str) -> int | None:
        return cpu[key] * 1000 if key in cpu else None

    return CgroupUsage(
        sampled_at=sampled_at,
        version=2,
        cpu_usage_ns=ns("usage_usec"),
        cpu_user_ns=ns("user_usec"),
        cpu_system_ns=ns("system_usec"),
        cpu_throttled_ns=ns("throttled_usec"),
        cpu_throttled_periods=cpu.get("nr_throttled"),
        memory_usage_bytes=_int(files.get("memory.current")),
        memory_limit_bytes=_int(files.get("memory.max")),
    )


_V1_FILES = {
    "cpuacct": ("cpuacct.usage", "cpuacct.stat"),
    "cpu": ("cpu.stat",),
    "memory": ("memory.usage_in_bytes", "memory.limit_in_bytes"),
}
_V2_FILES = ("cpu.stat", "memory.current", "memory.max")


def _open_under(base: Path, *names: str) -> int:
    """A directory fd for ``base/names...``, each step opened without following links."""
    fd = os.open(base, _DIR)
    try:
        for name in names:
            nxt = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_at(dir_fd: int, name: str, limit: int = 65536) -> str | None:
    try:
        fd = os.open(name, _FILE, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def cgroup_dirs(version: CgroupVersion, mounts: Iterable[Mount]) -> dict[str, Path]:
    """Mount point per v1 controller we read (``cpuacct``, ``cpu``, ``memory``); v2: ``""``."""
    out: dict[str, Path] = {}
    for m in mounts:
        if version == 2 and m.fstype == "cgroup2":
            out.setdefault("", m.path)
        elif version == 1 and m.fstype == "cgroup":
            for ctrl in _V1_FILES:
                if ctrl in m.options:
                    out.setdefault(ctrl, m.path)
    return out


def read_cgroup(
    version: CgroupVersion, dirs: dict[str, Path], parent: str, vm_id: str
) -> tuple[CgroupUsage | None, str | None]:
    """The VM's cgroup files; (None, why) if its directory is in no hierarchy."""
    now = iso(datetime.now(UTC).timestamp())
    files: dict[str, str] = {}
    found = False
    wanted = {"": _V2_FILES} if version == 2 else _V1_FILES
    for ctrl, names in wanted.items():
        base = dirs.get(ctrl)
        if base is None:
            continue
        try:
            fd = _open_under(base, parent, vm_id)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            continue
        found = True
        try:
            for name in names:
                text = _read_at(fd, name)
                if text is not None:
                    files[name] = text
        finally:
            os.close(fd)
    if not found:
        return None, f"cgroup {parent}/{vm_id} not found (v{version})"
    parse = parse_cgroup_v2 if version == 2 else parse_cgroup_v1
    return parse(files, now), None


# --- RSS -------------------------------------------------------------------------------


def parse_rss(status_text: str) -> int | None:
    """``VmRSS:  1234 kB`` of /proc/PID/status, in bytes."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def parse_proc_cpu(stat_text: str) -> tuple[int, int] | None:
    """(user, system) nanoseconds of every thread of the process, live and exited,
    from /proc/PID/stat (``utime`` and ``stime``, fields 14 and 15, in USER_HZ ticks)."""
    rest = stat_text.rpartition(")")[2].split()
    if len(rest) < 13 or not (rest[11].isdigit() and rest[12].isdigit()):
        return None
    tick_ns = 1_000_000_000 // USER_HZ
    return int(rest[11]) * tick_ns, int(rest[12]) * tick_ns


def with_process_cpu(cg: CgroupUsage, pid: int) -> CgroupUsage:
    """``cg`` with its CPU time from the Firecracker process where the hierarchy has no
    cpuacct for the VM (v1 with cpuacct mounted apart): the jail's only process is
    Firecracker, so its times are the cgroup's."""
    if cg.cpu_usage_ns is not None:
        return cg
    try:
        times = parse_proc_cpu(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return cg
    if times is None:
        return cg
    user, system = times
    return msgspec.structs.replace(
        cg, cpu_usage_ns=user + system, cpu_user_ns=user, cpu_system_ns=system
    )


def read_rss(pid: int) -> int | None:
    try:
        return parse_rss(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


# --- Firecracker's metrics -------------------------------------------------------------

_DRIVE_KEYS = {
    "read_bytes": "read_bytes",
    "write_bytes": "write_bytes",
    "read_count": "read_ops",
    "write_count": "write_ops",
    "flush_count": "flush_ops",
}
_NET_KEYS = {
    "rx_bytes_count": "rx_bytes",
    "rx_packets_count": "rx_packets",
    "rx_fails": "rx_fails",
    "tx_bytes_count": "tx_bytes",
    "tx_packets_count": "tx_packets",
    "tx_fails": "tx_fails",
    "tx_malformed_frames": "tx_dropped",
    "tx_spoofed_mac_count": "tx_dropped",
}
_decoder = msgspec.json.Decoder(dict[str, object])


@dataclass
class Totals:
    """Sums over the lines read so far."""

    drives: dict[str, dict[str, int]] = field(default_factory=dict)
    nets: dict[str, dict[str, int]] = field(default_factory=dict)
    last_ms: int | None = None
    lines: int = 0
    bad_lines: int = 0

    def add(self, obj: dict[str, object]) -> None:
        ts = obj.get("utc_timestamp_ms")
        if isinstance(ts, int) and ts >= 0:
            self.last_ms = ts
        self.lines += 1
        for key, group in obj.items():
            if not isinstance(group, dict):
                continue
            if key.startswith("block_"):
                _sum_into(self.drives.setdefault(key[6:], {}), group, _DRIVE_KEYS)
            elif key.startswith("net_"):
                _sum_into(self.nets.setdefault(key[4:], {}), group, _NET_KEYS)

    def drive_io(self) -> list[DriveIo]:
        return [DriveIo(drive_id=k, **v) for k, v in sorted(self.drives.items())]

    def net_io(self) -> list[FirecrackerNetIo]:
        return [FirecrackerNetIo(iface_id=k, **v) for k, v in sorted(self.nets.items())]


def _sum_into(acc: dict[str, int], group: dict[str, object], keys: dict[str, str]) -> None:
    for src, dst in keys.items():
        v = group.get(src)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            acc[dst] = acc.get(dst, 0) + v
        else:
            acc.setdefault(dst, 0)


def parse_metrics_lines(data: bytes) -> Iterator[dict[str, object] | None]:
    """Each complete line as an object (None for a line that is not one)."""
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            yield _decoder.decode(raw)
        except msgspec.DecodeError:
            yield None


@dataclass
class _FileState:
    ino: tuple[int, int]
    offset: int = 0
    totals: Totals = field(default_factory=Totals)
    truncated: bool = False


def _open_metrics(paths: JailPaths, uid: int) -> tuple[int | None, str | None]:
    """The jail's metrics file, only if it is still the regular file fcd-vmm made for uid."""
    try:
        dir_fd = _open_under(paths.jail_dir, "root")
    except OSError as e:
        return None, f"jail of {paths.vm_id}: {e.strerror}"
    try:
        fd = os.open(METRICS_FILE, _FILE, dir_fd=dir_fd)
    except OSError as e:
        return None, f"{METRICS_FILE}: {e.strerror}"
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_nlink != 1:
        os.close(fd)
        return None, f"{METRICS_FILE} is not the file fcd-vmm made; not read"
    return fd, None


class MetricsTail:
    """Per-VM running sums of Firecracker's metrics file."""

    def __init__(self) -> None:
        self._files: dict[str, _FileState] = {}
        self._lock = threading.Lock()

    def forget(self, vm_id: str) -> None:
        with self._lock:
            self._files.pop(vm_id, None)

    def retain(self, vm_ids: set[str]) -> None:
        """Drop the sums of VMs no longer live (their next file starts a new sum)."""
        with self._lock:
            for vm_id in [v for v in self._files if v not in vm_ids]:
                del self._files[vm_id]

    def read(
        self, paths: JailPaths, uid: int, limit: int | None = None
    ) -> tuple[Totals | None, str | None, int]:
        """Read what was appended since the last call, at most ``limit`` bytes of it
        (default :data:`MAX_READ`; the rest waits for the next call); (totals, problem,
        bytes read). Thread-safe: concurrent calls never count a line twice."""
        with self._lock:
            return self._read(paths, uid, MAX_READ if limit is None else max(MIN_CHUNK, limit))

    def _read(
        self, paths: JailPaths, uid: int, limit: int
    ) -> tuple[Totals | None, str | None, int]:
        fd, problem = _open_metrics(paths, uid)
        if fd is None:
            return None, problem, 0
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            state = self._files.get(paths.vm_id)
            if state is None or state.ino != key or st.st_size < state.offset:
                state = _FileState(ino=key)
                self._files[paths.vm_id] = state
            skip = st.st_size - state.offset > MAX_READ
            if skip:  # history too long to sum: only its end
                state.offset = st.st_size - MAX_READ
                state.truncated = True
            want = min(st.st_size - state.offset, limit)
            data = os.pread(fd, want, state.offset)
            behind = st.st_size - state.offset - len(data)
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        chunk = data[:end]
        if skip:  # began mid-file: drop the partial first line
            chunk = chunk[chunk.find(b"\n") + 1 :]
        state.offset += end
        for obj in parse_metrics_lines(chunk):
            if obj is None:
                state.totals.bad_lines += 1
            else:
                state.totals.add(obj)
        problem = None
        if state.truncated:
            problem = f"{METRICS_FILE} grew past {MAX_READ} unread bytes: only its end is summed"
        elif behind > 0:
            problem = f"{METRICS_FILE}: {behind} bytes not summed yet (read on the next call)"
        return state.totals, problem, len(data)
