"""Routing and the VMM state machine of Firecracker v1.7.0.

Mirrors parsed_request.rs (routing, id and body checks) and rpc_interface.rs (phases).
"""

from __future__ import annotations

import json
import time
from typing import Any

from . import devices, guest, schemas
from .base import (
    CTRL_ALT_DEL_DELAY,
    NOT_STARTED,
    PAUSED,
    POST_BOOT,
    PRE_BOOT,
    RUNNING,
    VERSION,
    ApiError,
    Reply,
    fault,
    ok,
    parse,
)
from .devices import DeviceError
from .resources import ResourceHandlers, limiter_view
from .snapshots import SnapshotHandlers

__all__ = ["NOT_STARTED", "PAUSED", "POST_BOOT", "PRE_BOOT", "RUNNING", "VERSION", "Reply", "Vmm"]


class Vmm(ResourceHandlers, SnapshotHandlers):
    def handle(self, method: str, path: str, body: bytes | None) -> Reply:
        shown = repr(path).replace("'", '"')
        if body is None:
            self.log.info(
                f"The API server received a {method.title()} request on {shown}.", thread="fc_api"
            )
        else:
            text = body.decode("utf-8", "replace").replace('"', '\\"')
            self.log.info(
                f"The API server received a {method.title()} request on {shown} with "
                f'body "{text}".',
                thread="fc_api",
            )
        try:
            reply = self.route(method, path, body)
        except ApiError as e:
            reply = fault(str(e))
            reply.deprecation = e.deprecation
        if reply.status == 400:
            msg = json.loads(reply.body or b"{}").get("fault_message", "")
            self.log.error(
                f"Received Error. Status code: 400 Bad Request. Message: {msg}", thread="fc_api"
            )
        elif reply.status == 204:
            self.log.info(
                "The request was executed successfully. Status code: 204 No Content.",
                thread="fc_api",
            )
        else:
            self.log.info(
                "The request was executed successfully. Status code: 200 OK.", thread="fc_api"
            )
        return reply

    def route(self, method: str, path: str, body: bytes | None) -> Reply:  # noqa: PLR0912 -- the API's route table, one branch per Firecracker endpoint
        tokens = [t for t in path.lstrip("/").split("/")]
        while tokens and tokens[-1] == "":
            tokens.pop()
        head = tokens[0] if tokens else ""
        sub = tokens[1] if len(tokens) > 1 else None
        if method == "GET":
            if body is not None:
                raise ApiError("GET request cannot have a body.")
            self.metrics.inc(
                "get_api_requests",
                "instance_info_count"
                if head == ""
                else "machine_cfg_count"
                if head == "machine-config"
                else "vmm_version_count"
                if head == "version"
                else "mmds_count",
            )
            if head == "":
                return ok(
                    {
                        "id": self.id,
                        "state": self.state,
                        "vmm_version": VERSION,
                        "app_name": "Firecracker",
                    }
                )
            if head == "version":
                return ok({"firecracker_version": VERSION})
            if head == "vm" and sub == "config":
                return ok(self.full_config())
            if head == "machine-config":
                return ok(self.machine_json())
            if head == "balloon" and sub == "statistics":
                return self.balloon_statistics()
            if head == "balloon":
                if self.balloon is None:
                    raise ApiError("Balloon config error: No balloon device found.")
                return ok(self.balloon)
            if head == "mmds":
                return ok(self.mmds if self.mmds is not None else {})
        elif body is None:
            raise ApiError(f"Empty {method} request.")
        elif method == "PUT":
            handler = {
                "actions": self.put_actions,
                "boot-source": self.put_boot_source,
                "machine-config": self.put_machine_config,
                "logger": self.put_logger,
                "metrics": self.put_metrics,
                "balloon": self.put_balloon,
                "vsock": self.put_vsock,
                "entropy": self.put_entropy,
                "mmds": self.put_mmds,
            }.get(head)
            if handler is not None:
                return self.counted("put", head, lambda: handler(body, sub))
            if head == "drives":
                return self.counted("put", head, lambda: self.put_drive(body, sub))
            if head == "network-interfaces":
                return self.counted("put", head, lambda: self.put_net(body, sub))
            if head == "snapshot":
                if sub == "create":
                    return self.snapshot_create(body)
                if sub == "load":
                    return self.snapshot_load(body)
                if sub is None:
                    raise ApiError("Missing snapshot operation type.")
                raise ApiError(f"Invalid request method and/or path: PUT /snapshot/{sub}.")
        else:  # PATCH
            if head == "machine-config":
                return self.counted("patch", head, lambda: self.patch_machine_config(body))
            if head == "drives":
                return self.counted("patch", head, lambda: self.patch_drive(body, sub))
            if head == "network-interfaces":
                return self.counted("patch", head, lambda: self.patch_net(body, sub))
            if head == "vm":
                return self.patch_vm(body)
            if head == "balloon":
                return self.patch_balloon(body, sub)
            if head == "mmds":
                return self.patch_mmds(body)
        raise ApiError(f"Invalid request method and/or path: {method} {head}.")

    def machine_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.machine.items() if k != "cpu_template"}
        if self.machine.get("cpu_template") is not None:
            out = {
                "vcpu_count": self.machine["vcpu_count"],
                "mem_size_mib": self.machine["mem_size_mib"],
                "smt": self.machine["smt"],
                "cpu_template": self.machine["cpu_template"],
                "track_dirty_pages": self.machine["track_dirty_pages"],
                "huge_pages": self.machine["huge_pages"],
            }
        return out

    def full_config(self) -> dict[str, Any]:
        boot: dict[str, Any] = {"kernel_image_path": "", "initrd_path": None, "boot_args": None}
        if self.boot_cfg is not None:
            keys = ("kernel_image_path", "initrd_path", "boot_args")
            boot = {k: self.boot_cfg.get(k) for k in keys}
        return {
            "balloon": self.balloon,
            "drives": [drive_view(d) for d in self.drives.values()],
            "boot-source": boot,
            "cpu-config": None,
            "logger": None,
            "machine-config": self.machine_json(),
            "metrics": None,
            "mmds-config": self.mmds_config,
            "network-interfaces": [net_view(n) for n in self.nets.values()],
            "vsock": self.vsock,
            "entropy": self.entropy,
        }

    # -- pre-boot resources --------------------------------------------------------------------

    def put_actions(self, body: bytes, _sub: str | None) -> Reply:
        action = parse(schemas.ACTION, body)["action_type"]
        if action == "InstanceStart":
            self.pre_boot()
            self.start()
        elif action == "FlushMetrics":
            self.post_boot()
            self.metrics.write()
        else:
            self.post_boot()
            self.ctrl_alt_del_pending = True
            if self.state == RUNNING:
                self.exit_at = time.monotonic() + CTRL_ALT_DEL_DELAY
        return Reply(204)

    def start(self) -> None:
        pre = "Start microvm error: "
        if self.kernel_fd is None:
            raise ApiError(pre + "Cannot start microvm without kernel configuration.")
        try:
            entry = devices.check_kernel(self.kernel_fd, self.machine["mem_size_mib"])
            self.kvm.create_vm()
            self.balloon_driver = devices.has_balloon_driver(self.kernel_fd)
        except DeviceError as e:
            raise ApiError(pre + str(e)) from None
        self.state = RUNNING
        self.log.info("Artificially kick devices.")
        self.metrics.write()
        # the guest runs: what it prints on the UART goes out on stdout (guest.py)
        serial = guest.SerialOut(self.log, self.metrics)
        serial.write(guest.uart_output(self.kernel_fd, entry))

    def patch_vm(self, body: bytes) -> Reply:
        target = parse(schemas.VM_STATE, body)["state"]
        self.post_boot()
        t0 = time.monotonic_ns()
        if target == "Paused":
            self.state = PAUSED
            self.exit_at = None
            took = (time.monotonic_ns() - t0) // 1000
            self.metrics.latencies["vmm_pause_vm"] = took
            self.log.info(f"'pause vm' VMM action took {took} us.")
        else:
            self.state = RUNNING
            if self.ctrl_alt_del_pending:
                self.exit_at = time.monotonic() + CTRL_ALT_DEL_DELAY
            took = (time.monotonic_ns() - t0) // 1000
            self.metrics.latencies["vmm_resume_vm"] = took
            self.log.info(f"'resume vm' VMM action took {took} us.")
        return Reply(204)

    # -- snapshots ---------------------------------------------------------------------------


def drive_view(d: dict[str, Any]) -> dict[str, Any]:
    """A drive as ``GET /vm/config`` lists it (v1.7.0's field order and live limiter)."""
    return {
        "drive_id": d["drive_id"],
        "partuuid": d.get("partuuid"),
        "is_root_device": d["is_root_device"],
        "cache_type": d.get("cache_type") or "Unsafe",
        "is_read_only": bool(d.get("is_read_only")),
        "path_on_host": d.get("path_on_host"),
        "rate_limiter": limiter_view(d.get("rate_limiter")),
        "io_engine": d.get("io_engine") or "Sync",
        "socket": d.get("socket"),
    }


def net_view(n: dict[str, Any]) -> dict[str, Any]:
    return {
        "iface_id": n["iface_id"],
        "host_dev_name": n["host_dev_name"],
        "guest_mac": n.get("guest_mac"),
        "rx_rate_limiter": limiter_view(n.get("rx_rate_limiter")),
        "tx_rate_limiter": limiter_view(n.get("tx_rate_limiter")),
    }
