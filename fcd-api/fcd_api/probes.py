"""One probe of a guest, for health checks and readiness: which helper answers which kind.

* ``process`` -- fcd-vmm still has the VM's Firecracker (``vmm.status``);
* ``api`` -- that Firecracker answers ``GET /`` on its API socket (``vmm.probe``);
* ``tcp:PORT`` -- a TCP connection to the guest succeeds, made by fcd-net where a
  client reaches the guest (``net.probe_tcp``; fcd-api itself has no network);
* ``serial:REGEX`` -- a line of the guest's console matches (:func:`serial_probe`).

A probe never raises for a guest that does not answer: that is ``ok=False``
with the reason. A helper that cannot be reached does raise (Unavailable):
an outage of fcd-net must not count as a failure of the guest.
"""

from __future__ import annotations

import re
from typing import Literal

from fcd_common.errors import FcdError, Unavailable
from fcd_common.proto import net as pnet
from fcd_common.proto import vmm as pvmm
from fcd_common.proto.common import ProbeResult

from .clients import Helpers

__all__ = ["Kind", "run_probe", "serial_probe"]

Kind = Literal["process", "api", "tcp", "serial"]


async def serial_probe(helpers: Helpers, vm_id: str, pattern: str, timeout_s: float) -> ProbeResult:
    """Does a line of ``vm_id``'s guest console match ``pattern``?

    The one seam to guest console capture (fcd-vmm keeping what the guest writes
    to its serial port, issue #12): until it exists the console goes to
    /dev/null, and every serial probe fails saying so.
    """
    del helpers, timeout_s
    re.compile(pattern)
    return ProbeResult(
        ok=False,
        detail=f"serial:{pattern}: guest console capture is not available in this fcd-vmm",
    )


async def run_probe(
    helpers: Helpers, vm_id: str, kind: Kind, arg: str, timeout_s: float
) -> ProbeResult:
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
        return await serial_probe(helpers, vm_id, arg, timeout_s)
    except Unavailable:
        raise
    except FcdError as e:
        return ProbeResult(ok=False, detail=f"{e.code}: {e.message}")
