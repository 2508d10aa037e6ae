"""Request body schemas of Firecracker v1.7.0 (field names, order, types, defaults)."""

from __future__ import annotations

import ipaddress
import re

from .serde import (
    U8,
    U16,
    U32,
    U64,
    USIZE,
    AnyJson,
    Bool,
    Custom,
    Enum,
    F,
    Map,
    Opt,
    Seq,
    Str,
    Struct,
)

TOKEN_BUCKET = Struct(
    "TokenBucketConfig",
    {
        "size": F(U64, required=True),
        "one_time_burst": F(Opt(U64)),
        "refill_time": F(U64, required=True),
    },
    deny_unknown=False,
)
RATE_LIMITER = Struct(
    "RateLimiterConfig",
    {"bandwidth": F(Opt(TOKEN_BUCKET)), "ops": F(Opt(TOKEN_BUCKET))},
)

BOOT_SOURCE = Struct(
    "BootSourceConfig",
    {
        "kernel_image_path": F(Str(), required=True),
        "initrd_path": F(Opt(Str())),
        "boot_args": F(Opt(Str())),
    },
)

CPU_TEMPLATE = Enum("StaticCpuTemplate", ["C3", "T2", "T2S", "None", "T2CL", "T2A", "V1N1"])
HUGE_PAGES = Enum("HugePageConfig", ["None", "2M"])

MACHINE_CONFIG = Struct(
    "MachineConfig",
    {
        "vcpu_count": F(U8, required=True),
        "mem_size_mib": F(USIZE, required=True),
        "smt": F(Bool(), default=False),
        "cpu_template": F(Opt(CPU_TEMPLATE)),
        "track_dirty_pages": F(Bool(), default=False),
        "huge_pages": F(HUGE_PAGES, default="None"),
    },
)
MACHINE_CONFIG_UPDATE = Struct(
    "MachineConfigUpdate",
    {
        "vcpu_count": F(Opt(U8)),
        "mem_size_mib": F(Opt(USIZE)),
        "smt": F(Opt(Bool())),
        "cpu_template": F(Opt(CPU_TEMPLATE)),
        "track_dirty_pages": F(Opt(Bool())),
        "huge_pages": F(Opt(HUGE_PAGES)),
    },
)

DRIVE = Struct(
    "BlockDeviceConfig",
    {
        "drive_id": F(Str(), required=True),
        "partuuid": F(Opt(Str())),
        "is_root_device": F(Bool(), required=True),
        "cache_type": F(Enum("CacheType", ["Unsafe", "Writeback"]), default="Unsafe"),
        "is_read_only": F(Opt(Bool())),
        "path_on_host": F(Opt(Str())),
        "rate_limiter": F(Opt(RATE_LIMITER)),
        "io_engine": F(Opt(Enum("FileEngineType", ["Async", "Sync"]))),
        "socket": F(Opt(Str())),
    },
)
DRIVE_UPDATE = Struct(
    "BlockDeviceUpdateConfig",
    {
        "drive_id": F(Str(), required=True),
        "path_on_host": F(Opt(Str())),
        "rate_limiter": F(Opt(RATE_LIMITER)),
    },
)

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def _mac(text: str) -> str:
    if not _MAC.match(text):
        raise ValueError(f'invalid value: string "{text}", expected a MAC address')
    return text.lower()


NET = Struct(
    "NetworkInterfaceConfig",
    {
        "iface_id": F(Str(), required=True),
        "host_dev_name": F(Str(), required=True),
        "guest_mac": F(Opt(Custom(_mac))),
        "rx_rate_limiter": F(Opt(RATE_LIMITER)),
        "tx_rate_limiter": F(Opt(RATE_LIMITER)),
    },
)
NET_UPDATE = Struct(
    "NetworkInterfaceUpdateConfig",
    {
        "iface_id": F(Str(), required=True),
        "rx_rate_limiter": F(Opt(RATE_LIMITER)),
        "tx_rate_limiter": F(Opt(RATE_LIMITER)),
    },
)

LEVELS = {
    "off": "Off",
    "trace": "Trace",
    "debug": "Debug",
    "info": "Info",
    "warn": "Warn",
    "warning": "Warn",
    "error": "Error",
}


def _level(text: str) -> str:
    try:
        return LEVELS[text.lower()]
    except KeyError:
        raise ValueError(f"Failed to parse log level: {text}") from None


LOGGER = Struct(
    "LoggerConfig",
    {
        "log_path": F(Opt(Str())),
        "level": F(Opt(Custom(_level))),
        "show_level": F(Opt(Bool())),
        "show_log_origin": F(Opt(Bool())),
        "module": F(Opt(Str())),
    },
)

METRICS = Struct("MetricsConfig", {"metrics_path": F(Str(), required=True)}, deny_unknown=False)

ACTION = Struct(
    "ActionBody",
    {
        "action_type": F(
            Enum("ActionType", ["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]),
            required=True,
        )
    },
)

VM_STATE = Struct("Vm", {"state": F(Enum("VmState", ["Paused", "Resumed"]), required=True)})

SNAPSHOT_CREATE = Struct(
    "CreateSnapshotParams",
    {
        "snapshot_type": F(Enum("SnapshotType", ["Diff", "Full"]), default="Full"),
        "snapshot_path": F(Str(), required=True),
        "mem_file_path": F(Str(), required=True),
    },
)
MEM_BACKEND = Struct(
    "MemBackendConfig",
    {
        "backend_path": F(Str(), required=True),
        "backend_type": F(Enum("MemBackendType", ["File", "Uffd"]), required=True),
    },
)
SNAPSHOT_LOAD = Struct(
    "LoadSnapshotConfig",
    {
        "snapshot_path": F(Str(), required=True),
        "mem_file_path": F(Opt(Str())),
        "mem_backend": F(Opt(MEM_BACKEND)),
        "enable_diff_snapshots": F(Bool(), default=False),
        "resume_vm": F(Bool(), default=False),
    },
)

BALLOON = Struct(
    "BalloonDeviceConfig",
    {
        "amount_mib": F(U32, required=True),
        "deflate_on_oom": F(Bool(), required=True),
        "stats_polling_interval_s": F(U16, default=0),
    },
)
BALLOON_UPDATE = Struct("BalloonUpdateConfig", {"amount_mib": F(U32, required=True)})
BALLOON_STATS_UPDATE = Struct(
    "BalloonUpdateStatsConfig", {"stats_polling_interval_s": F(U16, required=True)}
)
VSOCK = Struct(
    "VsockDeviceConfig",
    {
        "vsock_id": F(Opt(Str())),
        "guest_cid": F(U32, required=True),
        "uds_path": F(Str(), required=True),
    },
)
ENTROPY = Struct("EntropyDeviceConfig", {"rate_limiter": F(Opt(RATE_LIMITER))})


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError("invalid IPv4 address syntax") from None


MMDS_CONFIG = Struct(
    "MmdsConfig",
    {
        "version": F(Enum("MmdsVersion", ["V1", "V2"]), default="V1"),
        "network_interfaces": F(Seq(Str()), required=True),
        "ipv4_address": F(Opt(Custom(_ipv4, "IPv4 address"))),
    },
)
ANY = AnyJson()
STR_MAP = Map(Str())
