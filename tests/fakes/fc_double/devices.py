"""Host effects the real VMM performs: opening TAPs, disks, the kernel, /dev/kvm, snapshots."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import zlib
from typing import Any

from .telemetry import io_error

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO = 0x01, 0x02, 0x04, 0x10
VNET_HDR_LEN = 12  # virtio_net_hdr_v1
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_API_VERSION = 12
IFACE_NAME_MAX_LEN = 16

# State file: 64-bit magic (x86_64 arch id 0x8664) + format version 1.0.0 + payload + CRC.
SNAPSHOT_MAGIC = 0x0710_1984_8664_0000
SNAPSHOT_VERSION = (1, 0, 0)


class DeviceError(Exception):
    pass


def open_tap(name: str) -> int:
    """Tap::open_named + Net::new: returns the TAP fd or raises DeviceError(TapError text)."""
    raw = name.encode()
    if len(raw) > IFACE_NAME_MAX_LEN - 1:
        raise DeviceError("Open tap device failed: Invalid interface name")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceError(
            f"Open tap device failed: Couldn't open /dev/net/tun: {io_error(e)}"
        ) from e
    ifreq = struct.pack("16sH22x", raw, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifreq)
    except OSError as e:
        os.close(fd)
        raise DeviceError(
            f"Open tap device failed: Error while creating ifreq structure: {io_error(e)}. "
            f"Invalid TUN/TAP Backend provided by {name}. Check our documentation on setting "
            "up the network devices."
        ) from e
    try:
        flags = TUN_F_CSUM | TUN_F_UFO | TUN_F_TSO4 | TUN_F_TSO6
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError as e:
        os.close(fd)
        raise DeviceError(
            f"Setting tap interface offload flags failed: Error while setting the offload "
            f"flags: {io_error(e)}"
        ) from e
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
    except OSError as e:
        os.close(fd)
        raise DeviceError(
            f"Setting vnet header size failed: Error while setting size of the vnet header: "
            f"{io_error(e)}"
        ) from e
    return fd


def open_disk(path: str, read_only: bool) -> int:
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except OSError as e:
        raise DeviceError(
            "Unable to create the virtio block device: Virtio backend error: Error manipulating "
            f"the backing file: {io_error(e)} {path}"
        ) from e


def check_kernel(fd: int, mem_size_mib: int) -> int:
    """linux-loader's Elf::load checks for an x86_64 vmlinux; returns the entry point."""
    head = os.pread(fd, 64, 0)
    prefix = "Cannot load kernel due to invalid memory configuration or invalid kernel image: "
    if len(head) < 64 or head[:4] != b"\x7fELF":
        raise DeviceError(
            prefix + "Kernel Loader: failed to load ELF kernel image: Invalid Elf magic number"
        )
    if head[4] != 2:
        raise DeviceError(
            prefix + "Kernel Loader: failed to load ELF kernel image: Invalid Elf class"
        )
    if head[5] != 1:
        raise DeviceError(
            prefix + "Kernel Loader: failed to load ELF kernel image: Trying to "
            "load big-endian binary on little-endian machine"
        )
    (e_machine,) = struct.unpack_from("<H", head, 18)
    (entry, phoff) = struct.unpack_from("<QQ", head, 24)
    (phentsize, phnum) = struct.unpack_from("<HH", head, 54)
    if e_machine != 62:  # EM_X86_64
        raise DeviceError(
            prefix + "Kernel Loader: failed to load ELF kernel image: Invalid Elf machine type"
        )
    if entry < 0x100000:
        raise DeviceError(
            prefix + "Kernel Loader: failed to load ELF kernel image: Invalid entry address"
        )
    limit = mem_size_mib << 20
    for i in range(phnum):
        ph = os.pread(fd, phentsize, phoff + i * phentsize)
        if len(ph) < 56:
            raise DeviceError(
                prefix + "Kernel Loader: failed to load ELF kernel image: "
                "Unable to read program header"
            )
        (p_type,) = struct.unpack_from("<I", ph, 0)
        paddr, _filesz, memsz = struct.unpack_from("<QQQ", ph, 24)
        if p_type == 1 and paddr + memsz > limit:
            raise DeviceError(
                prefix + "Kernel Loader: failed to load ELF kernel image: "
                "Failed writing to guest memory"
            )
    return int(entry)


BALLOON_DRIVER_MARK = b"virtio_balloon"
KERNEL_SCAN_MAX = 256 << 20


def has_balloon_driver(fd: int) -> bool:
    """True if the guest kernel image names the virtio-balloon driver (built in)."""
    offset, tail = 0, b""
    while offset < KERNEL_SCAN_MAX:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return False
        if BALLOON_DRIVER_MARK in tail + chunk:
            return True
        tail = chunk[-len(BALLOON_DRIVER_MARK) :]
        offset += len(chunk)
    return False


class Kvm:
    """Opens /dev/kvm and creates a VM, like Vmm::new does before loading the kernel."""

    def __init__(self) -> None:
        self.kvm_fd = -1
        self.vm_fd = -1

    def create_vm(self) -> None:
        prefix = "Internal error while starting microVM: Error creating KVM object: "
        try:
            self.kvm_fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceError(
                prefix + f"{io_error(e)} Make sure the user launching the firecracker process "
                "is configured on the /dev/kvm file's ACL."
            ) from e
        version = fcntl.ioctl(self.kvm_fd, KVM_GET_API_VERSION, 0)
        if version != KVM_API_VERSION:
            raise DeviceError(prefix + f"Bad KVM API version: {version}")
        try:
            self.vm_fd = fcntl.ioctl(self.kvm_fd, KVM_CREATE_VM, 0)
        except OSError as e:
            raise DeviceError(
                f"Internal error while starting microVM: Vm error: Cannot create VM: {io_error(e)}"
            ) from e


def write_snapshot(state_path: str, mem_path: str, state: dict[str, Any], mem_mib: int) -> None:
    payload = json.dumps(state, separators=(",", ":")).encode()
    header = struct.pack("<QQQQ", SNAPSHOT_MAGIC, *SNAPSHOT_VERSION)
    body = header + struct.pack("<Q", len(payload)) + payload
    crc = struct.pack("<Q", zlib.crc32(body))
    with open(state_path, "wb") as f:
        f.write(body + crc)
    fd = os.open(mem_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, mem_mib << 20)
    finally:
        os.close(fd)


def read_snapshot(state_path: str, mem_path: str) -> dict[str, Any]:
    """Validate and decode a state file; raise DeviceError with a restore error text."""
    pre = "Failed to restore from snapshot: Failed to get snapshot state from file: "
    try:
        with open(state_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DeviceError(pre + f"Failed to open snapshot file: {io_error(e)}") from e
    if len(data) < 48:
        raise DeviceError(
            pre + "Failed to load snapshot state from file: Snapshot file is "
            "smaller than CRC length."
        )
    body, crc = data[:-8], struct.unpack("<Q", data[-8:])[0]
    if zlib.crc32(body) != crc:
        raise DeviceError(pre + "Failed to load snapshot state from file: CRC64 validation failed")
    magic, major, minor, patch, length = struct.unpack_from("<QQQQQ", body, 0)
    if magic != SNAPSHOT_MAGIC:
        raise DeviceError(
            pre + f"Failed to load snapshot state from file: Invalid magic id {magic:#x}"
        )
    if major != SNAPSHOT_VERSION[0] or minor > SNAPSHOT_VERSION[1]:
        raise DeviceError(
            pre + "Failed to load snapshot state from file: Invalid snapshot "
            f"version {major}.{minor}.{patch}"
        )
    state: dict[str, Any] = json.loads(body[40 : 40 + length])
    # Firecracker opens the memory file read-only and maps it MAP_PRIVATE for the VM's
    # life: the fd is kept (``state["__mem_fd"]``), so the file must stay readable.
    try:
        fd = os.open(mem_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceError(
            f"Failed to restore from snapshot: Failed to load guest memory: "
            f"Error creating guest memory from file: {io_error(e)}"
        ) from e
    if os.fstat(fd).st_size < state["machine-config"]["mem_size_mib"] << 20:
        os.close(fd)
        raise DeviceError(
            "Failed to restore from snapshot: Failed to load guest memory: "
            "Error creating guest memory from file: memory file is smaller "
            "than the guest memory"
        )
    state["__mem_fd"] = fd
    return state
