"""The per-VM log file store, used where no journald runs (``fcd up``, tests).

Under systemd every daemon logs to journald and ``FCD_VM_ID`` finds one VM's
records. Without it, each daemon also appends every record that names a VM to
``<state_dir>/logs/<daemon>/<vm_id>.ndjson`` — one JSON object per line
(:class:`Entry`) — so fcd-api can serve ``GET /v1/vms/{id}/logs`` the same way.
Each daemon writes only its own directory (no two writers share a file); a file
over ``max_bytes`` is renamed to ``<vm_id>.ndjson.1`` (replacing the older one)
and a new one started, so a VM keeps at most ``2 x max_bytes`` per daemon.

A deleted VM's files stay (its lines are still served), so the directory as a
whole is capped too, as journald caps its journal (``SystemMaxUse``): once its
files exceed ``max_total_bytes`` or it holds the files of more than ``max_vms``
VMs, the VMs written to least recently lose theirs, oldest first, until it is
under both caps again. The count of VMs bounds the inodes (a small file still
takes a block) and the one read of the directory the handler makes, when it
starts; after that it counts what it writes.

The guest console and Firecracker's own lines are records of fcd-vmm with
``FCD_SOURCE=console`` / ``firecracker``; everything else is ``fcd``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from .ids import is_vm_id
from .schema import Record

DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_TOTAL_BYTES = 256 << 20
"""Per daemon directory: 256 MiB, at most 1 GiB for the four daemons."""
DEFAULT_MAX_VMS = 10_000
"""Per daemon directory: the VMs whose files it keeps."""
MAX_OPEN = 64
SUFFIX = ".ndjson"


class Entry(Record, omit_defaults=True):
    """One log line about a VM: what the logs API returns, one JSON object per line."""

    time: float
    """Seconds since the epoch (UTC)."""
    source: str
    """``console`` (the guest's serial console), ``firecracker`` or ``fcd``."""
    message: str
    daemon: str = ""
    level: str = "info"
    request_id: str | None = None


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Entry)

_LEVELS = {
    logging.CRITICAL: "critical",
    logging.ERROR: "error",
    logging.WARNING: "warning",
    logging.INFO: "info",
    logging.DEBUG: "debug",
}


def daemon_dir(root: Path, daemon: str) -> Path:
    return root / daemon


def entry_of(record: logging.LogRecord, daemon: str, message: str) -> Entry:
    rid = getattr(record, "FCD_REQUEST_ID", None)
    return Entry(
        time=record.created,
        source=str(getattr(record, "FCD_SOURCE", "fcd")),
        message=message,
        daemon=daemon,
        level=_LEVELS.get(record.levelno, "info"),
        request_id=None if rid in (None, "-") else str(rid),
    )


class VmFileHandler(logging.Handler):
    """Appends the records that carry ``FCD_VM_ID`` to that VM's file of this daemon."""

    def __init__(
        self,
        root: Path,
        daemon: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        max_vms: int = DEFAULT_MAX_VMS,
    ) -> None:
        super().__init__()
        self.dir = daemon_dir(root, daemon)
        self.daemon = daemon
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.max_vms = max_vms
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._usage: collections.OrderedDict[str, list[int]] = collections.OrderedDict()
        """VM id -> [bytes in its current file, bytes in its rotated one], the VM
        written to least recently first. This daemon is the files' only writer: the
        sizes are known without an fstat per record."""
        self._total = 0
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self._index()

    def _index(self) -> None:
        """What the directory holds already (a restart), oldest file first."""
        found: list[tuple[int, str, bool, int]] = []
        with os.scandir(self.dir) as it:
            for e in it:
                rotated = e.name.endswith(SUFFIX + ".1")
                vm_id = e.name.removesuffix(".1").removesuffix(SUFFIX)
                if not (rotated or e.name.endswith(SUFFIX)) or not is_vm_id(vm_id):
                    continue
                with contextlib.suppress(OSError):
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        found.append((st.st_mtime_ns, vm_id, rotated, st.st_size))
        for _, vm_id, rotated, size in sorted(found):
            usage = self._usage.setdefault(vm_id, [0, 0])
            usage[1 if rotated else 0] = size
            self._usage.move_to_end(vm_id)
            self._total += size

    def emit(self, record: logging.LogRecord) -> None:
        vm_id = getattr(record, "FCD_VM_ID", None)
        if not isinstance(vm_id, str) or not is_vm_id(vm_id):
            return
        try:
            line = _enc.encode(entry_of(record, self.daemon, record.getMessage())) + b"\n"
            fd = self._fd(vm_id)
            os.write(fd, line)
            usage = self._usage[vm_id]
            usage[0] += len(line)
            self._total += len(line)
            if usage[0] > self.max_bytes:
                self._rotate(vm_id)
            if self._total > self.max_total_bytes or len(self._usage) > self.max_vms:
                self._prune(keep=vm_id)
        except Exception:
            self.handleError(record)

    def _fd(self, vm_id: str) -> int:
        fd = self._fds.get(vm_id)
        if fd is not None:
            self._fds.move_to_end(vm_id)
            self._usage.move_to_end(vm_id)
            return fd
        while len(self._fds) >= MAX_OPEN:
            os.close(self._fds.popitem(last=False)[1])
        path = self.dir / (vm_id + SUFFIX)
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
        )
        self._fds[vm_id] = fd
        usage = self._usage.setdefault(vm_id, [0, 0])
        self._usage.move_to_end(vm_id)
        size = os.fstat(fd).st_size
        self._total += size - usage[0]
        usage[0] = size
        return fd

    def _rotate(self, vm_id: str) -> None:
        path = self.dir / (vm_id + SUFFIX)
        os.replace(path, path.with_name(path.name + ".1"))
        os.close(self._fds.pop(vm_id))
        usage = self._usage[vm_id]
        self._total -= usage[1]
        usage[:] = [0, usage[0]]

    def _prune(self, keep: str) -> None:
        """Remove the files of the VMs written to least recently until the directory is
        under its caps (never ``keep``'s, the VM written to just now)."""
        while self._total > self.max_total_bytes or len(self._usage) > self.max_vms:
            vm_id = next(iter(self._usage))
            if vm_id == keep:
                return
            cur, rot = self._usage.pop(vm_id)
            self._total -= cur + rot
            fd = self._fds.pop(vm_id, None)
            if fd is not None:
                os.close(fd)
            path = self.dir / (vm_id + SUFFIX)
            for p in (path, path.with_name(path.name + ".1")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        super().close()


# --- reading (fcd-api) ------------------------------------------------------------------


def parse_lines(data: bytes) -> Iterator[Entry]:
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            yield _dec.decode(raw)
        except msgspec.DecodeError:
            continue  # a line cut by a crash mid-write


def vm_files(root: Path, vm_id: str) -> list[Path]:
    """Every daemon's current file for ``vm_id`` (rotated ones are read with them)."""
    if not is_vm_id(vm_id) or not root.is_dir():
        return []
    return sorted(d / (vm_id + SUFFIX) for d in root.iterdir() if d.is_dir())


def read_all(root: Path, vm_id: str) -> list[Entry]:
    """Every stored entry of the VM, oldest first (rotated file before current)."""
    out: list[Entry] = []
    for path in vm_files(root, vm_id):
        for p in (path.with_name(path.name + ".1"), path):
            with contextlib.suppress(FileNotFoundError):
                out.extend(parse_lines(p.read_bytes()))
    out.sort(key=lambda e: e.time)
    return out


@dataclass
class Tailer:
    """Follows one daemon's file of a VM across rotations: :meth:`poll` returns the
    entries appended since the last call (a rotation is noticed by the inode)."""

    path: Path
    ino: int | None = None
    offset: int = 0
    partial: bytes = field(default=b"")

    def start_at_end(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        self.ino, self.offset = st.st_ino, st.st_size

    def poll(self) -> list[Entry]:
        out: list[Entry] = []
        try:
            st: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self.ino is not None and (st is None or st.st_ino != self.ino):
            # rotated: finish the old file (now .1) if it is the one we read
            old = self.path.with_name(self.path.name + ".1")
            with contextlib.suppress(FileNotFoundError):
                if os.stat(old).st_ino == self.ino:
                    out += self._read(old)
            if st is None:  # the new file is not made yet: start it from 0
                self.ino, self.offset, self.partial = None, 0, b""
                return out
            self.ino, self.offset, self.partial = st.st_ino, 0, b""
        if st is None:
            return out
        if self.ino is None:
            self.ino = st.st_ino
        if st.st_size > self.offset:
            out += self._read(self.path)
        return out

    def _read(self, path: Path) -> list[Entry]:
        with open(path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        buf = self.partial + data
        complete, _, self.partial = buf.rpartition(b"\n")
        return list(parse_lines(complete))
