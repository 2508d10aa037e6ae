"""Pre-boot resources and their post-boot updates (boot source, machine, drives, net, ...)."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from . import devices, schemas
from .base import ApiError, Reply, VmmBase, checked_id, ok, parse
from .devices import DeviceError
from .telemetry import io_error, open_sink


class ResourceHandlers(VmmBase):
    def put_boot_source(self, body: bytes, _sub: str | None) -> Reply:
        cfg = parse(schemas.BOOT_SOURCE, body)
        self.pre_boot()
        self.boot_path = True
        self.boot_cfg = cfg
        try:
            kfd = os.open(cfg["kernel_image_path"], os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ApiError(
                f"Boot source error: The kernel file cannot be opened: {io_error(e)}"
            ) from None
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
        if (
            m["vcpu_count"] == 0
            or m["vcpu_count"] > 32
            or (m["smt"] and m["vcpu_count"] > 1 and m["vcpu_count"] % 2 == 1)
        ):
            raise ApiError(
                pre + "The vCPU number is invalid: it can only be 1 or an even number "
                "when SMT is enabled."
            )
        if m["mem_size_mib"] == 0 or (m["huge_pages"] == "2M" and m["mem_size_mib"] % 2):
            raise ApiError(pre + "The memory size (MiB) is invalid.")
        if self.balloon is not None and m["mem_size_mib"] < self.balloon["amount_mib"]:
            raise ApiError(
                pre + "The memory size (MiB) is smaller than the previously set "
                "balloon device target size."
            )

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
            d["is_root_device"] for k, d in self.drives.items() if k != drive_id
        ):
            raise ApiError(pre + "A root block device already exists!")
        if cfg["path_on_host"] is None:
            raise ApiError(
                pre + "Unable to create the virtio block device: Virtio backend "
                "error: Error manipulating the backing file: No such file or "
                "directory (os error 2) "
            )
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
        self.post_boot()
        pre = "Drive config error: Unable to patch the block device: Device manager error: "
        if drive_id not in self.drives:
            raise ApiError(
                pre + "Failed to find the device on the bus. Please verify the request arguments."
            )
        if upd["path_on_host"] is None and upd["rate_limiter"] is None:
            raise ApiError(
                pre + "Running method expected different backend. Please verify the request "
                "arguments."
            )
        if upd["path_on_host"] is not None:
            try:
                fd = devices.open_disk(upd["path_on_host"], self.drives[drive_id]["is_read_only"])
            except DeviceError as e:
                raise ApiError(pre + f"{e} Please verify the request arguments.") from None
            os.close(self.drive_fds[drive_id])
            self.drive_fds[drive_id] = fd
            self.drives[drive_id]["path_on_host"] = upd["path_on_host"]
        if upd["rate_limiter"] is not None:
            self.drives[drive_id]["rate_limiter"] = merge_limiter(
                self.drives[drive_id].get("rate_limiter"), upd["rate_limiter"]
            )
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
        if mac is not None and any(
            n["guest_mac"] == mac for k, n in self.nets.items() if k != iface_id
        ):
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
            raise ApiError(
                "Network config error: Unable to update the net device: Device manager error: "
                "Failed to find the device on the bus."
            )
        for key in ("rx_rate_limiter", "tx_rate_limiter"):
            if upd[key] is not None:
                self.nets[iface_id][key] = merge_limiter(self.nets[iface_id].get(key), upd[key])
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
            raise ApiError("Balloon config error: Amount of pages requested is too large.")
        self.balloon = cfg
        return Reply(204)

    # Balloon after boot. The double runs no guest: it takes a guest kernel whose image
    # contains "virtio_balloon" (the driver's name, in any vmlinux built with
    # CONFIG_VIRTIO_BALLOON=y) as one whose driver activates the device and reaches any
    # target at once; any other guest never activates it (FIRECRACKER.md §9).

    def _balloon_error(self, variant: str) -> ApiError:
        return ApiError(f"Balloon config error: Error creating the balloon device: {variant}")

    def patch_balloon(self, body: bytes, sub: str | None) -> Reply:
        if sub == "statistics":
            return self.patch_balloon_statistics(body)
        if sub is not None:
            raise ApiError(f"Invalid request method and/or path: PATCH balloon/{sub}.")
        upd = parse(schemas.BALLOON_UPDATE, body)
        self.post_boot()
        if self.balloon is None:
            raise self._balloon_error("DeviceNotFound")
        if upd["amount_mib"] > self.machine["mem_size_mib"]:
            raise self._balloon_error("TooManyPagesRequested")
        if not self.balloon_driver:
            raise self._balloon_error("DeviceNotActive")
        self.balloon["amount_mib"] = upd["amount_mib"]
        self.balloon_actual_mib = upd["amount_mib"]
        return Reply(204)

    def patch_balloon_statistics(self, body: bytes) -> Reply:
        upd = parse(schemas.BALLOON_STATS_UPDATE, body)
        self.post_boot()
        if self.balloon is None:
            raise self._balloon_error("DeviceNotFound")
        if not self.balloon_driver:
            # v1.7.0 panics here with a driverless guest: SIGABRT, the connection drops
            self.log.error("Balloon statistics update on an inactive device: aborting")
            os.abort()
        if (self.balloon["stats_polling_interval_s"] == 0) != (
            upd["stats_polling_interval_s"] == 0
        ):  # v1.14 says "Statistics cannot be enabled/disabled after activation." (?)
            raise self._balloon_error("StatisticsStateChange")
        self.balloon["stats_polling_interval_s"] = upd["stats_polling_interval_s"]
        return Reply(204)

    def balloon_statistics(self) -> Reply:
        self.post_boot()
        if self.balloon is None:
            raise self._balloon_error("DeviceNotFound")
        if self.balloon["stats_polling_interval_s"] == 0:
            raise self._balloon_error("StatisticsDisabled")
        target = self.balloon["amount_mib"] if self.balloon_driver else 0
        actual = self.balloon_actual_mib if self.balloon_driver else 0
        return ok(
            {
                "target_pages": target * PAGES_PER_MIB,
                "actual_pages": actual * PAGES_PER_MIB,
                "target_mib": target,
                "actual_mib": actual,
            }
        )

    def put_vsock(self, body: bytes, _sub: str | None) -> Reply:
        cfg = parse(schemas.VSOCK, body)
        self.pre_boot()
        self.boot_path = True
        if os.path.exists(cfg["uds_path"]):
            raise ApiError(
                "Vsock config error: Cannot create backend for vsock device: "
                "Error binding to the host-side Unix socket: Address in use "
                "(os error 98)"
            )
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
            deprecated = cfg["version"] == "V1"
            self.pre_boot()
            self.boot_path = True
            pre = "MMMDS config error: "  # sic: v1.7.0's text
            ids = cfg["network_interfaces"]
            if not ids:
                raise ApiError(
                    pre + "The list of network interface IDs that allow forwarding MMDS "
                    "requests is empty.",
                    deprecation=deprecated,
                )
            if any(i not in self.nets for i in ids):
                raise ApiError(
                    pre + "The list of network interface IDs provided contains at least one ID "
                    "that does not correspond to any existing network interface.",
                    deprecation=deprecated,
                )
            addr = cfg["ipv4_address"] or "169.254.169.254"
            if not ipaddress.IPv4Address(addr).is_link_local:
                raise ApiError(
                    pre + "The MMDS IPv4 address is not link local.", deprecation=deprecated
                )
            self.mmds_config = {
                "version": cfg["version"],
                "network_interfaces": ids,
                "ipv4_address": addr,
            }
            return Reply(204, deprecation=deprecated)
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


PAGES_PER_MIB = 256  # 4 KiB pages


def merge_limiter(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A PATCHed rate limiter: a bucket given replaces the old one (size or refill 0
    removes it), an omitted one stays (v1.7.0 and v1.14.2 alike)."""
    out = dict(old or {"bandwidth": None, "ops": None})
    for key in ("bandwidth", "ops"):
        if new.get(key) is not None:
            out[key] = new[key]
    return out


def bucket_view(b: dict[str, Any] | None) -> dict[str, Any] | None:
    """A token bucket as ``GET /vm/config`` shows it: from the live bucket, so a disabled
    one (size or refill_time 0) is null and a burst of 0 is null."""
    if b is None or not b.get("size") or not b.get("refill_time"):
        return None
    return {
        "size": b["size"],
        "one_time_burst": b.get("one_time_burst") or None,
        "refill_time": b["refill_time"],
    }


def limiter_view(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """A rate limiter as ``GET /vm/config`` shows it: null when no bucket is active."""
    if cfg is None:
        return None
    out = {k: bucket_view(cfg.get(k)) for k in ("bandwidth", "ops")}
    return out if any(out.values()) else None


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
