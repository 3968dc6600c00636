"""Timestamps and PAWS (RFC 7323; LS 90-99), scripted against the core on the fake clock.

The peer's TSvals in `Drill` start at 5000 and run at 1 ms per ms of fake time; the
handshake of `established_passive()` records TS.Recent = 5000.
"""

from __future__ import annotations

import errno as E

import pytest
from drill import LOCAL, REMOTE, Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)

from ustack.table import make_key
from ustack.tcp.events import DataReceived
from ustack.tcp.state import State
from ustack.wire.ip import ip_to_bytes

MASK = 0xFFFFFFFF


def data_events(d: Drill) -> int:
    return sum(isinstance(e, DataReceived) for e in d.events)


# ---------------------------------------------------------------------- negotiation


def test_timestamps_negotiated_on_syn_and_syn_ack():
    """RFC 7323 3.2 / LS 90: the SYN-ACK echoes the SYN's TSval; every later segment
    carries TS with TSecr = TS.Recent."""
    d = Drill()
    d.listen(80)
    d.inject("S 0:0(0) win 65535 <mss 1460,TS val 777 ecr 0>")
    synack = d.expect("S. 0:0(0) ack 1")
    assert synack.ts is not None and synack.ts[1] == 777
    d.inject(". 1:1(0) ack 1 <TS val 778 ecr 0>")
    d.accept()
    d.send(b"hello")
    seg = d.expect("P. 1:6(5) ack 1")
    assert seg.ts[1] == 778 and d.tcb.ts_ok


def test_no_timestamps_unless_both_sides_offer():
    """RFC 7323 3.2: TS only when the SYN and the SYN-ACK both carry it."""
    d = Drill()
    d.listen(80)
    d.inject("S 0:0(0) win 65535 <mss 1460>")  # the peer offers no TS
    d.expect("S. 0:0(0) ack 1 <mss 1460>")
    d.inject(". 1:1(0) ack 1 <>")
    d.accept()
    d.send(b"x")
    d.expect("P. 1:2(1) ack 1 <>")

    d = Drill("tcp_timestamps=0")
    d.listen(80)
    d.inject("S 0:0(0) win 65535 <mss 1460,TS val 777 ecr 0>")
    d.expect("S. 0:0(0) ack 1 <mss 1460>")

    d = Drill("tcp_timestamps=0")  # active open: the SYN offers none (LS 90)
    d.connect()
    assert d.expect("S 0:0(0)").ts is None
    d.inject("S. 0:0(0) ack 1 win 65535 <mss 1460,TS val 777 ecr 1>")
    assert d.expect(". 1:1(0) ack 1").ts is None and not d.tcb.ts_ok


def test_active_open_offers_ts_and_drops_it_if_the_syn_ack_has_none():
    d = Drill()
    d.connect()
    syn = d.expect("S 0:0(0)")
    assert syn.ts == ((int(d.now * 1000) + d.ctx.ts_offset(d.key)) & MASK, 0)
    d.inject("S. 0:0(0) ack 1 win 65535 <mss 1460>")
    assert d.expect(". 1:1(0) ack 1").ts is None
    assert not d.tcb.ts_ok


def test_tsval_is_a_millisecond_clock_with_a_per_connection_offset():
    """LS 90, 61, 142: TSval = ms clock + an offset from the four-tuple's keyed hash;
    tcp_timestamps=2 means no offset."""
    d = Drill()
    d.established_passive()
    d.advance(1.234)
    d.send(b"x")
    seg = d.expect("P. 1:2(1) ack 1")
    off = d.ctx.ts_offset(d.key)
    assert seg.ts[0] == (int(d.now * 1000) + off) & MASK
    other = make_key(ip_to_bytes(REMOTE), ip_to_bytes(LOCAL), 40001, 80)
    assert d.ctx.ts_offset(other) != off
    assert d.ctx.ts_offset(d.key) == off  # the same tuple keeps its clock (LS 61)

    d = Drill("tcp_timestamps=2")
    d.established_passive()
    d.send(b"x")
    assert d.expect("P. 1:2(1) ack 1").ts[0] == int(d.now * 1000) & MASK


# ---------------------------------------------------------------------- TSecr / TS.Recent


def test_ts_recent_only_from_segments_covering_the_left_edge():
    """RFC 7323 4.3 (out-of-order case): an out-of-order segment does not set TS.Recent;
    the segment filling the hole does, even with an older TSval than the one beyond."""
    d = Drill()
    d.established_passive()
    d.inject("P. 11:21(10) ack 1 <TS val 6000 ecr 0>")  # beyond a hole
    assert d.expect(". 1:1(0) ack 1").ts[1] == 5000
    d.inject("P. 1:11(10) ack 1 <TS val 5500 ecr 0>")  # fills it
    ack = d.expect(". 1:1(0) ack 21")
    assert ack.ts[1] == 5500 and d.tcb.ts_recent == 5500


def test_delayed_ack_echoes_the_earliest_unacknowledged_tsval():
    """RFC 7323 4.3 case (A): when one ACK covers several segments (a delayed ACK),
    its TSecr is the TSval of the earliest of them, because only a segment at or left
    of Last.ACK.sent (RCV.WUP) updates TS.Recent (Linux tcp_replace_ts_recent()): the
    sender then measures the RTT including the ACK delay."""
    d = Drill()
    tcb = d.established_passive()
    tcb.quickacks = 0  # fixture: past Linux's initial quick ACKs (TCP_MAX_QUICKACKS)
    d.inject("P. 1:11(10) ack 1 <TS val 6000 ecr 0>")
    d.inject("P. 11:21(10) ack 1 <TS val 6010 ecr 0>")
    d.expect_nothing()
    d.advance(0.05)  # the delayed-ACK timer
    ack = d.expect(". 1:1(0) ack 21")
    assert ack.ts[1] == 6000 and tcb.ts_recent == 6000
    d.inject("P. 21:31(10) ack 1 <TS val 6020 ecr 0>")  # at the new left edge
    d.advance(0.05)
    assert d.expect(". 1:1(0) ack 31").ts[1] == 6020


def test_ack_of_unsent_data_does_not_update_ts_recent():
    """LS 91: an unacceptable ACK (of data never sent) is challenged and leaves
    TS.Recent alone (packetdrill ts_recent/invalid_ack.pkt)."""
    d = Drill()
    d.established_passive()
    d.inject(". 1:1(0) ack 1000 <TS val 9000 ecr 0>")
    assert d.expect(". 1:1(0) ack 1").ts[1] == 5000
    assert d.tcb.ts_recent == 5000


def test_old_ack_does_not_update_ts_recent():
    """Linux tcp_ack(): an ACK left of SND.UNA returns before tcp_replace_ts_recent()."""
    d = Drill()
    d.established_passive()
    d.send(b"abc")
    d.expect("P. 1:4(3) ack 1")
    d.inject(". 1:1(0) ack 4 <TS val 5001 ecr 0>")
    d.inject(". 1:1(0) ack 3 <TS val 5002 ecr 0>")
    assert d.tcb.ts_recent == 5001


# ---------------------------------------------------------------------- PAWS


def test_paws_drops_old_data_with_a_duplicate_ack():
    """RFC 7323 5.3 R1 / LS 92-93: data whose TSval is older than TS.Recent (by more
    than one tick) is dropped, not delivered, and answered with a duplicate ACK each
    time (segments with data are never rate-limited); TcpExtPAWSEstab counts them."""
    d = Drill()
    d.established_passive()
    for n in (1, 2):
        d.inject("P. 1:11(10) ack 1 <TS val 4000 ecr 0>")
        ack = d.expect(". 1:1(0) ack 1")
        assert ack.ts[1] == 5000
        assert d.stats["TcpExtPAWSEstab"] == n
    assert data_events(d) == 0 and d.tcb.rcv_nxt == (d.peer_isn + 1) & MASK
    assert d.tcb.ts_recent == 5000


def test_paws_tolerates_one_tick():
    """LS 92: TCP_PAWS_WINDOW = 1: TSval = TS.Recent - 1 still passes."""
    d = Drill()
    d.established_passive()
    d.inject("P. 1:11(10) ack 1 <TS val 4999 ecr 0>")
    d.expect(". 1:1(0) ack 11")
    assert data_events(d) == 1 and d.stats["TcpExtPAWSEstab"] == 0


def test_paws_rejected_pure_ack_answer_is_rate_limited():
    """LS 93, 113: a PAWS-failing ACK that would move the window gets one duplicate ACK
    per tcp_invalid_ratelimit; the others count as TcpExtTCPACKSkippedPAWS."""
    d = Drill()
    d.established_passive()
    d.inject(". 1:1(0) ack 1 win 2000 <TS val 4000 ecr 0>")
    d.expect(". 1:1(0) ack 1")
    d.inject(". 1:1(0) ack 1 win 2000 <TS val 4000 ecr 0>")
    d.expect_nothing()
    assert d.stats["TcpExtPAWSEstab"] == 2 and d.stats["TcpExtTCPACKSkippedPAWS"] == 1
    assert d.tcb.snd_wnd == 1000 << 7  # the window update was not taken
    d.advance(0.5)
    d.inject(". 1:1(0) ack 1 win 2000 <TS val 4000 ecr 0>")
    d.expect(". 1:1(0) ack 1")


def test_paws_bare_fin_is_answered_every_time():
    """Linux tcp_oow_rate_limited(): a FIN occupies sequence space, so its duplicate
    ACK is not rate-limited."""
    d = Drill()
    d.established_passive()
    for _ in range(2):
        d.inject("F. 1:1(0) ack 1 <TS val 4000 ecr 0>")
        d.expect(". 1:1(0) ack 1")
    assert d.tcb.state == State.ESTABLISHED


def test_rst_is_exempt_from_paws():
    """RFC 7323 5.3 / LS 94: a RST with an old TSval still resets (if exact)."""
    d = Drill()
    d.established_passive()
    d.inject("R. 1:1(0) ack 1 <TS val 1 ecr 0>")
    assert d.tcb.state == State.CLOSED and d.tcb.error == E.ECONNRESET
    assert d.stats["TcpExtPAWSEstab"] == 0


def test_paws_failing_syn_gets_a_challenge_ack():
    """LS 93: a PAWS-failing SYN is answered with a challenge ACK (RFC 5961 4)."""
    d = Drill()
    d.established_passive()
    d.inject("S 0:0(0) win 65535 <mss 1460,TS val 4000 ecr 0>")
    d.expect(". 1:1(0) ack 1")
    assert d.stats["TcpExtTCPChallengeACK"] == 1 and d.tcb.state == State.ESTABLISHED


def test_reordered_duplicate_ack_is_not_a_paws_victim():
    """LS 92 (Linux tcp_disordered_ack_check()): a pure duplicate ACK at RCV.NXT that
    changes nothing, within one RTO of replay, is processed as usual: no answer."""
    d = Drill()
    d.established_passive()
    d.inject(". 1:1(0) ack 1 <TS val 4900 ecr 0>")  # 100 ticks old, RTO 200 ms
    d.expect_nothing()
    assert d.stats["TcpExtPAWSEstab"] == 0
    d.inject(". 1:1(0) ack 1 <TS val 4000 ecr 0>")  # 1000 ticks: beyond RTO * 1200 Hz
    d.expect(". 1:1(0) ack 1")
    assert d.stats["TcpExtPAWSEstab"] == 1


def test_old_pure_ack_is_dropped_silently():
    """LS 93 (Linux >= 6.14): a PAWS-failing pure ACK left of RCV.NXT is dropped
    without an answer, counted as TcpExtPAWSOldAck."""
    d = Drill()
    d.established_passive()
    d.advance(1)
    d.inject("P. 1:11(10) ack 1")  # TS.Recent -> 6000
    d.expect(". 1:1(0) ack 11")
    d.inject(". 1:1(0) ack 1 <TS val 5500 ecr 0>")
    d.expect_nothing()
    assert d.stats["TcpExtPAWSOldAck"] == 1 and d.stats["TcpExtPAWSEstab"] == 0


def test_ts_recent_zero_never_rejects():
    """LS 98: a peer that sent TSval 0 in its SYN is never PAWS-rejected."""
    d = Drill()
    d.listen(80)
    d.inject("S 0:0(0) win 65535 <mss 1460,TS val 0 ecr 0>")
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1 <TS val 0 ecr 0>")
    d.accept()
    d.inject("P. 1:11(10) ack 1 <TS val 4000000000 ecr 0>")  # "negative" against 0
    d.expect(". 1:1(0) ack 11")
    assert d.stats["TcpExtPAWSEstab"] == 0


def test_segment_without_ts_on_a_ts_connection_is_accepted():
    """LS 99: Linux does not enforce RFC 7323 3.2's SHOULD-drop; neither does ustack."""
    d = Drill()
    d.established_passive()
    d.inject("P. 1:11(10) ack 1 <>")
    d.expect(". 1:1(0) ack 11")
    assert data_events(d) == 1


def test_24_day_idle_rule():
    """RFC 7323 5.5: after 24 days without a valid TS.Recent update, TS.Recent is
    invalid: an 'older' TSval is accepted and becomes TS.Recent."""
    d = Drill()
    d.established_passive()
    d.advance(24 * 86400 - 10)
    d.inject("P. 1:11(10) ack 1 <TS val 4000 ecr 0>")
    d.expect(". 1:1(0) ack 1")  # still rejected just before the 24 days
    d.advance(20)
    d.inject("P. 1:11(10) ack 1 <TS val 4000 ecr 0>")
    ack = d.expect(". 1:1(0) ack 11")
    assert ack.ts[1] == 4000 and d.tcb.ts_recent == 4000


def test_syn_sent_rejects_a_syn_ack_echoing_the_future():
    """LS 97: a SYN-ACK whose TSecr is later than our clock: R seq=SEG.ACK,
    TcpExtPAWSActive, and we stay in SYN_SENT."""
    d = Drill()
    d.connect()
    syn = d.expect("S 0:0(0)")
    future = (syn.ts[0] + 5000) & MASK
    d.inject(f"S. 0:0(0) ack 1 win 65535 <mss 1460,TS val 1 ecr {future}>")
    d.expect("R 1:1(0)")
    assert d.stats["TcpExtPAWSActive"] == 1 and d.tcb.state == State.SYN_SENT


def test_syn_sent_rejects_a_syn_ack_echoing_a_tsval_before_our_first_syn():
    """LS 97, Linux tcp_rcv_synsent_state_process(): the TSecr must lie in [the TSval of
    our first SYN (retrans_stamp), now]; an older one (say, a SYN-ACK answering an
    earlier incarnation's SYN) gets R seq=SEG.ACK and TcpExtPAWSActive. An echo of the
    first SYN, received after a retransmission, is fine."""
    d = Drill()
    d.connect()
    first = d.expect("S 0:0(0)")
    d.advance(1.0)
    d.expect("S 0:0(0)")  # the RTO: a retransmitted SYN, with a later TSval
    old = (first.ts[0] - 1) & MASK
    d.inject(f"S. 0:0(0) ack 1 win 65535 <mss 1460,TS val 1 ecr {old}>")
    d.expect("R 1:1(0)")
    assert d.stats["TcpExtPAWSActive"] == 1 and d.tcb.state == State.SYN_SENT
    d.inject(f"S. 0:0(0) ack 1 win 65535 <mss 1460,TS val 2 ecr {first.ts[0]}>")
    d.expect(". 1:1(0) ack 1")
    assert d.tcb.state == State.ESTABLISHED and d.stats["TcpExtPAWSActive"] == 1


# ---------------------------------------------------------------------- RTT from TS


def test_timestamp_rtt_samples_feed_the_rto_even_for_retransmissions():
    """RFC 7323 4.1 / RFC 6298: with TS every ACK that advances SND.UNA times the
    segment it echoes, also after a retransmission (where Karn forbids a sample
    without TS); the sample moves SRTT and the RTO."""
    d = Drill()
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.advance(0.1)
    d.inject(". 1:1(0) ack 1")  # echoes the SYN-ACK's TSval: RTT 100 ms
    tcb = d.accept()
    assert tcb.rtt.srtt == pytest.approx(0.1, abs=0.002)
    assert tcb.rtt.rto == pytest.approx(0.3, abs=0.005)
    d.send(b"x" * 100)
    d.expect("P. 1:101(100) ack 1")
    d.advance(0.31)  # the RTO (300 ms) fires once, 10 ms ago
    d.expect("P. 1:101(100) ack 1")
    d.advance(0.04)
    d.inject(". 1:1(0) ack 101")  # echoes the retransmission's TSval: 50 ms
    assert tcb.rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.05, abs=0.002)
    assert tcb.rtt.rto == pytest.approx(tcb.rtt.srtt + 0.2, abs=0.005)


def test_ack_echoing_a_tsval_we_never_sent_gives_no_sample():
    d = Drill()
    d.established_passive()
    before = (d.tcb.rtt.srtt, d.tcb.rtt.rto)
    d.send(b"x")
    sent = d.expect("P. 1:2(1) ack 1")
    d.inject(f". 1:1(0) ack 2 <TS val 5001 ecr {(sent.ts[0] + 100_000) & MASK}>")
    assert (d.tcb.rtt.srtt, d.tcb.rtt.rto) == before
