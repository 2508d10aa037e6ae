"""fcd-api's supervision, wired in one place: exit watcher, reconciliation, health
checks, restart policies and readiness (each in its own module).

Start order: the exit watcher first (a crash is recorded before anything else
looks), then reconciliation (its first round repairs what a crash left), then
the health checks. A recorded exit and an ``unhealthy`` health change go to
the restart policy; a create or start waits for readiness through
``Flows.ready``.
"""

from __future__ import annotations

import asyncio
import contextlib

from fcd_common.config import SupervisionConfig

from .health import HealthMonitor
from .readiness import Readiness
from .reconcile import Reconciler
from .recovery import Recovery
from .service import Flows
from .supervise import ExitWatcher

__all__ = ["Supervision"]


class Supervision:
    def __init__(self, flows: Flows, cfg: SupervisionConfig) -> None:
        self.watcher = ExitWatcher(flows)
        self.recovery = Recovery(flows, cfg)
        self.watcher.on_exit = self.recovery.exited
        self.health = HealthMonitor(flows, cfg, self.recovery.unhealthy)
        self.reconciler = Reconciler(flows, self.watcher, cfg.reconcile_interval_s)
        self.readiness = Readiness(flows.helpers, cfg)
        flows.ready = self.readiness.wait
        self._resume: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.watcher.start()
        self.reconciler.start()
        self.health.start()
        self._resume = asyncio.get_running_loop().create_task(self._resume_restarts())

    async def _resume_restarts(self) -> None:
        """Restarts a previous fcd-api left pending, once the first round has run."""
        await self.reconciler.done_once.wait()
        self.recovery.after_restart()

    async def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resume
        await self.health.close()
        await self.recovery.close()
        await self.reconciler.close()
        await self.watcher.close()
