"""Request records and SYN cookies (ustack/tcp/reqsock.py, syncookie.py, the SYN path of
ustack/table.py), held against LINUX-SPEC-2 section 2 (items 240-251).

Drills on the virtual clock: a SYN to a listener makes a record, not a TCB; the TCB is
made by the handshake's ACK; the SYN-ACK is retransmitted at 1, 3, 7, 15, 31 s and the
record dropped at 63 s; a full SYN queue sends cookies (or drops, by tcp_syncookies);
a cookie's ACK makes the connection, with the options the TSval carried.
"""

from __future__ import annotations

import pytest
from drill import MASK, Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp import syncookie
from ustack.tcp.events import ListenOverflow, SynFlood
from ustack.tcp.state import State
from ustack.tcp.timewait import ms32

SYN_OPTS = "<mss 1460,sackOK,TS val * ecr *,nop,wscale 7>"  # tcp_rmem[2] 6 MB: shift 7


def handshake(d: Drill, port: int | None = None, backlog: int = 128):
    if port is not None or 80 not in d.table.listeners:
        d.listen(80, backlog)
    d.inject("S 0:0(0) win 65535")
    d.expect(f"S. 0:0(0) ack 1 {SYN_OPTS}")


# ---------------------------------------------------------------------- the record


def test_syn_makes_a_record_and_the_ack_makes_the_tcb():
    """LINUX-SPEC-2 251: the SYN makes a request record (no TCB), shown by ss as
    SYN-RECV with timer:(on,1s,0); the ACK makes the TCB, ESTABLISHED with the options
    the SYN negotiated, and puts it on the accept queue."""
    d = Drill()
    lst = d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect(f"S. 0:0(0) ack 1 {SYN_OPTS}")
    assert d.key in d.table.reqs and d.key not in d.table.est
    assert lst.half_open == 1 and d.state == State.SYN_RECEIVED
    [row] = [r for r in d.table.rows(d.now) if r["state"] == "SYN-RECV"]
    assert row["peer"] == "10.77.0.1:40000" and row["local"] == "10.77.0.2:80"
    assert row["timer"] == "on,1.000s,0"
    d.advance(0.05)
    d.inject(". 1:1(0) ack 1")
    assert len(d.table.reqs) == 0 and lst.half_open == 0
    tcb = d.accept()
    assert tcb.state == State.ESTABLISHED
    assert (tcb.ts_ok, tcb.sack_ok, tcb.ws_ok, tcb.snd_wscale, tcb.rcv_wscale) == \
        (True, True, True, 7, 7)
    assert tcb.mss == 1460 - 12
    assert d.stats["TcpPassiveOpens"] == 1 and d.stats["TcpCurrEstab"] == 1
    # The SYN-ACK was timed (not retransmitted): the RTT sample is the 50 ms.
    assert tcb.rtt.srtt == pytest.approx(0.05, abs=0.002)


def test_data_and_fin_on_the_completing_ack():
    """The ACK that completes the handshake may carry data and a FIN: the child takes
    them through the ordinary input path (Linux tcp_child_process())."""
    d = Drill()
    handshake(d)
    d.inject("FP. 1:101(100) ack 1")
    d.expect(". 1:1(0) ack 102")
    tcb = d.accept()
    assert tcb.state == State.CLOSE_WAIT and d.read() == b"x" * 100


def test_synack_retransmissions_back_off_then_the_request_goes_silently():
    """reqsk_timer_handler() (LINUX-SPEC-2 251): SYN-ACKs at 0, 1, 3, 7, 15, 31 s
    (TCP_TIMEOUT_INIT doubled), tcp_synack_retries = 5, the record dropped silently at
    63 s; every expiry counts TCPTimeouts; ss shows the retransmissions."""
    d = Drill()
    d.script(f"""
        0     listen(80)
        +0    < S 0:0(0) win 65535
        +0    > S. 0:0(0) ack 1 {SYN_OPTS}
        1.000 > S. 0:0(0) ack 1
        3.000 > S. 0:0(0) ack 1
    """)
    [row] = [r for r in d.table.rows(d.now) if r["state"] == "SYN-RECV"]
    assert row["timer"] == "on,4.000s,2"
    d.script("""
        7.000  > S. 0:0(0) ack 1
        15.000 > S. 0:0(0) ack 1
        31.000 > S. 0:0(0) ack 1
        62.9   wait
    """)
    assert d.state == State.SYN_RECEIVED
    d.advance(0.2)
    d.expect_nothing()
    assert d.state == State.CLOSED and d.table.listeners[80].half_open == 0
    assert d.stats["TcpExtTCPTimeouts"] == 6 and d.stats["TcpRetransSegs"] == 5
    assert d.table.next_deadline() is None
    d.inject(". 1:1(0) ack 1")  # too late: the listener resets it (LINUX-SPEC-2 250)
    d.expect("R 1:1(0)")


def test_retransmitted_syn_resends_the_synack_and_restarts_the_timer():
    """tcp_check_req() (pure retransmitted SYN): the SYN-ACK again at once, and the
    timer restarted with the current timeout (mod_timer_pending())."""
    d = Drill()
    d.script(f"""
        0     listen(80)
        +0    < S 0:0(0) win 65535
        +0    > S. 0:0(0) ack 1 {SYN_OPTS}
        0.600 < S 0:0(0) win 65535
        +0    > S. 0:0(0) ack 1
        1.600 > S. 0:0(0) ack 1
        3.600 > S. 0:0(0) ack 1
        +0.1  < . 1:1(0) ack 1
    """)
    tcb = d.accept()
    assert tcb.state == State.ESTABLISHED
    assert d.stats["TcpRetransSegs"] == 3


def test_ack_with_a_wrong_number_gets_rst_and_the_request_stays():
    """LINUX-SPEC-2 250: an ACK to a request that acknowledges the wrong number goes
    back to the listener, which resets it; the request stays and completes later."""
    d = Drill()
    handshake(d)
    d.inject(". 1:1(0) ack 7")
    d.expect("R 7:7(0)")
    assert d.state == State.SYN_RECEIVED
    d.inject(". 1:1(0) ack 1")
    assert d.accept().state == State.ESTABLISHED


# ---------------------------------------------------------------------- accept queue full


def test_ack_to_a_full_accept_queue_is_dropped_and_the_request_kept():
    """tcp_check_req() listen_overflow, tcp_abort_on_overflow = 0 (item 242): the ACK is
    dropped (ListenOverflows, ListenDrops), the request kept and its SYN-ACK resent, so
    the client's next ACK completes once accept() made room."""
    d = Drill()
    lst = d.listen(80, backlog=1)  # two requests, two connections waiting for accept()
    a, b, c = d.peer(40001), d.peer(40002), d.peer(40003)
    for p in (a, b):
        p.inject("S 0:0(0) win 65535")
        p.expect("S. 0:0(0) ack 1")
    a.inject(". 1:1(0) ack 1")
    c.inject("S 0:0(0) win 65535")  # a SYN finding the accept queue full is dropped
    c.expect("S. 0:0(0) ack 1")
    b.inject(". 1:1(0) ack 1")
    assert len(lst.accept_queue) == 2
    c.inject(". 1:1(0) ack 1")
    d.expect_nothing()
    assert d.stats["TcpExtListenOverflows"] == 1 and d.stats["TcpExtListenDrops"] == 1
    assert ListenOverflow(80, 1, "ACK") in d.ctx.notices
    assert c.state == State.SYN_RECEIVED and len(lst.accept_queue) == 2
    c.expect("S. 0:0(0) ack 1", at=1.0)  # the request's timer goes on
    a.accept()
    c.inject(". 1:1(0) ack 1")
    b.accept()
    assert c.accept().state == State.ESTABLISHED


def test_abort_on_overflow_resets_the_handshake():
    """tcp_abort_on_overflow = 1: the ACK finding the accept queue full gets a RST and
    the request goes (TcpExtEmbryonicRsts)."""
    d = Drill("tcp_abort_on_overflow=1")
    lst = d.listen(80, backlog=1)
    a, b, c = d.peer(40001), d.peer(40002), d.peer(40003)
    for p in (a, b):
        p.inject("S 0:0(0) win 65535")
        p.expect("S. 0:0(0) ack 1")
    a.inject(". 1:1(0) ack 1")
    c.inject("S 0:0(0) win 65535")
    c.expect("S. 0:0(0) ack 1")
    b.inject(". 1:1(0) ack 1")
    c.inject(". 1:1(0) ack 1")
    c.expect("R 1:1(0)")
    assert c.state == State.CLOSED and d.stats["TcpExtEmbryonicRsts"] == 1
    assert d.stats["TcpExtListenOverflows"] == 1 and lst.half_open == 0

# ---------------------------------------------------------------------- SYN queue full


def fill_syn_queue(d: Drill, backlog: int) -> list:
    """backlog + 1 requests: the SYN queue is full (qlen > backlog, item 241)."""
    d.listen(80, backlog)
    peers = [d.peer(41000 + i) for i in range(backlog + 1)]
    for p in peers:
        p.inject("S 0:0(0) win 65535")
        p.expect("S. 0:0(0) ack 1")
    assert len(d.table.reqs) == backlog + 1
    return peers


@pytest.mark.parametrize("cookies", [0, 1, 2])
def test_full_syn_queue_by_tcp_syncookies(cookies):
    """tcp_conn_request() / tcp_syn_flood_action() (item 240): with the SYN queue full,
    0 drops the SYN (TCPReqQFullDrop, ListenDrops), 1 answers with a cookie
    (TCPReqQFullDoCookies, SyncookiesSent) and keeps nothing, 2 sends cookies even for
    the first SYN. The flood notice comes once per listener, never for 2."""
    d = Drill(f"tcp_syncookies={cookies}")
    if cookies == 2:
        d.listen(80, 1)
        d.inject("S 0:0(0) win 65535")
        d.expect(f"S. 0:0(0) ack 1 {SYN_OPTS}")
        assert len(d.table.reqs) == 0 and len(d.table.est) == 0
        assert d.stats["TcpExtTCPReqQFullDoCookies"] == 1
        assert d.stats["TcpExtSyncookiesSent"] == 1
        assert not any(type(n) is SynFlood for n in d.ctx.notices)
        return
    fill_syn_queue(d, 1)
    late = [d.peer(42000 + i) for i in range(2)]
    for p in late:
        p.inject("S 0:0(0) win 65535")
        if cookies:
            p.expect(f"S. 0:0(0) ack 1 {SYN_OPTS}")
    d.expect_nothing()
    assert len(d.table.reqs) == 2 and len(d.table.est) == 0
    floods = [n for n in d.ctx.notices if type(n) is SynFlood]
    assert floods == [SynFlood("10.77.0.2", 80, bool(cookies))]
    if cookies:
        assert d.stats["TcpExtTCPReqQFullDoCookies"] == 2
        assert d.stats["TcpExtSyncookiesSent"] == 2 and d.stats["TcpExtListenDrops"] == 0
    else:
        assert d.stats["TcpExtTCPReqQFullDrop"] == 2 and d.stats["TcpExtListenDrops"] == 2
        assert d.stats["TcpExtSyncookiesSent"] == 0


def test_max_syn_backlog_keeps_a_quarter_without_cookies():
    """tcp_conn_request() without cookies: once fewer than a quarter of
    tcp_max_syn_backlog remain, SYNs of unproven peers are dropped (ListenDrops)."""
    d = Drill("tcp_syncookies=0", "tcp_max_syn_backlog=8")
    d.listen(80, 100)
    for i in range(8):
        p = d.peer(43000 + i)
        p.inject("S 0:0(0) win 65535")
        if i < 7:  # 8 - 6 >= 2 still takes the 7th; 8 - 7 < 2 refuses the 8th
            p.expect("S. 0:0(0) ack 1")
    d.expect_nothing()
    assert len(d.table.reqs) == 7 and d.stats["TcpExtListenDrops"] == 1
    assert d.stats["TcpExtTCPReqQFullDrop"] == 0


# ---------------------------------------------------------------------- cookies


def test_cookie_ack_makes_an_established_connection_with_options_from_tsval():
    """Items 244-249: with tcp_syncookies=2 nothing is kept for the SYN; the TSval's low
    bits carry wscale 7 and SACK-permitted; the ACK's cookie is valid
    (SyncookiesRecv) and the connection is ESTABLISHED at once, with the MSS from
    msstab, window scaling and SACK decoded, TS.Recent from the ACK."""
    d = Drill("tcp_syncookies=2")
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    synack = d.expect(f"S. 0:0(0) ack 1 {SYN_OPTS}")
    tsval = (synack.ts[0] - d.ctx.ts_offset(d.key)) & MASK
    assert tsval & 0x3F == 7 | syncookie.TS_OPT_SACK
    assert tsval <= ms32(d.now)
    assert len(d.table.reqs) == 0 and len(d.table.est) == 0
    d.advance(0.02)
    d.inject("P. 1:11(10) ack 1")
    d.expect(". 1:1(0) ack 11")
    tcb = d.accept()
    assert tcb.state == State.ESTABLISHED and d.read() == b"x" * 10
    assert (tcb.ts_ok, tcb.sack_ok, tcb.ws_ok, tcb.snd_wscale, tcb.peer_mss) == \
        (True, True, True, 7, 1460)
    assert tcb.ts_recent == d.peer_tsval()
    assert d.stats["TcpExtSyncookiesRecv"] == 1 and d.stats["TcpExtSyncookiesFailed"] == 0
    assert d.stats["TcpPassiveOpens"] == 1


@pytest.mark.parametrize("mss,want", [(1400, 1300), (1460, 1460), (9000, 1460),
                                      (1299, 536), (1440, 1440)])
def test_cookie_mss_is_rounded_down_in_msstab(mss, want):
    """Item 245: the SYN's MSS rounded down to msstab {536, 1300, 1440, 1460}."""
    d = Drill("tcp_syncookies=2", mss=mss)
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1")
    assert d.accept().peer_mss == want


def test_cookie_without_timestamps_loses_wscale_and_sack():
    """Item 248: without TS the cookie SYN-ACK offers only the MSS; the connection runs
    unscaled and without SACK."""
    d = Drill("tcp_syncookies=2", ts=False)
    d.listen(80)
    d.inject("S 0:0(0) win 65535 <mss 1460,sackOK,nop,wscale 7>")
    d.expect("S. 0:0(0) ack 1 <mss 1460>")
    d.inject(". 1:1(0) ack 1")
    tcb = d.accept()
    assert (tcb.ts_ok, tcb.sack_ok, tcb.ws_ok, tcb.snd_wscale, tcb.rcv_wscale) == \
        (False, False, False, 0, 0)
    assert tcb.mss == 1460


def test_invalid_cookie_is_counted_and_reset():
    """Items 246, 250: an ACK whose number is no cookie of ours counts SyncookiesFailed
    and the listener answers R seq=SEG.ACK; nothing is made."""
    d = Drill("tcp_syncookies=2")
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1001")
    d.expect("R 1001:1001(0)")
    assert d.stats["TcpExtSyncookiesFailed"] == 1 and d.stats["TcpExtSyncookiesRecv"] == 0
    assert len(d.table.est) == 0 and d.state == State.CLOSED


def test_ack_is_not_examined_as_a_cookie_without_a_recent_overflow():
    """tcp_synq_no_recent_overflow() (item 246): with no cookie sent in the last two
    minutes a stray ACK is simply reset, not counted as a failed cookie."""
    d = Drill()
    d.listen(80)
    d.inject(". 1:1(0) ack 1")
    d.expect("R 1:1(0)")
    assert d.stats["TcpExtSyncookiesFailed"] == 0


def test_expired_cookie_is_refused():
    """Item 246: a cookie is good for one to two minutes (MAX_SYNCOOKIE_AGE = 2); an
    older one fails even while cookies keep being sent to others."""
    d = Drill("tcp_syncookies=2")
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    for i in range(3):
        d.advance(50)
        other = d.peer(40100 + i)
        other.inject("S 0:0(0) win 65535")  # keeps the overflow stamp fresh
        other.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1")
    d.expect("R 1:1(0)")
    assert d.stats["TcpExtSyncookiesFailed"] == 1 and len(d.table.est) == 0


def test_cookie_ack_to_a_full_accept_queue_is_dropped_without_rst():
    """Item 249: the cookie is valid but the accept queue full: ListenOverflows,
    ListenDrops, no RST, nothing remembered."""
    d = Drill("tcp_syncookies=2")
    d.listen(80, backlog=0)
    a, b = d.peer(40001), d.peer(40002)
    for p in (a, b):
        p.inject("S 0:0(0) win 65535")
        p.expect("S. 0:0(0) ack 1")
    for p in (a, b):
        p.inject(". 1:1(0) ack 1")
    d.expect_nothing()
    assert d.stats["TcpExtSyncookiesRecv"] == 2 and d.stats["TcpExtListenOverflows"] == 1
    assert b.state == State.CLOSED and len(d.table.listeners[80].accept_queue) == 1


def test_syn_from_time_wait_bypasses_cookies():
    """Item 240: a SYN that reopens a TIME_WAIT tuple skips the cookie decision: it
    makes a record even with tcp_syncookies=2."""
    d = Drill("tcp_syncookies=2")
    d.listen(80)
    d.table.tw.insert(d.key, snd_nxt=5000, rcv_nxt=(d.peer_isn - 10) & MASK, ts_recent=1,
                      ts_recent_stamp=d.now, ts_offset=0, wnd=100, wscale=0, has_ts=True,
                      now=d.now)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    assert d.key in d.table.reqs and d.stats["TcpExtSyncookiesSent"] == 0


# ---------------------------------------------------------------------- the codec


KEYS = syncookie.CookieKeys(b"k" * 16)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=12), st.integers(0, MASK), st.integers(0, 65535),
       st.floats(0, 1e7), st.floats(0, 59.999))
def test_cookie_roundtrip_any_four_tuple_and_mss(key, isn, mss, now, later):
    """init_sequence() then check(): the MSS rounded down in msstab, for any four-tuple,
    client ISN and time, while the cookie is younger than a minute; another tuple or
    a cookie two counts old does not validate."""
    cookie = syncookie.init_sequence(KEYS, key, isn, syncookie.mss_index(mss), now)
    want = syncookie.MSSTAB[syncookie.mss_index(mss)]
    assert want <= max(mss, 536)
    assert syncookie.check(KEYS, key, (isn + 1) & MASK, (cookie + 1) & MASK, now + later) == want
    assert syncookie.check(KEYS, key, (isn + 1) & MASK, (cookie + 1) & MASK, now + 120.0) == 0
    other = bytes([key[0] ^ 1]) + key[1:]
    assert syncookie.check(KEYS, other, (isn + 1) & MASK, (cookie + 1) & MASK, now) in (0,)


@settings(max_examples=300, deadline=None)
@given(st.integers(64, MASK), st.one_of(st.none(), st.integers(0, 14)), st.booleans(),
       st.booleans())
def test_timestamp_options_roundtrip(ts_now, wscale, sack, ecn):
    """cookie_init_timestamp() / cookie_timestamp_decode() for every wscale, SACK and
    ECN combination: decoded as encoded, never ahead of the clock, less than 64 behind."""
    ts = syncookie.init_timestamp(ts_now, wscale, sack, ecn)
    assert 0 <= ts_now - ts < 64
    ok, ws, sk, ec = syncookie.timestamp_decode(ts, timestamps=True, sack_on=True, ws_on=True)
    assert (ok, ws, sk, ec) == (True, wscale, sack, ecn)
    if sack:  # SACK-permitted encoded but tcp_sack now off: rejected
        assert not syncookie.timestamp_decode(ts, timestamps=True, sack_on=False,
                                              ws_on=True)[0]
    if wscale is not None:
        assert not syncookie.timestamp_decode(ts, timestamps=True, sack_on=True,
                                              ws_on=False)[0]


def test_old_requests_are_pruned_when_the_syn_queue_is_half_full():
    """reqsk_timer_handler() pruning (item 251): with 2 qlen > max(8, backlog) and no
    young requests left, the SYN-ACK retry limit falls to 2: of 8 requests to a backlog
    of 8, those handled while the queue is still more than half full are dropped at the
    third timeout (7 s); once 4 are left, the others go on with the full limit."""
    d = Drill()
    d.listen(80, backlog=8)
    peers = [d.peer(44000 + i) for i in range(8)]
    for p in peers:
        p.inject("S 0:0(0) win 65535")
        p.expect("S. 0:0(0) ack 1")
    for at in (1.0, 3.0):
        for p in peers:
            p.expect("S. 0:0(0) ack 1", at=at)
    d.advance(7.0 - d.elapsed + 0.01)
    left = [p for p in peers if p.state == State.SYN_RECEIVED]
    assert len(left) == 4 and left == peers[4:]
    for p in left:
        p.expect("S. 0:0(0) ack 1", at=7.0)
    d.expect_nothing()
    assert d.table.listeners[80].half_open == 4 and d.table.listeners[80].young == 0


# ---------------------------------------------------------------------- any input


_FLAGS = st.sampled_from(["S", "S", ".", ".", ".", "R", "R.", "S.", "F.", "P.", "FP.",
                          "SR", "SF"])
_NEAR = st.sampled_from([0, 0, 0, 0, -1, 1, 3, 70000])  # mostly right, sometimes not


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["tcp_syncookies=0", "tcp_syncookies=1", "tcp_syncookies=2"]),
       st.lists(st.tuples(st.integers(0, 2), _FLAGS, _NEAR, _NEAR, st.integers(0, 2),
                          st.sampled_from([0.0, 0.0, 0.0, 0.3, 1.0, 2.5, 70.0])), max_size=40))
def test_any_segments_keep_the_syn_queue_consistent(knob, steps):
    """Whatever arrives in whatever order (SYNs, ACKs near the right numbers, RSTs,
    data, time passing), nothing raises and the listener's books balance: half_open
    counts the request records plus children still in SYN_RECEIVED, young never
    exceeds it, and every record's timer is in the table's deadline."""
    d = Drill(knob)
    lst = d.listen(80, backlog=1)
    peers = [d.peer(45000 + i) for i in range(3)]
    for who, flags, dseq, dack, size, dt in steps:
        p = peers[who]
        seq = max(0, (0 if "S" in flags and "." not in flags else 1) + dseq)
        ack = max(0, 1 + dack)
        text = f"{flags} {seq}:{seq + size}({size})" + (f" ack {ack}" if "." in flags else "")
        p.inject(text + " win 65535")
        d.take()
        for q in peers:
            q.take()
        d.advance(dt)
        for q in peers:
            q.take()
        children = sum(1 for t in d.table.est.values()
                       if t.listener is lst and t.state == State.SYN_RECEIVED)
        assert lst.half_open == len(d.table.reqs) + children
        assert 0 <= lst.young <= lst.half_open
        if d.table.reqs:
            assert d.table.next_deadline() is not None


@pytest.mark.parametrize("cookies", [1, 2])
def test_ecn_setup_syn_through_a_record_and_a_cookie(cookies):
    """RFC 3168 6.1.1 with request records and cookies: an ECN-setup SYN (ECE|CWR) is
    answered with ECE on the SYN-ACK; the record (F_ECN) or the cookie's TSval bit 5
    (cookie_init_timestamp(), cookie_ecn_ok()) carries it to the child, which has ECN on."""
    d = Drill("tcp_ecn=1", f"tcp_syncookies={cookies}")
    d.listen(80)
    d.inject("SEW 0:0(0) win 65535")
    synack = d.expect("SE. 0:0(0) ack 1")
    if cookies == 2:
        tsval = (synack.ts[0] - d.ctx.ts_offset(d.key)) & MASK
        assert tsval & syncookie.TS_OPT_ECN
    d.inject(". 1:1(0) ack 1")
    assert d.accept().ecn is not None
