"""Jailer v1.7.0 argument parsing and validation (main.rs build_arg_parser + Env::new).

Pure: reads the filesystem only to canonicalize paths and find cgroup mounts, never writes.
Argument-parser errors are ``ArgError`` (exit 1); every other problem is ``JailerError``,
which the real jailer turns into a panic (abort, exit status 134 in a shell).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .cgroups import Cgroup, CgroupBuilder, JailerError

VERSION = "1.7.0"
DEFAULT_CHROOT_BASE = "/srv/jailer"
DEFAULT_NO_FILE = 2048

# name -> (takes_value, required, allow_multiple, default)
ARGS: dict[str, tuple[bool, bool, bool, str | None]] = {
    "id": (True, True, False, None),
    "exec-file": (True, True, False, None),
    "uid": (True, True, False, None),
    "gid": (True, True, False, None),
    "chroot-base-dir": (True, False, False, DEFAULT_CHROOT_BASE),
    "netns": (True, False, False, None),
    "daemonize": (False, False, False, None),
    "new-pid-ns": (False, False, False, None),
    "cgroup": (True, False, True, None),
    "resource-limit": (True, False, True, None),
    "cgroup-version": (True, False, False, "1"),
    "parent-cgroup": (True, False, False, None),
    "version": (False, False, False, None),
}


class ArgError(Exception):
    pass


@dataclass
class Parsed:
    values: dict[str, list[str]] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    extra: list[str] = field(default_factory=list)

    def single(self, name: str) -> str | None:
        got = self.values.get(name)
        if got:
            return got[0]
        return ARGS[name][3]


def parse_args(argv: list[str]) -> Parsed:
    """utils::arg_parser: ``--name value``, flags, repeatable args, ``--`` extra args."""
    args = argv[1:]
    out = Parsed()
    if "--" in args:
        out.extra = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    if "--help" in args:
        out.flags.add("help")
        return out
    if "--version" in args:
        out.flags.add("version")
        return out
    it = iter(args)
    for arg in it:
        if not arg.startswith("--"):
            raise ArgError(
                f"Found argument '{arg}' which wasn't expected, or isn't valid in this context."
            )
        name = arg[2:]
        if name not in ARGS:
            raise ArgError(
                f"Found argument '{name}' which wasn't expected, or isn't valid in this context."
            )
        takes_value, _req, multiple, _default = ARGS[name]
        if (name in out.values or name in out.flags) and not multiple:
            raise ArgError(f"The argument '{name}' was provided more than once.")
        if takes_value:
            value = next(it, None)
            if value is None or value.startswith("--"):
                raise ArgError(f"The argument '{name}' requires a value, but none was supplied.")
            out.values.setdefault(name, []).append(value)
        else:
            out.flags.add(name)
    for name, (_tv, required, _m, _d) in ARGS.items():
        if required and name not in out.values:
            raise ArgError(f"Argument '{name}' required, but not found.")
    return out


def validate_instance_id(instance_id: str) -> None:
    if not 1 <= len(instance_id) <= 64:
        raise JailerError(f"Invalid instance ID: Invalid len ({len(instance_id)})")
    for pos, ch in enumerate(instance_id):
        if not (ch.isascii() and (ch.isalnum() or ch == "-")):
            raise JailerError(f"Invalid instance ID: Invalid char ({ch}) at position {pos}")


def canonicalize(path: str) -> str:
    """std::fs::canonicalize: every component must exist."""
    try:
        os.stat(path)
    except OSError as e:
        raise JailerError(
            f"Failed to canonicalize path {path}: {os.strerror(e.errno or 0)} (os error {e.errno})"
        ) from None
    return os.path.realpath(path)


@dataclass
class Env:
    id: str
    exec_file: str  # canonical host path
    exec_name: str
    chroot_dir: str  # <base>/<exec_name>/<id>/root
    uid: int
    gid: int
    netns: str | None
    daemonize: bool
    new_pid_ns: bool
    cgroups: list[Cgroup]
    no_file: int
    fsize: int | None
    extra_args: list[str]


def _u32(raw: str, what: str) -> int:
    if not raw.isdigit() or int(raw) >= 1 << 32:
        raise JailerError(f"Invalid {what}: {raw}")
    return int(raw)


def build_env(args: Parsed, proc_mounts: str = "/proc/mounts") -> Env:  # noqa: PLR0912 -- the jailer's argument checks, in its own order
    instance_id = args.single("id") or ""
    validate_instance_id(instance_id)
    exec_file = canonicalize(args.single("exec-file") or "")
    if not os.path.isfile(exec_file):
        raise JailerError(f"{exec_file} is not a file")
    exec_name = os.path.basename(exec_file)
    if "firecracker" not in exec_name:
        raise JailerError(
            "Invalid filename. The filename of `--exec-file` option must contain "
            f'"firecracker": {exec_name}'
        )
    base = canonicalize(args.single("chroot-base-dir") or "")
    if not os.path.isdir(base):
        raise JailerError(f"{base} is not a directory")
    chroot_dir = os.path.join(base, exec_name, instance_id, "root")
    uid = _u32(args.single("uid") or "", "uid")
    gid = _u32(args.single("gid") or "", "gid")
    parent = args.single("parent-cgroup") or exec_name
    parts = parent.split("/")
    if parent.startswith("/") or any(p in (".", "..") for p in parts):
        raise JailerError(
            "Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'"
        )
    version_raw = args.single("cgroup-version") or "1"
    if version_raw not in ("1", "2"):
        raise JailerError(f"{version_raw} is an invalid cgroup version specifier")
    cgroups: list[Cgroup] = []
    builder: CgroupBuilder | None = None
    for spec in args.values.get("cgroup", []):
        aux = spec.split("=")
        if len(aux) != 2 or not aux[1]:
            raise JailerError(f"Invalid format for cgroups: {spec}")
        if builder is None:
            builder = CgroupBuilder(int(version_raw), proc_mounts)
        cgroups.append(builder.new_cgroup(aux[0], aux[1], instance_id, parent))
    no_file, fsize = DEFAULT_NO_FILE, None
    for spec in args.values.get("resource-limit", []):
        if "=" not in spec:
            raise JailerError(f"Invalid format for resources limits: {spec}")
        name, value = spec.split("=", 1)
        if not value.isdigit():
            raise JailerError(
                f"Invalid limit value for resource: {value}: invalid digit found in string"
            )
        if name == "fsize":
            fsize = int(value)
        elif name == "no-file":
            no_file = int(value)
        else:
            raise JailerError(f"Invalid resource argument: {name}")
    return Env(
        id=instance_id,
        exec_file=exec_file,
        exec_name=exec_name,
        chroot_dir=chroot_dir,
        uid=uid,
        gid=gid,
        netns=args.single("netns"),
        daemonize="daemonize" in args.flags,
        new_pid_ns="new-pid-ns" in args.flags,
        cgroups=cgroups,
        no_file=no_file,
        fsize=fsize,
        extra_args=args.extra,
    )
