"""Shared state and helpers of the VMM double: replies, errors, body parsing, phase checks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from . import devices
from .serde import SerdeError, Ty, from_slice
from .telemetry import Logger, Metrics

VERSION = "1.7.0"
NOT_STARTED, RUNNING, PAUSED = "Not started", "Running", "Paused"
PRE_BOOT = "The requested operation is not supported before starting the microVM."
POST_BOOT = "The requested operation is not supported after starting the microVM."
DEFAULT_MACHINE = {
    "vcpu_count": 1,
    "mem_size_mib": 128,
    "smt": False,
    "cpu_template": None,
    "track_dirty_pages": False,
    "huge_pages": "None",
}
_ID = re.compile(r"^\w+$")
CTRL_ALT_DEL_DELAY = 0.05


@dataclass
class Reply:
    status: int
    body: bytes | None = None
    deprecation: bool = False
    fatal: bool = False  # the process exits (code 1) once this reply is sent


class ApiError(Exception):
    """A 400 with ``{"fault_message": ...}``; ``deprecation``: the request used a deprecated
    field, which Firecracker still flags on the error reply."""

    def __init__(self, message: str, *, deprecation: bool = False) -> None:
        super().__init__(message)
        self.deprecation = deprecation


def fault(msg: str) -> Reply:
    return Reply(400, json.dumps({"fault_message": msg}, separators=(",", ":")).encode())


def ok(data: Any) -> Reply:
    return Reply(200, json.dumps(data, separators=(",", ":")).encode())


def parse(ty: Ty, body: bytes) -> Any:
    try:
        return from_slice(ty, body)
    except SerdeError as e:
        raise ApiError(
            f"An error occurred when deserializing the json body of a request: {e}."
        ) from None


def checked_id(raw: str | None) -> str:
    if not raw:
        raise ApiError("The ID cannot be empty.")
    if not _ID.match(raw):
        raise ApiError("API Resource IDs can only contain alphanumeric characters and underscores.")
    return raw


class VmmBase:
    def __init__(
        self, instance_id: str, logger: Logger, metrics: Metrics, metrics_from_cli: bool = False
    ) -> None:
        self.id = instance_id
        self.log = logger
        self.metrics = metrics
        self.state = NOT_STARTED
        self.boot_path = False
        self.metrics_set = metrics_from_cli
        self.machine: dict[str, Any] = dict(DEFAULT_MACHINE)
        self.boot_cfg: dict[str, Any] | None = None
        self.kernel_fd: int | None = None  # BootConfig builder: survives a later failed PUT
        self.initrd_fd: int | None = None
        self.drives: dict[str, dict[str, Any]] = {}
        self.drive_fds: dict[str, int] = {}
        self.nets: dict[str, dict[str, Any]] = {}
        self.tap_fds: dict[str, int] = {}
        self.balloon: dict[str, Any] | None = None
        self.balloon_driver = False  # the guest kernel has a virtio-balloon driver
        self.balloon_actual_mib = 0
        self.vsock: dict[str, Any] | None = None
        self.entropy: dict[str, Any] | None = None
        self.mmds_config: dict[str, Any] | None = None
        self.mmds: Any = None
        self.kvm = devices.Kvm()
        self.mem_fd: int | None = None  # a restored VM's memory file (mapped MAP_PRIVATE)
        self.exit_at: float | None = None  # guest reboot (Ctrl-Alt-Del with reboot=k)
        self.ctrl_alt_del_pending = False

    # -- dispatch ----------------------------------------------------------------------------

    def counted(self, kind: str, head: str, fn: Any) -> Reply:
        name = {
            "boot-source": "boot_source",
            "machine-config": "machine_cfg",
            "drives": "drive",
            "network-interfaces": "network",
        }.get(head, head)
        self.metrics.inc(f"{kind}_api_requests", f"{name}_count")
        try:
            reply: Reply = fn()
        except ApiError:
            self.metrics.inc(f"{kind}_api_requests", f"{name}_fails")
            raise
        return reply

    def pre_boot(self) -> None:
        if self.state != NOT_STARTED:
            raise ApiError(POST_BOOT)

    def post_boot(self) -> None:
        if self.state == NOT_STARTED:
            raise ApiError(PRE_BOOT)

    # -- views -------------------------------------------------------------------------------
