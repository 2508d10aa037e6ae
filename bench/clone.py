#!/usr/bin/env python3
"""Root disk clone cost: reflink (XFS reflink=1) vs the sparse-copy fallback (ext4).

For images of 64 MiB, 1 GiB and 4 GiB (one MiB of data in every eight, the
rest holes), provisions a VM disk from a template on each filesystem and
prints the time of the clone and the extra space it used, side by side.
Everything lives on sparse loop images made and removed here, so the host's
disk use stays near the data written. Figures, not assertions. Needs root.

    .venv/bin/python bench/clone.py            # 64 MiB, 1 GiB, 4 GiB
    .venv/bin/python bench/clone.py --quick    # 64 MiB, 256 MiB (CI smoke)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.loopfs import loop_fs, used_bytes

from fcd_common.storelayout import StoreLayout
from fcd_storage import disks, templates
from fcd_storage.store import Store

MiB = 1 << 20
DATA_EVERY = 8  # one MiB of data in every 8 MiB


def image(path: Path, size: int) -> Path:
    chunk = bytes(range(256)) * (MiB // 256)
    with path.open("wb") as f:
        f.truncate(size)
        for off in range(0, size, DATA_EVERY * MiB):
            f.seek(off)
            f.write(chunk)
    return path


def measure(fstype: str, sizes: list[int], base: Path) -> dict[int, tuple[str, float, int]]:
    total = sum(sizes)
    out: dict[int, tuple[str, float, int]] = {}
    with loop_fs(base, fstype, 2 * total + (2 << 30)) as mnt:
        store = Store(StoreLayout(mnt / "storage"), max_disk_mib=1 << 20, import_dirs=(str(mnt),))
        store.ensure_dirs()
        kernel = mnt / "vmlinux"
        kernel.write_bytes(b"\x7fELF" + bytes(4096))
        for size in sizes:
            name = f"t{size // MiB}"
            src = image(mnt / f"{name}.img", size)
            templates.import_template(store, name, str(kernel), str(src))
            src.unlink()
            os.sync()
            time.sleep(0.5)  # let the filesystem settle the freed blocks
            before = used_bytes(mnt)
            t0 = time.perf_counter()
            d = disks.provision(store, f"vm-{name}", name)
            elapsed = time.perf_counter() - t0
            out[size] = (d.method, elapsed, used_bytes(mnt) - before)
    return out


def fmt_size(n: int) -> str:
    return f"{n // (1 << 30)} GiB" if n >= 1 << 30 else f"{n // MiB} MiB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB and 256 MiB only (CI smoke)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices, mount)", file=sys.stderr)
        return 2
    sizes = [64 * MiB, 256 * MiB] if args.quick else [64 * MiB, 1 << 30, 4 << 30]
    with tempfile.TemporaryDirectory(prefix="fcd-bench-clone-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        xfs = measure("xfs", sizes, base)
        ext4 = measure("ext4", sizes, base)
        wall = time.perf_counter() - t0
    print(f"root disk clone, images with 1 MiB of data in every {DATA_EVERY} MiB")
    head = ("image", "data", "xfs method", "time", "extra space", "ext4 method", "time", "extra")
    rows = [head]
    for size in sizes:
        (m1, t1, s1), (m2, t2, s2) = xfs[size], ext4[size]
        rows.append(
            (
                fmt_size(size),
                f"{size // DATA_EVERY // MiB} MiB",
                m1,
                f"{t1 * 1000:.1f} ms",
                f"{s1 / MiB:.1f} MiB",
                m2,
                f"{t2 * 1000:.1f} ms",
                f"{s2 / MiB:.1f} MiB",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    print(f"(bench wall time {wall:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
