#!/usr/bin/env python3
"""Create and delete latency through the public API, with the four real daemons.

Starts the suite in a private network namespace (as `fcd up` does), imports
the minimal guest template, then creates N microVMs one after another
(POST /v1/vms until it answers `running`) and deletes them
(DELETE /v1/vms/{id}?force=true), and prints the median, p90 and max of each.
Figures, not assertions. Runs against the Firecracker test double unless
FCD_FIRECRACKER/FCD_JAILER name real binaries. Needs root.

    .venv/bin/python bench/create_delete.py --vms 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from e2e.harness import api, running_suite  # noqa: E402
from fcd_dev import devup  # noqa: E402


def summary(name: str, xs: list[float]) -> str:
    xs_ms = sorted(x * 1000 for x in xs)
    p90 = xs_ms[max(0, round(0.9 * len(xs_ms)) - 1)]
    return (
        f"{name:<7} n={len(xs_ms):<4} median={statistics.median(xs_ms):8.1f} ms  "
        f"p90={p90:8.1f} ms  max={xs_ms[-1]:8.1f} ms  mean={statistics.fmean(xs_ms):8.1f} ms"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vms", type=int, default=50)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fcd-bench-") as tmp, running_suite(Path(tmp)) as suite:
        devup.import_demo_template(suite, "bench")
        backend = (
            "real Firecracker" if os.environ.get("FCD_FIRECRACKER") else "Firecracker TEST DOUBLE"
        )
        print(f"backend: {backend}; {args.vms} VMs, 1 vCPU, 128 MiB, sequential")
        creates: list[float] = []
        deletes: list[float] = []
        with api(suite) as c:
            ids = [f"bench-{i}" for i in range(args.vms)]
            for vm_id in ids:
                t0 = time.perf_counter()
                r = c.post("/v1/vms", json={"id": vm_id, "template": "bench"})
                creates.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    print(f"create {vm_id} failed: {r.status_code} {r.text}", file=sys.stderr)
                    return 1
            for vm_id in ids:
                t0 = time.perf_counter()
                r = c.delete(f"/v1/vms/{vm_id}", params={"force": "true"})
                deletes.append(time.perf_counter() - t0)
                if r.status_code not in (200, 204):
                    print(f"delete {vm_id} failed: {r.status_code} {r.text}", file=sys.stderr)
                    return 1
        print(summary("create", creates))
        print(summary("delete", deletes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
