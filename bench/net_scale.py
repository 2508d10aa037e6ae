#!/usr/bin/env python3
"""fcd-net's cost per VM as VMs grow: setup/teardown of one VM with N VMs present.

Runs fcd-net's real core (pyroute2 + libnftables, lease files) in a private,
anonymous network namespace (re-executes itself under ``unshare --net``), so
the host's network and ruleset are untouched. For each N it brings the
population to N VMs (real TAPs on the bridge, real nft elements, each with a
port mapping), then sets up and tears down one more VM k times and prints the
median and p90 of the whole setup / teardown and of the nft transaction alone,
the number of nft rules and set/map elements, and the commands in one VM's
transaction. Figures, not assertions. Needs root.

    .venv/bin/python bench/net_scale.py              # N = 10 and 1000
    .venv/bin/python bench/net_scale.py --sizes 10 100 --repeat 10
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[max(0, round(q * len(xs)) - 1)] * 1000


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def count(nft: Any) -> tuple[int, int]:
    rc, out, _ = nft.json_cmd({"nftables": [{"list": {"ruleset": None}}]})
    assert rc == 0
    objs = out["nftables"]
    rules = sum(1 for o in objs if "rule" in o)
    elems = sum(len(o[k].get("elem", [])) for o in objs for k in ("set", "map") if k in o)
    return rules, elems


def run(sizes: list[int], repeat: int, tmp: Path) -> None:
    import nftables

    from fcd_common.config import Config, JailConfig, NetworkConfig, PathsConfig
    from fcd_common.proto.net import PortMapping
    from fcd_net import ruleset
    from fcd_net.core import NetCore
    from fcd_net.firewall import Firewall
    from fcd_net.leases import LeaseStore
    from fcd_net.links import Links

    net = NetworkConfig(subnet="10.200.0.0/16", port_min=20000, port_max=40000)
    cfg = Config(
        paths=PathsConfig(state_dir=str(tmp), run_dir=str(tmp), chroot_base=str(tmp)),
        network=net,
        jail=JailConfig(uid_min=900_000, uid_max=901_000),
    )
    fw = Firewall(net)
    core = NetCore(cfg, LeaseStore(cfg.state("net")), Links(), fw)
    core.start()
    nft = nftables.Nftables()
    nft.set_json_output(True)
    port = [PortMapping(host_port=0, guest_port=80)]
    print(
        f"{'VMs':>6} {'setup med':>10} {'p90':>8} {'teardown med':>13} {'p90':>8} "
        f"{'nft add':>8} {'nft del':>8} {'rules':>6} {'elements':>9} {'leases':>11}"
    )
    present = 0
    for n in sizes:
        t0 = time.perf_counter()
        while present < n:
            core.setup(f"vm-{present}", 900_001, 900_001, ports=port)
            present += 1
        fill = time.perf_counter() - t0
        up, down, add, rm = [], [], [], []
        for _ in range(repeat):
            up.append(timed(lambda: core.setup("bench-x", 900_002, 900_002, ports=port)))
            lease = core.store.get("bench-x")
            assert lease is not None
            down.append(timed(lambda: core.teardown("bench-x")))
            add.append(timed(functools.partial(fw.add_vm, lease)))  # nft transaction alone
            rm.append(timed(functools.partial(fw.remove_vm, lease)))
        rules, elems = count(nft)
        size = (cfg.state("net") / "leases.log").stat().st_size
        print(
            f"{n:>6} {statistics.median(up) * 1000:>8.2f}ms {pct(up, 0.9):>6.2f}ms "
            f"{statistics.median(down) * 1000:>11.2f}ms {pct(down, 0.9):>6.2f}ms "
            f"{statistics.median(add) * 1000:>6.2f}ms {statistics.median(rm) * 1000:>6.2f}ms "
            f"{rules:>6} {elems:>9} {size // 1024:>8} KiB   (filled in {fill:.1f}s)"
        )
    lease = next(iter(core.store))
    print(
        f"one VM's nft transaction: {len(ruleset.add_vm(net, lease)['nftables'])} commands "
        f"to add, {len(ruleset.remove_vm(net, lease)['nftables'])} to remove, at any N"
    )
    for lease in list(core.store):
        core.teardown(lease.vm_id)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 1000])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    if not args.inside:
        argv = [
            "unshare",
            "--net",
            "--",
            sys.executable,
            __file__,
            "--inside",
            "--repeat",
            str(args.repeat),
            "--sizes",
            *map(str, args.sizes),
        ]
        return os.spawnvp(os.P_WAIT, "unshare", argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fcd-netbench-") as tmp:  # leases, state
        run(sorted(args.sizes), args.repeat, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
