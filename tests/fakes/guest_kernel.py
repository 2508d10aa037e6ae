"""A minimal guest for tests: a static x86-64 ELF "kernel" and a tiny ext4 root image.

The kernel's 64-bit entry (Firecracker jumps to ``e_entry`` in long mode with the first
GiB identity mapped) writes one line to the 16550 UART at port 0x3f8 and halts forever.
A normal Linux guest cannot boot on this machine's nested KVM; this one can, so the same
end-to-end test runs against the real Firecracker when ``FCD_FIRECRACKER`` is set.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

MESSAGE = "fcd-guest: hello"
LOAD_ADDRESS = 0x100000  # HIMEM_START: Firecracker rejects entry points below 1 MiB

_ASM = f"""
    .code64
    .section .text
    .globl _start
_start:
    lea     msg(%rip), %rsi
    mov     $msg_len, %ecx
    mov     $0x3f8, %dx
1:  lodsb
    outb    %al, %dx
    loop    1b
2:  hlt
    jmp     2b

    .section .rodata
msg:
    .ascii  "{MESSAGE}\\n"
    .set    msg_len, . - msg
"""


BALLOON_DRIVER_MARK = "virtio_balloon"


def build(out: Path, *, balloon_driver: bool = False, chatty: bool = False) -> Path:
    """Assemble and link the guest kernel to ``out`` (needs binutils' ``as`` and ``ld``).

    ``balloon_driver``: the image also carries the string ``virtio_balloon``, as a
    vmlinux with the driver built in does; the Firecracker double then treats the
    guest as one whose balloon device is active (the real Firecracker does not look:
    this guest has no driver, and a balloon update on it is ``DeviceNotActive``).
    ``chatty``: print the line again and again instead of halting (a guest that floods
    its console, for the rate limit; the Firecracker double follows only the first line).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fcd-guest-") as tmp:
        src, obj = Path(tmp) / "guest.S", Path(tmp) / "guest.o"
        asm = _ASM.replace("2:  hlt", "    jmp     _start\n2:  hlt") if chatty else _ASM
        mark = f'\n    .ascii  "{BALLOON_DRIVER_MARK}"\n' if balloon_driver else ""
        src.write_text(asm + mark)
        subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True, capture_output=True)
        subprocess.run(
            [
                "ld",
                "-static",
                "-nostdlib",
                "-N",
                "--build-id=none",
                "-e",
                "_start",
                f"-Ttext={LOAD_ADDRESS:#x}",
                "-o",
                str(out),
                str(obj),
            ],
            check=True,
            capture_output=True,
        )
    out.chmod(0o644)
    return out


def build_rootfs(out: Path, size_mib: int = 16) -> Path:
    """Make a small ext4 image from a temp dir holding a couple of files."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    with tempfile.TemporaryDirectory(prefix="fcd-rootfs-") as tmp:
        root = Path(tmp)
        (root / "etc").mkdir()
        (root / "etc" / "hostname").write_text("fcd-guest\n")
        (root / "README").write_text("fcd test rootfs\n")
        with open(out, "wb") as f:
            f.truncate(size_mib << 20)
        subprocess.run(
            [mkfs, "-q", "-F", "-d", str(root), str(out)], check=True, capture_output=True
        )
    return out


if __name__ == "__main__":  # pragma: no cover - manual helper
    import sys

    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "vmlinux")))
