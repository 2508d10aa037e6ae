"""fcd configuration: one TOML file decoded into msgspec Structs.

The file is ``/etc/fcd/fcd.toml`` unless ``FCD_CONFIG`` names another. Every
field has a default, so an empty (or missing) file is a valid configuration.
Unknown keys and bad values stop the daemon at start with a message naming the
field (``ConfigError: ... at `$.network.subnet```).

``FCD_FIRECRACKER`` and ``FCD_JAILER`` override the binary paths.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

DEFAULT_PATH = "/etc/fcd/fcd.toml"

PosInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class ConfigError(Exception):
    """The configuration file is unreadable or invalid; the message names the field."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


def _absolute(field: str, value: str) -> None:
    if not value.startswith("/"):
        raise ValueError(f"{field} must be an absolute path, got {value!r}")


class PathsConfig(_Section, frozen=True):
    state_dir: str = "/var/lib/fcd"
    """Persistent state; each daemon owns one subdirectory (api/, net/, storage/, vmm/)."""
    run_dir: str = "/run/fcd"
    """Sockets: api.sock, net.sock, storage.sock, vmm.sock."""
    chroot_base: str = "/srv/jailer"
    """The jailer's --chroot-base-dir."""

    def __post_init__(self) -> None:
        for name in ("state_dir", "run_dir", "chroot_base"):
            _absolute(name, getattr(self, name))


class NetworkConfig(_Section, frozen=True):
    bridge: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{1,15}\Z")] = "fcbr0"
    subnet: str = "172.30.0.0/16"
    """Guest pool; the first host address is the gateway on the bridge."""
    tap_prefix: Annotated[str, msgspec.Meta(pattern=r"^[a-z]{1,4}\Z")] = "fc"
    nft_table: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}\Z")] = "fcd"
    masquerade: bool = True
    port_min: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 20000
    port_max: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 29999
    """Host ports of port mappings come from [port_min, port_max] (``host_port: 0``
    picks a free one); a host port outside the range is refused."""
    gateway_services: list[Annotated[str, msgspec.Meta(pattern=r"^(tcp|udp)/[0-9]{1,5}\Z")]] = []
    """Host services a guest may reach on its gateway address ("udp/53", ...);
    ICMP echo to the gateway is always allowed, every other packet to the host dropped."""
    mode: Literal["bridge", "netns"] = "bridge"
    """Default network mode of a VM (a VM may ask for the other one)."""
    netns_prefix: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9]{0,5}-\Z")] = "fcvm-"
    """netns mode: per-VM namespaces are /run/netns/<prefix><digest of the id>."""
    veth_prefix: Annotated[str, msgspec.Meta(pattern=r"^[a-z]{1,4}\Z")] = "fv"
    veth_subnet: str = "172.29.0.0/16"
    """netns mode: each VM's veth pair gets a /31 from here (host side even, VM side odd)."""
    netns_subnet: str = "172.31.255.0/30"
    """netns mode: inside every VM namespace the TAP holds the first address, the guest
    the second -- identical for every clone."""
    localhost_port_mappings: bool = False
    """Port mappings also answer on 127.0.0.0/8 from the host itself. Off: only the
    host's other addresses are redirected, so a service that binds 127.0.0.1:<port>
    keeps its local clients, and ``route_localnet`` (which lets a guest address the
    host's loopback whenever fcd's nft table is missing) is never turned on."""
    allowable_cidrs: list[str] = []
    """CIDRs an API user may name in ``network_policy.allow`` (a rule must lie inside
    one of them). Empty (the default): ``allow`` can open nothing that fcd-net blocks
    by default -- no private range, no cloud metadata, no LAN."""
    allow_link_local: bool = False
    """Also let ``allow`` name link-local 169.254.0.0/16 (incl. cloud metadata
    169.254.169.254) -- only if ``allowable_cidrs`` covers it too."""
    allow_host_addresses: bool = False
    """Also let ``allow`` name one of the host's own addresses (checked by fcd-net)."""

    def __post_init__(self) -> None:
        nets: dict[str, ipaddress.IPv4Network] = {}
        for name in ("subnet", "veth_subnet", "netns_subnet"):
            try:
                nets[name] = ipaddress.IPv4Network(getattr(self, name), strict=True)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        if nets["subnet"].prefixlen > 29:
            raise ValueError("subnet must be /29 or larger")
        if nets["veth_subnet"].prefixlen > 30:
            raise ValueError("veth_subnet must be /30 or larger")
        if nets["netns_subnet"].prefixlen > 30:
            raise ValueError("netns_subnet must be /30 or larger")
        names = list(nets)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if nets[a].overlaps(nets[b]):
                    raise ValueError(f"{a} and {b} overlap")
        if self.port_min > self.port_max:
            raise ValueError("port_min must not exceed port_max")
        for i, cidr in enumerate(self.allowable_cidrs):
            try:
                ipaddress.IPv4Network(cidr, strict=True)
            except ValueError as e:
                raise ValueError(f"allowable_cidrs[{i}]: {e}") from None
        if self.veth_prefix == self.tap_prefix:
            raise ValueError("veth_prefix must differ from tap_prefix")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1


class JailConfig(_Section, frozen=True):
    firecracker: str = "/usr/local/bin/firecracker"
    jailer: str = "/usr/local/bin/jailer"
    uid_min: Annotated[int, msgspec.Meta(ge=1000, le=2**31)] = 900_000
    uid_max: Annotated[int, msgspec.Meta(ge=1000, le=2**31)] = 965_535
    """Each VM gets uid = gid from [uid_min, uid_max]; nothing else may use that range."""
    cgroup_version: Literal["auto", "1", "2"] = "auto"
    parent_cgroup: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]+\Z")] = "fcd"
    new_pid_ns: bool = True
    """Run Firecracker as init of its own pid namespace (jailer --new-pid-ns)."""
    firecracker_log_level: Literal["Error", "Warning", "Info", "Debug", "Trace"] = "Warning"
    """The level of Firecracker's own log (forwarded to the journal, ``FCD_SOURCE=
    firecracker``). Warning, Firecracker's documented default: at Info it echoes every
    API request with its body (boot arguments, MMDS data) -- 12 of the 14 lines of a
    boot, each a journal entry -- which fcd's own records of the same calls cover."""

    def __post_init__(self) -> None:
        _absolute("firecracker", self.firecracker)
        _absolute("jailer", self.jailer)
        if self.uid_min > self.uid_max:
            raise ValueError("uid_min must not exceed uid_max")


class LimitsConfig(_Section, frozen=True):
    max_vms: PosInt = 512
    max_vcpu: Annotated[int, msgspec.Meta(ge=1, le=32)] = 32
    max_mem_mib: PosInt = 65536
    max_disk_mib: PosInt = 1_048_576
    max_vm_disk_mib: PosInt = 2_097_152
    """Per-VM disk quota: the root disk plus the VM's own data drives (shared ones are free)."""
    max_drives: Annotated[int, msgspec.Meta(ge=0, le=16)] = 8
    """Extra drives per VM (data and shared read-only)."""
    rpc_timeout_s: Seconds = 30.0
    boot_timeout_s: Seconds = 10.0
    """How long to wait for the jailed Firecracker's API socket."""
    stop_timeout_s: Seconds = 10.0
    """After SendCtrlAltDel, wait this long before SIGKILL."""
    shutdown_grace_s: Seconds = 10.0
    """Graceful shutdown budget of every daemon on SIGTERM."""
    mem_overhead_mib: Annotated[int, msgspec.Meta(ge=0)] = 64
    """Added to a VM's memory for its cgroup memory limit (VMM + page tables)."""
    max_wait_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 600.0
    """The longest a create or start may hold its HTTP request waiting for the guest
    (``wait_timeout_s`` of a body, above it: 400 naming the field)."""


class StorageConfig(_Section, frozen=True):
    import_dirs: Annotated[list[str], msgspec.Meta(min_length=1, max_length=16)] = msgspec.field(
        default_factory=lambda: ["/var/lib/fcd/import"]
    )
    """The only directories template imports and builds read from (kernel, rootfs,
    source tree): a request naming a path anywhere else is refused. Nothing below
    them is reached through a symlink."""

    def __post_init__(self) -> None:
        for d in self.import_dirs:
            _absolute("import_dirs", d)
            if os.path.normpath(d) != d or d == "/":
                raise ValueError(f"import_dirs: {d!r} must be a normalized directory, not /")


class SecurityConfig(_Section, frozen=True):
    api_user: str = "fcd"
    """The user fcd-api runs as: the only non-root peer a helper accepts."""
    api_group: str = "fcd-users"
    """Members may use the public API socket."""
    readers_group: str = "fcd-readers"
    """Members may use the read-only API socket (api-ro.sock: GET routes and metrics)."""


class ApiConfig(_Section, frozen=True):
    readonly_socket: bool = True
    """Also serve the read-only socket ``<run_dir>/api-ro.sock`` (every mutation 403)."""
    metrics_listen: Annotated[
        str, msgspec.Meta(pattern=r"^(|[0-9A-Za-z.:\[\]-]+:[0-9]{1,5})\Z")
    ] = ""
    """``host:port`` of a TCP listener serving only ``GET /metrics`` (Prometheus text)
    for a scraper that cannot reach a Unix socket; empty (the default): none."""
    metrics_interval_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0
    """How often the per-VM usage behind ``/metrics`` is collected (one call per helper);
    a scrape serves the newest collection and never waits for one."""


class SupervisionConfig(_Section, frozen=True):
    """fcd-api's supervision: defaults of the per-VM health check and restart policy
    (a VM's spec overrides each), readiness, and reconciliation with the helpers."""

    health_check: Annotated[
        str, msgspec.Meta(pattern=r"^(|process|api|tcp:[0-9]{1,5}|serial:.{1,256})\Z")
    ] = ""
    """The check of a VM whose spec names none; "" = no health check."""
    health_interval_s: Seconds = 10.0
    health_timeout_s: Seconds = 2.0
    health_retries: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    health_start_period_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0
    restart_mode: Literal["no", "on-failure", "always"] = "no"
    restart_max_retries: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 3
    restart_backoff_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    """Before the first restart attempt; doubled for each further one."""
    restart_backoff_max_s: Seconds = 60.0
    wait_timeout_s: Seconds = 60.0
    """How long a create or start with ``wait_for`` waits for the guest by default."""
    reconcile_interval_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 60.0
    """fcd-api compares its registry with the helpers this often (and at start); 0 = at
    start only."""


class Config(_Section, frozen=True):
    paths: PathsConfig = msgspec.field(default_factory=PathsConfig)
    network: NetworkConfig = msgspec.field(default_factory=NetworkConfig)
    jail: JailConfig = msgspec.field(default_factory=JailConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    supervision: SupervisionConfig = msgspec.field(default_factory=SupervisionConfig)

    # Derived locations. Kept here so that every daemon agrees on them.
    def socket(self, daemon: Literal["api", "api-ro", "net", "storage", "vmm"]) -> Path:
        return _below(self.paths.run_dir, f"{daemon}.sock")

    def state(self, daemon: Literal["api", "net", "storage", "vmm"]) -> Path:
        return _below(self.paths.state_dir, daemon)


@functools.lru_cache(maxsize=64)
def _below(base: str, name: str) -> Path:
    """``base/name``, built once (a launch asks for these paths a dozen times)."""
    return Path(base) / name


def decode(data: bytes | str, *, source: str = "<config>") -> Config:
    """Decode TOML text into a Config; raise ConfigError naming the bad field."""
    try:
        return msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {e}") from None
    except msgspec.DecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None


def render(cfg: Config) -> str:
    """Render a Config as TOML (sections of scalars only; used for generated dev configs)."""
    out: list[str] = []
    for section, values in msgspec.to_builtins(cfg).items():
        out.append(f"[{section}]")
        for key, value in values.items():
            out.append(f"{key} = {msgspec.json.encode(value).decode()}")
        out.append("")
    return "\n".join(out)


def load(path: str | None = None) -> Config:
    """Load the config named by ``path``, ``$FCD_CONFIG`` or the default path.

    A missing file at the *default* path yields the defaults; a missing file
    that was asked for explicitly is an error. Environment overrides are
    applied last.
    """
    explicit = path or os.environ.get("FCD_CONFIG")
    target = Path(explicit or DEFAULT_PATH)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{target}: no such file") from None
        data = b""
    except OSError as e:
        raise ConfigError(f"{target}: {e.strerror}") from None
    cfg = decode(data, source=str(target))
    return apply_env(cfg)


def apply_env(cfg: Config, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    jail = cfg.jail
    fc, jl = env.get("FCD_FIRECRACKER"), env.get("FCD_JAILER")
    if fc or jl:
        try:
            jail = msgspec.structs.replace(
                jail, firecracker=fc or jail.firecracker, jailer=jl or jail.jailer
            )
            jail.__post_init__()
        except ValueError as e:
            raise ConfigError(f"FCD_FIRECRACKER/FCD_JAILER: {e}") from None
        return msgspec.structs.replace(cfg, jail=jail)
    return cfg
