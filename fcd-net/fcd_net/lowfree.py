"""The lowest free value of a range, kept up to date instead of searched for.

fcd-net hands out the lowest free address of its pool (and of the veth pool in
netns mode). Searching from the bottom on every setup was O(VMs): with 1,000
leases, 1,000 address strings built and looked up per setup, 2 CPU-ms, the
largest growth in fcd-net's CPU with VMs alive (bench/create_delete.py --scale).

:class:`LowestFree` keeps a high-water mark and a heap of the free values below
it: a lookup is O(log n) amortised, a release O(log n). It never decides
alone: :meth:`lowest` asks the caller's ``is_used`` of every value it offers,
so a value the index believes free but the leases hold is skipped, never
handed out twice. The
lease store tells it of every address that leaves it (:meth:`release`); one it
was not told of is not reused until the next start, and that is all.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable


class LowestFree:
    """Values ``lo, lo + step, ... <= hi``; the lowest one not used, on demand."""

    def __init__(self, lo: int, hi: int, step: int, used: Iterable[int]) -> None:
        self.lo, self.hi, self.step = lo, hi, step
        taken = {v for v in used if self._in_range(v)}
        self._hw = max(taken, default=lo - step)
        """Every value above it is free; below it, the free ones are in the heap."""
        self._free = [v for v in range(lo, self._hw + 1, step) if v not in taken]
        heapq.heapify(self._free)

    def _in_range(self, value: int) -> bool:
        return self.lo <= value <= self.hi and (value - self.lo) % self.step == 0

    def lowest(self, is_used: Callable[[int], bool]) -> int | None:
        """The lowest value not ``is_used``, None if the range is full. It stays in the
        index until ``is_used`` says it is taken, so a setup that fails before its
        lease is stored leaves the value free for the next one."""
        while self._free and is_used(self._free[0]):
            heapq.heappop(self._free)
        if self._free:
            return self._free[0]
        value = self._hw + self.step
        while value <= self.hi and is_used(value):
            value += self.step
        if value > self.hi:
            return None
        self._hw = value  # the values skipped were used: none free between the marks
        heapq.heappush(self._free, value)
        return value

    def release(self, value: int) -> None:
        """``value`` is free again."""
        if self._in_range(value) and value <= self._hw:
            heapq.heappush(self._free, value)
