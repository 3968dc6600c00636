"""Close-path timers of the core on the fake clock: FIN retransmission and orphan
give-up, FIN_WAIT_2 timeout, retransmission exhaustion, keepalive, SO_LINGER.

RTO here: the handshake ACK echoes our SYN-ACK's TSval at once, so the RTT sample is 0
and RTO = tcp_rto_min = 200 ms (RFC 6298 2.3 with Linux's floor, LS 120)."""

from __future__ import annotations

import errno

import pytest
from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)
from drill_states import drill_in

from ustack.tcp.events import ConnectionClosed
from ustack.tcp.state import State


def run_timers(d: Drill, until: float) -> list[tuple[float, object]]:
    """Run the clock `until` seconds (every timer at its deadline); (seconds from the
    start of the run, segment) for every segment that left, unchecked."""
    start = d.now
    d.advance(until)
    return [(round(s.at - start, 6), s.seg) for s in d.take_sent()]


def backoff(first: float, n: int, line: str) -> str:
    """n script lines of `line`, the first `first` s after the previous event, each gap
    twice the one before (RFC 6298 5.5)."""
    return "\n".join(f"+{first * 2 ** i:g} > {line}" for i in range(n))


# ---------------------------------------------------------------------- FIN retransmission


@pytest.mark.parametrize("state", [State.FIN_WAIT_1, State.LAST_ACK, State.CLOSING],
                         ids=["fin_wait_1", "last_ack", "closing"])
def test_fin_retransmitted_with_exponential_backoff(state):
    """RFC 6298 5.4-5.6 / RFC 9293 3.8.1 / LS 17, 121: an unacknowledged FIN is resent on
    each RTO, byte-identical in seq/ack, the RTO doubling each time (200 ms, 400 ms, ...)."""
    d = drill_in(state, orphan=False)
    fin = d.rel_snd - 1
    d.script(backoff(0.2, 5, f"F. {fin}:{fin}(0) ack {d.rel_rcv}"))  # 0.2, 0.6 ... 6.2 s
    assert d.stats["TcpExtTCPTimeouts"] == 5
    assert d.stats["TcpRetransSegs"] == 5
    # The ACK of the FIN stops it and resets the backoff.
    d.script(f"""
        +0.1 < . {d.rel_rcv}:{d.rel_rcv}(0) ack {d.rel_snd}
        +30  wait
    """)
    assert d.state in (State.FIN_WAIT_2, State.CLOSED, State.TIME_WAIT)


@pytest.mark.parametrize("state", [State.FIN_WAIT_1, State.LAST_ACK, State.CLOSING],
                         ids=["fin_wait_1", "last_ack", "closing"])
def test_orphan_gives_up_silently_after_8_retries(state):
    """LS 125 (Linux tcp_orphan_retries(): 0 means 8): an orphan's FIN is retransmitted 8
    times; at the 9th expiry (~102 s = (2^9 - 1) * 200 ms, LS 123) the connection dies
    silently: no RST, TcpExtTCPAbortOnTimeout. Afterwards the tuple gets a no-socket RST.
    (The issue says "is reset"; ustack keeps Linux's silent death.)"""
    d = drill_in(state, "tcp_orphan_retries=0")
    fin = d.rel_snd - 1
    d.script(backoff(0.2, 8, f"F. {fin}:{fin}(0) ack {d.rel_rcv}") + """
        102.19 wait  // the 9th expiry would be at 102.2 s
    """)
    assert d.state == state
    d.script("102.21 wait")
    assert d.state == State.CLOSED
    d.script("+300 wait")
    assert d.stats["TcpExtTCPAbortOnTimeout"] == 1
    assert d.stats["TcpOutRsts"] == 0
    assert d.stats["TcpEstabResets"] == 0
    assert len(d.table.est) == 0
    death = [ev for ev in d.events if isinstance(ev, ConnectionClosed)]
    assert death == [ConnectionClosed(errno.ETIMEDOUT)]
    d.inject(f"F. 1:1(0) ack {d.rel_snd}")  # the peer's FIN (again)
    d.expect(f"R {d.rel_snd}:{d.rel_snd}(0)")


def test_orphan_death_time_matches_linux_model():
    """LS 123, 125: with R = 200 ms the orphan dies at (2^9 - 1) * R = 102.2 s."""
    d = drill_in(State.FIN_WAIT_1)
    d.script(backoff(0.2, 8, "F. 1:1(0) ack 1") + """
        102.1 wait
    """)
    assert d.state == State.FIN_WAIT_1
    d.script("102.3 wait")
    assert d.state == State.CLOSED


@pytest.mark.parametrize("n", [1, 3])
def test_tcp_orphan_retries_knob(n):
    """LS 125: tcp_orphan_retries = n gives n FIN retransmissions, then silence."""
    d = drill_in(State.LAST_ACK, f"tcp_orphan_retries={n}")
    d.script(backoff(0.2, n, "F. 1:1(0) ack 2") + """
        +300 wait
    """)
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnTimeout"] == 1


def test_shutdown_fin_wait_1_uses_tcp_retries2_and_reports_etimedout():
    """LS 124-125: a FIN_WAIT_1 reached by shutdown() is not an orphan: tcp_retries2
    governs, and the application gets ETIMEDOUT."""
    d = drill_in(State.FIN_WAIT_1, "tcp_retries2=4", "tcp_orphan_retries=1", orphan=False)
    d.script(backoff(0.2, 4, "F. 1:1(0) ack 1") + """
        +300 wait
    """)
    assert d.state == State.CLOSED
    assert ConnectionClosed(errno.ETIMEDOUT) in d.events
    assert d.stats["TcpOutRsts"] == 0


# ---------------------------------------------------------------------- FIN_WAIT_2


def test_orphaned_fin_wait_2_dropped_after_tcp_fin_timeout():
    """LS 41-42: an orphaned FIN_WAIT_2 lives tcp_fin_timeout, then goes without sending
    anything; the peer's late FIN then gets R seq=SEG.ACK."""
    d = drill_in(State.FIN_WAIT_2, "tcp_fin_timeout=7")
    assert run_timers(d, 6.9) == []
    assert d.state == State.FIN_WAIT_2
    assert run_timers(d, 0.2) == []
    assert d.state == State.CLOSED
    assert d.stats["TcpOutRsts"] == 0
    d.inject("F. 1:1(0) ack 2")
    d.expect("R 2:2(0)")


def test_fin_wait_2_timeout_is_at_least_3_5_rto():
    """LS 41 (Linux tcp_fin_time()): the FIN_WAIT_2 lifetime is at least 3.5 * RTO."""
    d = drill_in(State.FIN_WAIT_2, "tcp_fin_timeout=1", "tcp_rto_min_ms=2000")
    assert run_timers(d, 6.9) == []
    assert d.state == State.FIN_WAIT_2
    assert run_timers(d, 0.2) == []
    assert d.state == State.CLOSED


def test_fin_wait_2_timer_not_armed_for_half_close():
    """LS 8: a half-closed (shutdown only) FIN_WAIT_2 has no timer at all."""
    d = drill_in(State.FIN_WAIT_2, "tcp_fin_timeout=1", orphan=False)
    assert run_timers(d, 10_000) == []
    assert d.state == State.FIN_WAIT_2


def test_peer_fin_before_fin_timeout_goes_to_time_wait():
    """RFC 9293 3.10.7.4 eighth, FIN-WAIT-2: the peer's FIN -> ACK and TIME_WAIT, which
    then runs 2*tcp_msl (not the rest of tcp_fin_timeout)."""
    d = drill_in(State.FIN_WAIT_2, "tcp_fin_timeout=7", "tcp_msl=10")
    d.script("""
        5 < F. 1:1(0) ack 2
        +0 > . 2:2(0) ack 2
        24.8 wait
    """)
    assert d.state == State.TIME_WAIT
    d.script("25.1 wait")
    assert d.state == State.CLOSED


# ---------------------------------------------------------------------- retries2


def test_retransmission_exhaustion_times_out_without_rst():
    """RFC 9293 3.8.3 (R2) / LS 124: after tcp_retries2 retransmissions the connection is
    dropped: no RST on the wire, the application gets ETIMEDOUT, TcpExtTCPAbortOnTimeout
    and TcpEstabResets count it. The tuple then answers with a no-socket RST."""
    d = drill_in(State.ESTABLISHED, "tcp_retries2=3")
    d.send(b"q" * 10)
    d.expect("P. 1:11(10) ack 1")
    d.script(backoff(0.2, 3, "P. 1:11(10) ack 1") + """
        2.99 wait  // the 4th expiry, at 3.0 s, kills it
    """)
    assert d.state == State.ESTABLISHED
    d.script("""
        3.01 wait
        +100 wait
    """)
    assert d.state == State.CLOSED
    assert ConnectionClosed(errno.ETIMEDOUT) in d.events
    assert d.stats["TcpExtTCPAbortOnTimeout"] == 1
    assert d.stats["TcpEstabResets"] == 1
    assert d.stats["TcpOutRsts"] == 0
    with pytest.raises(BrokenPipeError):
        d.tcb.send(b"more", d.now)
    d.inject(". 1:1(0) ack 11")
    d.expect("R 11:11(0)")


def test_progress_resets_the_retry_count():
    """RFC 6298 5.7 / LS 121: an ACK that advances SND.UNA resets the backoff and count."""
    d = drill_in(State.ESTABLISHED, "tcp_retries2=3")
    d.send(b"a" * 10)
    d.expect("P. 1:11(10) ack 1")
    d.script(backoff(0.2, 2, "P. 1:11(10) ack 1") + """
        +0.01 < . 1:1(0) ack 11
        +0    send(10)
        +0    > P. 11:21(10) ack 1
    """ + backoff(0.20125, 3, "P. 11:21(10) ack 1"))
    # Three again, from RTO = SRTT + 200 ms: SRTT = 7/8 * 0 (the handshake's sample)
    # + 1/8 * 10 ms (the ACK echoes the TSval of the retransmission at 0.6 s).
    assert d.state == State.ESTABLISHED


# ---------------------------------------------------------------------- keepalive


def test_keepalive_off_by_default():
    """LS 130: no keepalive probes unless SO_KEEPALIVE is set."""
    d = drill_in(State.ESTABLISHED, "tcp_keepalive_time=5")
    assert run_timers(d, 1000) == []
    assert d.state == State.ESTABLISHED


def test_keepalive_sysctls_probe_format_and_death():
    """RFC 9293 3.8.4 / LS 130-133: after tcp_keepalive_time idle a probe
    . SND.UNA-1:SND.UNA-1(0) ack RCV.NXT with TS; then every tcp_keepalive_intvl; with
    tcp_keepalive_probes unanswered, R. seq=SND.NXT and ETIMEDOUT (lab: idle 1, intvl 1,
    cnt 2 -> probes at 1 s, 2 s, R. at 3 s)."""
    d = drill_in(State.ESTABLISHED, "tcp_keepalive_time=1", "tcp_keepalive_intvl=1",
                 "tcp_keepalive_probes=2")
    d.call(d.tcb.set_keepalive, True, d.now)
    d.script("""
        1.0 > . 0:0(0) ack 1 <nop,nop,TS val * ecr 5000>   // SND.UNA - 1
        2.0 > . 0:0(0) ack 1 <nop,nop,TS val * ecr 5000>
        3.0 > R. 1:1(0) ack 1 <nop,nop,TS val * ecr 5000>
        +10 wait
    """)
    assert d.state == State.CLOSED
    assert ConnectionClosed(errno.ETIMEDOUT) in d.events
    assert d.stats["TcpExtTCPKeepAlive"] == 2
    assert d.stats["TcpExtTCPAbortOnTimeout"] == 1
    assert d.stats["TcpEstabResets"] == 1
    assert d.stats["TcpOutRsts"] == 1


def test_keepalive_per_connection_overrides():
    """LS 130: TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT override the sysctls per connection."""
    d = drill_in(State.ESTABLISHED)  # sysctls: 7200 s / 75 s / 9
    d.call(d.tcb.set_keepalive, True, d.now, 10, 3, 4)
    d.script("""
        10 > . 0:0(0) ack 1
        13 > . 0:0(0) ack 1
        16 > . 0:0(0) ack 1
        19 > . 0:0(0) ack 1
        22 > R. 1:1(0) ack 1
        +100 wait
    """)
    assert d.stats["TcpExtTCPKeepAlive"] == 4
    assert ConnectionClosed(errno.ETIMEDOUT) in d.events


def test_keepalive_answered_resets_idle_clock():
    """LS 131-132: any reply resets the idle clock and the probe count; idle is measured
    from the last segment received."""
    d = drill_in(State.ESTABLISHED, "tcp_keepalive_time=10", "tcp_keepalive_intvl=2",
                 "tcp_keepalive_probes=2")
    d.call(d.tcb.set_keepalive, True, d.now)
    d.script("""
        4    < . 1:1(0) ack 1     // traffic at 4 s: the first probe moves to 14 s
        14   > . 0:0(0) ack 1
        14.5 < . 1:1(0) ack 1     // the peer answers the probe
        24.5 > . 0:0(0) ack 1
        26.5 > . 0:0(0) ack 1
        28.5 > R. 1:1(0) ack 1
        +20  wait
    """)


def test_no_keepalive_probe_while_data_is_unacknowledged():
    """LS 131: with data in flight the retransmission timer governs, not keepalive."""
    d = drill_in(State.ESTABLISHED, "tcp_retries2=15", "tcp_keepalive_time=1",
                 "tcp_keepalive_intvl=1", "tcp_keepalive_probes=1")
    d.call(d.tcb.set_keepalive, True, d.now)
    d.send(b"k" * 10)
    d.expect("P. 1:11(10) ack 1")
    d.script(backoff(0.2, 4, "P. 1:11(10) ack 1") + """
        5 wait
    """)
    assert d.stats["TcpExtTCPKeepAlive"] == 0


# ---------------------------------------------------------------------- SO_LINGER


def test_linger_timeout_resets_unacknowledged_fin():
    """RFC 9293 3.10.4 / issue: SO_LINGER {1, N}: if the FIN (or data) is still not
    acknowledged N seconds after close(), send R. and drop the connection
    (TcpExtTCPAbortOnLinger). (Linux would keep the orphan running, LS 29.)"""
    d = drill_in(State.ESTABLISHED)
    d.tcb.linger = 2
    d.close()
    d.expect("F. 1:1(0) ack 1")
    d.script(backoff(0.2, 3, "F. 1:1(0) ack 1") + """
        2.0 > R. 2:2(0) ack 1   // seq = SND.NXT after the FIN
        +5 wait
    """)
    assert d.state == State.CLOSED
    assert len(d.table.tw) == 0
    assert d.stats["TcpExtTCPAbortOnLinger"] == 1
    assert d.stats["TcpOutRsts"] == 1


def test_linger_timeout_with_unsent_data_resets():
    """SO_LINGER {1, N} with data stuck behind a zero window: R. at N, queue discarded."""
    d = drill_in(State.ESTABLISHED)
    d.inject(". 1:1(0) ack 1 win 0")
    d.send(b"w" * 300)
    d.tcb.linger = 3
    d.close()
    d.script(backoff(0.2, 4, ". 0:0(0) ack 1") + """  // zero-window probes, backing off
        3.0 > R. 1:1(0) ack 1
        +5 wait
    """)
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnLinger"] == 1


def test_linger_ends_quietly_when_everything_is_acked():
    """SO_LINGER {1, N}: when the peer ACKs everything in time there is no RST; the
    connection goes on as an ordinary orphan (FIN_WAIT_2, then TIME_WAIT)."""
    d = drill_in(State.ESTABLISHED, "tcp_fin_timeout=30")
    d.tcb.linger = 2
    d.send(b"v" * 10)
    d.expect("P. 1:11(10) ack 1")
    d.close()
    d.expect("F. 11:11(0) ack 1")
    d.inject(". 1:1(0) ack 12")
    assert d.state == State.FIN_WAIT_2
    assert run_timers(d, 10) == []
    assert d.stats["TcpExtTCPAbortOnLinger"] == 0
    d.inject("F. 1:1(0) ack 12")
    d.expect(". 12:12(0) ack 2")
    assert d.state == State.TIME_WAIT


def test_linger_off_close_returns_and_data_then_fin_still_sent():
    """SO_LINGER off (default): close() returns at once; queued data is still delivered,
    then the FIN (RFC 9293 3.10.4)."""
    d = drill_in(State.ESTABLISHED)
    d.inject(". 1:1(0) ack 1 win 0")
    d.send(b"u" * 200)
    d.close()
    assert d.state == State.FIN_WAIT_1
    d.inject(". 1:1(0) ack 1 win 1000")
    d.expect("FP. 1:201(200) ack 1")
    d.inject(". 1:1(0) ack 202")
    assert d.state == State.FIN_WAIT_2
    assert d.stats["TcpOutRsts"] == 0
