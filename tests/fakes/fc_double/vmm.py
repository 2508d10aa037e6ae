"""Routing and the VMM state machine of Firecracker v1.7.0.

Mirrors parsed_request.rs (routing, id and body checks) and rpc_interface.rs (phases).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from . import devices, schemas
from .devices import DeviceError
from .serde import SerdeError, Ty, from_slice
from .telemetry import Logger, Metrics, io_error, open_sink

VERSION = "1.7.0"
NOT_STARTED, RUNNING, PAUSED = "Not started", "Running", "Paused"
PRE_BOOT = "The requested operation is not supported before starting the microVM."
POST_BOOT = "The requested operation is not supported after starting the microVM."
DEFAULT_MACHINE = {"vcpu_count": 1, "mem_size_mib": 128, "smt": False, "cpu_template": None,
                   "track_dirty_pages": False, "huge_pages": "None"}
_ID = re.compile(r"^\w+$")
CTRL_ALT_DEL_DELAY = 0.05


@dataclass
class Reply:
    status: int
    body: bytes | None = None
    deprecation: bool = False
    fatal: bool = False  # the process exits (code 1) once this reply is sent


class ApiError(Exception):
    """A 400 with ``{"fault_message": ...}``."""


def fault(msg: str) -> Reply:
    return Reply(400, json.dumps({"fault_message": msg}, separators=(",", ":")).encode())


def ok(data: Any) -> Reply:
    return Reply(200, json.dumps(data, separators=(",", ":")).encode())


def parse(ty: Ty, body: bytes) -> Any:
    try:
        return from_slice(ty, body)
    except SerdeError as e:
        raise ApiError(f"An error occurred when deserializing the json body of a request: {e}.") \
            from None


def checked_id(raw: str | None) -> str:
    if not raw:
        raise ApiError("The ID cannot be empty.")
    if not _ID.match(raw):
        raise ApiError("API Resource IDs can only contain alphanumeric characters and underscores.")
    return raw


class Vmm:
    def __init__(self, instance_id: str, logger: Logger, metrics: Metrics,
                 metrics_from_cli: bool = False) -> None:
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
        self.vsock: dict[str, Any] | None = None
        self.entropy: dict[str, Any] | None = None
        self.mmds_config: dict[str, Any] | None = None
        self.mmds: Any = None
        self.kvm = devices.Kvm()
        self.exit_at: float | None = None  # guest reboot (Ctrl-Alt-Del with reboot=k)
        self.ctrl_alt_del_pending = False

    # -- dispatch ----------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes | None) -> Reply:
        shown = repr(path).replace("'", '"')
        if body is None:
            self.log.info(f"The API server received a {method.title()} request on {shown}.",
                          thread="fc_api")
        else:
            text = body.decode("utf-8", "replace").replace('"', '\\"')
            self.log.info(f"The API server received a {method.title()} request on {shown} with "
                          f'body "{text}".', thread="fc_api")
        try:
            reply = self.route(method, path, body)
        except ApiError as e:
            reply = fault(str(e))
        if reply.status == 400:
            msg = json.loads(reply.body or b"{}").get("fault_message", "")
            self.log.error(f"Received Error. Status code: 400 Bad Request. Message: {msg}",
                           thread="fc_api")
        elif reply.status == 204:
            self.log.info("The request was executed successfully. Status code: 204 No Content.",
                          thread="fc_api")
        else:
            self.log.info("The request was executed successfully. Status code: 200 OK.",
                          thread="fc_api")
        return reply

    def route(self, method: str, path: str, body: bytes | None) -> Reply:
        tokens = [t for t in path.lstrip("/").split("/")]
        while tokens and tokens[-1] == "":
            tokens.pop()
        head = tokens[0] if tokens else ""
        sub = tokens[1] if len(tokens) > 1 else None
        if method == "GET":
            if body is not None:
                raise ApiError("GET request cannot have a body.")
            self.metrics.inc("get_api_requests", "instance_info_count" if head == "" else
                             "machine_cfg_count" if head == "machine-config" else
                             "vmm_version_count" if head == "version" else "mmds_count")
            if head == "":
                return ok({"id": self.id, "state": self.state, "vmm_version": VERSION,
                           "app_name": "Firecracker"})
            if head == "version":
                return ok({"firecracker_version": VERSION})
            if head == "vm" and sub == "config":
                return ok(self.full_config())
            if head == "machine-config":
                return ok(self.machine_json())
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
                "actions": self.put_actions, "boot-source": self.put_boot_source,
                "machine-config": self.put_machine_config, "logger": self.put_logger,
                "metrics": self.put_metrics, "balloon": self.put_balloon,
                "vsock": self.put_vsock, "entropy": self.put_entropy, "mmds": self.put_mmds,
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

    def counted(self, kind: str, head: str, fn: Any) -> Reply:
        name = {"boot-source": "boot_source", "machine-config": "machine_cfg", "drives": "drive",
                "network-interfaces": "network"}.get(head, head)
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

    def machine_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.machine.items() if k != "cpu_template"}
        if self.machine.get("cpu_template") is not None:
            out = {"vcpu_count": self.machine["vcpu_count"],
                   "mem_size_mib": self.machine["mem_size_mib"], "smt": self.machine["smt"],
                   "cpu_template": self.machine["cpu_template"],
                   "track_dirty_pages": self.machine["track_dirty_pages"],
                   "huge_pages": self.machine["huge_pages"]}
        return out

    def full_config(self) -> dict[str, Any]:
        boot = None
        if self.boot_cfg is not None:
            boot = {k: v for k, v in self.boot_cfg.items() if v is not None}
        return {
            "balloon": self.balloon, "drives": list(self.drives.values()),
            "boot-source": boot, "cpu-config": None, "logger": None,
            "machine-config": self.machine_json(), "metrics": None,
            "mmds-config": self.mmds_config, "network-interfaces": list(self.nets.values()),
            "vsock": self.vsock, "entropy": self.entropy,
        }

    # -- pre-boot resources --------------------------------------------------------------------

    def put_boot_source(self, body: bytes, _sub: str | None) -> Reply:
        cfg = parse(schemas.BOOT_SOURCE, body)
        self.pre_boot()
        self.boot_path = True
        self.boot_cfg = cfg
        try:
            kfd = os.open(cfg["kernel_image_path"], os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ApiError(f"Boot source error: The kernel file cannot be opened: {io_error(e)}") \
                from None
        ifd = None
        if cfg["initrd_path"] is not None:
            try:
                ifd = os.open(cfg["initrd_path"], os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                os.close(kfd)
                raise ApiError(
                    f"Boot source error: The initrd file cannot be opened: {io_error(e)}"
                ) from None
        for old in (self.kernel_fd, self.initrd_fd):
            if old is not None:
                os.close(old)
        self.kernel_fd, self.initrd_fd = kfd, ifd
        return Reply(204)

    def _check_machine(self, m: dict[str, Any]) -> None:
        pre = "Machine config error: "
        if m["vcpu_count"] == 0 or m["vcpu_count"] > 32 or (
                m["smt"] and m["vcpu_count"] > 1 and m["vcpu_count"] % 2 == 1):
            raise ApiError(pre + "The vCPU number is invalid: it can only be 1 or an even number "
                           "when SMT is enabled.")
        if m["mem_size_mib"] == 0 or (m["huge_pages"] == "2M" and m["mem_size_mib"] % 2):
            raise ApiError(pre + "The memory size (MiB) is invalid.")
        if self.balloon is not None and m["mem_size_mib"] < self.balloon["amount_mib"]:
            raise ApiError(pre + "The memory size (MiB) is smaller than the previously set "
                           "balloon device target size.")

    def put_machine_config(self, body: bytes, _sub: str | None) -> Reply:
        cfg = parse(schemas.MACHINE_CONFIG, body)
        self.pre_boot()
        self.boot_path = True
        self._check_machine(cfg)
        self.machine = cfg
        return Reply(204, deprecation=cfg["cpu_template"] is not None)

    def patch_machine_config(self, body: bytes) -> Reply:
        upd = parse(schemas.MACHINE_CONFIG_UPDATE, body)
        if all(v is None for v in upd.values()):
            raise ApiError("Empty PATCH request.")
        self.pre_boot()
        self.boot_path = True
        merged = dict(self.machine)
        merged.update({k: v for k, v in upd.items() if v is not None})
        self._check_machine(merged)
        self.machine = merged
        return Reply(204, deprecation=upd["cpu_template"] is not None)

    def put_drive(self, body: bytes, sub: str | None) -> Reply:
        drive_id = checked_id(sub)
        cfg = parse(schemas.DRIVE, body)
        if cfg["drive_id"] != drive_id:
            raise ApiError("The id from the path does not match the id from the body!")
        self.pre_boot()
        self.boot_path = True
        pre = "Drive config error: "
        if cfg["is_root_device"] and any(
                d["is_root_device"] for k, d in self.drives.items() if k != drive_id):
            raise ApiError(pre + "A root block device already exists!")
        if cfg["path_on_host"] is None:
            raise ApiError(pre + "Unable to create the virtio block device: Virtio backend "
                           "error: Error manipulating the backing file: No such file or "
                           "directory (os error 2) ")
        try:
            fd = devices.open_disk(cfg["path_on_host"], bool(cfg["is_read_only"]))
        except DeviceError as e:
            raise ApiError(pre + str(e)) from None
        if drive_id in self.drive_fds:
            os.close(self.drive_fds.pop(drive_id))
        self.drive_fds[drive_id] = fd
        cfg["is_read_only"] = bool(cfg["is_read_only"])
        cfg["io_engine"] = cfg["io_engine"] or "Sync"
        self.drives[drive_id] = cfg
        if drive_id not in self.metrics.block_ids:
            self.metrics.block_ids.append(drive_id)
        return Reply(204)

    def patch_drive(self, body: bytes, sub: str | None) -> Reply:
        drive_id = checked_id(sub)
        upd = parse(schemas.DRIVE_UPDATE, body)
        if upd["drive_id"] != drive_id:
            raise ApiError("The id from the path does not match the id from the body!")
        if upd["path_on_host"] is None and upd["rate_limiter"] is None:
            raise ApiError("Please specify at least one property to patch: path_on_host, "
                           "rate_limiter.")
        self.post_boot()
        pre = "Drive config error: Unable to patch the block device: "
        if drive_id not in self.drives:
            raise ApiError(pre + f"Invalid drive id: {drive_id} Please verify the request "
                           "arguments.")
        if upd["path_on_host"] is not None:
            try:
                fd = devices.open_disk(upd["path_on_host"], self.drives[drive_id]["is_read_only"])
            except DeviceError as e:
                raise ApiError(pre + f"{e} Please verify the request arguments.") from None
            os.close(self.drive_fds[drive_id])
            self.drive_fds[drive_id] = fd
            self.drives[drive_id]["path_on_host"] = upd["path_on_host"]
        if upd["rate_limiter"] is not None:
            self.drives[drive_id]["rate_limiter"] = upd["rate_limiter"]
        return Reply(204)

    def put_net(self, body: bytes, sub: str | None) -> Reply:
        iface_id = checked_id(sub)
        cfg = parse(schemas.NET, body)
        if cfg["iface_id"] != iface_id:
            raise ApiError("The id from the path does not match the id from the body!")
        self.pre_boot()
        self.boot_path = True
        pre = "Network config error: "
        mac = cfg["guest_mac"]
        if mac is not None and any(n["guest_mac"] == mac for k, n in self.nets.items()
                                   if k != iface_id):
            raise ApiError(pre + f"The MAC address is already in use: {mac}")
        if iface_id in self.tap_fds:  # an update replaces the old device first
            os.close(self.tap_fds.pop(iface_id))
            self.nets.pop(iface_id, None)
        try:
            fd = devices.open_tap(cfg["host_dev_name"])
        except DeviceError as e:
            raise ApiError(pre + f"Could not create the network device: {e}") from None
        self.tap_fds[iface_id] = fd
        self.nets[iface_id] = cfg
        if iface_id not in self.metrics.net_ids:
            self.metrics.net_ids.append(iface_id)
        return Reply(204)

    def patch_net(self, body: bytes, sub: str | None) -> Reply:
        iface_id = checked_id(sub)
        upd = parse(schemas.NET_UPDATE, body)
        if upd["iface_id"] != iface_id:
            raise ApiError("The id from the path does not match the id from the body!")
        self.post_boot()
        if iface_id not in self.nets:
            raise ApiError("Network config error: Could not update the network device: "
                           f"Invalid network interface id: {iface_id}")
        for key in ("rx_rate_limiter", "tx_rate_limiter"):
            if upd[key] is not None:
                merged = dict(self.nets[iface_id].get(key) or {})
                merged.update({k: v for k, v in upd[key].items() if v is not None})
                self.nets[iface_id][key] = merged
        return Reply(204)

    def put_logger(self, body: bytes, _sub: str | None) -> Reply:
        cfg = parse(schemas.LOGGER, body)
        self.pre_boot()
        try:
            self.log.configure(cfg)
        except OSError as e:
            raise ApiError(f"Logger error: Failed to open target file: {io_error(e)}") from None
        return Reply(204)

    def put_metrics(self, body: bytes, _sub: str | None) -> Reply:
        cfg = parse(schemas.METRICS, body)
        self.pre_boot()
        if self.metrics_set:
            raise ApiError("Metrics error: Reinitialization of metrics not allowed.")
        try:
            self.metrics.fd = open_sink(cfg["metrics_path"])
        except OSError as e:
            raise ApiError(f"Metrics error: Failed to open target file: {io_error(e)}") from None
        self.metrics_set = True
        return Reply(204)

    def put_balloon(self, body: bytes, _sub: str | None) -> Reply:
        cfg = parse(schemas.BALLOON, body)
        self.pre_boot()
        self.boot_path = True
        if cfg["amount_mib"] > self.machine["mem_size_mib"]:
            raise ApiError("Balloon config error: Amount of pages requested cannot be greater "
                           "than the total amount of memory.")
        self.balloon = cfg
        return Reply(204)

    def patch_balloon(self, body: bytes, sub: str | None) -> Reply:
        if sub is not None:
            raise ApiError(f"Invalid request method and/or path: PATCH balloon/{sub}.")
        upd = parse(schemas.BALLOON_UPDATE, body)
        self.post_boot()
        if self.balloon is None:
            raise ApiError("Balloon update error: Balloon device not found.")
        # The double has no guest driver: the device never becomes active (see §9).
        del upd
        raise ApiError("Balloon config error: Error creating the balloon device: "
                       "DeviceNotActive")

    def put_vsock(self, body: bytes, _sub: str | None) -> Reply:
        cfg = parse(schemas.VSOCK, body)
        self.pre_boot()
        self.boot_path = True
        if os.path.exists(cfg["uds_path"]):
            raise ApiError("Vsock config error: Cannot create backend for vsock device: "
                           "Error binding to the host-side Unix socket: Address in use "
                           "(os error 98)")
        self.vsock = cfg
        return Reply(204, deprecation=cfg["vsock_id"] is not None)

    def put_entropy(self, body: bytes, _sub: str | None) -> Reply:
        cfg = parse(schemas.ENTROPY, body)
        self.pre_boot()
        self.boot_path = True
        self.entropy = cfg
        return Reply(204)

    def put_mmds(self, body: bytes, sub: str | None) -> Reply:
        if sub == "config":
            cfg = parse(schemas.MMDS_CONFIG, body)
            self.pre_boot()
            self.boot_path = True
            self.mmds_config = cfg
            return Reply(204, deprecation=cfg["version"] == "V1")
        if sub is not None:
            raise ApiError(f"Invalid request method and/or path: PUT mmds/{sub}.")
        self.mmds = parse(schemas.ANY, body)
        return Reply(204)

    def patch_mmds(self, body: bytes) -> Reply:
        value = parse(schemas.ANY, body)
        if self.mmds is None:
            raise ApiError("MMDS error: The MMDS data store is not initialized.")
        self.mmds = merge_patch(self.mmds, value)
        return Reply(204)

    # -- actions -----------------------------------------------------------------------------

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
            devices.check_kernel(self.kernel_fd, self.machine["mem_size_mib"])
            self.kvm.create_vm()
        except DeviceError as e:
            raise ApiError(pre + str(e)) from None
        self.state = RUNNING
        self.log.info("Artificially kick devices.")
        self.metrics.write()

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

    def snapshot_state(self) -> dict[str, Any]:
        return {"id": self.id, "machine-config": self.machine,
                "drives": list(self.drives.values()), "network-interfaces":
                list(self.nets.values()), "balloon": self.balloon, "vsock": self.vsock,
                "entropy": self.entropy, "mmds-config": self.mmds_config}

    def snapshot_create(self, body: bytes) -> Reply:
        cfg = parse(schemas.SNAPSHOT_CREATE, body)
        self.post_boot()
        if cfg["snapshot_type"] == "Diff" and not self.machine["track_dirty_pages"]:
            raise ApiError("The requested operation is not supported: Diff snapshots are not "
                           "allowed on uVMs with dirty page tracking disabled.")
        if self.state == RUNNING:
            raise ApiError("Create snapshot error: Cannot save the microVM state: Operation not "
                           "allowed: save/restore unavailable while running")
        t0 = time.monotonic_ns()
        try:
            devices.write_snapshot(cfg["snapshot_path"], cfg["mem_file_path"],
                                   self.snapshot_state(), self.machine["mem_size_mib"])
        except OSError as e:
            raise ApiError(f"Create snapshot error: Cannot write snapshot file: {io_error(e)}") \
                from None
        took = (time.monotonic_ns() - t0) // 1000
        kind = "full" if cfg["snapshot_type"] == "Full" else "diff"
        self.metrics.latencies[f"vmm_{kind}_create_snapshot"] = took
        self.log.info(f"'create {kind} snapshot' VMM action took {took} us.")
        return Reply(204)

    def snapshot_load(self, body: bytes) -> Reply:
        cfg = parse(schemas.SNAPSHOT_LOAD, body)
        if (cfg["mem_file_path"] is None) == (cfg["mem_backend"] is None):
            which = ("missing field: either `mem_backend` or `mem_file_path` is required"
                     if cfg["mem_file_path"] is None else
                     "too many fields: either `mem_backend` or `mem_file_path` exclusively "
                     "is required")
            raise ApiError(f"An error occurred when deserializing the json body of a request: "
                           f"{which}.")
        deprecated = cfg["mem_file_path"] is not None or cfg["enable_diff_snapshots"]
        self.pre_boot()
        if self.boot_path:
            raise ApiError("Load snapshot error: Loading a microVM snapshot not allowed after "
                           "configuring boot-specific resources.")
        mem_path = cfg["mem_file_path"] or cfg["mem_backend"]["backend_path"]
        t0 = time.monotonic_ns()
        try:
            if cfg["mem_backend"] is not None and cfg["mem_backend"]["backend_type"] == "Uffd":
                raise DeviceError("Failed to restore from snapshot: Failed to load guest "
                                  "memory: Uffd backend is not supported by the test double")
            state = devices.read_snapshot(cfg["snapshot_path"], mem_path)
            self.restore(state)
        except DeviceError as e:
            reply = fault(f"Load snapshot error: {e}")
            reply.fatal = True
            return reply
        took = (time.monotonic_ns() - t0) // 1000
        self.metrics.latencies["vmm_load_snapshot"] = took
        self.metrics.latencies["load_snapshot"] = took
        self.state = RUNNING if cfg["resume_vm"] else PAUSED
        if cfg["enable_diff_snapshots"]:
            self.machine["track_dirty_pages"] = True
        self.metrics.write()
        return Reply(204, deprecation=deprecated)

    def restore(self, state: dict[str, Any]) -> None:
        self.machine = dict(state["machine-config"])
        self.machine["track_dirty_pages"] = False
        self.machine["smt"] = False
        self.machine["cpu_template"] = None
        for drive in state["drives"]:
            try:
                fd = devices.open_disk(drive["path_on_host"], drive["is_read_only"])
            except DeviceError as e:
                raise DeviceError(f"Failed to restore from snapshot: Failed to build microVM "
                                  f"from snapshot: Block: {e}") from None
            self.drive_fds[drive["drive_id"]] = fd
            self.drives[drive["drive_id"]] = drive
        for net in state["network-interfaces"]:
            try:
                fd = devices.open_tap(net["host_dev_name"])
            except DeviceError as e:
                raise DeviceError(f"Failed to restore from snapshot: Failed to build microVM "
                                  f"from snapshot: Net: {e}") from None
            self.tap_fds[net["iface_id"]] = fd
            self.nets[net["iface_id"]] = net
        self.balloon, self.vsock = state["balloon"], state["vsock"]
        self.entropy, self.mmds_config = state["entropy"], state["mmds-config"]
        try:
            self.kvm.create_vm()
        except DeviceError as e:
            raise DeviceError(f"Failed to restore from snapshot: {e}") from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out
