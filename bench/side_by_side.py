#!/usr/bin/env python3
"""CPU per create+delete of two versions of fcd, measured side by side.

The machine's speed drifts (the bare sequence's own CPU for the same work moved
from 12.6 to 19.4 ms within an hour here), so two runs of create_delete.py an hour
apart cannot tell a 1 ms change. This runs both versions at once: the daemons of
``--old`` (a git revision, checked out into a temporary worktree and imported
through PYTHONPATH) and of this checkout, each suite in its own network
namespace, and alternates blocks of ``--block`` create+deletes between them
(which goes first alternates too), so noise hits both alike. Prints each
daemon's user+sys CPU per create+delete (mean over blocks) and the total's mean
and median, for both.

``--dirs A B`` puts each side's state (registry, store, jails, logs) under its
own directory, e.g. one on tmpfs and one on ext4: without ``--old`` both sides
run this checkout, so the difference is what the filesystem costs fcd. Two
sides on one ext4 differ by up to ~2 ms even with the same code (each state
directory lands in its own block group, and inode allocation there depends on
that group's recent frees): swap the two and average.

    .venv/bin/python bench/side_by_side.py --old 2674e10 --n 300
    .venv/bin/python bench/side_by_side.py --dirs /mnt/tmpfs /var/tmp --n 200

Figures, not assertions. Test double unless FCD_FIRECRACKER/FCD_JAILER are set.
Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import create_delete as cd  # noqa: E402

PACKAGES = ("common", "fcd-api", "fcd-net", "fcd-storage", "fcd-vmm")


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out in a temporary worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fcd-old-") as tmp:
        path = Path(tmp) / "src"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), rev],
            check=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                check=False,
            )


def _start(
    st: contextlib.ExitStack, pythonpath: str | None, subnet: str, parent: str | None
) -> cd.Fcd:
    """A suite whose daemons import from ``pythonpath`` (they inherit the variable),
    with its state in a new directory under ``parent`` (TMPDIR if None)."""
    saved = os.environ.get("PYTHONPATH")
    try:
        if pythonpath:
            os.environ["PYTHONPATH"] = pythonpath
        else:
            os.environ.pop("PYTHONPATH", None)
        tmp = st.enter_context(tempfile.TemporaryDirectory(prefix="fcd-sbs-", dir=parent))
        suite = st.enter_context(cd.running_suite(Path(tmp), subnet=subnet))
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    cd.devup.import_demo_template(suite, "bench")
    return cd.Fcd(suite, st.enter_context(cd.api(suite, timeout=300)))


def _measure(sides: list[cd.Fcd], n: int, block: int) -> list[dict[str, list[float]]]:
    """Per side, per daemon: CPU per create+delete of each block."""
    for k, f in enumerate(sides):
        for i in range(3):  # warm up
            f.create(f"w{k}-{i}")
            f.delete(f"w{k}-{i}")
    per: list[dict[str, list[float]]] = [{d: [] for d in cd.DAEMONS} for _ in sides]
    order = list(enumerate(sides))
    for b in range(max(1, n // block)):
        for k, f in order if b % 2 == 0 else order[::-1]:
            before = f.cpu()
            for i in range(block):
                f.create(f"s{k}-{b}-{i}")
                f.delete(f"s{k}-{b}-{i}")
            after = f.cpu()
            for d in cd.DAEMONS:
                per[k][d].append((after[d] - before[d]) * 1000 / block)
    return per


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", help="git revision to compare with (default: this checkout)")
    p.add_argument("--n", type=int, default=200, help="create+deletes per version")
    p.add_argument("--block", type=int, default=10)
    p.add_argument(
        "--dirs",
        nargs=2,
        metavar=("OLD_DIR", "NEW_DIR"),
        help="parent directory of each side's state (default: TMPDIR for both)",
    )
    args = p.parse_args()
    if args.old is None and args.dirs is None:
        p.error("give --old REV, --dirs A B, or both")
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    dirs: list[str | None] = list(args.dirs) if args.dirs else [None, None]
    names = [f"old {args.old}" if args.old else "this checkout", "this checkout"]
    if args.dirs:
        names = [f"{n} on {d}" for n, d in zip(names, dirs, strict=True)]
    with contextlib.ExitStack() as st:
        old_path = os.environ.get("PYTHONPATH")
        if args.old:
            old_src = st.enter_context(worktree(args.old))
            old_path = ":".join(str(old_src / d) for d in PACKAGES)
        st.enter_context(cd.bench_config(100))
        sides = [
            _start(st, old_path, "10.64.0.0/16", dirs[0]),
            _start(st, os.environ.get("PYTHONPATH"), "10.65.0.0/16", dirs[1]),
        ]
        per = _measure(sides, args.n, args.block)
    print(
        f"CPU per create+delete (user+sys, ms), {args.n} each in blocks of {args.block}, "
        "alternating"
    )
    for name, by_daemon in zip(names, per, strict=True):
        totals = [sum(x) for x in zip(*by_daemon.values(), strict=True)]
        daemons = "  ".join(f"{d} {statistics.fmean(v):.2f}" for d, v in by_daemon.items())
        print(
            f"  {name:<30} {daemons}  total {statistics.fmean(totals):.2f}"
            f" (median {statistics.median(totals):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
