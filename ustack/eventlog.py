"""Log lines for events worth a human's attention, rate-limited.

One line per event: listen queue overflow, TIME_WAIT bucket overflow (timewait.py),
connections we abort (RST on close with unread data, SO_LINGER, data after close),
connections that time out, and, at INFO, connections reset by the peer. Every state
change is logged at DEBUG. `ustack serve --log-level` picks what is shown.

A flood of one kind of event (a SYN flood hitting a full backlog, a port scan drawing
RSTs) must not flood the log, so each kind has a token bucket like the kernel's
net_ratelimit(): a burst of `BURST` lines, then one per `INTERVAL` seconds; what was
left out is counted and reported with the next line of that kind that gets through.
"""

from __future__ import annotations

import errno as E
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .tcp.events import ListenOverflow, Notice, SynFlood, TimeWaitOverflow, TooManyOrphans
from .tcp.state import State

if TYPE_CHECKING:
    from .tcp.events import StateChanged
    from .tcp.tcb import Tcb

log = logging.getLogger("ustack.events")

BURST = 10
INTERVAL = 5.0  # seconds per token: at most 12 lines a minute per kind after the burst


class RateLimiter:
    """Token buckets by kind; `allow(kind)` says whether a line may be written now."""

    def __init__(self, burst: int = BURST, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # kind -> [tokens, last refill, missed]

    def allow(self, kind: str) -> tuple[bool, int]:
        """(may log, lines suppressed since the last one of this kind that was logged)."""
        now = self.clock()
        b = self._buckets.get(kind)
        if b is None:
            b = self._buckets[kind] = [float(self.burst), now, 0]
        tokens = min(self.burst, b[0] + (now - b[1]) / self.interval)
        b[1] = now
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            missed = int(b[2])
            b[2] = 0
            return True, missed
        b[0] = tokens
        b[2] += 1
        return False, 0


_limiter = RateLimiter()


def event(level: int, kind: str, message: str, *args: object,
          limiter: RateLimiter | None = None) -> None:
    """Log one line of `kind` unless that kind is over its rate."""
    if not log.isEnabledFor(level):
        return
    ok, missed = (limiter or _limiter).allow(kind)
    if not ok:
        return
    if missed:
        message += f" ({missed} similar messages suppressed)"
    log.log(level, message, *args)


def _conn(tcb: Tcb) -> str:
    return f"{tcb.local[0]}:{tcb.local[1]} <-> {tcb.remote[0]}:{tcb.remote[1]}"


def state_observer(tcb: Tcb, ev: StateChanged) -> None:
    """A `stack.observers` entry: one line per abort, timeout or reset."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s -> %s %s", _conn(tcb), ev.old.name, ev.new.name, ev.cause)
    if ev.new != State.CLOSED:
        return
    err = tcb.error
    cause = ev.cause
    if cause.ours:
        event(logging.WARNING, "abort", "connection %s aborted in %s: %s",
              _conn(tcb), ev.old.name, cause)
    elif err == E.ETIMEDOUT:
        event(logging.WARNING, "timeout", "connection %s timed out in %s: %s",
              _conn(tcb), ev.old.name, cause)
    elif err in (E.ECONNRESET, E.EPIPE):
        event(logging.INFO, "reset", "connection %s reset by peer in %s: %s",
              _conn(tcb), ev.old.name, cause)
    elif err == E.ECONNREFUSED:
        event(logging.INFO, "refused", "connection %s refused: %s (%s)", _conn(tcb), cause,
              os.strerror(err))


def listen_overflow(port: int, backlog: int, what: str = "SYN") -> None:
    event(logging.WARNING, "listen-overflow",
          "listen queue of port %d overflowed (backlog %d): %s dropped", port, backlog, what)


def notice(n: Notice) -> None:
    """Log one notice the core queued (tcp/events.py), rate-limited per kind."""
    if type(n) is ListenOverflow:
        listen_overflow(n.port, n.backlog, n.what)
    elif type(n) is TimeWaitOverflow:
        # The line older Linux wrote (LS 64), under the same rate limit as the others.
        event(logging.WARNING, "tw-overflow", "TCP: time wait bucket table overflow")
    elif type(n) is SynFlood:
        # Linux's line (tcp_syn_flood_action(), LINUX-SPEC-2 item 243), at WARNING
        # rather than KERN_INFO so the default log level shows it.
        event(logging.WARNING, "syn-flood",
              "TCP: request_sock_TCP: Possible SYN flooding on port %s:%d. %s.",
              n.ip, n.port, "Sending cookies" if n.cookies else "Dropping request")
    elif type(n) is TooManyOrphans:
        # Linux tcp_check_oom(): net_info_ratelimited("too many orphaned sockets").
        event(logging.WARNING, "orphans", "TCP: too many orphaned sockets")
