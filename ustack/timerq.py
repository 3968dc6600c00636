"""One heap of deadlines for every TCB of a stack (lazy cancellation).

A TCB re-arms its retransmission timer on nearly every ACK, almost always to a *later*
time. Pushing a heap entry each time would grow the heap per packet, so an entry is
pushed only when the new deadline is earlier than the one already queued for that
TCB; a popped entry whose TCB now wants a later time is simply re-queued. The shell
keeps exactly one `loop.call_at` armed, for `next_deadline()`.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol


class Timed(Protocol):
    deadline: float | None
    queued: float | None  # the deadline this queue holds for it; only TimerQueue writes it


class TimerQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timed]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, item: Timed) -> None:
        d = item.deadline
        if d is None:
            return
        queued = item.queued
        if queued is None or d < queued:
            item.queued = d
            heapq.heappush(self._heap, (d, next(self._seq), item))

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Timed]:
        """Items whose current deadline has passed; stale entries are dropped or re-queued."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            d, _, item = heapq.heappop(heap)
            if item.queued != d:
                continue  # superseded by an earlier push
            item.queued = None
            if item.deadline is None:
                continue
            if item.deadline > now:
                self.schedule(item)
                continue
            due.append(item)
        return due
