"""Stack-wide memory accounting and pressure, Linux's `tcp_mem` (sans-IO).

Linux charges every queued skb to a global counter in pages and compares it with
`tcp_mem` = {min, pressure, max} (LINUX-SPEC-2 items 394-397). ustack counts the bytes
its TCBs hold (receive queue, out-of-order queue, send queue) and lets the shell sample
the sum (`TcpMem.sample`) every SAMPLE_EVERY seconds, as Linux's per-CPU counters
also lag, or sooner once the data received since the last sample (`recent`, one
addition per data segment) reaches an eighth of tcp_mem[2]: so the sum may overshoot
by that much, never by a whole window per connection. A walk of the table is cheaper
than a charge and an uncharge on every segment of the hot path. The TCBs read the two
flags:

- `pressure`: set above tcp_mem[1] (TcpExtTCPMemoryPressures), cleared only at or
  below tcp_mem[0] (the time spent goes to TcpExtTCPMemoryPressuresChrono, in ms).
  Receive windows stop growing and clamp to 4 MSS (Linux tcp_adjust_rcv_ssthresh()).
- `over`: above tcp_mem[2]. New data finds no room unless its connection holds less
  than tcp_rmem's minimum (4096 bytes, LINUX-SPEC-2 item 402): the out-of-order queue
  is pruned and the segment dropped (Tcb._mem_room(), as tcp_prune_queue()).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PAGE = 4096
SAMPLE_EVERY = 0.1  # seconds between two walks of the table
RMEM_MIN = 4096  # tcp_rmem[0]: what a connection may always hold


def usage(tcbs: Iterable[Any]) -> int:
    """Bytes the TCBs hold in their queues."""
    total = 0
    for t in tcbs:
        total += len(t.rcvbuf) + t.ofo.size + len(t.sendq)
    return total


class TcpMem:
    __slots__ = ("pages", "pressure", "over", "recent", "_slack", "_since", "_next")

    def __init__(self) -> None:
        self.pages = 0
        self.pressure = False
        self.over = False
        self.recent = 0  # bytes received since the last sample
        self._slack = 0
        self._since = 0.0
        self._next = 0.0

    def due(self, now: float) -> bool:
        return now >= self._next or self.recent > self._slack

    def sample(self, used: int, limits: tuple[int, int, int], now: float, stats) -> None:
        """Take a new usage figure (bytes) against tcp_mem (pages)."""
        self._next = now + SAMPLE_EVERY
        self.recent = 0
        pages = self.pages = -(-used // PAGE)
        low, mid, high = limits
        self._slack = high * PAGE // 8
        if not self.pressure and pages > mid:
            self.pressure = True  # tcp_enter_memory_pressure()
            self._since = now
            stats["TcpExtTCPMemoryPressures"] += 1
        elif self.pressure and pages <= low:
            self.pressure = False  # tcp_leave_memory_pressure()
            stats["TcpExtTCPMemoryPressuresChrono"] += int((now - self._since) * 1000)
        self.over = pages > high
