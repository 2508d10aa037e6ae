"""Jailer cgroup handling (cgroup.rs): v1 per-controller hierarchies and the v2 unified tree."""

from __future__ import annotations

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


@dataclass
class Cgroup:
    version: int
    mount: str  # the controller's (v1) or the unified (v2) mount point
    controller: str
    file: str
    value: str
    path: str  # <mount>/<parent>/<id>

    def write_value(self) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise JailerError(f"Failed to create directory {self.path}: {_err(e)}") from None
        if self.version == 1 and self.controller == "cpuset":
            for name in ("cpuset.cpus", "cpuset.mems"):
                self._inherit(name)
        if self.version == 2:
            self._enable_in_ancestors()
        write_line(os.path.join(self.path, self.file), self.value)

    def _inherit(self, name: str) -> None:
        """Fill empty cpuset values down from the nearest ancestor that has one."""
        chain = []
        cur = self.path
        while cur != self.mount and cur.startswith(self.mount):
            chain.append(cur)
            cur = os.path.dirname(cur)
        value = read_line(os.path.join(self.mount, name))
        for level in reversed(chain):
            own = read_line(os.path.join(level, name))
            if own:
                value = own
            else:
                write_line(os.path.join(level, name), value)

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
            self.version, mount, controller, file, value, os.path.join(mount, parent, instance_id)
        )
