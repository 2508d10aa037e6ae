"""Jailer cgroup handling (cgroup.rs): v1 per-controller hierarchies and the v2 unified tree."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass


class JailerError(Exception):
    """A jailer Error variant; ``str()`` is its Display text."""


def _err(e: OSError) -> str:
    return f"{os.strerror(e.errno or 0)} (os error {e.errno})"


def _mounts(proc_mounts: str) -> list[list[str]]:
    try:
        with open(proc_mounts) as f:
            return [line.split() for line in f if line.strip()]
    except OSError as e:
        raise JailerError(f"Failed to open file {proc_mounts}: {_err(e)}") from None


def write_line(path: str, value: str) -> None:
    """writeln_special: the value plus a newline."""
    try:
        with open(path, "w") as f:
            f.write(f"{value}\n")
    except OSError as e:
        raise JailerError(f"Failed to write to {path}: {_err(e)}") from None


def read_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().rstrip("\n")
    except OSError as e:
        raise JailerError(f"Failed to read file {path} into a string: {_err(e)}") from None


# Rust's io::ErrorKind for the errnos a cgroup write gives (std's decode_error_kind)
_KINDS = {
    errno.EPERM: "PermissionDenied",
    errno.EACCES: "PermissionDenied",
    errno.ENOENT: "NotFound",
    errno.EINVAL: "InvalidInput",
    errno.EBUSY: "ResourceBusy",
    errno.ENOSPC: "StorageFull",
    errno.EROFS: "ReadOnlyFilesystem",
    errno.ENOTDIR: "NotADirectory",
    errno.EISDIR: "IsADirectory",
    errno.EEXIST: "AlreadyExists",
}


class CgroupWritePanic(Exception):
    """A failed cgroup file write: v1.7.0 unwraps it (env.rs), a panic, not an Error."""

    AT = "src/jailer/src/env.rs:622:34"


def _write_or_panic(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(f"{value}\n")
    except OSError as e:
        n = e.errno or 0
        kind = _KINDS.get(n, "Uncategorized")
        raise CgroupWritePanic(
            f'Write("{path}", Os {{ code: {n}, kind: {kind}, message: "{os.strerror(n)}" }})'
        ) from None


@dataclass
class Cgroup:
    version: int
    mount: str  # the controller's (v1) or the unified (v2) mount point
    controller: str
    file: str
    value: str
    path: str  # <mount>/<parent>/<id>
    depth: int = 0  # components of --parent-cgroup: how far up a value is looked for

    def write_value(self) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise JailerError(f"Failed to create directory {self.path}: {_err(e)}") from None
        if self.version == 1:
            # v1: every file's value is first copied down from the parent (cpuset.cpus
            # must not be empty; cpuacct.usage of a parent that ran anything is not 0,
            # which the kernel refuses: the real jailer panics on that write)
            names = ("cpuset.cpus", "cpuset.mems") if self.controller == "cpuset" else ()
            for name in dict.fromkeys((*names, self.file)):
                self._inherit(name, self.path, self.depth)
        else:
            self._enable_in_ancestors()
        _write_or_panic(os.path.join(self.path, self.file), self.value)

    def _inherit(self, name: str, path: str, depth: int) -> None:
        """inherit_from_parent_aux: the parent's line, fetched from further up while it
        is empty (at most ``depth`` levels), is written into ``path``'s file."""
        parent_file = os.path.join(os.path.dirname(path), name)
        line = read_line(parent_file)
        if not line:
            if depth <= 0:
                raise JailerError(
                    f"Failed to inherit cgroups configurations from parent: {parent_file}"
                )
            self._inherit(name, os.path.dirname(path), depth - 1)
            line = read_line(parent_file)
        _write_or_panic(os.path.join(path, name), line)

    def _enable_in_ancestors(self) -> None:
        rel = os.path.relpath(os.path.dirname(self.path), self.mount)
        cur = self.mount
        levels = [cur] + [cur := os.path.join(cur, p) for p in rel.split("/") if p != "."]
        for level in levels:
            write_line(os.path.join(level, "cgroup.subtree_control"), f"+{self.controller}")

    def attach_pid(self, pid: int) -> None:
        name = "tasks" if self.version == 1 else "cgroup.procs"
        write_line(os.path.join(self.path, name), str(pid))


class CgroupBuilder:
    def __init__(self, version: int, proc_mounts: str = "/proc/mounts") -> None:
        self.version = version
        self.mounts = _mounts(proc_mounts)
        self.proc_mounts = proc_mounts
        self.unified: str | None = None
        if version == 2:
            for m in self.mounts:
                if len(m) > 2 and m[2] == "cgroup2":
                    self.unified = m[1]
                    break
            if self.unified is None:
                raise JailerError("Hierarchy not found: cgroup2")
            ctl = read_line(os.path.join(self.unified, "cgroup.controllers"))
            self.available = set(ctl.split())

    def _v1_mount(self, controller: str) -> str:
        for m in self.mounts:
            if len(m) > 3 and m[2] == "cgroup" and controller in m[3].split(","):
                return m[1]
        raise JailerError(f"{controller} configurations not found in {self.proc_mounts}")

    def new_cgroup(self, file: str, value: str, instance_id: str, parent: str) -> Cgroup:
        parts = file.split(".")
        if len(parts) < 2 or not all(parts) or "/" in file:
            raise JailerError(f"Cgroup invalid file: {file}")
        controller = parts[0]
        if self.version == 1:
            mount = self._v1_mount(controller)
        else:
            assert self.unified is not None
            if controller not in self.available:
                raise JailerError(f"Controller {controller} is unavailable")
            mount = self.unified
        return Cgroup(
            self.version,
            mount,
            controller,
            file,
            value,
            os.path.join(mount, parent, instance_id),
            depth=len([p for p in parent.split("/") if p]),
        )
