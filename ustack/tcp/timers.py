"""The timers of one connection, as data (smoltcp's `Timer`, Linux's icsk timers).

Each kind of timer has one slot holding an absolute time or None. The connection sets
and clears slots; `next()` is its deadline (the shell's timer heap asks for it), and
`due(now)` hands out the kinds that have run out, in a fixed order, clearing each as
it goes. Nothing here schedules anything or reads a clock, and since the deadline is
computed from the slots, no caller can forget to recompute it.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum


class Timer(IntEnum):
    """Timer kinds, in the order `due()` runs them when several are due at once (the
    order the TCB always ran them: an ACK first, then the loss probe before the RTO)."""

    DELACK = 0  # delayed ACK (RFC 9293 3.8.6.3, RFC 5681 4.2)
    LOSS = 1  # loss detection: the tail loss probe (RFC 8985 7); owned by recovery.py
    RTO = 2  # retransmission (RFC 6298)
    PERSIST = 3  # zero-window probe (RFC 9293 3.8.6.1)
    KEEPALIVE = 4  # RFC 9293 3.8.4, RFC 1122 4.2.3.6
    LINGER = 5  # SO_LINGER N > 0 running out
    FIN_WAIT_2 = 6  # orphaned FIN_WAIT_2 (Linux tcp_fin_timeout)


_KINDS = tuple(Timer)
_N = len(_KINDS)


class Timers:
    """One slot per `Timer`; `next()` is the earliest set slot."""

    __slots__ = ("at", "_next", "_dirty", "_count")

    def __init__(self) -> None:
        self.at: list[float | None] = [None] * _N
        self._next: float | None = None  # the earliest slot, unless _dirty
        self._dirty = False
        self._count = 0  # slots set

    def set(self, kind: Timer, at: float) -> None:
        # Runs on nearly every ACK (the RTO restarts), so the earliest slot is kept up
        # to date without a scan where it can be. While _dirty, _next is a lower bound
        # of the earliest slot, else exact.
        slots = self.at
        old = slots[kind]
        slots[kind] = at
        if old is None:
            self._count += 1
        nxt = self._next
        if self._count == 1 or nxt is None or at <= nxt:
            self._next = at  # the only timer, or earlier than every other
            self._dirty = False
        elif old is not None and old <= nxt:
            self._dirty = True  # the earliest slot moved later

    def clear(self, kind: Timer) -> None:
        if self.at[kind] is not None:
            self.at[kind] = None
            self._count -= 1
            if self._count == 0:
                self._next = None
                self._dirty = False
            else:
                self._dirty = True

    def clear_all(self) -> None:
        self.at = [None] * _N
        self._next = None
        self._dirty = False
        self._count = 0

    def get(self, kind: Timer) -> float | None:
        return self.at[kind]

    def is_set(self, kind: Timer) -> bool:
        return self.at[kind] is not None

    def next(self) -> float | None:
        """The earliest deadline, None if no timer is set."""
        if self._dirty:
            d = None
            for t in self.at:
                if t is not None and (d is None or t < d):
                    d = t
            self._next = d
            self._dirty = False
        return self._next

    def due(self, now: float) -> Iterator[Timer]:
        """The kinds whose time has come, in `Timer` order, each cleared before it is
        yielded. A slot is looked at when its turn comes, so a handler that clears or
        re-arms a later timer is seen by this same pass."""
        at = self.at
        for kind in _KINDS:
            t = at[kind]
            if t is not None and now >= t:
                self.clear(kind)
                yield kind

    def items(self) -> list[tuple[Timer, float]]:
        """(kind, time) of every set timer, for views such as `ss -o`."""
        return [(k, t) for k, t in zip(_KINDS, self.at, strict=True) if t is not None]
