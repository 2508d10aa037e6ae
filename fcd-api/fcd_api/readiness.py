"""Guest readiness: a create or start with ``wait_for`` answers ``running`` only once the
guest is really up.

``wait_for: "tcp:PORT"`` -- a TCP connection to the guest's port succeeds (made
by fcd-net, where a client reaches the guest); ``"serial:REGEX"`` -- a line
of the guest console matches. The VM stays ``starting`` meanwhile. The probe
is repeated until ``wait_timeout_s`` (default ``supervision.wait_timeout_s``)
has passed: then the call fails with ``deadline_exceeded`` (504) naming the
last probe's answer, and the flow undoes itself -- a create removes the VM
with everything it was given, a start kills the Firecracker and leaves the VM
``error``. If the Firecracker ends while waiting, the call fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fcd_common import logs
from fcd_common.config import SupervisionConfig
from fcd_common.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from fcd_common.proto import vmm as pvmm

from .clients import Helpers
from .models import VmRecord
from .probes import run_probe
from .supervision_models import parse_target

__all__ = ["Readiness"]

log = logging.getLogger("fcd.api.readiness")

PAUSE_S = 0.2
PROBE_TIMEOUT_S = 2.0


class Readiness:
    def __init__(self, helpers: Helpers, cfg: SupervisionConfig) -> None:
        self.helpers = helpers
        self.cfg = cfg

    async def wait(self, rec: VmRecord, launched_at: float) -> None:
        """Return once ``rec``'s guest is ready (at once without ``wait_for``);
        ``launched_at``: wall clock before the launch (older console lines do not count)."""
        spec = rec.spec
        if spec.wait_for is None:
            return
        kind, arg = parse_target(spec.wait_for)
        timeout = spec.wait_timeout_s or self.cfg.wait_timeout_s
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = "not probed yet"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(
                    f"wait_for {spec.wait_for}: the guest was not ready within {timeout:g}s"
                    f" (last probe: {last})",
                    details={"field": "wait_for", "timeout_s": timeout},
                )
            try:
                res = await run_probe(
                    self.helpers,
                    rec.id,
                    kind,
                    arg,
                    min(PROBE_TIMEOUT_S, max(left, 0.05)),
                    since=launched_at,
                )
                if res.ok:
                    log.info(
                        "guest ready after %.2fs (%s): %s",
                        time.monotonic() - t0,
                        spec.wait_for,
                        res.detail,
                        extra=logs.vm(rec.id),
                    )
                    return
                last = res.detail
                p = await self.helpers.vmm.call(pvmm.Status(vm_id=rec.id))
                if p.state not in ("running", "paused"):
                    raise FailedPrecondition(
                        f"wait_for {spec.wait_for}: the guest ended before it was ready"
                        f" (Firecracker {p.state}, exit {p.exit_code})",
                        details={"field": "wait_for"},
                    )
            except Unavailable as e:
                last = e.message  # a helper restarting: keep trying until the deadline
            await asyncio.sleep(min(PAUSE_S, max(0.0, deadline - time.monotonic())))
