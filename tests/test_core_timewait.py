"""The TIME_WAIT table, packet by packet, on the fake clock (LS 50-66, RFC 9293 3.10.7.4,
RFC 6191, RFC 1337, Linux tcp_timewait_state_process()).

A connection in TIME_WAIT is a compact record in `table.tw`, not a TCB; these tests
check that the record answers every segment the way the TCB would have and the way
Linux's timewait minisocket does, including SYNs that reopen the four-tuple.
"""

from __future__ import annotations

import pytest
from drill import PEER_ISN, Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)
from drill_states import drill_in

from ustack.tcp.events import TimeWaitOverflow
from ustack.tcp.state import State
from ustack.tcp.timewait import BUCKET_MS, TW_ACK, TimeWaitTable, ms32
from ustack.wire.tcp import ACK, Segment

MASK = 0xFFFFFFFF
PEER_TS = 5000  # every peer TSval of drill_in() (its clock never moves while building)


def tw_drill(*settings: str, **kw) -> tuple[Drill, int]:
    """A drill in TIME_WAIT (the active closer, passive open); returns it and our ISS."""
    d = drill_in(State.TIME_WAIT, *settings, **kw)
    return d, d.iss


def add_time_wait(d: Drill, peer_port: int, **kw) -> Drill:
    """One more passively opened, actively closed connection from `peer_port` (a peer of
    `d`, returned; `kw` go to d.peer())."""
    d = d.peer(peer_port, **kw)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1")
    d.accept()
    d.close()
    d.expect("F. 1:1(0) ack 1")
    d.inject(". 1:1(0) ack 2")
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    return d


# ---------------------------------------------------------------------- the record


def test_time_wait_replaces_the_tcb_by_a_record():
    """LS 51: the TCB leaves the established table; what remains is the record with
    SND.NXT, RCV.NXT, TS.Recent (the FIN's TSval) and the TS offset."""
    d, iss = tw_drill()
    tcb = d.tcb
    assert d.key not in d.table.est and d.key in d.table.tw
    r = d.table.tw.get(d.key)
    assert r.snd_nxt == (iss + 2) & MASK
    assert r.rcv_nxt == (PEER_ISN + 2) & MASK
    assert r.has_ts and r.ts_recent == PEER_TS
    assert r.ts_offset == tcb.ts_offset == d.ctx.ts_offset(d.key)
    assert d.stats["TcpExtTW"] == 1
    d.advance(59.9)  # no TCB timer fires: nothing on the wire until the record goes
    d.expect_nothing()


def test_record_acks_exactly_like_the_tcbs_last_ack():
    """LS 52: a retransmitted FIN gets . SND.NXT ack RCV.NXT with the TCB's window field
    and TS ecr = TS.Recent = the TSval of the FIN that completed the close, not the
    TSval of the retransmission. TSval continues the connection's clock."""
    d = drill_in(State.FIN_WAIT_2)
    d.inject("F. 1:1(0) ack 2")
    last_tcb_ack = d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT
    d.advance(1.5)
    d.inject("F. 1:1(0) ack 2", ts=(PEER_TS + 1500, 0))
    ack = d.expect(". 2:2(0) ack 2")
    assert (ack.seq, ack.ack, ack.wnd, ack.flags) == \
        (last_tcb_ack.seq, last_tcb_ack.ack, last_tcb_ack.wnd, last_tcb_ack.flags)
    assert ack.ts == ((last_tcb_ack.ts[0] + 1500) & MASK, PEER_TS)
    assert ack.ts[0] == (ms32(d.now) + d.ctx.ts_offset(d.key)) & MASK


def test_time_wait_ack_without_timestamps():
    """LS 52: no TS option on the TIME_WAIT ACK when the connection had none."""
    d = drill_in(State.TIME_WAIT, ts=False)
    d.inject("F. 1:1(0) ack 2")
    ack = d.expect(". 2:2(0) ack 2")
    assert ack.ts is None


def test_time_wait_ack_without_ts_option_when_ts_recent_is_zero():
    """LS 52 (Linux tcp_v4_send_ack() adds TS only for a nonzero TSecr): a peer whose
    TSvals are 0 gets TIME_WAIT ACKs without the option."""
    d = Drill()
    d.listen(80)
    d = add_time_wait(d, 40000, ts_base=0)  # the peer's clock stays at 0
    assert d.table.tw.get(d.key).ts_recent == 0
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2 <>")


def test_retransmitted_fin_data_and_rst_hit_the_record_as_the_tcb():
    """The issue / LS 53-57: retransmitted FIN and data get the ACK (data never
    delivered, never a RST), an old RST is ignored, an exact one closes."""
    d, _ = tw_drill("tcp_msl=5")
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    d.inject("P. 2:12(10) ack 2")
    d.expect(". 2:2(0) ack 2")
    d.inject("R. 1:1(0) ack 2")  # left of RCV.NXT
    d.expect_nothing()
    assert d.state == State.TIME_WAIT
    d.inject("R. 2:2(0) ack 2")
    d.expect_nothing()
    assert d.state == State.CLOSED and d.stats["TcpOutRsts"] == 0


def test_out_of_window_pure_ack_is_rate_limited_data_is_not():
    """LS 56: pure ACKs get at most one answer per tcp_invalid_ratelimit; data always."""
    d, _ = tw_drill()
    d.inject(". 5:5(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    d.inject(". 5:5(0) ack 2")
    d.expect_nothing()
    assert d.stats["TcpExtTCPACKSkippedTimeWait"] == 1
    d.inject("P. 2:4(2) ack 2")
    d.expect(". 2:2(0) ack 2")
    d.advance(0.5)
    d.inject(". 5:5(0) ack 2")
    d.expect(". 2:2(0) ack 2")


@pytest.mark.parametrize("seg, reply, restarts, alive", [
    (". 2:2(0) ack 2", None, True, True),  # bare ACK at RCV.NXT: silent restart (53a)
    ("F. 1:1(0) ack 2", ". 2:2(0) ack 2", True, True),  # retransmitted FIN (53b)
    ("F. 2:2(0) ack 2", ". 2:2(0) ack 2", True, True),  # a "new" FIN at RCV.NXT (54)
    ("P. 2:12(10) ack 2", ". 2:2(0) ack 2", True, True),  # new data: ACK, never RST (55)
    ("P 2:12(10)", ". 2:2(0) ack 2", False, True),  # ACK-less data: answered only (53)
    (". 7:7(0) ack 2", ". 2:2(0) ack 2", True, True),  # pure ACK, other seq (53b)
    ("S. 0:0(0) ack 2", ". 2:2(0) ack 2", True, True),  # SYN-ACK: never accepted (54, 58)
    ("R. 12:12(0) ack 2", None, False, True),  # in-window RST, not exact: ignored (57)
    ("R 2:2(0)", None, False, False),  # exact RST, no ACK bit: the record goes (57)
], ids=["bare-ack", "old-fin", "new-fin", "data", "ackless-data", "oow-ack", "syn-ack",
        "inexact-rst", "exact-rst"])
def test_time_wait_response_table(seg, reply, restarts, alive):
    """LS 53-57, Linux tcp_timewait_state_process() (tcp_rfc1337=0): what each segment
    draws from a TIME_WAIT record and whether it restarts the 2*MSL timer. Only
    `paws_reject || th->ack` restarts out of window; a RST never restarts, and one not
    exactly at RCV.NXT is ignored (no RFC 5961 challenge ACK in TIME_WAIT)."""
    d, _ = tw_drill("tcp_msl=5")
    d.advance(6)
    d.inject(seg)
    if reply is None:
        d.expect_nothing()
    else:
        d.expect(reply)
    d.expect_nothing()
    assert d.stats["TcpOutRsts"] == 0
    assert d.state == (State.TIME_WAIT if alive else State.CLOSED)
    if alive:
        d.advance(4.1)  # 10.1 s after entering: expired unless restarted at +6
        assert d.state == (State.TIME_WAIT if restarts else State.CLOSED)
    # On the wire: a record answers an old ACK with its ACK, no record with a RST.
    d.inject(". 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2" if alive and restarts else "R 2:2(0)")


# ---------------------------------------------------------------------- timer


def test_expiry_after_2msl_on_the_fake_clock():
    """RFC 9293 3.10.7.4 / LS 50: the record goes 2*tcp_msl after it was made (within
    one 50 ms bucket), by the table's one deadline."""
    d, _ = tw_drill("tcp_msl=5")
    entered = d.now
    assert d.table.tw.next_expiry() == pytest.approx(entered + 10, abs=BUCKET_MS / 1000)
    d.advance(9.95)
    assert d.state == State.TIME_WAIT
    d.advance(0.1)
    assert d.state == State.CLOSED
    assert len(d.table.tw) == 0 and d.table.next_deadline() is None
    d.inject(". 2:2(0) ack 2")
    d.expect("R 2:2(0)")  # the tuple is unknown now (LS 100)


def test_in_window_ack_restarts_silently_old_ack_restarts_with_answer():
    """LS 53 (a) and (b): both restart the 2*MSL timer."""
    d, _ = tw_drill("tcp_msl=5")
    d.advance(6)
    d.inject(". 2:2(0) ack 2")  # (a) in window: no reply
    d.expect_nothing()
    d.advance(6)  # 12 s after entering: alive thanks to (a)
    assert d.state == State.TIME_WAIT
    d.inject(". 1:1(0) ack 2")  # (b) out of window
    d.expect(". 2:2(0) ack 2")
    d.advance(9.9)
    assert d.state == State.TIME_WAIT
    d.advance(0.2)
    assert d.state == State.CLOSED


def test_rejected_ackless_syn_does_not_restart():
    """LS 53: an ACK-less SYN that passes PAWS but is not newer gets the TIME_WAIT ACK
    and does not restart the timer (it may be a new SYN with a random lower ISN)."""
    d, _ = tw_drill("tcp_msl=5")
    d.advance(6)
    syn = "S 0:0(0) win 65535 <mss 1460,TS val 5000 ecr 0>"  # TSval == TS.Recent
    d.peer(d.peer_port, isn=(PEER_ISN - 100_000) & MASK).inject(syn)
    d.expect(". 2:2(0) ack 2")
    d.advance(4.1)
    assert d.state == State.CLOSED


def test_expiry_is_one_deadline_not_a_timer_per_record():
    """The issue: a thousand records, made over 5 s, need no event-loop timer each:
    the table's heap stays empty, next_deadline() is the oldest bucket, and each
    record goes in its own 50 ms bucket."""
    d = Drill("tcp_msl=5")
    d.listen(80)
    for i in range(1000):
        add_time_wait(d, 20000 + i)
        if i % 200 == 199:
            d.advance(1.0)
    assert len(d.table.tw) == 1000 and len(d.table.est) == 0
    d.advance(0.5)  # lets the TCBs' stale heap entries (their last RTOs) pop
    assert len(d.table.timers) == 0
    first = d.table.next_deadline()
    assert 10.0 <= first - 100.0 <= 10.0 + BUCKET_MS / 1000
    d.advance(first - d.now)
    assert len(d.table.tw) == 800  # the first 200 went together
    d.advance(5.1)
    assert len(d.table.tw) == 0 and d.table.next_deadline() is None


def test_restarted_record_is_not_expired_by_its_old_bucket():
    """A restarted record is re-queued; its stale entry in the old bucket is skipped."""
    d, _ = tw_drill("tcp_msl=5")
    d.advance(5)
    d.inject(". 2:2(0) ack 2")  # restart at +5: now expires at +15
    d.advance(5.1)  # the old bucket (+10) came due
    assert d.state == State.TIME_WAIT
    d.advance(5)
    assert d.state == State.CLOSED


def test_restarts_within_one_bucket_queue_the_key_once():
    """The expiry buckets hold one reference per record per 50 ms bucket, however many
    segments restart it (Linux's inet_twsk_reschedule() just moves one timer): a flood
    of in-window ACKs, which anyone who knows the four-tuple can send, must not grow
    the table's memory."""
    d, _ = tw_drill("tcp_msl=5")
    tw = d.table.tw

    def refs() -> int:
        return sum(keys.count(d.key) for _, keys in tw.buckets)

    assert refs() == 1
    d.advance(1)
    for _ in range(1000):
        d.inject(". 2:2(0) ack 2")  # LS 53(a): each one restarts the timer
    d.expect_nothing()
    assert refs() == 2
    d.advance(0.06)  # the next bucket
    d.inject(". 2:2(0) ack 2")
    assert refs() == 3
    d.advance(9.9)
    assert d.state == State.TIME_WAIT
    d.advance(0.2)  # 10 s after the last restart
    assert d.state == State.CLOSED and refs() == 0 and not tw.buckets


# ---------------------------------------------------------------------- RST, PAWS


def test_paws_failing_rst_is_ignored_within_60s():
    """LS 95: in TIME_WAIT PAWS applies to RSTs too, while TS.Recent is < 60 s old;
    counted as TcpExtPAWSTimewait (Linux >= 6.15)."""
    d, _ = tw_drill("tcp_msl=60")
    d.advance(10)
    d.inject("R. 2:2(0) ack 2 <TS val 4000 ecr 0>")
    d.expect_nothing()
    assert d.state == State.TIME_WAIT
    assert d.stats["TcpExtPAWSTimewait"] == 1
    d.advance(51)  # TS.Recent is now 61 s old: the RST is no longer PAWS-checked
    d.inject("R. 2:2(0) ack 2 <TS val 4000 ecr 0>")
    assert d.state == State.CLOSED


def test_paws_failing_segment_gets_ack_and_restart():
    """LS 53(c), 95: a PAWS-rejected non-RST gets the TIME_WAIT ACK and restarts."""
    d, _ = tw_drill("tcp_msl=5")
    d.advance(6)
    d.inject(". 2:2(0) ack 2 <TS val 4999 ecr 0>")  # in window but one tick old
    d.expect(". 2:2(0) ack 2")
    assert d.stats["TcpExtPAWSTimewait"] == 1
    d.advance(9.9)
    assert d.state == State.TIME_WAIT


def test_exact_rst_with_rfc1337_is_ignored_but_recorded():
    """LS 57 with tcp_rfc1337=1: the RST is ignored and its TSval recorded as TS.Recent
    (the TSecr of later TIME_WAIT ACKs), but it does not restart the timer (LS 53: "nor
    by RSTs"; Linux tcp_timewait_state_process() reschedules only in the else branch
    of `if (th->rst)`)."""
    d, _ = tw_drill("tcp_rfc1337=1", "tcp_msl=5")
    d.advance(6)
    d.inject("R. 2:2(0) ack 2 <TS val 7000 ecr 0>")
    d.expect_nothing()
    r = d.table.tw.get(d.key)
    assert r.ts_recent == 7000
    assert d.table.tw.ack_segment(d.key, r, d.now).ts[1] == 7000
    d.advance(3.9)
    assert d.state == State.TIME_WAIT
    d.advance(0.2)  # 10 s after entering: the RST at +6 did not restart it
    assert d.state == State.CLOSED


def test_time_wait_paws_forgets_ts_recent_after_24_days():
    """RFC 7323 5.5 / Linux tcp_paws_check() (LS 92, 95): a TS.Recent recorded 24 days
    ago or more no longer rejects anything. A record can hold such a stamp: segments
    without TS are accepted on a TS connection (LS 99) and do not refresh it."""
    d = Drill()
    tw: TimeWaitTable = d.table.tw
    now = 3_000_000.0
    days24 = 24 * 86400
    old = Segment(40000, 80, 7, 9, ACK, 100, b"x", ts=(4000, 0))
    for key, age, rejected in ((bytes(12), days24 - 10, True), (bytes(11) + b"\1", days24, False)):
        tw.insert(key, snd_nxt=9, rcv_nxt=7, ts_recent=5000, ts_recent_stamp=now - age,
                  ts_offset=0, wnd=100, wscale=0, has_ts=True, now=now)
        before = d.stats["TcpExtPAWSTimewait"]
        assert tw.process(key, old, now)[0] == TW_ACK  # data: ACKed either way
        assert d.stats["TcpExtPAWSTimewait"] - before == rejected


def test_in_window_bare_ack_updates_ts_recent():
    """LS 52: a later in-window bare ACK sets the TSecr of later TIME_WAIT ACKs."""
    d, _ = tw_drill()
    d.inject(". 2:2(0) ack 2 <TS val 6000 ecr 0>")
    d.inject("F. 1:1(0) ack 2")
    assert d.expect(". 2:2(0) ack 2").ts[1] == 6000


# ---------------------------------------------------------------------- SYN into TIME_WAIT


def reopen(d: Drill, iss_old: int, peer_isn: int, syn: str = "S 0:0(0) win 65535") -> Drill:
    """Inject a SYN of a new incarnation and expect its SYN-ACK with ISS = old SND.NXT +
    65537 (LS 60, RFC 1122 4.2.2.13 (1)); the new incarnation's peer."""
    new = d.peer(d.peer_port, isn=peer_isn)
    new.inject(syn)
    new.expect("S. 0:0(0) ack 1")
    assert new.iss == (iss_old + 2 + 65537) & MASK
    assert d.key in d.table.reqs and d.key not in d.table.tw  # a request record
    return new


@pytest.mark.parametrize("isn_delta", [100_000, -100_000])
def test_syn_with_newer_tsval_reopens(isn_delta):
    """RFC 6191 2 / LS 58: with timestamps a SYN whose TSval is newer than TS.Recent
    opens a new incarnation, whether its ISN is above RCV.NXT or not. Linux does not
    count TcpExtTWRecycled here (only the connect() path does)."""
    d, iss = tw_drill()
    d.advance(1)
    new = reopen(d, iss, (PEER_ISN + isn_delta) & MASK)
    new.inject(". 1:1(0) ack 1")
    tcb = new.accept()
    assert tcb.state == State.ESTABLISHED
    assert d.stats["TcpExtTWRecycled"] == 0 and d.stats["TcpPassiveOpens"] == 2


def test_new_incarnation_continues_the_tsval_clock():
    """LS 61: the TS offset comes from the four-tuple, so the SYN-ACK of the new
    incarnation carries a TSval above the old connection's (the peer's PAWS holds)."""
    d, iss = tw_drill()
    old_tsval = d.last_tsval
    d.advance(2)
    new = d.peer(d.peer_port, isn=PEER_ISN + 100_000)
    new.inject("S 0:0(0) win 65535")
    new.expect(f"S. 0:0(0) ack 1 <mss 1460,sackOK,TS val {(old_tsval + 2000) & MASK} "
               f"ecr {new.peer_tsval()},nop,wscale 7>")


def test_syn_with_older_tsval_is_answered_with_the_time_wait_ack():
    """LS 58, 95: a SYN failing PAWS (TSval older than TS.Recent) is not accepted even
    with a higher ISN: TIME_WAIT ACK, TcpExtPAWSTimewait, the record stays."""
    d, _ = tw_drill()
    d.advance(1)
    d.peer(d.peer_port, isn=PEER_ISN + 100_000).inject("S 0:0(0) win 65535 <mss 1460,TS val 4000 ecr 0>")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT and d.stats["TcpExtPAWSTimewait"] == 1


def test_paws_rejected_ackless_syn_restarts_the_timer():
    """LS 53(c): a PAWS-rejected non-RST restarts the timer even as an ACK-less SYN
    (Linux: `if (paws_reject || th->ack) inet_twsk_reschedule()`), unlike the ACK-less
    SYN that passes PAWS but is not newer (test_rejected_ackless_syn_does_not_restart)."""
    d, _ = tw_drill("tcp_msl=5")
    d.advance(6)
    d.peer(d.peer_port, isn=PEER_ISN + 100_000).inject("S 0:0(0) win 65535 <mss 1460,TS val 4000 ecr 0>")
    d.expect(". 2:2(0) ack 2")
    d.advance(9.9)
    assert d.state == State.TIME_WAIT
    d.advance(0.2)
    assert d.state == State.CLOSED


def test_isn_from_time_wait_is_never_zero():
    """LS 60, Linux tcp_timewait_state_process(): isn = tw_snd_nxt + 65535 + 2, and
    `if (isn == 0) isn++`: an old SND.NXT of 2**32 - 65537 gives ISS 1, not 0."""
    d = Drill()
    d.listen(80)
    d.table.tw.insert(d.key, snd_nxt=2**32 - 65537, rcv_nxt=PEER_ISN + 2, ts_recent=PEER_TS,
                      ts_recent_stamp=d.now, ts_offset=0, wnd=100, wscale=0, has_ts=True,
                      now=d.now)
    new = d.peer(d.peer_port, isn=PEER_ISN + 100_000)
    new.inject("S 0:0(0) win 65535")
    new.expect("S. 0:0(0) ack 1")
    assert new.iss == 1 and d.key in d.table.reqs


def test_syn_with_equal_tsval_needs_a_higher_isn():
    """LS 59: TSval == TS.Recent passes PAWS; then only SEG.SEQ > RCV.NXT reopens."""
    d, iss = tw_drill()
    d.advance(1)
    d.peer(d.peer_port, isn=(PEER_ISN - 100_000) & MASK).inject("S 0:0(0) win 65535 <mss 1460,TS val 5000 ecr 0>")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT
    reopen(d, iss, PEER_ISN + 100_000, "S 0:0(0) win 65535 <mss 1460,TS val 5000 ecr 0>")


def test_without_timestamps_only_a_higher_isn_reopens():
    """RFC 9293 3.10.7.4 / LS 58-59(i): if the old connection had no timestamps Linux
    ignores the SYN's TSval and wants SEG.SEQ > RCV.NXT."""
    d = drill_in(State.TIME_WAIT, ts=False)
    iss = d.iss
    d.advance(1)
    d.peer(d.peer_port, isn=(PEER_ISN - 100_000) & MASK).inject("S 0:0(0) win 65535 <mss 1460,TS val 99999 ecr 0>")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT
    d.advance(1)  # past the rate limit
    reopen(d, iss, PEER_ISN + 100_000)


def test_syn_ack_or_syn_rst_into_time_wait_is_not_accepted():
    """LS 54, 58: SYN+ACK gets the TIME_WAIT ACK; SYN+RST is ignored."""
    d, _ = tw_drill()
    d.advance(1)
    d.peer(d.peer_port, isn=PEER_ISN + 100_000).inject("S. 0:0(0) ack 5 win 65535")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT


def test_syn_into_client_side_time_wait_gets_the_ack():
    """LS 60: no listener on our port (client-side TIME_WAIT): the SYN that would be
    accepted is answered with the TIME_WAIT ACK instead."""
    d = Drill()
    d.established_active()
    d.close()
    d.expect("F. 1:1(0) ack 1")
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT
    d.advance(1)
    d.peer(d.peer_port, isn=PEER_ISN + 100_000).inject("S 0:0(0) win 65535")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT


# ---------------------------------------------------------------------- overflow


def test_bucket_overflow_counts_and_tells_the_operator():
    """LS 64 / the issue: beyond tcp_max_tw_buckets a closing connection gets no
    TIME_WAIT (its last ACK was sent), counted as TcpExtTCPTimeWaitOverflow, and a
    notice is queued for the shell's rate-limited log (the core never logs; see
    test_control.py for the line). Its retransmitted FIN then draws a RST."""
    d = Drill("tcp_max_tw_buckets=2")
    d.listen(80)
    add_time_wait(d, 20001)
    add_time_wait(d, 20002)
    assert len(d.table.tw) == 2 and d.stats["TcpExtTCPTimeWaitOverflow"] == 0
    assert not d.ctx.notices
    add_time_wait(d, 20003)  # the last ACK still went out (asserted inside)
    p4 = add_time_wait(d, 20004)
    assert len(d.table.tw) == 2 and len(d.table.est) == 0
    # No eviction (lwIP's tcp_kill_timewait() would): the old records stay and the
    # new connection gets none (Linux inet_twsk_alloc() failing in tcp_time_wait()).
    assert {(k[8] << 8) | k[9] for k in d.table.tw.records} == {20001, 20002}
    assert d.stats["TcpExtTCPTimeWaitOverflow"] == 2 and d.stats["TcpExtTW"] == 2
    assert list(d.ctx.notices) == [TimeWaitOverflow(), TimeWaitOverflow()]
    p4.inject("F. 1:1(0) ack 2")  # peer 20004 lost our ACK
    p4.expect("R 2:2(0)")


def test_overflow_frees_up_when_records_expire():
    d = Drill("tcp_max_tw_buckets=1", "tcp_msl=1")
    d.listen(80)
    add_time_wait(d, 20001)
    add_time_wait(d, 20002)
    assert d.stats["TcpExtTCPTimeWaitOverflow"] == 1
    d.advance(2.1)
    add_time_wait(d, 20003)
    assert len(d.table.tw) == 1 and d.stats["TcpExtTCPTimeWaitOverflow"] == 1


# ---------------------------------------------------------------------- the table alone


def test_time_fields_wrap_with_a_32_bit_millisecond_clock():
    """The record's times are 32-bit wrapping counters, as in Linux: a record made
    just before the millisecond clock wraps still expires on time."""
    d = Drill("tcp_msl=5")
    tw: TimeWaitTable = d.table.tw
    now = (2**32 - 3000) / 1000  # 3 s before ms32() wraps
    key = bytes(range(12))
    assert tw.insert(key, snd_nxt=1, rcv_nxt=2, ts_recent=3, ts_recent_stamp=now,
                     ts_offset=0, wnd=100, wscale=0, has_ts=True, now=now)
    r = tw.get(key)
    assert r.remaining(now + 1) == pytest.approx(9.0, abs=0.002)
    assert tw.expire(now + 9.9) == 0 and key in tw
    assert tw.expire(now + 10.1) == 1 and key not in tw
    seg = tw.ack_segment(key, r, now)
    assert seg.flags == ACK and (seg.seq, seg.ack, seg.wnd) == (1, 2, 100)
