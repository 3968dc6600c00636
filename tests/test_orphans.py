"""tcp_max_orphans (Linux tcp_check_oom(), LINUX-SPEC-2 items 399-400): beyond it an
orphan is reset at close() or at its next RTO, counted as TcpExtTCPAbortOnMemory, with
the log line "TCP: too many orphaned sockets"."""

from __future__ import annotations

import logging

from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)

from ustack import eventlog
from ustack.tcp.events import TooManyOrphans
from ustack.tcp.state import State


def second(d: Drill):
    """Another connection to the drill's listener, accepted."""
    b = d.peer(40001)
    b.inject("S 0:0(0) win 65535")
    b.expect("S. 0:0(0) ack 1")
    b.inject(". 1:1(0) ack 1")
    b.accept()
    d.events.clear()
    return b


def test_orphan_over_the_limit_is_reset_at_close():
    d = Drill("tcp_max_orphans=1")
    d.established_passive()
    b = second(d)
    d.close()  # the first orphan is within the limit: a FIN
    d.expect("F. 1:1(0) ack 1")
    assert d.ctx.orphans == 1
    b.close()  # the second is one too many: RST, gone
    b.expect("R. 1:1(0) ack 1")
    assert b.state == State.CLOSED and d.state == State.FIN_WAIT_1
    assert d.stats["TcpExtTCPAbortOnMemory"] == 1
    assert d.ctx.orphans == 1
    assert TooManyOrphans() in d.ctx.notices
    # The first one ends normally, and its count goes with it.
    d.inject(". 1:1(0) ack 2")
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT and d.ctx.orphans == 0


def test_orphans_below_the_limit_close_normally():
    d = Drill("tcp_max_orphans=2")
    d.established_passive()
    b = second(d)
    d.close()
    d.expect("F. 1:1(0) ack 1")
    b.close()
    b.expect("F. 1:1(0) ack 1")
    assert d.ctx.orphans == 2 and d.stats["TcpExtTCPAbortOnMemory"] == 0


def test_orphan_reset_at_rto_when_the_limit_fell():
    """An orphan retransmitting its FIN when there are too many (the limit lowered
    meanwhile, as a sysctl write would): tcp_out_of_resources() resets it."""
    d = Drill("tcp_max_orphans=5")
    d.established_passive()
    d.close()
    d.expect("F. 1:1(0) ack 1")
    d.ctx.config.tcp_max_orphans = 0
    d.expect("R. 2:2(0) ack 1", after=0.2)  # the first RTO
    assert d.state == State.CLOSED and d.stats["TcpExtTCPAbortOnMemory"] == 1
    assert d.ctx.orphans == 0


def test_log_line_is_linuxs(caplog):
    with caplog.at_level(logging.WARNING, logger="ustack.events"):
        eventlog.notice(TooManyOrphans())
    assert "TCP: too many orphaned sockets" in caplog.text


def test_a_second_close_counts_the_orphan_once():
    """close() again on a closing connection (FIN_WAIT_1) makes no second orphan: the
    count would never come down (Linux: one socket, one close, one orphan)."""
    d = Drill()
    d.established_passive()
    d.close()
    d.expect("F. 1:1(0) ack 1")
    d.close()
    assert d.ctx.orphans == 1
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT and d.ctx.orphans == 0
