"""Long chaos runs: tests/e2e/chaos.py with more operations and several seeds.

    python bench/chaos.py --ops 300 --runs 3 [--seed N] [--kill-p 0.3]

Each run starts the four daemons in a private network namespace, runs ``--ops``
random operations while random daemons are kill -9'ed and restarted, and prints
the figures (operations, daemons killed, kills mid-operation, VMs lost, API/kernel
mismatches, leaks, seed). Exits 1 if any run lost, mismatched or leaked anything.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from e2e.chaos import Chaos  # noqa: E402
from e2e.harness import running_suite  # noqa: E402
from fcd_common.config import SupervisionConfig  # noqa: E402
from fcd_dev import devup  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=300)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=None, help="first seed (random if absent)")
    p.add_argument("--kill-p", type=float, default=0.3, help="kill probability per operation")
    p.add_argument("--max-vms", type=int, default=8)
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    failed = 0
    for n in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="fcd-chaos-", dir="/var/tmp") as tmp:
            sup = SupervisionConfig(reconcile_interval_s=2.0)
            with running_suite(Path(tmp), supervision=sup) as suite:
                devup.import_demo_template(suite, "demo")
                chaos = Chaos(suite, seed + n, kill_p=args.kill_p, max_vms=args.max_vms)
                fig = chaos.run(args.ops)
        print(f"== chaos run {n + 1}/{args.runs}")
        print("\n".join(fig.lines()), flush=True)
        failed += bool(fig.lost or fig.mismatches or fig.leaks)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
