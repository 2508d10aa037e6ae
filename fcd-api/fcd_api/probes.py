"""One probe of a guest, for health checks and readiness: which helper answers which kind.

* ``process`` -- fcd-vmm still has the VM's Firecracker (``vmm.status``);
* ``api`` -- that Firecracker answers ``GET /`` on its API socket (``vmm.probe``);
* ``tcp:PORT`` -- a TCP connection to the guest succeeds, made by fcd-net where a
  client reaches the guest (``net.probe_tcp``; fcd-api itself has no network);
* ``serial:REGEX`` -- a line the guest printed on its console since ``since`` matches
  (:func:`serial_probe`: fcd-vmm captures the console, ``vmm.console``).

A probe never raises for a guest that does not answer: that is ``ok=False``
with the reason. A helper that cannot be reached does raise (Unavailable):
an outage of fcd-net must not count as a failure of the guest.
"""

from __future__ import annotations

import re
import time
from typing import Literal

from fcd_common.errors import FcdError, Unavailable
from fcd_common.proto import net as pnet
from fcd_common.proto import vmm as pvmm
from fcd_common.proto.common import ProbeResult
from fcd_common.proto.console import ConsoleRead

from .clients import Helpers

__all__ = ["Kind", "run_probe", "serial_probe"]

Kind = Literal["process", "api", "tcp", "serial"]


async def serial_probe(
    helpers: Helpers, vm_id: str, pattern: str, timeout_s: float, since: float
) -> ProbeResult:
    """Did the guest print a console line matching ``pattern`` at or after ``since``
    (wall-clock seconds, as fcd-vmm stamps each line it reads)? Waits up to
    ``timeout_s`` for one (``vmm.console`` long poll over fcd-vmm's ring of lines)."""
    rx = re.compile(pattern)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    after, epoch = 0, None
    while True:
        left = max(0.0, deadline - time.monotonic())
        req = ConsoleRead(
            vm_id=vm_id, after=after, epoch=epoch, wait_s=min(left, 60.0), max_lines=10_000
        )
        res = await helpers.vmm.call(req, timeout=left + 10)
        for line in res.lines:
            if line.time >= since and rx.search(line.text):
                took = round((time.monotonic() - t0) * 1000, 3)
                return ProbeResult(ok=True, detail=f"console: {line.text[:200]}", took_ms=took)
        after, epoch = res.next_after, res.epoch
        if left <= 0:
            return ProbeResult(
                ok=False,
                detail=f"no console line matching {pattern!r} within {timeout_s:g}s",
                took_ms=round((time.monotonic() - t0) * 1000, 3),
            )


async def run_probe(
    helpers: Helpers, vm_id: str, kind: Kind, arg: str, timeout_s: float, *, since: float = 0.0
) -> ProbeResult:
    """``since``: serial only -- lines read before it (wall clock) do not count."""
    try:
        if kind == "process":
            p = await helpers.vmm.call(pvmm.Status(vm_id=vm_id), timeout=timeout_s + 5)
            ok = p.state in ("running", "paused")
            return ProbeResult(ok=ok, detail=f"Firecracker {p.state} (pid {p.pid})")
        if kind == "api":
            req = pvmm.Probe(vm_id=vm_id, timeout_s=timeout_s)
            return await helpers.vmm.call(req, timeout=timeout_s + 5)
        if kind == "tcp":
            tcp = pnet.NetProbeTcp(vm_id=vm_id, port=int(arg), timeout_s=timeout_s)
            return await helpers.net.call(tcp, timeout=timeout_s + 5)
        return await serial_probe(helpers, vm_id, arg, timeout_s, since)
    except Unavailable:
        raise
    except FcdError as e:
        return ProbeResult(ok=False, detail=f"{e.code}: {e.message}")
