"""Loss recovery drills, strict with time: RACK-TLP (RFC 8985), PRR (RFC 6937), D-SACK
(RFC 2883) and the undo of a spurious reduction (Eifel RFC 3522, F-RTO RFC 5682), as
Linux's tcp_recovery.c / tcp_input.c do them (LINUX-SPEC-2 section 3).

Every drill has a 100 ms RTT: the handshake's ACK comes 100 ms after our SYN-ACK, and
the peer's ACKs 100 ms after the data they cover. Without timestamps unless said, so
the SACK blocks can be written in the script. MSS 1460; relative sequence numbers.
"""

from __future__ import annotations

import pytest
from drill import Drill, drill_leftovers  # noqa: F401 (the fixture)
from test_core_lossy import transfer

MSS = 1460
MASK = 0xFFFFFFFF


def est(*settings: str, ts: bool = False) -> Drill:
    """ESTABLISHED (passive) with a 100 ms handshake RTT. Reno's halving, as RFC 6937's
    worked examples assume (CUBIC, the default, cuts to 0.7: tests/test_cubic.py)."""
    d = Drill("tcp_congestion_control=reno", *(() if ts else ("tcp_timestamps=0",)),
              *settings)
    if ts:  # the drill's own TS values on the peer's segments
        d.listen(80)
        d.inject("S 0:0(0) win 65535")
        d.expect("S. 0:0(0) ack 1")
        d.advance(0.1)
        d.inject(". 1:1(0) ack 1")
        d.accept()
        return d
    d.script("""
        0     listen(80)
        +0    < S 0:0(0) win 65535 <mss 1460,sackOK,nop,wscale 7>
        +0    > S. 0:0(0) ack 1 <...>
        +0.1  < . 1:1(0) ack 1 win 1000
        +0    accept()
    """)
    return d


def burst(at: float, first: int, n: int, last_psh: bool = True) -> str:
    """Script lines: n full segments from segment number `first` (1-based) at `at`."""
    lines = []
    for k in range(first, first + n):
        a = 1 + (k - 1) * MSS
        flag = "P." if last_psh and k == first + n - 1 else "."
        lines.append(f"{at:.3f} > {flag} {a}:{a + MSS}({MSS}) ack 1")
    return "\n".join(lines)


def seg(k: int) -> str:
    """Segment number k (1-based) as start:end(len)."""
    a = 1 + (k - 1) * MSS
    return f"{a}:{a + MSS}({MSS})"


def edge(k: int) -> int:
    """The relative sequence number where segment k starts."""
    return 1 + (k - 1) * MSS


# ---------------------------------------------------------------------- RACK


def test_rack_marks_the_hole_lost_after_the_reordering_window():
    """RFC 8985 6.2: one SACK above the hole is no loss yet; the hole is lost once a
    later-sent segment was delivered RACK.rtt + reo_wnd ago, reo_wnd = min_rtt / 4 =
    25 ms. The reordering timer (plus Linux's 2 ms TCP_TIMEOUT_MIN) resends it at 227 ms,
    with no third duplicate ACK and no RTO."""
    d = est()
    d.script(f"""
        0.100 send({10 * MSS})
        {burst(0.100, 1, 10)}
        0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(3)}>
        0.227 > P. {seg(1)} ack 1
        0.300 < . 1:1(0) ack {edge(11)} win 1000
    """)
    assert d.stats["TcpExtTCPSackRecovery"] == 1 and d.stats["TcpExtTCPTimeouts"] == 0
    rec = d.tcb.recovery
    assert rec.ca_state == "Open" and rec.reordering == 3
    # ssthresh = FlightSize / 2; the ACK that ends recovery sets cwnd = ssthresh (Linux
    # tcp_end_cwnd_reduction()) and then grows it in congestion avoidance by the 10
    # segments it covers: + 10/5 segments (tcp_cong_avoid_ai()).
    assert d.tcb.cc.ssthresh == 5 * MSS and d.tcb.cc.cwnd == 7 * MSS


def test_third_sack_alone_is_loss_only_by_the_dupthresh_fallback():
    """Linux tcp_rack_reo_wnd(): with no reordering seen, DupThresh (3) SACKed segments
    set reo_wnd to 0, so the third SACK marks the hole lost at once (RFC 8985 6.2's
    fallback). With tcp_recovery=5 (0x4, no DUPTHRESH fallback) the third SACK alone
    is not enough: the reordering window still runs out first. Each SACK frees a
    segment of the pipe for new data meanwhile."""
    for bits, rtx_at in ((1, 0.200), (5, 0.227)):
        d = est(f"tcp_recovery={bits}")
        d.script(f"""
            0.100 send({13 * MSS})
            {burst(0.100, 1, 10, last_psh=False)}
            0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(3)}>
            +0    > . {seg(11)} ack 1
            0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(4)}>
            +0    > . {seg(12)} ack 1
            0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(5)}>
        """, more=True)
        if bits == 5:
            d.script(f"0.200 > P. {seg(13)} ack 1", more=True)
        d.script(f"{rtx_at:.3f} > P. {seg(1)} ack 1", more=True)
        d.take()  # what PRR sends after it
        assert d.stats["TcpExtTCPSackRecovery"] == 1, bits
        assert d.stats["TcpExtTCPDupAcks"] == 3


def test_reordering_seen_turns_the_dupthresh_fallback_off():
    """Linux tcp_check_sack_reordering(): a never-retransmitted segment SACKed below the
    highest SACK is reordering (TcpExtTCPSACKReorder, reord_seen). From then on three
    SACKs no longer mean loss by themselves (tcp_rack_reo_wnd()): the next hole is
    resent only when the reordering window (min_rtt / 4) has run out."""
    d = est()
    d.script(f"""
        0.100 send({30 * MSS})
        {burst(0.100, 1, 10, last_psh=False)}
        0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(3)}:{edge(4)}>
        +0    > . {seg(11)} ack 1
        0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(4)}>
        +0    > . {seg(12)} ack 1
        0.200 < . 1:1(0) ack {edge(11)} win 1000
    """, more=True)
    assert [(s.seg.seq - d.iss) & MASK for s in d.take_sent()] == \
        [edge(k) for k in range(13, 31)]  # slow start: cwnd 10 -> 20, 2 out
    rec = d.tcb.recovery
    # Twice, as Linux counts: segment 2 SACKed below the SACK of 3, then segment 1
    # ACKed below it (tcp_sacktag_write_queue() and tcp_clean_rtx_queue() each once).
    assert d.stats["TcpExtTCPSACKReorder"] == 2 and rec.reord_seen == 2
    assert d.stats["TcpRetransSegs"] == 0 and rec.ca_state == "Open"
    # Segment 11 is missing; 12, 13, 14 arrive.
    d.advance(0.1)
    for k in (13, 14, 15):
        d.inject(f". 1:1(0) ack {edge(11)}",
                 sack=(((d.iss + edge(12)) & MASK, (d.iss + edge(k)) & MASK),))
    assert all((s.seg.seq - d.iss) & MASK != edge(11) for s in d.take_sent())
    d.advance(0.03)
    rtx = [s for s in d.take_sent() if (s.seg.seq - d.iss) & MASK == edge(11)]
    assert len(rtx) == 1 and abs(rtx[0].at - 100.327) < 0.001  # 0.3 + 25 ms + 2 ms
    assert d.stats["TcpExtTCPSackRecovery"] == 1


# ---------------------------------------------------------------------- TLP


def test_tail_loss_probe_resends_the_last_segment_then_rack_repairs():
    """RFC 8985 7: the last two segments are lost. No ACK will come for them, so at
    PTO = 2 * SRTT + 2 ms after the last ACK the probe resends the last segment; its
    SACK lets RACK mark segment 9 lost (sent long before the probe), repaired in
    fast recovery, no RTO (TcpExtTCPLossProbes)."""
    d = est()
    d.script(f"""
        0.100 send({10 * MSS})
        {burst(0.100, 1, 10)}
        0.200 < . 1:1(0) ack {edge(9)} win 1000
        0.402 > P. {seg(10)} ack 1
        0.502 < . 1:1(0) ack {edge(9)} win 1000 <sack {edge(10)}:{edge(11)}>
        +0    > P. {seg(9)} ack 1
        0.602 < . 1:1(0) ack {edge(11)} win 1000
    """)
    assert d.stats["TcpExtTCPLossProbes"] == 1
    assert d.stats["TcpExtTCPSackRecovery"] == 1 and d.stats["TcpExtTCPTimeouts"] == 0


def test_tail_loss_probe_carries_new_data_when_it_may():
    """Linux tcp_send_loss_probe(): with data queued that the peer's window allows, the
    probe is one new segment even though cwnd is full. Its ACK ends the episode with
    no reduction."""
    d = est()
    d.script(f"""
        0.100 send({10 * MSS})
        {burst(0.100, 1, 10)}
        0.150 send({MSS})
        0.302 > P. {seg(11)} ack 1
        0.402 < . 1:1(0) ack {edge(12)} win 1000
    """)
    assert d.stats["TcpExtTCPLossProbes"] == 1
    assert d.stats["TcpExtTCPLossProbeRecovery"] == 0 and d.stats["TcpRetransSegs"] == 0
    assert d.tcb.recovery.tlp_high is None and d.tcb.cc.cwnd > 10 * MSS


def test_one_segment_in_flight_waits_for_the_delayed_ack_allowance():
    """RFC 8985 7.2 / Linux: with one segment out the PTO adds tcp_rto_min (200 ms), the
    worst-case delayed ACK, not 2 ms; here that is later than the RTO, which goes
    first."""
    d = est()
    d.script("""
        0.100 send(100)
        0.100 > P. 1:101(100) ack 1
        0.400 > P. 1:101(100) ack 1
    """, more=True)
    assert d.stats["TcpExtTCPLossProbes"] == 0 and d.stats["TcpExtTCPTimeouts"] == 1


# ---------------------------------------------------------------------- lost retransmission


def test_lost_retransmission_is_detected_without_an_rto():
    """RFC 8985 6.2 step 5 / Linux tcp_mark_skb_lost(): the fast retransmission of
    segment 1 is lost too. Segments first sent after it are SACKed one RTT later while
    it is still missing: RACK marks it lost again (TcpExtTCPLostRetransmit) and it goes
    out a third time, no RTO."""
    d = est()
    d.script(f"""
        0.100 send({20 * MSS})
        {burst(0.100, 1, 10, last_psh=False)}
        0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(11)}>
        +0    > P. {seg(1)} ack 1
        {burst(0.200, 11, 4, last_psh=False)}
        0.300 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(15)}>
        +0    > P. {seg(1)} ack 1
    """, more=True)
    d.take()
    assert d.stats["TcpExtTCPLostRetransmit"] == 1
    assert d.stats["TcpExtTCPTimeouts"] == 0 and d.stats["TcpExtTCPSackRecovery"] == 1


# ---------------------------------------------------------------------- PRR


def test_prr_sends_what_rfc_6937s_first_example_sends():
    """RFC 6937 section 6, the first example: cwnd 20, one segment lost, ssthresh 10.
    Of the 19 ACKs (segments 2..20 SACKed one by one), the first two let new data out
    (the pipe shrinks), the third starts recovery with the retransmission, then PRR
    sends one segment on every other ACK (ceil(ssthresh * prr_delivered / prior_cwnd)
    - prr_out, Linux tcp_cwnd_reduction()), as in the RFC's example, until the flight is
    down to ssthresh: on the last ACK ssthresh - pipe = 0 and nothing goes out."""
    d = est()
    d.script(f"""
        0.100 send({10 * MSS})
        {burst(0.100, 1, 10)}
        0.200 < . 1:1(0) ack {edge(11)} win 1000
        0.200 send({40 * MSS})
    """, more=True)
    sent = [s for s in d.take() if s.payload]
    assert len(sent) == 20 and d.tcb.cc.cwnd == 20 * MSS  # slow start: 10 + 10
    first = (sent[0].seq - d.iss) & MASK
    row = []
    for k in range(1, 20):
        d.advance(0.001)
        d.inject(f". 1:1(0) ack {first}", sack=(((d.iss + first + MSS) & MASK,
                                                 (d.iss + first + (k + 1) * MSS) & MASK),))
        out = [((s.seq - d.iss) & MASK) for s in d.take() if s.payload]
        row.append("R" if out == [first] else "N" if len(out) == 1 else
                   "_" if not out else "?")
    assert " ".join(row) == "N N R _ N _ N _ N _ N _ N _ N _ N _ _"
    assert d.tcb.cc.ssthresh == 10 * MSS
    assert d.tcb.recovery.pipe() == 10 * MSS  # down to ssthresh at the end, as the RFC


# ---------------------------------------------------------------------- D-SACK and undo


def test_dsack_of_a_spurious_fast_retransmit_restores_cwnd():
    """RFC 2883 / Linux tcp_try_undo_dsack(): segment 1 was only delayed. Three SACKs
    resend it and halve the window; the original arrives, then the retransmission,
    which the peer reports with a D-SACK block below the ACK. Every retransmission is
    accounted for: the reduction is undone (TcpExtTCPDSACKUndo), cwnd back to 10."""
    d = est()
    d.script(f"""
        0.100 send({10 * MSS})
        {burst(0.100, 1, 10)}
        0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(3)}>
        0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(4)}>
        0.200 < . 1:1(0) ack 1 win 1000 <sack {edge(2)}:{edge(5)}>
        +0    > P. {seg(1)} ack 1
        0.201 < . 1:1(0) ack {edge(11)} win 1000
    """)
    cc = d.tcb.cc
    # Recovery is over, not (yet) undone: ssthresh 5, cwnd 5 + 10/5 (the closing ACK's
    # congestion avoidance, as in the first drill).
    assert cc.ssthresh == 5 * MSS and cc.cwnd == 7 * MSS
    d.script(f"0.300 < . 1:1(0) ack {edge(11)} win 1000 <sack 1:{edge(2)}>")
    assert d.stats["TcpExtTCPDSACKRecv"] == 1 and d.stats["TcpExtTCPDSACKUndo"] == 1
    assert cc.cwnd == 10 * MSS and cc.ssthresh > 10 * MSS


def test_timestamps_show_a_spurious_fast_retransmit_eifel():
    """RFC 3522 (Linux tcp_packet_delayed()): the ACK that ends recovery echoes the
    TSval of the original transmission, older than that of the retransmission: the
    original arrived, the reduction is undone at once (TcpExtTCPFullUndo)."""
    d = est(ts=True)
    mss = d.tcb.mss  # 1448: the timestamps take 12 bytes

    def at(k: int) -> int:
        return (d.iss + 1 + (k - 1) * mss) & MASK

    d.advance(0.1)
    d.send(10 * mss)
    tsval = [s.ts[0] for s in d.take() if s.payload][0]
    d.advance(0.1)
    for k in (3, 4, 5):
        d.inject(". 1:1(0) ack 1", sack=((at(2), at(k)),), ts=(d.peer_tsval(), tsval))
    rtx = [s for s in d.take() if s.payload]
    assert [(s.seq - d.iss) & MASK for s in rtx] == [1] and rtx[0].ts[0] != tsval
    d.advance(0.001)
    d.inject(f". 1:1(0) ack {1 + 10 * mss}", ts=(d.peer_tsval(), tsval))  # the original's
    assert d.stats["TcpExtTCPFullUndo"] == 1
    assert d.tcb.cc.cwnd >= 10 * mss and d.tcb.recovery.ca_state == "Open"


def test_receiver_sends_dsack_for_duplicate_data():
    """RFC 2883 4.1.1 (Linux tcp_data_queue() / tcp_send_dupack()): a segment we already
    hold is answered with its range as the first SACK block, once
    (TcpExtTCPDSACKOldSent); a duplicate of out-of-order data likewise, ahead of the
    normal blocks (TcpExtTCPDSACKOfoSent)."""
    d = est()
    d.script("""
        0.200 < . 1:1001(1000) ack 1 win 1000
        +0    > . 1:1(0) ack 1001
        0.200 < . 1:1001(1000) ack 1 win 1000
        +0    > . 1:1(0) ack 1001 <nop,nop,sack 1:1001>
        0.300 < . 2001:3001(1000) ack 1 win 1000
        +0    > . 1:1(0) ack 1001 <nop,nop,sack 2001:3001>
        0.300 < . 2001:3001(1000) ack 1 win 1000
        +0    > . 1:1(0) ack 1001 <nop,nop,sack 2001:3001 2001:3001>
        0.300 < . 1001:2001(1000) ack 1 win 1000
        +0    > . 1:1(0) ack 3001
    """, more=True)
    d.take()
    assert d.stats["TcpExtTCPDSACKOldSent"] == 1 and d.stats["TcpExtTCPDSACKOfoSent"] == 1


def test_dsack_knob_off_sends_none():
    d = est("tcp_dsack=0")
    d.script("""
        0.200 < . 1:1001(1000) ack 1 win 1000
        +0    > . 1:1(0) ack 1001
        0.200 < . 1:1001(1000) ack 1 win 1000
        +0    > . 1:1(0) ack 1001 <>
    """, more=True)
    d.take()
    assert d.stats["TcpExtTCPDSACKOldSent"] == 0


def test_frto_detects_a_spurious_rto():
    """RFC 5682 3.1 (SACK-enhanced, Linux tcp_process_loss()): the ACKs of the whole
    flight were only delayed past the RTO. The first ACK after the retransmission covers
    segment 2, which was never retransmitted: the timeout was spurious. The reduction is
    undone (TcpExtTCPLossUndo, TcpExtTCPSpuriousRTOs) and nothing more is resent.
    (No tail loss probe, tcp_early_retrans=0, so that the RTO is what fires.)"""
    d = est("tcp_early_retrans=0")
    d.script(f"""
        0.100 send({10 * MSS})
        {burst(0.100, 1, 10)}
        0.400 > P. {seg(1)} ack 1
        0.450 < . 1:1(0) ack {edge(3)} win 1000
        0.460 < . 1:1(0) ack {edge(11)} win 1000
    """)
    assert d.stats["TcpExtTCPTimeouts"] == 1 and d.stats["TcpRetransSegs"] == 1
    assert d.stats["TcpExtTCPSpuriousRTOs"] == 1 and d.stats["TcpExtTCPLossUndo"] == 1
    assert d.tcb.cc.cwnd >= 10 * MSS and d.tcb.recovery.ca_state == "Open"


def test_a_real_rto_is_not_undone():
    """The converse: after the RTO only the retransmitted head is ACKed, then a SACK of
    F-RTO's new data with the hole still there: the loss was real (F-RTO step 3.a), the
    window stays reduced and go-back-N resends the rest."""
    d = est("tcp_early_retrans=0")
    d.script(f"""
        0.100 send({14 * MSS})
        {burst(0.100, 1, 10, last_psh=False)}
        0.400 > P. {seg(1)} ack 1
        0.500 < . 1:1(0) ack {edge(2)} win 1000
        +0    > . {seg(11)} ack 1
        +0    > . {seg(12)} ack 1
        0.600 < . 1:1(0) ack {edge(2)} win 1000 <sack {edge(11)}:{edge(12)}>
    """, more=True)
    resent = [(s.seq - d.iss) & MASK for s in d.take() if s.payload]
    assert resent and resent[0] == edge(2)  # what step 2.b left marked lost
    assert d.stats["TcpExtTCPSpuriousRTOs"] == 0 and d.stats["TcpExtTCPLossUndo"] == 0
    assert d.tcb.recovery.ca_state == "Loss"


# ---------------------------------------------------------------------- the knobs under stress

KNOB_SETS = {
    "dupthresh": ("tcp_recovery=0",),
    "no-fallback": ("tcp_recovery=5",),
    "static-window": ("tcp_recovery=3",),
    "no-tlp": ("tcp_early_retrans=0",),
    "no-frto": ("tcp_frto=0",),
    "no-dsack": ("tcp_dsack=0",),
    "no-ts": ("tcp_timestamps=0",),
}


@pytest.mark.parametrize("knobs", KNOB_SETS.values(), ids=KNOB_SETS.keys())
@pytest.mark.parametrize("seed", [3, 8])
def test_every_recovery_knob_stays_byte_exact_under_loss_reordering_and_duplicates(knobs, seed):
    """Two cores over a link that loses 5%, reorders 10% and duplicates 5% of the frames
    (tests/test_core_lossy.py's link): byte-exact both ways whatever the recovery knobs,
    and the repair shows in the counters."""
    a, b, _ = transfer(seed, 0.05, 0.1, 0.05, *knobs, up=200_000, down=200_000)
    stats = [t.ctx.stats for t in (a, b)]
    assert sum(s["TcpRetransSegs"] for s in stats) > 0
    assert sum(s["TcpExtTCPSackRecovery"] for s in stats) > 0
    if "tcp_dsack=0" in knobs:
        assert sum(s["TcpExtTCPDSACKOldSent"] + s["TcpExtTCPDSACKOfoSent"] for s in stats) == 0
    else:
        assert sum(s["TcpExtTCPDSACKOldSent"] for s in stats) > 0
        assert sum(s["TcpExtTCPDSACKRecv"] for s in stats) > 0
    if "tcp_early_retrans=0" in knobs:
        assert sum(s["TcpExtTCPLossProbes"] for s in stats) == 0
