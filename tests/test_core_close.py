"""Close-path behaviours of the core, one scripted test each (RFC 9293 3.10, LINUX-SPEC)."""

from __future__ import annotations

import errno

import pytest
from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)
from drill_states import drill_in

from ustack.tcp.events import (
    Connected,
    ConnectionClosed,
    DataReceived,
    EofReceived,
    StateChanged,
)
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


# ---------------------------------------------------------------------- opens


def test_active_open_syn_sent_to_established():
    """RFC 9293 3.10.7.3 / LS 2, 4: connect() sends SYN (SYN_SENT); a SYN-ACK acking
    ISS+1 -> ESTABLISHED with an immediate ACK."""
    d = Drill()
    d.connect()
    d.expect("S 0:0(0)")
    assert d.state == State.SYN_SENT
    d.inject("S. 0:0(0) ack 1 win 65535")
    d.expect(". 1:1(0) ack 1")
    assert d.state == State.ESTABLISHED
    assert Connected() in d.events
    assert d.stats["TcpActiveOpens"] == 1 and d.stats["TcpCurrEstab"] == 1


def test_close_in_syn_sent_sends_nothing():
    """LS 4, 36: close() in SYN_SENT -> CLOSED with nothing sent; the late SYN-ACK then
    finds no socket and gets R seq=SEG.ACK."""
    d = Drill()
    d.connect()
    d.expect("S 0:0(0)")
    d.close()
    d.expect_nothing()
    assert d.state == State.CLOSED
    d.inject("S. 0:0(0) ack 1 win 65535")
    d.expect("R 1:1(0)")
    assert d.stats["TcpExtTCPAbortOnData"] == 0


def test_linger_zero_close_in_syn_sent_sends_nothing_but_counts():
    """LS 31, 36: with SO_LINGER {1, 0} close() in SYN_SENT still sends nothing, and
    Linux's __tcp_close() counts the abort as TcpExtTCPAbortOnData."""
    d = Drill()
    d.connect()
    d.expect("S 0:0(0)")
    d.tcb.linger = 0
    d.close()
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnData"] == 1


def test_syn_retries_exhausted_etimedout():
    """RFC 9293 3.8.3 / LS 4, 128: after tcp_syn_retries SYN retransmissions connect()
    fails with ETIMEDOUT (TcpAttemptFails); no RST is sent."""
    d = Drill("tcp_syn_retries=2")
    d.connect()
    d.expect("S 0:0(0)")
    d.advance(60)
    d.expect("S 0:0(0)")
    d.expect("S 0:0(0)")
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert ConnectionClosed(errno.ETIMEDOUT) in d.events
    assert d.stats["TcpAttemptFails"] == 1


def test_synack_retries_exhausted_drops_embryo():
    """LS 5, 128: after tcp_synack_retries SYN-ACK retransmissions the embryonic
    connection is dropped silently; the peer's late ACK then gets R seq=SEG.ACK."""
    d = Drill("tcp_synack_retries=2")
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.advance(60)
    d.expect("S. 0:0(0) ack 1")
    d.expect("S. 0:0(0) ack 1")
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert d.table.listeners[80].half_open == 0
    d.inject(". 1:1(0) ack 1")
    d.expect("R 1:1(0)")


def test_simultaneous_open_syn_ack_crosses():
    """RFC 9293 3.5 Figure 8 / LS 4: SYN_SENT + bare SYN -> SYN_RECEIVED and a SYN-ACK with
    our original ISS; the peer's SYN-ACK then takes us to ESTABLISHED. Linux (commit
    23e89e8ee7be) accepts that SYN-ACK instead of challenging it and sends no extra ACK."""
    d = Drill()
    d.connect()
    d.expect("S 0:0(0)")
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    assert d.state == State.SYN_RECEIVED
    d.inject("S. 0:0(0) ack 1 win 65535")
    assert d.state == State.ESTABLISHED
    assert Connected() in d.events
    d.expect_nothing()
    assert d.stats["TcpExtTCPSYNChallenge"] == 0
    assert d.stats["TcpExtTCPChallengeACK"] == 0
    assert d.stats["TcpActiveOpens"] == 1 and d.stats["TcpPassiveOpens"] == 0
    # The SYN-ACK's window is not scaled (RFC 7323 2.2): 65535 bytes, not 65535 << 7.
    assert d.tcb.snd_wnd == 65535
    d.send(b"hello")
    d.expect("P. 1:6(5) ack 1")


def test_simultaneous_open_completed_by_ack():
    """RFC 9293 3.10.7.4 fifth, SYN-RECEIVED: an ACK of our SYN-ACK completes the open."""
    d = Drill()
    d.connect()
    d.expect("S 0:0(0)")
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1")
    assert d.state == State.ESTABLISHED
    assert Connected() in d.events
    d.expect_nothing()


def test_simultaneous_open_synack_retransmitted_on_rto():
    """RFC 9293 3.8.1 / LS 128: in SYN_RECEIVED after a simultaneous open our SYN-ACK is
    retransmitted with the same ISS until answered."""
    d = Drill()
    d.connect()
    d.expect("S 0:0(0)")
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.advance(1.5)
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1")
    assert d.state == State.ESTABLISHED


def test_syn_received_ack_with_data_and_fin_goes_to_close_wait():
    """LS 5: SYN_RECEIVED -> ESTABLISHED -> CLOSE_WAIT when the handshake-completing ACK
    carries data and FIN; the data is readable and the FIN takes one sequence number."""
    d = Drill()
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject("F. 1:11(10) ack 1")
    d.expect(". 1:1(0) ack 12")
    d.accept()
    assert d.state == State.CLOSE_WAIT
    assert d.read() == b"x" * 10
    assert EofReceived() in d.events
    assert d.stats["TcpPassiveOpens"] == 1


# ---------------------------------------------------------------------- FIN handling


def test_fin_consumes_one_sequence_number_both_ways():
    """RFC 9293 3.4 / LS 14: after N data bytes our FIN is seq N+1 and must be ACKed with
    N+2; an ACK of N+1 only covers the data. The peer's FIN after M bytes is ACKed M+2."""
    d = Drill()
    d.established_passive()
    d.send(b"abcde")
    d.expect("P. 1:6(5) ack 1")
    d.inject("P. 1:4(3) ack 6")
    d.expect(". 6:6(0) ack 4")
    assert d.read() == b"xxx"
    d.close()
    d.expect("F. 6:6(0) ack 4")
    d.inject(". 4:4(0) ack 6")  # acks the data only
    assert d.state == State.FIN_WAIT_1
    d.inject(". 4:4(0) ack 7")  # acks the FIN
    assert d.state == State.FIN_WAIT_2
    d.inject("F. 4:4(0) ack 7")
    d.expect(". 7:7(0) ack 5")
    assert d.state == State.TIME_WAIT


def test_fin_carrying_data_in_established():
    """RFC 9293 3.10.7.4 seventh/eighth: data and FIN in one segment are both taken; the
    ACK covers data + 1; ESTABLISHED -> CLOSE_WAIT (LS 6)."""
    d = Drill()
    d.established_passive()
    d.inject("FP. 1:101(100) ack 1")
    d.expect(". 1:1(0) ack 102")
    assert d.state == State.CLOSE_WAIT
    assert DataReceived() in d.events and EofReceived() in d.events
    assert d.read() == b"x" * 100


def test_out_of_order_fin_waits_for_the_hole():
    """LS 152 / RFC 9293 3.10.7.4 eighth: a FIN beyond a hole does not take effect; the
    hole is ACKed at once (dup ACK, RFC 5681 4.2); once filled, the FIN is processed."""
    d = Drill()
    d.established_passive()
    d.inject("F. 11:21(10) ack 1")
    d.expect(". 1:1(0) ack 1")
    assert d.state == State.ESTABLISHED
    assert EofReceived() not in d.events
    d.inject("P. 1:11(10) ack 1")
    d.expect(". 1:1(0) ack 22")
    assert d.state == State.CLOSE_WAIT
    assert d.read() == b"x" * 20
    assert EofReceived() in d.events


def test_out_of_order_bare_fin():
    """LS 152: a zero-length FIN beyond a hole waits in the out-of-order queue."""
    d = Drill()
    d.established_passive()
    d.inject("F. 11:11(0) ack 1")
    d.expect(". 1:1(0) ack 1")
    assert d.state == State.ESTABLISHED
    d.inject("P. 1:11(10) ack 1")
    d.expect(". 1:1(0) ack 12")
    assert d.state == State.CLOSE_WAIT


def test_retransmitted_fin_in_close_wait_is_reacked():
    """RFC 9293 3.10.7.4 eighth, CLOSE-WAIT: "Remain in the CLOSE-WAIT state" and ACK a
    retransmitted FIN (it is below RCV.NXT: a duplicate, LS 114 data-bearing)."""
    d = drill_in(State.CLOSE_WAIT)
    d.inject("F. 1:1(0) ack 1")
    d.expect(". 1:1(0) ack 2")
    assert d.state == State.CLOSE_WAIT


# ---------------------------------------------------------------------- close variants


def test_simultaneous_close_closing_then_time_wait():
    """RFC 9293 3.6 case 3 (Figure 13) / LS 7, 10, 24: our FIN crosses the peer's FIN:
    FIN_WAIT_1 -> CLOSING with an immediate ACK -> TIME_WAIT when our FIN is ACKed."""
    d = Drill("tcp_msl=5")
    d.established_passive()
    d.close()
    d.expect("F. 1:1(0) ack 1")
    d.inject("F. 1:1(0) ack 1")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.CLOSING
    d.inject(". 2:2(0) ack 2")
    d.expect_nothing()
    assert d.state == State.TIME_WAIT
    assert d.stats["TcpExtTW"] == 1
    d.advance(10.1)
    assert d.state == State.CLOSED


def test_fin_ack_in_one_segment_fin_wait_1_to_time_wait():
    """LS 7: one segment that ACKs our FIN and carries the peer's FIN takes FIN_WAIT_1
    straight to TIME_WAIT (ACK processed first, then the FIN), with one ACK."""
    d = Drill()
    d.established_passive()
    d.close()
    d.expect("F. 1:1(0) ack 1")
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    d.expect_nothing()
    assert d.state == State.TIME_WAIT
    assert d.stats["TcpExtTW"] == 1


def test_fin_piggybacks_on_queued_data():
    """LS 20: close() with unsent data queues the FIN on the last data segment (FP.)."""
    d = Drill()
    d.established_passive()
    d.inject(". 1:1(0) ack 1 win 0")  # the peer's window closes
    d.send(b"y" * 100)
    d.expect_nothing()
    d.close()
    d.expect_nothing()
    d.inject(". 1:1(0) ack 1 win 1000")
    d.expect("FP. 1:101(100) ack 1")
    d.inject(". 1:1(0) ack 102")
    assert d.state == State.FIN_WAIT_2


def test_only_the_active_closer_holds_time_wait():
    """RFC 9293 3.6 / LS 11, 22: the passive closer goes LAST_ACK -> CLOSED with no TIME_WAIT;
    a later segment for the tuple gets a no-socket RST (LS 100)."""
    d = drill_in(State.LAST_ACK)
    d.inject(". 2:2(0) ack 2")
    assert d.state == State.CLOSED
    assert len(d.table.tw) == 0 and d.stats["TcpExtTW"] == 0
    d.inject("F. 2:2(0) ack 2")
    d.expect("R 2:2(0)")


# ---------------------------------------------------------------------- half-close


def test_shutdown_sends_fin_and_keeps_receiving():
    """RFC 9293 3.6.1 / LS 25: shutdown(SHUT_WR) sends FIN; data keeps arriving and being
    ACKed in FIN_WAIT_1 and FIN_WAIT_2; send() afterwards is EPIPE; the peer's FIN then
    leads to TIME_WAIT."""
    d = Drill()
    d.established_passive()
    d.shutdown()
    d.expect("F. 1:1(0) ack 1")
    assert d.state == State.FIN_WAIT_1
    d.inject("P. 1:11(10) ack 1")  # data that does not ACK our FIN yet
    d.expect(". 2:2(0) ack 11")
    assert d.read() == b"x" * 10
    d.inject(". 11:11(0) ack 2")
    assert d.state == State.FIN_WAIT_2
    d.inject("P. 11:31(20) ack 2")
    d.expect(". 2:2(0) ack 31")
    assert d.read() == b"x" * 20
    with pytest.raises(BrokenPipeError):
        d.send(b"late")
    d.inject("F. 31:31(0) ack 2")
    d.expect(". 2:2(0) ack 32")
    assert d.state == State.TIME_WAIT
    assert d.stats["TcpExtTCPAbortOnData"] == 0


def test_half_closed_fin_wait_2_waits_forever():
    """LS 8, 41: a FIN_WAIT_2 reached by shutdown() (not orphaned) has no timer: after an
    hour nothing was sent and it is still there. close() then starts tcp_fin_timeout."""
    d = drill_in(State.FIN_WAIT_2, "tcp_fin_timeout=10", orphan=False)
    d.advance(3600)
    d.expect_nothing()
    assert d.state == State.FIN_WAIT_2
    d.close()
    d.expect_nothing()  # LS 25: close() after shutdown() sends nothing new
    d.advance(9.9)
    assert d.state == State.FIN_WAIT_2
    d.advance(0.2)
    assert d.state == State.CLOSED
    d.expect_nothing()


def test_close_wait_application_can_still_send():
    """RFC 9293 3.6.1 / LS 26: in CLOSE_WAIT the application can still send; reading after
    the peer's FIN gives EOF (no bytes); close() then sends FIN after the data."""
    d = drill_in(State.CLOSE_WAIT)
    assert d.read() == b""
    d.send(b"reply")
    d.expect("P. 1:6(5) ack 2")
    d.inject(". 2:2(0) ack 6")
    d.close()
    d.expect("F. 6:6(0) ack 2")
    assert d.state == State.LAST_ACK
    d.inject(". 2:2(0) ack 7")
    assert d.state == State.CLOSED


def test_echo_delivers_everything_it_read_before_its_fin():
    """RFC 9293 3.10.4 CLOSE ("all SENDs issued before the CLOSE will be transmitted"):
    an echo service that read 300 bytes and the peer's FIN, then wrote them back and
    closed, sends all 300 bytes before its FIN even when the peer's window holds back
    most of them at close() time."""
    d = Drill(wscale=None)  # window fields in bytes
    d.listen(80)
    d.inject("S 0:0(0) win 100")
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1 win 100")
    d.accept()
    d.inject("P. 1:301(300) ack 1 win 100")
    d.expect(". 1:1(0) ack 301")
    d.inject("F. 301:301(0) ack 1 win 100")
    d.expect(". 1:1(0) ack 302")
    data = d.read()
    assert len(data) == 300
    d.send(data)
    d.expect(". 1:101(100) ack 302")  # no PSH: the write's end is still queued
    d.close()
    assert d.state == State.LAST_ACK
    d.expect_nothing()
    d.inject(". 302:302(0) ack 101 win 100")
    d.expect(". 101:201(100) ack 302")
    d.inject(". 302:302(0) ack 201 win 1000")
    d.expect("FP. 201:301(100) ack 302")
    d.inject(". 302:302(0) ack 302")
    assert d.state == State.CLOSED
    assert d.stats["TcpOutRsts"] == 0


# ---------------------------------------------------------------------- TIME_WAIT


def test_time_wait_reacks_retransmitted_fin_and_restarts_timer():
    """RFC 9293 3.10.7.4 TIME-WAIT ("acknowledge it, and restart the 2 MSL timeout") /
    LS 53(b): a retransmitted FIN gets the TIME_WAIT ACK and restarts 2*tcp_msl."""
    d = drill_in(State.TIME_WAIT, "tcp_msl=5")
    d.advance(8)
    d.inject("F. 1:1(0) ack 2")  # our last ACK was lost
    d.expect(". 2:2(0) ack 2")
    d.advance(9.9)  # 17.9 s after entering: the original 10 s are long gone
    assert d.state == State.TIME_WAIT
    d.advance(0.2)
    assert d.state == State.CLOSED


def test_time_wait_data_is_acked_not_delivered():
    """LS 54-55: data in TIME_WAIT gets an ACK (never a RST) and is not delivered;
    RCV.NXT does not move."""
    d = drill_in(State.TIME_WAIT)
    d.inject("P. 2:12(10) ack 2")
    d.expect(". 2:2(0) ack 2")
    assert not any(isinstance(e, DataReceived) for e in d.events)
    d.inject("P. 2:12(10) ack 2")  # data is never rate-limited (LS 56)
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT


def test_time_wait_bare_ack_in_window_is_silent():
    """LS 53(a), 54: an in-window bare ACK in TIME_WAIT gets no reply."""
    d = drill_in(State.TIME_WAIT)
    d.inject(". 2:2(0) ack 2")
    d.expect_nothing()
    assert d.state == State.TIME_WAIT


def test_time_wait_rst_kills_with_rfc1337_0():
    """RFC 9293 3.10.7.4 TIME-WAIT second (RST: enter CLOSED) / LS 57: with
    tcp_rfc1337=0 (Linux default) an exact RST destroys TIME_WAIT silently; the tuple
    then answers like an unknown one (LS 100)."""
    d = drill_in(State.TIME_WAIT, "tcp_rfc1337=0")
    d.inject("R. 2:2(0) ack 2")
    d.expect_nothing()
    assert d.state == State.CLOSED
    d.inject(". 2:2(0) ack 2")
    d.expect("R 2:2(0)")


def test_time_wait_rst_ignored_with_rfc1337_1():
    """RFC 1337 section 3 fix F1 / LS 57: with tcp_rfc1337=1 a RST in TIME_WAIT is ignored
    and never answered; TIME_WAIT runs its full course."""
    d = drill_in(State.TIME_WAIT, "tcp_rfc1337=1", "tcp_msl=5")
    d.inject("R. 2:2(0) ack 2")
    d.expect_nothing()
    assert d.state == State.TIME_WAIT
    d.advance(9.8)
    assert d.state == State.TIME_WAIT
    d.advance(0.3)
    assert d.state == State.CLOSED


def test_time_wait_inexact_rst_ignored():
    """LS 57: a RST in TIME_WAIT with any other sequence number is ignored, even with
    tcp_rfc1337=0."""
    d = drill_in(State.TIME_WAIT, "tcp_rfc1337=0")
    d.inject("R. 12:12(0) ack 2")
    d.expect_nothing()
    assert d.state == State.TIME_WAIT


# ---------------------------------------------------------------------- abortive close


def test_close_with_unread_data_sends_rst():
    """RFC 9293 3.10.4 / RFC 2525 2.17 / LS 30: close() with unread received data sends
    R. seq=SND.NXT ack=RCV.NXT instead of FIN; no TIME_WAIT."""
    d = Drill()
    d.established_passive()
    d.inject("P. 1:101(100) ack 1")
    d.expect(". 1:1(0) ack 101")
    d.close()
    seg = d.expect("R. 1:1(0) ack 101")
    assert seg.ts is not None  # LS 18: a live socket's RST carries TS
    assert d.state == State.CLOSED
    assert len(d.table.tw) == 0
    assert ConnectionClosed(0) in d.events
    assert d.stats["TcpExtTCPAbortOnClose"] == 1
    assert d.stats["TcpEstabResets"] == 1
    assert d.stats["TcpOutRsts"] == 1


def test_close_with_bytes_unread_above_the_core_sends_rst():
    """LS 30 via the `unread` argument: bytes the application layer holds but never
    consumed (e.g. in a StreamReader) count as unread."""
    d = Drill()
    d.established_passive()
    d.inject("P. 1:101(100) ack 1")
    d.expect(". 1:1(0) ack 101")
    assert d.read() == b"x" * 100  # into the "StreamReader"
    d.close(unread=40)
    d.expect("R. 1:1(0) ack 101")
    assert d.stats["TcpExtTCPAbortOnClose"] == 1


def test_close_after_reading_data_and_fin_sends_fin():
    """LS 30: a pending FIN does not count as unread data: read all, close -> FIN."""
    d = Drill()
    d.established_passive()
    d.inject("FP. 1:101(100) ack 1")
    d.expect(". 1:1(0) ack 102")
    assert d.read() == b"x" * 100
    d.close()
    d.expect("F. 1:1(0) ack 102")
    assert d.stats["TcpExtTCPAbortOnClose"] == 0


def test_close_in_close_wait_with_unread_data_sends_rst():
    """LS 30: in CLOSE_WAIT too, unread data at close() means RST (TcpEstabResets counts
    CLOSE_WAIT -> CLOSED)."""
    d = Drill()
    d.established_passive()
    d.inject("FP. 1:11(10) ack 1")
    d.expect(". 1:1(0) ack 12")
    d.close()
    d.expect("R. 1:1(0) ack 12")
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnClose"] == 1
    assert d.stats["TcpEstabResets"] == 1


@pytest.mark.parametrize("state", [State.FIN_WAIT_1, State.FIN_WAIT_2])
def test_data_after_close_gets_rst(state):
    """RFC 1122 4.2.2.13 / LS 32: new data for an application that closed is answered
    with R seq=SEG.ACK (the no-socket form) and the connection is dropped."""
    d = drill_in(state)
    d.inject("P. 1:11(10) ack 2")
    d.expect("R 2:2(0)")
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnData"] == 1
    assert d.stats["TcpOutRsts"] == 1


@pytest.mark.parametrize("state", [State.CLOSE_WAIT, State.CLOSING, State.LAST_ACK])
def test_data_past_the_peers_own_fin_gets_rst(state):
    """RFC 9293 3.10.7.4 (eighth) / RFC 1122 4.2.2.13 / Linux tcp_rcv_state_process()
    step 7: after the peer's FIN, a segment that starts below RCV.NXT and runs past it
    carries data beyond the end of the stream: R seq=SEG.ACK, the connection is reset
    (EPIPE in CLOSE_WAIT, as tcp_reset() says), TcpExtTCPAbortOnData. A plain
    retransmission that ends at the FIN is only re-ACKed."""
    d = drill_in(state)
    ack = 1  # acknowledges nothing new (in CLOSING and LAST_ACK our FIN stays unACKed)
    d.inject(f"F. 1:1(0) ack {ack}")  # the FIN again: re-ACKed
    d.expect(f". {d.rel_snd}:{d.rel_snd}(0) ack 2")
    assert d.state == state
    d.inject(f"P. 1:11(10) ack {ack}")  # ten bytes where the FIN was
    d.expect(f"R {ack}:{ack}(0)")
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnData"] == 1
    if state == State.CLOSE_WAIT:
        assert d.tcb.error == errno.EPIPE
        assert d.stats["TcpEstabResets"] == 1


def test_data_after_shutdown_is_not_data_after_close():
    """LS 32 applies only to orphans: after shutdown() data is still delivered."""
    d = drill_in(State.FIN_WAIT_2, orphan=False)
    d.inject("P. 1:11(10) ack 2")
    d.expect(". 2:2(0) ack 11")
    assert d.stats["TcpExtTCPAbortOnData"] == 0


def test_linger_zero_sends_rst_and_discards_send_queue():
    """RFC 9293 3.10.5 ABORT / LS 31: SO_LINGER {1, 0}: close() sends R. seq=SND.NXT,
    discards unsent data, leaves no TIME_WAIT. Linux counts it in TcpExtTCPAbortOnData."""
    d = Drill()
    d.established_passive()
    d.inject(". 1:1(0) ack 1 win 0")
    d.send(b"z" * 500)  # stuck behind a zero window
    d.tcb.linger = 0
    d.close()
    d.expect("R. 1:1(0) ack 1")
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert d.tcb.send_queue == 0
    assert len(d.table.tw) == 0
    assert d.stats["TcpExtTCPAbortOnData"] == 1
    assert d.stats["TcpEstabResets"] == 1
    d.advance(60)
    d.expect_nothing()


def test_linger_zero_after_peer_fin_still_no_time_wait():
    """LS 31: the abortive close skips TIME_WAIT in any synchronized state."""
    d = drill_in(State.CLOSE_WAIT)
    d.tcb.linger = 0
    d.close()
    d.expect("R. 1:1(0) ack 2")
    assert d.state == State.CLOSED
    assert len(d.table.tw) == 0


def test_rst_after_rto_uses_highest_sequence_sent():
    """LS 18 (Linux tcp_send_active_reset() / tcp_acceptable_seq()): a live socket's RST
    carries seq = the highest sequence sent (Linux's SND.NXT), also after an RTO rewound
    ours for go-back-N; otherwise a peer that got everything but whose ACKs were lost
    would find the RST left of its window and drop it."""
    d = Drill()
    d.established_passive()
    # A tail loss probe resends the last segment (PTO = SRTT/4 + 2 ms, the handshake's
    # RTT sample being 0), then the RTO (200 ms later) the head. (ustack sets PSH on
    # every retransmission; Linux keeps the flags the segment first had.)
    d.script("""
        +0     send(2896)
        +0     > . 1:1449(1448) ack 1
        +0     > P. 1449:2897(1448) ack 1
        +0.002 > P. 1449:2897(1448) ack 1
        +0.2   > P. 1:1449(1448) ack 1
        +0.05  abort()
        +0     > R. 2897:2897(0) ack 1
    """)


def test_zero_window_does_not_block_a_bare_fin():
    """LS 28: at RCV.WND = 0 a zero-length FIN at RCV.NXT is accepted and ACKed (ack +1,
    win 0), while data at zero window is dropped (TcpExtTCPZeroWindowDrop)."""
    d = Drill("tcp_rmem=4096", wscale=None)
    d.established_passive()
    for i in range(4):
        d.inject(f"P. {1 + 1024 * i}:{1 + 1024 * (i + 1)}(1024) ack 1")
        d.expect(f". 1:1(0) ack {1 + 1024 * (i + 1)} win {3072 - 1024 * i}")
    d.inject("P. 4097:4107(10) ack 1")
    d.expect(". 1:1(0) ack 4097 win 0")
    assert d.stats["TcpExtTCPZeroWindowDrop"] == 1
    d.inject("F. 4097:4097(0) ack 1")
    d.expect(". 1:1(0) ack 4098 win 0")
    assert d.state == State.CLOSE_WAIT


def test_fin_with_old_ack_accepted_in_fin_wait_2():
    """LS 27 ("accept old ack during closing"): in FIN_WAIT_2 a FIN whose ACK field is
    older than SND.UNA (not older than SND.UNA - MAX.SND.WND) is accepted and ACKed."""
    d = drill_in(State.FIN_WAIT_2)
    d.inject("F. 1:1(0) ack 1")  # reordered: sent before the peer saw our FIN
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT
    assert d.stats["TcpExtTCPChallengeACK"] == 0


def test_retransmitted_fin_in_last_ack_is_reacked():
    """RFC 9293 3.10.7.4 eighth (LAST-ACK: remain) / LS 17: the peer did not get our ACK
    of its FIN and resends it: we ACK again and stay in LAST_ACK."""
    d = drill_in(State.LAST_ACK)
    d.inject("F. 1:1(0) ack 1")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.LAST_ACK
    d.inject(". 2:2(0) ack 2")
    assert d.state == State.CLOSED


def test_rst_seq_clamped_to_peer_window_edge():
    """LS 18 (tcp_acceptable_seq()): if what we sent runs past the right edge of the
    peer's window (it shrank the window), the RST uses that edge instead."""
    d = Drill(wscale=None)
    d.established_passive()
    d.send(b"r" * 100)
    d.expect("P. 1:101(100) ack 1")
    d.inject(". 1:1(0) ack 1 win 0")  # the peer's window shrank to nothing
    d.abort()
    d.expect("R. 1:1(0) ack 1")


def _path(d: Drill) -> list[str]:
    return [f"{e.old.name}>{e.new.name}" for e in d.events if isinstance(e, StateChanged)]


@pytest.mark.parametrize("script, path", [
    # RFC 9293 3.6 case 1: active close
    (["close", "> F. 1:1(0) ack 1", "< . 1:1(0) ack 2", "< F. 1:1(0) ack 2",
      "> . 2:2(0) ack 2"],
     ["ESTABLISHED>FIN_WAIT_1", "FIN_WAIT_1>FIN_WAIT_2", "FIN_WAIT_2>TIME_WAIT"]),
    # RFC 9293 3.6 case 2: passive close
    (["< F. 1:1(0) ack 1", "> . 1:1(0) ack 2", "close", "> F. 1:1(0) ack 2",
      "< . 2:2(0) ack 2"],
     ["ESTABLISHED>CLOSE_WAIT", "CLOSE_WAIT>LAST_ACK", "LAST_ACK>CLOSED"]),
    # RFC 9293 3.6 case 3: simultaneous close
    (["close", "> F. 1:1(0) ack 1", "< F. 1:1(0) ack 1", "> . 2:2(0) ack 2",
      "< . 2:2(0) ack 2"],
     ["ESTABLISHED>FIN_WAIT_1", "FIN_WAIT_1>CLOSING", "CLOSING>TIME_WAIT"]),
    # LS 7: FIN+ACK in one segment
    (["close", "> F. 1:1(0) ack 1", "< F. 1:1(0) ack 2", "> . 2:2(0) ack 2"],
     ["ESTABLISHED>FIN_WAIT_1", "FIN_WAIT_1>FIN_WAIT_2", "FIN_WAIT_2>TIME_WAIT"]),
], ids=["active", "passive", "simultaneous", "fin_ack_together"])
def test_close_transition_paths(script, path):
    """RFC 9293 3.3.2 Figure 5 / 3.6: each close path walks exactly these transitions,
    each reported once as a StateChanged event."""
    d = Drill()
    d.established_passive()
    for step in script:
        if step == "close":
            d.close()
        elif step.startswith("> "):
            d.expect(step[2:])
        else:
            d.inject(step[2:])
    d.expect_nothing()
    assert _path(d) == path
