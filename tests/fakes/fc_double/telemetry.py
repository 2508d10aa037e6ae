"""Firecracker's logger and metrics sinks (v1.7 semantics).

Log lines: ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnn [<id>:<thread>(:LEVEL)(:file:line)] message``,
to stdout until ``PUT /logger`` (or ``--log-path``) names a file or FIFO that must already
exist. Metrics: one compact JSON object per line, first key ``utc_timestamp_ms``, counters
reset at every flush.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from typing import Any

LEVEL_RANK = {"Off": 0, "Error": 1, "Warn": 2, "Info": 3, "Debug": 4, "Trace": 5}
LEVEL_TAG = {"Error": "ERROR", "Warn": "WARN", "Info": "INFO", "Debug": "DEBUG", "Trace": "TRACE"}


def io_error(e: OSError) -> str:
    """Rust's ``io::Error`` Display: ``No such file or directory (os error 2)``."""
    code = e.errno or 0
    return f"{os.strerror(code)} (os error {code})"


def open_sink(path: str) -> int:
    """Open like FcLineWriter in v1.7: read+write, non-blocking, never created."""
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


class Logger:
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.level = "Info"
        self.show_level = False
        self.show_origin = False
        self.module: str | None = None
        self.fd: int | None = None
        self.missed = 0

    def configure(self, cfg: dict[str, Any]) -> None:
        """Apply a LoggerConfig; raise OSError if the path cannot be opened."""
        if cfg.get("log_path") is not None:
            fd = open_sink(cfg["log_path"])
            if self.fd is not None:
                os.close(self.fd)
            self.fd = fd
        if cfg.get("level") is not None:
            self.level = cfg["level"]
        if cfg.get("show_level") is not None:
            self.show_level = cfg["show_level"]
        if cfg.get("show_log_origin") is not None:
            self.show_origin = cfg["show_log_origin"]
        if cfg.get("module") is not None:
            self.module = cfg["module"]

    def log(
        self,
        level: str,
        msg: str,
        thread: str = "main",
        origin: str = "src/vmm/src/lib.rs:1",
        module: str = "vmm",
    ) -> None:
        if LEVEL_RANK[level] > LEVEL_RANK[self.level]:
            return
        if self.module is not None and not module.startswith(self.module):
            return
        now = time.time_ns()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now // 1_000_000_000))
        tag = f"{self.instance_id}:{thread}"
        if self.show_level:
            tag += f":{LEVEL_TAG[level]}"
        if self.show_origin:
            tag += f":{origin}"
        line = f"{stamp}.{now % 1_000_000_000:09d} [{tag}] {msg}\n".encode()
        if self.fd is None:
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
            except (OSError, ValueError):
                self.missed += 1
            return
        try:
            os.write(self.fd, line)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EPIPE):
                self.missed += 1
            else:
                raise

    def info(self, msg: str, *, thread: str = "main") -> None:
        self.log("Info", msg, thread)

    def warn(self, msg: str, *, thread: str = "main") -> None:
        self.log("Warn", msg, thread)

    def error(self, msg: str, *, thread: str = "main") -> None:
        self.log("Error", msg, thread)


_GROUPS: dict[str, list[str]] = {
    # v1.7.0's layout, key for key (checked against /opt/fc17/firecracker's own lines);
    # a name ending in ``_agg`` is a latency aggregate {min_us, max_us, sum_us}.
    "api_server": [
        "process_startup_time_us",
        "process_startup_time_cpu_us",
        "sync_response_fails",
        "sync_vmm_send_timeout_count",
    ],
    "balloon": [
        "activate_fails",
        "inflate_count",
        "stats_updates_count",
        "stats_update_fails",
        "deflate_count",
        "event_fails",
    ],
    "block": [
        "activate_fails",
        "cfg_fails",
        "no_avail_buffer",
        "event_fails",
        "execute_fails",
        "invalid_reqs_count",
        "flush_count",
        "queue_event_count",
        "rate_limiter_event_count",
        "update_count",
        "update_fails",
        "read_bytes",
        "write_bytes",
        "read_count",
        "write_count",
        "read_agg",
        "write_agg",
        "rate_limiter_throttled_events",
        "io_engine_throttled_events",
        "remaining_reqs_count",
    ],
    "deprecated_api": [
        "deprecated_http_api_calls",
        "deprecated_cmd_line_api_calls",
    ],
    "get_api_requests": [
        "instance_info_count",
        "machine_cfg_count",
        "mmds_count",
        "vmm_version_count",
    ],
    "i8042": [
        "error_count",
        "missed_read_count",
        "missed_write_count",
        "read_count",
        "reset_count",
        "write_count",
    ],
    "uart": [
        "error_count",
        "flush_count",
        "missed_read_count",
        "missed_write_count",
        "read_count",
        "write_count",
    ],
    "logger": [
        "missed_metrics_count",
        "metrics_fails",
        "missed_log_count",
        "log_fails",
    ],
    "mmds": [
        "rx_accepted",
        "rx_accepted_err",
        "rx_accepted_unusual",
        "rx_bad_eth",
        "rx_count",
        "tx_bytes",
        "tx_count",
        "tx_errors",
        "tx_frames",
        "connections_created",
        "connections_destroyed",
    ],
    "net": [
        "activate_fails",
        "cfg_fails",
        "mac_address_updates",
        "no_rx_avail_buffer",
        "no_tx_avail_buffer",
        "event_fails",
        "rx_queue_event_count",
        "rx_event_rate_limiter_count",
        "rx_partial_writes",
        "rx_rate_limiter_throttled",
        "rx_tap_event_count",
        "rx_bytes_count",
        "rx_packets_count",
        "rx_fails",
        "rx_count",
        "tap_read_fails",
        "tap_write_fails",
        "tap_write_agg",
        "tx_bytes_count",
        "tx_malformed_frames",
        "tx_fails",
        "tx_count",
        "tx_packets_count",
        "tx_partial_reads",
        "tx_queue_event_count",
        "tx_rate_limiter_event_count",
        "tx_rate_limiter_throttled",
        "tx_spoofed_mac_count",
        "tx_remaining_reqs_count",
    ],
    "patch_api_requests": [
        "drive_count",
        "drive_fails",
        "network_count",
        "network_fails",
        "machine_cfg_count",
        "machine_cfg_fails",
        "mmds_count",
        "mmds_fails",
    ],
    "put_api_requests": [
        "actions_count",
        "actions_fails",
        "boot_source_count",
        "boot_source_fails",
        "drive_count",
        "drive_fails",
        "logger_count",
        "logger_fails",
        "machine_cfg_count",
        "machine_cfg_fails",
        "cpu_cfg_count",
        "cpu_cfg_fails",
        "metrics_count",
        "metrics_fails",
        "network_count",
        "network_fails",
        "mmds_count",
        "mmds_fails",
        "vsock_count",
        "vsock_fails",
    ],
    "seccomp": [
        "num_faults",
    ],
    "vcpu": [
        "exit_io_in",
        "exit_io_out",
        "exit_mmio_read",
        "exit_mmio_write",
        "failures",
        "exit_io_in_agg",
        "exit_io_out_agg",
        "exit_mmio_read_agg",
        "exit_mmio_write_agg",
    ],
    "vmm": [
        "device_events",
        "panic_count",
    ],
    "signals": [
        "sigbus",
        "sigsegv",
        "sigxfsz",
        "sigxcpu",
        "sigpipe",
        "sighup",
        "sigill",
    ],
    "vsock": [
        "activate_fails",
        "cfg_fails",
        "rx_queue_event_fails",
        "tx_queue_event_fails",
        "ev_queue_event_fails",
        "muxer_event_fails",
        "conn_event_fails",
        "rx_queue_event_count",
        "tx_queue_event_count",
        "rx_bytes_count",
        "tx_bytes_count",
        "rx_packets_count",
        "tx_packets_count",
        "conns_added",
        "conns_killed",
        "conns_removed",
        "killq_resync",
        "tx_flush_fails",
        "tx_write_fails",
        "rx_read_fails",
    ],
    "entropy": [
        "activate_fails",
        "entropy_event_fails",
        "entropy_event_count",
        "entropy_bytes",
        "host_rng_fails",
        "entropy_rate_limiter_throttled",
        "rate_limiter_event_count",
    ],
}
_ORDER = [
    "api_server",
    "balloon",
    "block_*",
    "block",
    "deprecated_api",
    "get_api_requests",
    "i8042",
    "uart",
    "latencies_us",
    "logger",
    "mmds",
    "net_*",
    "net",
    "patch_api_requests",
    "put_api_requests",
    "seccomp",
    "vcpu",
    "vmm",
    "signals",
    "vsock",
    "entropy",
]
"""Top-level keys in the real order; ``block_*``/``net_*``: one per device, before the sum."""
_STORED = {"process_startup_time_us", "process_startup_time_cpu_us"}
"""Stored values (absolute); every other number is a counter reported as a delta."""
_LATENCIES = [
    "full_create_snapshot",
    "diff_create_snapshot",
    "load_snapshot",
    "pause_vm",
    "resume_vm",
    "vmm_full_create_snapshot",
    "vmm_diff_create_snapshot",
    "vmm_load_snapshot",
    "vmm_pause_vm",
    "vmm_resume_vm",
]


class Metrics:
    def __init__(self, startup_us: int, startup_cpu_us: int) -> None:
        self.fd: int | None = None
        self.counters: dict[str, dict[str, int]] = {}
        self.latencies: dict[str, int] = dict.fromkeys(_LATENCIES, 0)
        self.startup = {
            "process_startup_time_us": startup_us,
            "process_startup_time_cpu_us": startup_cpu_us,
        }
        self.block_ids: list[str] = []
        self.net_ids: list[str] = []

    def inc(self, group: str, name: str, by: int = 1) -> None:
        g = self.counters.setdefault(group, {})
        g[name] = g.get(name, 0) + by

    def inc_device(self, kind: str, dev_id: str, name: str, by: int = 1) -> None:
        """A device counter: the device's own entry and the sum over devices move together."""
        self.inc(f"{kind}_{dev_id}", name, by)
        self.inc(kind, name, by)

    def _group(self, key: str, fields: list[str]) -> dict[str, Any]:
        got = self.counters.get(key, {})
        out: dict[str, Any] = {}
        for f in fields:
            if f in _STORED:
                out[f] = self.startup[f]
            elif f.endswith("_agg"):
                out[f] = {"min_us": 0, "max_us": 0, "sum_us": 0}
            else:
                out[f] = got.get(f, 0)
        return out

    def snapshot(self) -> dict[str, Any]:
        """The next metrics object; counters are reported as the change since the last one."""
        out: dict[str, Any] = {"utc_timestamp_ms": time.time_ns() // 1_000_000}
        for name in _ORDER:
            if name == "latencies_us":
                out[name] = dict(self.latencies)
            elif name.endswith("_*"):
                kind = name[:-2]
                for dev in self.block_ids if kind == "block" else self.net_ids:
                    out[f"{kind}_{dev}"] = self._group(f"{kind}_{dev}", _GROUPS[kind])
            else:
                out[name] = self._group(name, _GROUPS[name])
        self.counters = {}
        return out

    def write(self) -> bool:
        """METRICS.write(): False when no sink is configured."""
        if self.fd is None:
            return False
        line = json.dumps(self.snapshot(), separators=(",", ":")) + "\n"
        try:
            os.write(self.fd, line.encode())
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EPIPE):
                raise
            self.inc("logger", "missed_metrics_count")
        return True
