"""The exits fcd-vmm did not cause, held for fcd-api's long poll (``vmm.watch_exits``).

A Firecracker that crashes, is killed, or ends because its guest shut down is
noticed at once through its pidfd; fcd-vmm records it here and wakes every
waiting ``watch_exits`` call, so fcd-api learns within milliseconds, without a
timer. Exits that fcd-vmm causes itself (stop, release, a failed launch) are not
recorded: fcd-api asked for those. The log is in memory and bounded; ``epoch``
names this process, so a caller that sees another epoch knows fcd-vmm restarted
(exits found at start-up are recorded again) and compares with ``vmm.list``.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from datetime import UTC, datetime

from fcd_common.proto.vmm import VmExit, VmExits

__all__ = ["ExitLog"]

KEEP = 4096


class ExitLog:
    def __init__(self) -> None:
        self.epoch = secrets.token_hex(6)
        self._items: collections.deque[VmExit] = collections.deque(maxlen=KEEP)
        self._seq = 0
        self._changed = asyncio.Event()

    def record(self, vm_id: str, pid: int, exit_code: int | None, log_tail: list[str]) -> VmExit:
        self._seq += 1
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        item = VmExit(
            seq=self._seq, vm_id=vm_id, pid=pid, exit_code=exit_code, at=at, log_tail=log_tail
        )
        self._items.append(item)
        self._changed.set()
        self._changed = asyncio.Event()
        return item

    def after(self, since: int, epoch: str | None) -> list[VmExit]:
        if epoch != self.epoch:
            since = 0
        return [x for x in self._items if x.seq > since]

    async def wait(self, since: int, epoch: str | None, wait_s: float) -> VmExits:
        items = self.after(since, epoch)
        if not items and wait_s > 0:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), wait_s)
            except TimeoutError:
                pass
            items = self.after(since, epoch)
        nxt = items[-1].seq if items else (since if epoch == self.epoch else 0)
        return VmExits(epoch=self.epoch, items=items, next=nxt)
