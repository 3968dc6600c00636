"""Events the core reports to the application layer (frozen, slotted, comparable)."""

from __future__ import annotations

from dataclasses import dataclass

from .state import State


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
    cause: str  # the segment or call that caused it, e.g. "F. seq 812 ack 1"


Event = Connected | DataReceived | EofReceived | SendSpaceAvailable | ConnectionClosed | StateChanged
