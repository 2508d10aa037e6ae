"""PUT /snapshot/create and /snapshot/load (v1.7: Paused-only create, fresh-process load)."""

from __future__ import annotations

import time
from typing import Any

from . import devices, schemas
from .base import PAUSED, RUNNING, ApiError, Reply, VmmBase, fault, parse
from .devices import DeviceError
from .telemetry import io_error


class SnapshotHandlers(VmmBase):
    def snapshot_state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "machine-config": self.machine,
            "drives": list(self.drives.values()),
            "network-interfaces": list(self.nets.values()),
            "balloon": self.balloon,
            "vsock": self.vsock,
            "entropy": self.entropy,
            "mmds-config": self.mmds_config,
        }

    def snapshot_create(self, body: bytes) -> Reply:
        cfg = parse(schemas.SNAPSHOT_CREATE, body)
        self.post_boot()
        if cfg["snapshot_type"] == "Diff" and not self.machine["track_dirty_pages"]:
            raise ApiError(
                "The requested operation is not supported: Diff snapshots are not "
                "allowed on uVMs with dirty page tracking disabled."
            )
        if self.state == RUNNING:
            raise ApiError(
                "Create snapshot error: Cannot save the microVM state: Operation not "
                "allowed: save/restore unavailable while running"
            )
        t0 = time.monotonic_ns()
        try:
            devices.write_snapshot(
                cfg["snapshot_path"],
                cfg["mem_file_path"],
                self.snapshot_state(),
                self.machine["mem_size_mib"],
            )
        except OSError as e:
            raise ApiError(
                f"Create snapshot error: Cannot write snapshot file: {io_error(e)}"
            ) from None
        took = (time.monotonic_ns() - t0) // 1000
        kind = "full" if cfg["snapshot_type"] == "Full" else "diff"
        self.metrics.latencies[f"vmm_{kind}_create_snapshot"] = took
        self.log.info(f"'create {kind} snapshot' VMM action took {took} us.")
        return Reply(204)

    def snapshot_load(self, body: bytes) -> Reply:
        cfg = parse(schemas.SNAPSHOT_LOAD, body)
        if (cfg["mem_file_path"] is None) == (cfg["mem_backend"] is None):
            which = (
                "missing field: either `mem_backend` or `mem_file_path` is required"
                if cfg["mem_file_path"] is None
                else "too many fields: either `mem_backend` or `mem_file_path` exclusively "
                "is required"
            )
            raise ApiError(
                f"An error occurred when deserializing the json body of a request: {which}."
            )
        deprecated = cfg["mem_file_path"] is not None or cfg["enable_diff_snapshots"]
        self.pre_boot()
        if self.boot_path:
            raise ApiError(
                "Load snapshot error: Loading a microVM snapshot not allowed after "
                "configuring boot-specific resources."
            )
        mem_path = cfg["mem_file_path"] or cfg["mem_backend"]["backend_path"]
        t0 = time.monotonic_ns()
        try:
            if cfg["mem_backend"] is not None and cfg["mem_backend"]["backend_type"] == "Uffd":
                raise DeviceError(
                    "Failed to restore from snapshot: Failed to load guest "
                    "memory: Uffd backend is not supported by the test double"
                )
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
        self.mem_fd = state.pop("__mem_fd")
        self.machine = dict(state["machine-config"])
        self.machine["track_dirty_pages"] = False
        self.machine["smt"] = False
        self.machine["cpu_template"] = None
        for drive in state["drives"]:
            try:
                fd = devices.open_disk(drive["path_on_host"], drive["is_read_only"])
            except DeviceError as e:
                raise DeviceError(
                    f"Failed to restore from snapshot: Failed to build microVM "
                    f"from snapshot: Block: {e}"
                ) from None
            self.drive_fds[drive["drive_id"]] = fd
            self.drives[drive["drive_id"]] = drive
        for net in state["network-interfaces"]:
            try:
                fd = devices.open_tap(net["host_dev_name"])
            except DeviceError as e:
                raise DeviceError(
                    f"Failed to restore from snapshot: Failed to build microVM "
                    f"from snapshot: Net: {e}"
                ) from None
            self.tap_fds[net["iface_id"]] = fd
            self.nets[net["iface_id"]] = net
        self.balloon, self.vsock = state["balloon"], state["vsock"]
        self.entropy, self.mmds_config = state["entropy"], state["mmds-config"]
        try:
            self.kvm.create_vm()
        except DeviceError as e:
            raise DeviceError(f"Failed to restore from snapshot: {e}") from None
