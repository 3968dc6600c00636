"""The data path of the core on the fake clock: windows, retransmission, recovery, ACK
policy, Nagle, silly-window avoidance, persist, SACK, reassembly.

The drill peer is 10.77.0.1 with TS (so our segments carry 1460 - 12 = 1448 bytes) and
window scale 7 unless a test says otherwise. The handshake ACK echoes our TSval at
once, so SRTT = 0 and RTO = tcp_rto_min = 200 ms (LS 120). Relative sequence numbers:
our data starts at 1, the peer's at 1.
"""

from __future__ import annotations

import random

import pytest
from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest import approx
from test_rto import model as rto_model

from ustack.tcp.ofo import OfoQueue
from ustack.tcp.rto import RTO_MAX
from ustack.tcp.sack import Scoreboard
from ustack.tcp.state import State
from ustack.tcp.tcb import DELACK, IW_SEGMENTS
from ustack.wire.tcp import ACK, build_tcp

MSS = 1448
MASK = 0xFFFFFFFF


def rel(d: Drill, a: int, b: int) -> tuple[int, int]:
    """Our relative sequence range [a, b) as absolute numbers (for SACK blocks)."""
    return ((d.iss + a) & MASK, (d.iss + b) & MASK)


def data_segments(d: Drill) -> list[tuple[int, int]]:
    """Take everything we sent, unchecked; (relative start, length) of the data segments."""
    out = []
    for seg in d.take():
        if seg.payload:
            out.append(((seg.seq - d.iss) & MASK, len(seg.payload)))
    return out


def established(*settings: str, sack: bool = True, win: int = 1000, **kw) -> Drill:
    """Passive open; the peer's window is `win` << 7 unless wscale=None is given.
    sack=False turns SACK off on our side (tcp_sack=0)."""
    d = Drill(*settings, *(() if sack else ("tcp_sack=0",)), **kw)
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject(f". 1:1(0) ack 1 win {win}")
    d.accept()
    assert d.tcb.state == State.ESTABLISHED
    assert d.tcb.sack_ok == sack
    return d


# ---------------------------------------------------------------------- sending


def test_initial_window_is_ten_segments_then_slow_start():
    """RFC 6928: IW = 10 segments; slow start as Linux's tcp_slow_start(): each ACK of
    new data grows cwnd by all it covers while the window is in use (cc/reno.py)."""
    d = established()
    d.send(b"x" * 30 * MSS)
    segs = data_segments(d)
    assert len(segs) == IW_SEGMENTS and all(n == MSS for _, n in segs)
    d.inject(f". 1:1(0) ack {1 + 2 * MSS}")  # one ACK for two segments
    assert len(data_segments(d)) == 4  # 2 acknowledged + 2 of growth


def test_cwnd_restarts_from_the_initial_window_after_idle():
    """RFC 5681 4.1 / RFC 7661: idle longer than an RTO, the next burst starts again
    from the initial window (ssthresh keeping 3/4 of the old cwnd is test_cc.py's)."""
    d = established()
    d.send(b"x" * 20 * MSS)
    data_segments(d)
    for i in range(1, 21):
        d.inject(f". 1:1(0) ack {1 + i * MSS}")
        data_segments(d)
    d.send(b"y" * 30 * MSS)  # right away: the grown window lets more than IW out
    assert len(data_segments(d)) > IW_SEGMENTS
    while d.tcb.send_queue:  # the peer acknowledges everything
        d.inject(f". 1:1(0) ack {(d.tcb.snd_max - d.iss) & MASK}")
        data_segments(d)
    d.advance(2.0)
    d.send(b"y" * 30 * MSS)
    assert len(data_segments(d)) == IW_SEGMENTS


def test_cwnd_does_not_grow_while_the_application_does_not_use_it():
    """RFC 7661: a connection that sends one segment at a time keeps its window."""
    d = established()
    for i in range(40):
        d.send(b"z" * MSS)
        d.expect(f"P. {1 + i * MSS}:{1 + (i + 1) * MSS}({MSS}) ack 1")
        d.inject(f". 1:1(0) ack {1 + (i + 1) * MSS}")
    d.send(b"z" * 30 * MSS)  # now a burst: the window did not grow meanwhile
    assert len(data_segments(d)) <= IW_SEGMENTS + 1


def test_nagle_full_sized_is_mss_minus_options_and_nodelay():
    """RFC 896 / RFC 9293 3.7.4 in Minshall's form (Linux tcp_nagle_check()): while a
    small segment is unacknowledged, further small ones wait; a 1448-byte segment
    (MSS 1460 less 12 bytes of timestamps) is full-sized and goes at once."""
    d = established()
    d.send(b"a" * 100)
    d.expect("P. 1:101(100) ack 1")
    d.send(b"b" * 100)
    d.expect_nothing()  # a small segment is out
    d.send(b"c" * 1348)  # now 1448 bytes queued: a full-sized segment
    d.expect("P. 101:1549(1448) ack 1")
    d.send(b"d" * 10)
    d.expect_nothing()
    d.inject(". 1:1(0) ack 101")  # the small segment is acknowledged
    d.expect("P. 1549:1559(10) ack 1")
    d.send(b"e" * 5)
    d.expect_nothing()  # Nagle holds it behind the 10 bytes in flight
    d.tcb.nodelay = True  # TCP_NODELAY (TcpTransport.set_nodelay() then pushes)
    d.call(d.tcb.output, d.now)
    d.expect("P. 1559:1564(5) ack 1")
    d.send(b"f" * 5)
    d.expect("P. 1564:1569(5) ack 1")


@pytest.mark.parametrize("ts, blocks, full", [(True, 1, 1436), (True, 2, 1428),
                                               (True, 3, 1420), (True, 5, 1420),
                                               (False, 4, 1424), (False, 5, 1424)])
def test_segments_carrying_sack_blocks_shrink_to_fit_the_mss(ts, blocks, full):
    """RFC 6691: the sender reduces the data for the options it includes (Linux
    tcp_current_mss()). While we hold out-of-order data our data segments carry SACK
    blocks (4 + 8 bytes each, at most 3 beside timestamps, else 4), so they carry that
    much less data and the IP packet stays within the 1500-byte MTU. Such a segment
    counts as full-sized: Nagle holds nothing back behind it."""
    d = established(*(() if ts else ("tcp_timestamps=0",)))
    assert d.tcb.ts_ok == ts
    d.tcb.quickacks = 0  # fixture: past Linux's initial quick ACKs (TCP_MAX_QUICKACKS)
    for k in range(blocks):  # holes at 1..1000, 2000..3000, ...
        d.inject(f"P. {1001 + 2000 * k}:{2001 + 2000 * k}(1000) ack 1")
        d.take()  # the ACK of the out-of-order data (with SACK blocks)
    d.send(b"x" * (3 * full + 100))
    segs = [seg for seg in d.take() if seg.payload]
    assert [len(seg.payload) for seg in segs] == [full, full, full, 100]
    for seg in segs:
        assert len(seg.sack) == min(blocks, 3 if ts else 4)
        assert 20 + len(build_tcp(seg, bytes(4), bytes(4))) <= 1500
    d.inject(f"P. 1:{1 + 2000 * blocks}({2000 * blocks}) ack 1")  # the holes are filled
    ack = d.expect(f". {1 + 3 * full + 100}:{1 + 3 * full + 100}(0) ack {1 + 2000 * blocks}")
    assert not ack.sack
    peer = 1 + 2000 * blocks
    d.inject(f". {peer}:{peer}(0) ack {1 + 3 * full + 100}")
    d.expect_nothing()
    d.send(b"y" * 2 * (1448 if ts else 1460))
    assert [len(seg.payload) for seg in d.take()] == [1448 if ts else 1460] * 2


def test_sender_sws_avoidance_waits_then_persist_overrides():
    """RFC 9293 3.8.6.2.1: a window-limited piece smaller than an MSS and than half the
    largest window offered is not sent; the persist timer's override sends it."""
    d = established(wscale=None, win=20000)
    d.inject(". 1:1(0) ack 1 win 500")
    d.send(b"w" * 3000)
    d.expect_nothing()
    d.advance(0.19)
    d.expect_nothing()
    d.advance(0.02)  # RTO-based persist interval: 200 ms
    d.expect(". 1:501(500) ack 1")  # no PSH: the write goes on


def test_zero_window_probes_back_off_and_stop_when_the_window_opens():
    """RFC 9293 3.8.6.1: against a zero window the persist timer sends probes (Linux:
    an ACK at SND.UNA - 1), backing off like the RTO; once the window opens data flows
    and the backoff is reset (Linux tcp_ack_probe())."""
    d = established()
    d.inject(". 1:1(0) ack 1 win 0")
    d.send(b"p" * 1000)
    d.expect_nothing()
    for gap in (0.2, 0.4, 0.8, 1.6):  # at 0.2, 0.6, 1.4 and 3.0 s
        d.expect(". 0:0(0) ack 1", after=gap)
    assert d.stats["TcpExtTCPWinProbe"] == 4
    d.inject(". 1:1(0) ack 1 win 100")
    d.expect("P. 1:1001(1000) ack 1")
    d.expect("P. 1:1001(1000) ack 1", after=0.2)  # the RTO, its backoff reset


# ---------------------------------------------------------------------- RTO, Karn


def test_rto_backs_off_exponentially_up_to_120_s():
    """RFC 6298 5.5 and 2.5 (LS 121): each expiry doubles the RTO, capped at 120 s."""
    d = established("tcp_retries2=15")
    d.send(b"r" * 100)
    d.expect("P. 1:101(100) ack 1")
    for gap in [0.2 * 2 ** k for k in range(10)] + [120.0] * 5:
        d.expect("P. 1:101(100) ack 1", after=gap)
    assert d.stats["TcpExtTCPTimeouts"] == 15


@pytest.mark.parametrize("floor_ms", [20, 200, 1000])
def test_rto_floor_is_tcp_rto_min_ms(floor_ms):
    """RFC 6298 2.4 with Linux's floor (LS 120): with SRTT = RTTVAR = 0 after the
    handshake, RTO = SRTT + max(4 RTTVAR, tcp_rto_min) is exactly the knob."""
    d = established(f"tcp_rto_min_ms={floor_ms}")
    d.send(b"r" * 100)
    d.expect("P. 1:101(100) ack 1")
    d.expect("P. 1:101(100) ack 1", after=floor_ms / 1000)


def test_karn_keeps_the_backoff_until_an_unambiguous_sample():
    """RFC 6298 3 and 5 (Karn): no RTT sample from a retransmitted segment (no TS), so
    its ACK leaves the backed-off RTO in place; the ACK of a segment sent once gives a
    sample and resets the backoff. (No tail loss probe, tcp_early_retrans=0: with one
    segment out its PTO, 2 * SRTT + 200 ms, would come before the backed-off RTO.)"""
    d = established("tcp_timestamps=0", "tcp_early_retrans=0", sack=True)
    assert not d.tcb.ts_ok
    d.send(b"k" * 100)
    d.expect("P. 1:101(100) ack 1")
    d.advance(0.2)
    d.expect("P. 1:101(100) ack 1")  # retransmitted, RTO now 400 ms
    d.advance(0.05)
    d.inject(". 1:1(0) ack 101")  # ambiguous: no sample
    d.send(b"l" * 100)
    d.expect("P. 101:201(100) ack 1")
    d.expect("P. 101:201(100) ack 1", after=0.4)  # the backoff stayed
    d.advance(0.05)
    d.inject(". 1:1(0) ack 201")  # ambiguous again
    d.send(b"m" * 100)
    d.expect("P. 201:301(100) ack 1")
    d.advance(0.1)
    d.inject(". 1:1(0) ack 301")  # timed, sent once: sample 100 ms, backoff reset
    assert abs(d.tcb.rtt.rto - 0.2125) < 1e-9
    # SRTT 0 -> 12.5 ms, RTTVAR 25 ms: RTO = SRTT + max(4 RTTVAR, 200 ms).
    d.send(b"n" * 100)
    d.expect("P. 301:401(100) ack 1")
    d.expect("P. 301:401(100) ack 1", after=0.2125)


def test_timestamps_time_even_a_retransmission():
    """RFC 7323 4.1 (RTTM), as Linux: the TS echo times the retransmitted segment, so
    its ACK resets the backoff at once."""
    d = established()
    d.send(b"t" * 100)
    d.expect("P. 1:101(100) ack 1")
    d.expect("P. 1:101(100) ack 1", after=0.2)
    d.advance(0.03)
    d.inject(". 1:1(0) ack 101")
    # The sample is the 30 ms since the retransmission whose TSval came back, not the
    # 230 ms since the first transmission: SRTT 0 -> 0 + (30 ms - 0) / 8 (RFC 6298 2.3).
    assert d.tcb.rtt.srtt == approx(0.03 / 8)
    d.send(b"u" * 100)  # and the backoff is gone: RTO = SRTT + 200 ms, not 400 ms
    d.expect("P. 101:201(100) ack 1")
    d.expect("P. 101:201(100) ack 1", after=0.03 / 8 + 0.2)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 150), st.integers(0, 3)), min_size=1, max_size=12))
def test_rto_follows_rfc_6298_and_karn_over_any_loss_sequence(rounds):
    """RFC 6298 on the fake clock, without timestamps. Each round sends one segment whose
    first `lost` transmissions are lost; the peer ACKs `rtt_ms` after the last one.
    Every retransmission must come when the reference model (tests/test_rto.py) says,
    doubled per expiry up to 120 s (5.5); only rounds without a retransmission feed it
    a sample (Karn, 3); an ACK without a sample keeps the backoff, a sample resets it.
    The tail loss probe is off (tcp_early_retrans=0): this is the RTO's model."""
    d = established("tcp_timestamps=0", "tcp_early_retrans=0")
    tcb = d.tcb
    samples = [0.0]  # the handshake: SYN-ACK answered at once (Karn: sent once)
    backoff = 0
    seq = 1
    for rtt_ms, lost in rounds:
        d.send(b"k" * 100)
        d.expect(f"P. {seq}:{seq + 100}(100) ack 1")
        for _ in range(lost):
            rto = min(rto_model(samples, 0.2)[2] * 2 ** backoff, RTO_MAX)
            d.expect(f"P. {seq}:{seq + 100}(100) ack 1", after=rto)
            backoff += 1
        d.advance(rtt_ms / 1000)
        seq += 100
        d.inject(f". 1:1(0) ack {seq}")
        d.expect_nothing()
        if not lost:
            samples.append(rtt_ms / 1000)
            backoff = 0
        srtt, rttvar, rto = rto_model(samples, 0.2)
        assert (tcb.rtt.srtt, tcb.rtt.rttvar, tcb.rtt.rto) == (approx(srtt), approx(rttvar),
                                                                approx(rto))
        assert (tcb.rtt.backoff == 0) == (backoff == 0)
    assert d.stats["TcpRetransSegs"] == sum(lost for _, lost in rounds)


@pytest.mark.parametrize("active", [True, False], ids=["syn", "syn_ack"])
def test_handshake_retransmissions_start_from_the_1_s_initial_rto(active):
    """RFC 6298 2.1 and 5.5: before any RTT sample the RTO is 1 s, doubled per expiry:
    tcp_syn_retries = 6 SYN retransmissions, then ETIMEDOUT at 127 s;
    tcp_synack_retries = 5 SYN-ACK retransmissions, then the embryo is dropped at 63 s
    (Linux's timeline)."""
    d = Drill()
    t0 = d.now
    if active:
        d.connect()
    else:
        d.listen(80)
        d.inject("S 0:0(0) win 65535")
    pattern = "S 0:0(0)" if active else "S. 0:0(0) ack 1"
    d.expect(pattern)
    times = []
    while (deadline := d.table.next_deadline()) is not None:
        d.advance(deadline - d.now)
        if d.out:
            d.expect(pattern)
            d.expect_nothing()
            times.append(round(d.now - t0, 6))
    assert times == ([1, 3, 7, 15, 31, 63] if active else [1, 3, 7, 15, 31])
    assert round(d.now - t0, 6) == (127 if active else 63)
    assert d.state == State.CLOSED


def handshake_with_retransmissions(n: int, *, active: bool, ts: bool,
                                   settings: tuple[str, ...] = ()) -> Drill:
    """ESTABLISHED after our SYN (active) or SYN-ACK (passive) was sent n + 1 times,
    the peer answering the last one 50 ms later."""
    d = Drill(*(() if ts else ("tcp_timestamps=0",)), *settings)
    if active:
        d.connect()
        d.expect("S 0:0(0)")
    else:
        d.listen(80)
        d.inject("S 0:0(0) win 65535")
        d.expect("S. 0:0(0) ack 1")
    for k in range(n):
        d.advance(2 ** k)  # RFC 6298 2.1 and 5.5: 1 s, then doubled
        d.expect("S 0:0(0)" if active else "S. 0:0(0) ack 1")
    d.advance(0.05)
    if active:
        d.inject("S. 0:0(0) ack 1 win 65535")
        d.expect(". 1:1(0) ack 1")
    else:
        d.inject(". 1:1(0) ack 1 win 1000")
        d.accept()
    assert d.tcb.state == State.ESTABLISHED and d.tcb.ts_ok == ts
    return d


@pytest.mark.parametrize("active", [True, False], ids=["active", "passive"])
def test_rto_falls_back_to_3_s_after_a_retransmitted_handshake(active):
    """RFC 6298 5.7 (Linux tcp_init_metrics(), TCP_TIMEOUT_FALLBACK): the SYN or SYN-ACK
    timed out and, without timestamps, its answer gives no RTT sample (Karn), so data
    starts with a 3 s RTO, not the initial 1 s and not the backed-off 2 s. (The tail
    loss probe is off here: without an RTT sample its PTO is 1 s, Linux
    tcp_schedule_loss_probe(), and it would go first.)"""
    d = handshake_with_retransmissions(1, active=active, ts=False,
                                       settings=("tcp_early_retrans=0",))
    assert d.tcb.rtt.srtt is None
    d.send(b"x" * 100)
    d.expect("P. 1:101(100) ack 1")
    d.expect("P. 1:101(100) ack 1", after=3.0)
    d.expect("P. 1:101(100) ack 1", after=6.0)


@pytest.mark.parametrize("active", [True, False], ids=["active", "passive"])
def test_timestamps_time_a_retransmitted_handshake_no_fallback(active):
    """With timestamps the answer to the retransmitted SYN or SYN-ACK echoes its TSval:
    a 50 ms sample (RFC 7323 4.1), so the RTO is SRTT + max(4 RTTVAR, 200 ms)."""
    d = handshake_with_retransmissions(1, active=active, ts=True)
    assert d.tcb.rtt.srtt == approx(0.05)
    d.send(b"x" * 100)
    d.expect("P. 1:101(100) ack 1")
    d.expect("P. 1:101(100) ack 1", after=0.05 + 0.2)


@pytest.mark.parametrize("active", [True, False], ids=["active", "passive"])
@pytest.mark.parametrize("n, iw", [(0, IW_SEGMENTS), (1, IW_SEGMENTS), (2, 1)])
def test_initial_window_after_lost_handshake_segments(active, n, iw):
    """RFC 6928 / RFC 5681 3.1: IW10, but one segment once the SYN or SYN-ACK was lost;
    Linux (tcp_init_transfer()) lets a single retransmission pass, given the 1 s
    initial RTO of RFC 6298, and cuts the window after more than one."""
    d = handshake_with_retransmissions(n, active=active, ts=True)
    d.send(b"w" * 20 * MSS)
    assert len(data_segments(d)) == iw


def test_pure_acks_carry_snd_max_while_go_back_n_rewinds_snd_nxt():
    """After an RTO, SND.NXT goes back to resend from SND.UNA (RFC 5681 3.1), but a pure
    ACK carries the highest sequence sent (Linux's snd_nxt, tcp_acceptable_seq()): the
    peer may hold all of it already, and would drop an ACK left of its RCV.NXT unread."""
    d = established(sack=False)  # no tail loss probe before the RTO
    d.send(b"g" * 3 * MSS)
    assert len(data_segments(d)) == 3
    d.advance(0.2)
    d.expect(f"P. 1:{1 + MSS}({MSS}) ack 1")  # go-back-N: SND.NXT rewound
    assert (d.tcb.snd_nxt - d.iss) & MASK == 1 + MSS
    d.inject("P. 1:101(100) ack 1")  # the peer's data, no news about ours
    d.expect(f". {1 + 3 * MSS}:{1 + 3 * MSS}(0) ack 101")


def test_go_back_n_after_rto_skips_sacked_data():
    """After an RTO, everything not acknowledged is resent in slow start (RFC 5681 3.1),
    except what the peer SACKed (RFC 6675 / RFC 2018)."""
    d = established()
    d.send(b"g" * 6 * MSS)
    assert len(data_segments(d)) == 6
    # Segments 3 and 5 arrived (SACK), the rest did not.
    d.inject(". 1:1(0) ack 1", sack=(rel(d, 1 + 2 * MSS, 1 + 3 * MSS),
                                     rel(d, 1 + 4 * MSS, 1 + 5 * MSS)))
    data_segments(d)  # whatever limited transmit or the probe sent
    d.advance(0.25)
    data_segments(d)
    d.inject(f". 1:1(0) ack {1 + MSS}", sack=(rel(d, 1 + 2 * MSS, 1 + 3 * MSS),
                                               rel(d, 1 + 4 * MSS, 1 + 5 * MSS)))
    resent = {start for start, _ in data_segments(d)}
    d.inject(f". 1:1(0) ack {1 + 2 * MSS}", sack=(rel(d, 1 + 2 * MSS, 1 + 3 * MSS),
                                                   rel(d, 1 + 4 * MSS, 1 + 5 * MSS)))
    resent |= {start for start, _ in data_segments(d)}
    d.inject(f". 1:1(0) ack {1 + 3 * MSS}", sack=(rel(d, 1 + 4 * MSS, 1 + 5 * MSS),))
    resent |= {start for start, _ in data_segments(d)}
    assert 1 + 2 * MSS not in resent and 1 + 4 * MSS not in resent
    assert 1 + 3 * MSS in resent


# ---------------------------------------------------------------------- recovery


def test_fast_retransmit_on_the_third_duplicate_ack_newreno():
    """RFC 5681 3.2 without SACK: the third duplicate ACK (not the second) resends the
    first unacknowledged segment; ssthresh = FlightSize / 2, cwnd = ssthresh + 3 SMSS
    (Reno's numbers: pinned to reno, the default being cubic)."""
    d = established("tcp_congestion_control=reno", sack=False)
    d.send(b"f" * 10 * MSS)
    assert len(data_segments(d)) == 10
    d.inject(f". 1:1(0) ack {1 + MSS}")
    data_segments(d)
    for _ in range(2):
        d.inject(f". 1:1(0) ack {1 + MSS}")
        assert all(start != 1 + MSS for start, _ in data_segments(d))
    d.inject(f". 1:1(0) ack {1 + MSS}")
    d.expect(f"P. {1 + MSS}:{1 + 2 * MSS}({MSS}) ack 1")
    assert d.stats["TcpExtTCPFastRetrans"] == 1
    assert d.stats["TcpExtTCPRenoRecovery"] == 1
    # cwnd = ssthresh + 3 SMSS = FlightSize / 2 + 3 SMSS = 7.5 SMSS against 9 in flight:
    # new data waits until further duplicate ACKs inflate it past 10 (RFC 5681 3.2 step
    # 4), i.e. the third one after the retransmission (exact figures: test_recovery.py).
    d.send(b"g" * 5 * MSS)
    for _ in range(2):
        d.inject(f". 1:1(0) ack {1 + MSS}")
        d.expect_nothing()
    d.inject(f". 1:1(0) ack {1 + MSS}")
    d.expect(f". {1 + 10 * MSS}:{1 + 11 * MSS}({MSS}) ack 1")


def test_newreno_partial_ack_resends_the_next_hole_full_ack_ends_recovery():
    """RFC 6582 3.2: a partial ACK (below `recover`) resends the next unacknowledged
    segment at once and deflates cwnd; the full ACK ends recovery with
    cwnd = min(ssthresh, FlightSize + SMSS)."""
    d = established(sack=False)
    d.send(b"n" * 10 * MSS)
    data_segments(d)
    for _ in range(3):  # segment 1 (relative 1..1449) lost: three duplicate ACKs
        d.inject(". 1:1(0) ack 1")
    d.expect(f"P. 1:{1 + MSS}({MSS}) ack 1")
    d.inject(". 1:1(0) ack 1")  # a fourth: inflates the window
    d.expect_nothing()
    assert d.stats["TcpExtTCPRenoRecovery"] == 1
    d.inject(f". 1:1(0) ack {1 + 4 * MSS}")  # partial (below recover = SND.MAX)
    d.expect(f"P. {1 + 4 * MSS}:{1 + 5 * MSS}({MSS}) ack 1")  # segment 5 was lost too
    d.inject(f". 1:1(0) ack {1 + 10 * MSS}")  # full ACK: recovery over
    d.expect_nothing()
    # cwnd = min(ssthresh, FlightSize + SMSS) = 2 SMSS with nothing in flight.
    d.send(b"o" * 5 * MSS)
    assert data_segments(d) == [(1 + 10 * MSS, MSS), (1 + 11 * MSS, MSS)]
    assert d.stats["TcpRetransSegs"] == 2 and d.stats["TcpExtTCPRenoRecovery"] == 1


def test_tail_loss_probe_before_the_rto():
    """RFC 8985 7 (LS 122): with SACK and several segments unacknowledged, a probe goes
    out 2 * SRTT + 2 ms after the last transmission, well before the 200 ms RTO."""
    d = established()
    d.send(b"T" * 3 * MSS)
    assert len(data_segments(d)) == 3
    d.advance(0.001)
    d.expect_nothing()
    d.advance(0.0015)
    d.expect(f"P. {1 + 2 * MSS}:{1 + 3 * MSS}({MSS}) ack 1")  # the last segment again
    assert d.stats["TcpExtTCPLossProbes"] == 1
    d.advance(0.1)
    d.expect_nothing()  # one probe per tail; then the RTO
    d.advance(0.11)
    d.expect(f"P. 1:{1 + MSS}({MSS}) ack 1")


# ---------------------------------------------------------------------- receiving


def test_quick_acks_at_start_then_delayed_ack_at_most_40_ms():
    """Linux quick-ACK mode ACKs the first segments at once; after that a lone segment
    waits for the delayed-ACK timer (40 ms, the issue's bound) and the second full-sized
    one is ACKed at once (RFC 9293 3.8.6.3, RFC 5681 4.2)."""
    d = established()
    seq = 1
    for _ in range(16):  # quick ACKs
        d.inject(f". {seq}:{seq + MSS}({MSS}) ack 1")
        seq += MSS
        d.expect(f". 1:1(0) ack {seq}")
    d.inject(f". {seq}:{seq + MSS}({MSS}) ack 1")
    seq += MSS
    d.expect_nothing()
    d.advance(DELACK - 0.001)
    d.expect_nothing()
    d.advance(0.001)
    d.expect(f". 1:1(0) ack {seq}")
    assert d.stats["TcpExtDelayedACKs"] == 1
    d.inject(f". {seq}:{seq + MSS}({MSS}) ack 1")
    seq += MSS
    d.expect_nothing()
    d.inject(f". {seq}:{seq + MSS}({MSS}) ack 1")  # the second full-sized segment
    seq += MSS
    d.expect(f". 1:1(0) ack {seq}")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 100, 700, MSS]), st.integers(0, 80)),
                min_size=1, max_size=40))
def test_every_byte_is_acked_within_40_ms_and_every_second_full_segment_at_once(steps):
    """RFC 9293 3.8.6.3 / RFC 5681 4.2 with the issue's bound, over any arrival pattern of
    in-order segments (after quick-ACK mode): an ACK covers each byte at most 40 ms
    after it arrived, and at once when two full-sized segments are unacknowledged."""
    d = established()
    d.tcb.quickacks = 0  # fixture: past Linux's initial quick ACKs (TCP_MAX_QUICKACKS)
    acks: list[tuple[float, int]] = []  # (time sent, relative ACK)

    def collect() -> None:
        for sent in d.take_sent():
            acks.append((sent.at, (sent.seg.ack - d.peer_isn) & MASK))

    def run_until(t: float) -> None:
        while (deadline := d.table.next_deadline()) is not None and deadline <= t:
            d.advance(max(deadline - d.now, 0))
            collect()
        d.advance(t - d.now)
        collect()

    seq = 1
    arrivals = []  # (time, relative end)
    for size, gap_ms in steps:
        run_until(d.now + gap_ms / 1000)
        acked = max((a for _, a in acks), default=1)
        d.inject(f"P. {seq}:{seq + size}({size}) ack 1")
        seq += size
        collect()
        arrivals.append((d.now, seq))
        if seq - acked >= 2 * MSS:
            assert acks and acks[-1] == (d.now, seq), "two full segments, no immediate ACK"
    run_until(d.now + 1)
    for t, end in arrivals:
        first = min(at for at, a in acks if a >= end)
        assert first - t <= 0.040 + 1e-9  # the bound, not tcb.DELACK


def test_out_of_order_data_is_acked_at_once_with_sack_blocks():
    """RFC 5681 4.2: out-of-order data and data filling a hole are ACKed at once; RFC
    2018 4: the ACKs carry SACK blocks, the most recently changed first."""
    d = established()
    payload = bytes(random.Random(1).randbytes(5000))

    def part(a: int, b: int) -> str:
        return f"P. {a + 1}:{b + 1}({b - a}) ack 1"

    def seg(a: int, b: int) -> None:
        d.inject(part(a, b), payload=payload[a:b])

    for _ in range(16):  # leave quick-ACK mode so "at once" is not quick-ACK's doing
        d.tcb.quickacks = 0  # fixture: past Linux's initial quick ACKs (TCP_MAX_QUICKACKS)
    seg(0, 1000)
    d.advance(0.04)  # delayed: quick-ACK mode is off
    d.expect(". 1:1(0) ack 1001")
    seg(2000, 3000)
    ack = d.expect(". 1:1(0) ack 1001")
    assert [(a - d.peer_isn, b - d.peer_isn) for a, b in ack.sack] == [(2001, 3001)]
    seg(4000, 5000)
    ack = d.expect(". 1:1(0) ack 1001")
    assert [(a - d.peer_isn, b - d.peer_isn) for a, b in ack.sack] == [(4001, 5001),
                                                                         (2001, 3001)]
    seg(2000, 3000)  # a duplicate: queued once, its block reported first
    ack = d.expect(". 1:1(0) ack 1001")
    assert [(a - d.peer_isn, b - d.peer_isn) for a, b in ack.sack][0] == (2001, 3001)
    assert d.tcb.ofo.size == 2000  # queued once (the reassembly queue's own view)
    assert d.stats["TcpExtTCPOFOQueue"] == 2
    seg(1000, 2000)  # fills the first hole
    ack = d.expect(". 1:1(0) ack 3001")
    assert [(a - d.peer_isn, b - d.peer_isn) for a, b in ack.sack] == [(4001, 5001)]
    seg(3000, 4000)
    ack = d.expect(". 1:1(0) ack 5001")
    assert not ack.sack
    assert d.read() == payload


def test_duplicate_in_order_segment_is_dropped_and_acked():
    d = established()
    d.inject("P. 1:101(100) ack 1", payload=b"A" * 100)
    d.expect(". 1:1(0) ack 101")
    d.inject("P. 1:101(100) ack 1", payload=b"B" * 100)
    d.expect(". 1:1(0) ack 101")  # an immediate duplicate ACK
    d.inject("P. 51:151(100) ack 1", payload=b"C" * 100)  # overlapping: the new half only
    d.expect(". 1:1(0) ack 151")
    assert d.read() == b"A" * 100 + b"C" * 50


def test_out_of_order_data_is_bounded_by_the_window():
    d = established("tcp_rmem=8192", wscale=None)
    wnd = d.tcb.rcv_adv - d.tcb.rcv_nxt
    d.inject("P. 1001:20001(19000) ack 1")
    d.take()
    assert d.tcb.ofo.size <= wnd - 1000  # bounded by what we advertised
    d.inject("P. 1:1001(1000) ack 1")
    d.take()
    assert len(d.read()) <= wnd
    d.take()  # the window update


def test_receiver_sws_avoidance_and_window_update():
    """RFC 9293 3.8.6.2.2: after the window closed, reading a few bytes does not reopen
    it; the right edge moves only by at least min(buffer / 2, MSS), and a window update
    is then sent at once."""
    d = established("tcp_rmem=8192", wscale=None)
    seq = 1
    while d.tcb.rcv_adv != d.tcb.rcv_nxt:
        n = min(MSS, (d.tcb.rcv_adv - d.tcb.rcv_nxt) & MASK)
        d.inject(f". {seq}:{seq + n}({n}) ack 1")
        seq += n
        sent = d.take()
    last = sent[-1]
    assert last.wnd == 0
    d.read(100)
    d.expect_nothing()
    d.inject(f". {seq - 100}:{seq}(100) ack 1")  # an old segment draws a duplicate ACK
    ack = d.expect(f". 1:1(0) ack {seq}")
    assert ack.wnd == 0  # still closed: 100 bytes is silly
    d.read(2000)
    upd = d.expect(f". 1:1(0) ack {seq}")
    assert upd.wnd >= 1460


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 4000), st.booleans()),
                min_size=1, max_size=40))
def test_the_advertised_right_edge_never_moves_left(steps):
    """RFC 9293 3.8.6.2.1: no window shrinking, also through window-scale rounding
    (a 64 KB buffer gives our window scale 1: the field counts 2-byte units)."""
    d = established("tcp_rmem=65536")
    tcb = d.tcb
    seq = 1
    edge = None
    for size, read, ooo in steps:
        start = seq + (size if ooo else 0)
        d.inject(f". {start}:{start + size}({size}) ack 1")
        sent = d.take()
        if not ooo:
            seq = (tcb.rcv_nxt - d.peer_isn) & MASK
        d.read(read)
        sent += d.take()
        d.advance(0.05)
        for seg in sent + d.take():
            if seg.flags & ACK:
                right = (seg.ack + (seg.wnd << tcb.rcv_wscale)) & MASK
                if edge is not None:
                    assert (right - edge) & MASK < 1 << 31, "the right edge moved left"
                edge = right


def test_fin_after_out_of_order_data_waits_for_the_hole():
    """LS 152: an out-of-order FIN takes effect only when the data before it arrives."""
    d = established()
    d.inject("FP. 101:201(100) ack 1")
    assert d.tcb.state == State.ESTABLISHED
    d.expect(". 1:1(0) ack 1")  # out of order: a duplicate ACK at once
    d.inject("P. 1:101(100) ack 1")
    assert d.tcb.state == State.CLOSE_WAIT
    d.expect(". 1:1(0) ack 202")


# ---------------------------------------------------------------------- data structures


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(1, 120)), min_size=1,
                max_size=60), st.sampled_from([0, MASK - 150]))
def test_ofo_queue_reassembles_any_arrival_order(pieces, base):
    """Segments of one byte stream in any order, overlapping and duplicated: the queue
    keeps each byte once, its blocks sorted and disjoint, and hands over exactly the
    stream (also across sequence-number wraparound)."""
    stream = bytes(random.Random(len(pieces)).randbytes(600))
    q = OfoQueue()
    rcv_nxt = base
    got = bytearray()
    have: set[int] = set()
    for off, n in pieces:
        chunk = stream[off:off + n]
        if not chunk:
            continue
        rel_nxt = (rcv_nxt - base) & MASK
        if off <= rel_nxt < off + len(chunk):
            new = chunk[rel_nxt - off:]
            got += new
            rcv_nxt = (rcv_nxt + len(new)) & MASK
            more = q.pop(rcv_nxt)
            got += more
            rcv_nxt = (rcv_nxt + len(more)) & MASK
        elif off > rel_nxt:
            q.add((base + off) & MASK, chunk)
            have.update(range(off, off + len(chunk)))
        rel_nxt = (rcv_nxt - base) & MASK
        have = {i for i in have if i >= rel_nxt}
        assert q.size == len(have)
        edges = [((b.start - base) & MASK, (b.end - base) & MASK) for b in q.blocks]
        assert all(a < b for a, b in edges)
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(edges, edges[1:], strict=False))
        assert {(a, b) for a, b in edges} == {((s - base) & MASK, (e - base) & MASK)
                                               for s, e in q.sack_blocks(100)}
    assert bytes(got) == stream[:len(got)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 30)), max_size=30),
       st.integers(0, 60), st.sampled_from([1000, MASK - 40]))
def test_scoreboard_matches_a_set_of_octets(blocks, advance_to, una):
    sb = Scoreboard()
    smax = (una + 100) & MASK
    octets: set[int] = set()
    for off, n in blocks:
        n = min(n, 100 - off)
        if n <= 0:
            continue
        sb.update((((una + off) & MASK, (una + off + n) & MASK),), una, smax)
        octets.update(range(off, off + n))
    assert sb.sacked == len(octets)
    holes = sb.holes(una, smax, 10)
    covered = set(octets)
    for start, end, _lost in holes:
        span = set(range((start - una) & MASK, (end - una) & MASK))
        assert not span & covered
        covered |= span
    assert covered == set(range(100))
    sb.advance((una + advance_to) & MASK)
    assert sb.sacked == len({o for o in octets if o >= advance_to})


def test_send_mss_is_bounded_by_half_the_largest_window_offered():
    """Linux tcp_bound_to_half_wnd() (LINUX-SPEC-2 item 360): a peer that never offers
    more than 1000 bytes gets 500-byte segments, two of them in flight, at once; when
    it offers more, full segments follow."""
    d = established(wscale=None, win=1000)
    d.script(f"""
        +0    send(2000)
        +0    > . 1:501(500) ack 1
        +0    > . 501:1001(500) ack 1
        +0.01 < . 1:1(0) ack 1001 win 1000
        +0    > . 1001:1501(500) ack 1
        +0    > P. 1501:2001(500) ack 1
        +0.01 < . 1:1(0) ack 2001 win 20000
        +0    send({3 * MSS})
        +0    > . 2001:{2001 + MSS}({MSS}) ack 1
    """, more=True)
    d.take()


def test_a_window_below_the_default_mss_is_used_whole_not_persisted():
    """The same rule below TCP_MSS_DEFAULT (536): the cutoff is the window itself, so a
    peer offering 300 bytes gets 300-byte segments without waiting for the persist
    timer (RFC 9293's sender SWS avoidance alone would wait; Linux does not)."""
    d = established(wscale=None, win=300)
    d.script("""
        +0    send(600)
        +0    > . 1:301(300) ack 1
        +0.01 < . 1:1(0) ack 301 win 300
        +0    > P. 301:601(300) ack 1
    """)


def test_a_burst_in_one_batch_gets_one_ack_and_a_hole_one_ack_per_segment():
    """Segments read together go through the table before anything is sent (the
    shell's flush ends the batch: TcpTable.transmit()). In-order ones share one ACK,
    as GRO would make them one segment; each out-of-order one gets its own duplicate
    ACK, since the sender counts them (RFC 5681 4.2)."""
    d = established()

    def batch(*texts: str) -> None:
        for text in texts:
            d.table.input(d.key, d.segment(text), d.now)
        d.w.drain()

    batch(*(f". {1 + i * MSS}:{1 + (i + 1) * MSS}({MSS}) ack 1" for i in range(4)))
    d.expect(f". 1:1(0) ack {1 + 4 * MSS}")
    d.expect_nothing()
    batch(*(f". {1 + i * MSS}:{1 + (i + 1) * MSS}({MSS}) ack 1" for i in range(5, 8)))
    for i in range(5, 8):
        seg = d.expect(f". 1:1(0) ack {1 + 4 * MSS} <...>")
        assert [((a - d.peer_isn) & MASK, (b - d.peer_isn) & MASK) for a, b in seg.sack] \
            == [(1 + 5 * MSS, 1 + (i + 1) * MSS)]
    d.expect_nothing()
