"""Close-path behaviours of the core, one scripted test each (RFC 9293 3.10, LINUX-SPEC)."""

from __future__ import annotations

import errno

from drill import Drill

from ustack.tcp.events import ConnectionClosed, EofReceived
from ustack.tcp.state import State


def test_passive_close_last_ack_no_time_wait():
    """RFC 9293 3.6 case 2 / LS 22: peer FIN -> CLOSE_WAIT; close -> LAST_ACK; ACK -> CLOSED."""
    d = Drill()
    d.established_passive()
    d.inject("F. 1:1(0) ack 1")
    d.expect(". 1:1(0) ack 2")  # the FIN consumes one sequence number
    assert d.state == State.CLOSE_WAIT
    assert EofReceived() in d.events
    d.close()
    d.expect("F. 1:1(0) ack 2")
    assert d.state == State.LAST_ACK
    d.inject(". 2:2(0) ack 2")
    assert d.state == State.CLOSED
    assert len(d.table.tw) == 0


def test_active_close_holds_time_wait_for_2msl():
    """RFC 9293 3.6 case 1: FIN_WAIT_1 -> FIN_WAIT_2 -> TIME_WAIT, held 2*tcp_msl."""
    d = Drill("tcp_msl=5")
    d.established_passive()
    d.close()
    d.expect("F. 1:1(0) ack 1")
    assert d.state == State.FIN_WAIT_1
    d.inject(". 1:1(0) ack 2")
    assert d.state == State.FIN_WAIT_2
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT
    assert d.stats["TcpExtTW"] == 1
    d.advance(9.9)
    assert d.state == State.TIME_WAIT
    d.advance(0.2)
    assert d.state == State.CLOSED


def test_data_transfer_and_window():
    d = Drill()
    d.established_passive()
    d.inject("P. 1:101(100) ack 1")
    d.expect(". 1:1(0) ack 101")  # quick ACK at the start of a connection
    assert d.read() == b"x" * 100
    d.send(b"hello")
    d.expect("P. 1:6(5) ack 101")
    d.inject(". 101:101(0) ack 6")
    d.expect_nothing()
    assert d.tcb.send_queue == 0


def test_rst_exact_resets_established():
    d = Drill()
    d.established_passive()
    d.inject("R. 1:1(0) ack 1")
    assert d.state == State.CLOSED
    assert ConnectionClosed(errno.ECONNRESET) in d.events
    assert d.stats["TcpEstabResets"] == 1
