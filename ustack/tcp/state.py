"""The eleven states of RFC 9293 section 3.3.2, with names as the RFC and `ss` spell them."""

from __future__ import annotations

from enum import IntEnum


class State(IntEnum):
    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10

    @property
    def rfc_name(self) -> str:
        """SYN-RECEIVED, TIME-WAIT ... as RFC 9293 writes them."""
        return self.name.replace("_", "-")

    @property
    def ss_name(self) -> str:
        """ESTAB, SYN-SENT, TIME-WAIT ... as `ss -tan` prints them."""
        return _SS_NAMES[self]

    @property
    def synchronized(self) -> bool:
        return self >= State.ESTABLISHED or self == State.SYN_RECEIVED

    @property
    def can_send(self) -> bool:
        """The application may still queue data (our side has not sent FIN)."""
        return self in (State.ESTABLISHED, State.CLOSE_WAIT)

    @property
    def can_recv(self) -> bool:
        """The peer may still send data (its FIN has not been received)."""
        return self in (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2)


_SS_NAMES = {
    State.CLOSED: "UNCONN", State.LISTEN: "LISTEN", State.SYN_SENT: "SYN-SENT",
    State.SYN_RECEIVED: "SYN-RECV", State.ESTABLISHED: "ESTAB", State.FIN_WAIT_1: "FIN-WAIT-1",
    State.FIN_WAIT_2: "FIN-WAIT-2", State.CLOSE_WAIT: "CLOSE-WAIT", State.CLOSING: "CLOSING",
    State.LAST_ACK: "LAST-ACK", State.TIME_WAIT: "TIME-WAIT",
}
