#!/usr/bin/env python3
"""Latency of live resource changes through the public API, with the four real daemons.

One running VM with a balloon, limits on its root disk and interface, and a CPU
quota; then N times each: ``PATCH /v1/vms/{id}/resources`` with a CPU quota (one
cgroup write), with rate limits (a PATCH of the root drive and of the interface
in Firecracker), with a memory limit (usage read + cgroup write), and ``GET
/v1/vms/{id}`` (Firecracker's /vm/config + balloon statistics + cgroup reads), next
to ``GET`` of a VM without resource settings (registry only).
Figures, not assertions. Test double unless FCD_FIRECRACKER/FCD_JAILER are set.

    .venv/bin/python bench/resources.py --n 50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from create_delete import summary  # noqa: E402
from e2e.harness import api, running_suite  # noqa: E402
from fcd_dev import devup  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fcd-bench-") as tmp, running_suite(Path(tmp)) as suite:
        devup.import_demo_template(suite, "bench")
        backend = "real Firecracker" if os.environ.get("FCD_FIRECRACKER") else "TEST DOUBLE"
        print(f"backend: {backend}; {args.n} of each, one VM")
        bucket = {"size": 10_000_000, "refill_time_ms": 1000}
        body = {
            "id": "bench-res",
            "template": "bench",
            "balloon": {"stats_interval_s": 1},
            "cpu_quota": 0.5,
            "rate_limits": {"root": {"bandwidth": bucket}, "net": {"rx": {"bandwidth": bucket}}},
        }
        with api(suite) as c:
            r = c.post("/v1/vms", json=body)
            if r.status_code != 201:
                print(f"create failed: {r.status_code} {r.text}", file=sys.stderr)
                return 1
            cases: list[tuple[str, str, dict[str, Any] | None]] = [
                ("quota", "PATCH", {"cpu_quota": 0.25}),
                (
                    "limits",
                    "PATCH",
                    {
                        "rate_limits": {
                            "root": {"ops": {"size": 100, "refill_time_ms": 1000}},
                            "net": {"tx": {"bandwidth": bucket}},
                        }
                    },
                ),
                ("memlim", "PATCH", {"mem_limit_mib": 256}),
                ("get", "GET", None),
                ("getplain", "GET", None),
            ]
            r = c.post("/v1/vms", json={"id": "bench-plain", "template": "bench"})
            for name, method, fixed in cases:
                times: list[float] = []
                for i in range(args.n):
                    patch = fixed
                    if name == "quota":  # a different value each time
                        patch = {"cpu_quota": 0.25 + (i % 4) * 0.25}
                    t0 = time.perf_counter()
                    if method == "GET":
                        r = c.get(
                            "/v1/vms/bench-plain" if name == "getplain" else "/v1/vms/bench-res"
                        )
                    else:
                        r = c.patch("/v1/vms/bench-res/resources", json=patch)
                    times.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        print(f"{name} failed: {r.status_code} {r.text}", file=sys.stderr)
                        return 1
                print(summary(name, times))
            for vm_id in ("bench-res", "bench-plain"):
                c.delete(f"/v1/vms/{vm_id}", params={"force": "true"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
