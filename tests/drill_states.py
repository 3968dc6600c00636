"""Drills parked in each of the eleven states of RFC 9293 3.3.2, built by real segments.

`drill_in(state)` returns a `Drill` whose connection under test is in `state`, with the
numbers relative to both ISNs recorded in `d.rel_snd` (our SND.NXT) and `d.rel_rcv`
(our RCV.NXT), so a test can write an exact-sequence segment for any state. Nothing is
left in `d.out` and `d.events` is empty. Every builder also asserts the segments that
got it there, so a broken transition fails in the builder with a clear message.
"""

from __future__ import annotations

from drill import Drill

from ustack.tcp.state import State


def _passive(d: Drill) -> None:
    d.established_passive()
    d.rel_snd, d.rel_rcv = 1, 1


def drill_in(state: State, *settings: str, orphan: bool = True, **kw) -> Drill:
    """A Drill in `state`. orphan=False reaches FIN_WAIT_*/CLOSING/LAST_ACK with
    shutdown() (the application still holds the socket) instead of close()."""
    d = Drill(*settings, **kw)
    d.rel_snd, d.rel_rcv = 0, 0
    close = d.close if orphan else d.shutdown
    if state == State.CLOSED:
        pass
    elif state == State.LISTEN:
        d.listen(80)
    elif state == State.SYN_SENT:
        d.connect()
        d.expect("S 0:0(0)")
        d.rel_snd, d.rel_rcv = 1, 0
    elif state == State.SYN_RECEIVED:
        d.listen(80)
        d.inject("S 0:0(0) win 65535")
        d.expect("S. 0:0(0) ack 1")
        d.tcb = d.table.est.get(d.key)  # None: a request record (reqsock.py)
        d.rel_snd, d.rel_rcv = 1, 1
    elif state == State.ESTABLISHED:
        _passive(d)
    elif state == State.FIN_WAIT_1:
        _passive(d)
        close()
        d.expect("F. 1:1(0) ack 1")
        d.rel_snd = 2
    elif state == State.FIN_WAIT_2:
        _passive(d)
        close()
        d.expect("F. 1:1(0) ack 1")
        d.inject(". 1:1(0) ack 2")
        d.rel_snd = 2
    elif state == State.CLOSE_WAIT:
        _passive(d)
        d.inject("F. 1:1(0) ack 1")
        d.expect(". 1:1(0) ack 2")
        d.rel_rcv = 2
    elif state == State.LAST_ACK:
        _passive(d)
        d.inject("F. 1:1(0) ack 1")
        d.expect(". 1:1(0) ack 2")
        close()
        d.expect("F. 1:1(0) ack 2")
        d.rel_snd, d.rel_rcv = 2, 2
    elif state == State.CLOSING:
        _passive(d)
        close()
        d.expect("F. 1:1(0) ack 1")
        d.inject("F. 1:1(0) ack 1")  # the peer's FIN crosses ours
        d.expect(". 2:2(0) ack 2")
        d.rel_snd, d.rel_rcv = 2, 2
    elif state == State.TIME_WAIT:
        _passive(d)
        close()
        d.expect("F. 1:1(0) ack 1")
        d.inject(". 1:1(0) ack 2")
        d.inject("F. 1:1(0) ack 2")
        d.expect(". 2:2(0) ack 2")
        d.rel_snd, d.rel_rcv = 2, 2
    if state == State.LISTEN:
        assert d.state == State.CLOSED and 80 in d.table.listeners
    else:
        assert d.state == state, f"builder for {state.name} ended in {d.state.name}"
    d.expect_nothing()
    d.events.clear()
    return d


SYNCHRONIZED = (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT,
                State.CLOSING, State.LAST_ACK)
