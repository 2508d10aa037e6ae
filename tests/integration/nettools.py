"""Stand-in guest tools for the packet tests (stdlib only; run inside a namespace).

    nettools.py relay GUEST_NS VM_NS|- TAP UID GID   relay frames: guest TAP eth0 <-> VM TAP
    nettools.py ping DST [SRC]                     one ICMP echo; exit 0 on reply
    nettools.py tcp-serve PORT TAG [HOST]          echo "<tag>:<peer ip>" to each connection
    nettools.py udp-serve PORT TAG [HOST]          same for each datagram
    nettools.py udp-log PORT HOST                  print "got:<peer ip>" per datagram, reply nothing
    nettools.py raw-udp IFACE DST_MAC SRC DST PORT one hand-made UDP frame out of IFACE (as a
                                                   guest that ignores its own routing would)
    nettools.py tcp-call HOST PORT                 print the reply; exit 1 if none
    nettools.py udp-call HOST PORT [SRC]           same over UDP

The relay plays Firecracker: it attaches to the VM's TAP *as the jail uid*
(TUNSETIFF, no capabilities), and to a TAP named eth0 in the guest namespace
that carries the VM's IP and MAC, and copies frames both ways. TAP to TAP
keeps frames whole (no checksum or segmentation offload is in play).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
CLONE_NEWNET = 0x40000000
TIMEOUT = 2.0


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _attach(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def relay(guest_ns: str, vm_ns: str, tap: str, uid: int, gid: int) -> None:
    home = f"/proc/self/fd/{os.open('/proc/self/ns/net', os.O_RDONLY)}"
    _setns(f"/run/netns/{guest_ns}")
    guest = _attach("eth0")
    _setns(home if vm_ns == "-" else f"/run/netns/{vm_ns}")
    vm = os.open("/dev/net/tun", os.O_RDWR)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # from here on: the jail uid, no capabilities, like Firecracker
    fcntl.ioctl(vm, TUNSETIFF, struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI))
    print("ready", flush=True)
    peer = {guest: vm, vm: guest}
    while True:
        ready, _, _ = select.select([guest, vm], [], [])
        for fd in ready:
            try:
                os.write(peer[fd], os.read(fd, 65536))
            except OSError:
                pass  # e.g. the other side has no carrier yet


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(dst: str, src: str | None = None) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        if src:
            s.bind((src, 0))
        ident = os.getpid() & 0xFFFF
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"fcd-ping"
        pkt = hdr[:2] + struct.pack("!H", _checksum(hdr)) + hdr[4:]
        s.sendto(pkt, (dst, 0))
        deadline = time.monotonic() + TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            r, _, _ = select.select([s], [], [], left)
            if not r:
                break
            data, addr = s.recvfrom(2048)
            ihl = (data[0] & 0xF) * 4
            typ, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if typ == 0 and rid == ident and addr[0] == dst:
                print(f"reply from {dst}")
                return 0
    print(f"no reply from {dst}")
    return 1


def tcp_serve(port: int, tag: str, host: str = "0.0.0.0") -> None:
    srv = socket.create_server((host, port), reuse_port=True)
    print("ready", flush=True)
    while True:
        conn, addr = srv.accept()
        with conn:
            conn.sendall(f"{tag}:{addr[0]}".encode())


def udp_serve(port: int, tag: str, host: str = "0.0.0.0") -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    print("ready", flush=True)
    while True:
        _, addr = s.recvfrom(2048)
        s.sendto(f"{tag}:{addr[0]}".encode(), addr)


def udp_log(port: int, host: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    print("ready", flush=True)
    while True:
        _, addr = s.recvfrom(2048)
        print(f"got:{addr[0]}", flush=True)


def raw_udp(iface: str, dst_mac: str, src: str, dst: str, port: int) -> int:
    """Write one Ethernet/IPv4/UDP frame with these addresses, whatever the routing says."""
    with open(f"/sys/class/net/{iface}/address") as f:
        src_mac = f.read().strip()
    payload = b"fcd-raw"
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        s.send(eth + b"\x08\x00" + hdr + udp)
    return 0


def tcp_call(host: str, port: int) -> int:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as c:
            print(c.recv(256).decode())
            return 0
    except OSError as e:
        print(f"error: {e}")
        return 1


def udp_call(host: str, port: int, src: str | None = None) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if src:
            s.bind((src, 0))
        s.settimeout(TIMEOUT)
        s.sendto(b"hi", (host, port))
        try:
            print(s.recvfrom(256)[0].decode())
            return 0
        except OSError as e:
            print(f"error: {e}")
            return 1


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "relay":
        relay(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif cmd == "ping":
        return ping(args[0], args[1] if len(args) > 1 else None)
    elif cmd == "tcp-serve":
        tcp_serve(int(args[0]), args[1], *args[2:3])
    elif cmd == "udp-serve":
        udp_serve(int(args[0]), args[1], *args[2:3])
    elif cmd == "udp-log":
        udp_log(int(args[0]), args[1])
    elif cmd == "raw-udp":
        return raw_udp(args[0], args[1], args[2], args[3], int(args[4]))
    elif cmd == "tcp-call":
        return tcp_call(args[0], int(args[1]))
    elif cmd == "udp-call":
        return udp_call(args[0], int(args[1]), args[2] if len(args) > 2 else None)
    else:
        raise SystemExit(f"unknown command {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
