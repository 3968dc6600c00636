"""Events the core reports to the application layer (frozen, slotted, comparable)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..wire.tcp import Segment, format_segment
from .state import State


class Why(Enum):
    """What made a connection change state, besides a segment. The values are the
    words the trace, the log and the ladder print."""

    SEGMENT = ""  # the segment in `Cause.seg` did
    CONNECT = "connect()"
    SHUTDOWN = "shutdown()"
    CLOSE = "close()"
    ABORT = "abort()"
    CLOSE_UNREAD = "close() with unread data"  # RFC 2525 2.17, LS 30
    LINGER_ZERO = "close() with SO_LINGER 0"  # RFC 9293 3.10.5, LS 31
    LINGER_TIMEOUT = "SO_LINGER timeout"
    DATA_AFTER_CLOSE = "data after close"  # RFC 1122 4.2.2.13, LS 32
    SYN_OTHER_ISN = "SYN with another ISN"  # Linux tcp_check_req() embryonic reset
    FIN_TIMEOUT = "tcp_fin_timeout"  # LS 42
    SYN_RETRIES = "SYN retries exhausted"
    SYNACK_RETRIES = "SYN-ACK retries exhausted"
    RTO_GIVE_UP = "retransmission timeout"  # LS 124-125
    ZWP_GIVE_UP = "zero-window probes unanswered"
    KEEPALIVE_GIVE_UP = "keepalive timeout"  # LS 130-133
    LISTENER_CLOSED = "listener closed"  # LS 34
    TWO_MSL = "2MSL timeout"  # a TIME_WAIT record expired
    REUSED = "reused by a new connection"  # a TIME_WAIT record taken over
    ORPHANS = "too many orphaned sockets"  # Linux tcp_check_oom(), LINUX-SPEC-2 400


# Aborts that this end decided on (eventlog.py logs them as such).
OUR_ABORTS = frozenset((Why.ABORT, Why.CLOSE_UNREAD, Why.LINGER_ZERO, Why.LINGER_TIMEOUT,
                        Why.DATA_AFTER_CLOSE))


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a state changed: a reason, the segment that caused it if one did, and for
    an abort whether a RST went out. Formatted only at the edges (trace, log,
    ladder): `str()` gives the raw numbers, `format()` relative ones."""

    why: Why
    seg: Segment | None = None
    rst_sent: bool | None = None

    def __str__(self) -> str:
        return self.format()

    def format(self, seq_base: int = 0, ack_base: int = 0, brief: bool = False) -> str:
        """E.g. "abort(), RST sent" or "on F. seq 812 ack 1" (with the peer's ISN as
        `seq_base` and ours as `ack_base`, tcpdump style); `brief` leaves out the
        window and the options."""
        parts = [self.why.value] if self.why is not Why.SEGMENT else []
        if self.seg is not None:
            parts.append("on " + format_segment(self.seg, seq_base, ack_base, brief=brief))
        if self.rst_sent is not None:
            parts.append("RST sent" if self.rst_sent else "nothing sent")
        return ", ".join(parts)

    @property
    def ours(self) -> bool:
        """An abort this end decided on."""
        return self.why in OUR_ABORTS


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed (SYN_SENT/SYN_RECEIVED -> ESTABLISHED)."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """New in-order bytes are waiting in the receive buffer (read them with `recv`)."""


@dataclass(frozen=True, slots=True)
class EofReceived:
    """The peer's FIN was processed: after the buffered bytes, the stream ends."""


@dataclass(frozen=True, slots=True)
class SendSpaceAvailable:
    """Acknowledged data left the send buffer."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The TCB is gone. errno is 0 for an orderly end, else ECONNRESET, ECONNREFUSED,
    ETIMEDOUT or EPIPE, as a kernel socket would report it."""

    errno: int = 0


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: State
    new: State
    cause: Cause


@dataclass(frozen=True, slots=True)
class ListenOverflow:
    """A notice for the operator: a SYN (or a handshake's ACK) was dropped, the listen
    queue being full."""

    port: int
    backlog: int
    what: str = "SYN"


@dataclass(frozen=True, slots=True)
class TimeWaitOverflow:
    """A notice: a connection entered TIME_WAIT with tcp_max_tw_buckets records in the
    table, so it got none (LS 64)."""


@dataclass(frozen=True, slots=True)
class SynFlood:
    """A notice: a listener's SYN queue overflowed for the first time (or tcp_syncookies
    is 2), so it sends cookies or drops SYNs (Linux tcp_syn_flood_action(),
    LINUX-SPEC-2 item 243). Once per listener."""

    ip: str
    port: int
    cookies: bool


@dataclass(frozen=True, slots=True)
class TooManyOrphans:
    """A notice: an orphan was reset, tcp_max_orphans being exceeded (tcp_check_oom())."""


# Notices are stack-wide, for the log; the core queues them on Context.notices and the
# shell writes them (rate-limited) with eventlog.py. The core itself never logs.
Notice = ListenOverflow | TimeWaitOverflow | SynFlood | TooManyOrphans

Event = Connected | DataReceived | EofReceived | SendSpaceAvailable | ConnectionClosed | StateChanged
