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
from ustack.wire.tcp import FIN, RST


def run_timers(d: Drill, until: float) -> list[tuple[float, object]]:
    """Advance deadline by deadline for `until` seconds; (time since start, segment) for
    every segment sent."""
    start = d.now
    end = d.now + until
    sent = []
    while True:
        nd = d.table.next_deadline()
        if nd is None or nd > end:
            break
        d.advance(max(nd - d.now, 0.0))
        while d.out:
            sent.append((round(d.now - start, 6), d.out.pop(0)))
    d.advance(end - d.now)
    while d.out:
        sent.append((round(d.now - start, 6), d.out.pop(0)))
    return sent


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]


# ---------------------------------------------------------------------- FIN retransmission


@pytest.mark.parametrize("state", [State.FIN_WAIT_1, State.LAST_ACK, State.CLOSING],
                         ids=["fin_wait_1", "last_ack", "closing"])
def test_fin_retransmitted_with_exponential_backoff(state):
    """RFC 6298 5.4-5.6 / RFC 9293 3.8.1 / LS 17, 121: an unacknowledged FIN is resent on
    each RTO, byte-identical in seq/ack, the RTO doubling each time (200 ms, 400 ms, ...)."""
    d = drill_in(state, orphan=False)
    fin = d.rel_snd - 1
    sent = run_timers(d, 10)
    assert len(sent) >= 5
    for _t, seg in sent:
        assert seg.flags & FIN
        assert (seg.seq - d.iss) & 0xFFFFFFFF == fin
        assert (seg.ack - d.peer_isn) & 0xFFFFFFFF == d.rel_rcv
    times = [0.0] + [t for t, _ in sent]
    g = gaps(times)
    assert 0.1 <= g[0] <= 1.5
    for a, b in zip(g, g[1:], strict=False):
        assert b == pytest.approx(2 * a)
    assert d.stats["TcpExtTCPTimeouts"] == len(sent)
    assert d.stats["TcpRetransSegs"] == len(sent)
    # The ACK of the FIN stops it and resets the backoff.
    d.inject(f". {d.rel_rcv}:{d.rel_rcv}(0) ack {d.rel_snd}")
    assert d.state in (State.FIN_WAIT_2, State.CLOSED, State.TIME_WAIT)
    assert run_timers(d, 30) == []


@pytest.mark.parametrize("state", [State.FIN_WAIT_1, State.LAST_ACK, State.CLOSING],
                         ids=["fin_wait_1", "last_ack", "closing"])
def test_orphan_gives_up_silently_after_8_retries(state):
    """LS 125 (Linux tcp_orphan_retries(): 0 means 8): an orphan's FIN is retransmitted 8
    times; at the 9th expiry (~102 s = (2^9 - 1) * 200 ms, LS 123) the connection dies
    silently: no RST, TcpExtTCPAbortOnTimeout. Afterwards the tuple gets a no-socket RST.
    (The issue says "is reset"; ustack keeps Linux's silent death.)"""
    d = drill_in(state, "tcp_orphan_retries=0")
    sent = run_timers(d, 400)
    assert all(seg.flags & FIN and not seg.flags & RST for _t, seg in sent)
    assert len(sent) == 8
    assert d.state == State.CLOSED
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
    start = d.now
    run_timers(d, 102.1)
    assert d.state == State.FIN_WAIT_1
    d.advance(0.2)
    assert d.state == State.CLOSED
    assert d.now - start == pytest.approx(102.3)


@pytest.mark.parametrize("n", [1, 3])
def test_tcp_orphan_retries_knob(n):
    """LS 125: tcp_orphan_retries = n gives n FIN retransmissions, then silence."""
    d = drill_in(State.LAST_ACK, f"tcp_orphan_retries={n}")
    sent = run_timers(d, 300)
    assert len(sent) == n
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnTimeout"] == 1


def test_shutdown_fin_wait_1_uses_tcp_retries2_and_reports_etimedout():
    """LS 124-125: a FIN_WAIT_1 reached by shutdown() is not an orphan: tcp_retries2
    governs, and the application gets ETIMEDOUT."""
    d = drill_in(State.FIN_WAIT_1, "tcp_retries2=4", "tcp_orphan_retries=1", orphan=False)
    sent = run_timers(d, 300)
    assert len(sent) == 4
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
    run_timers(d, 6.9)
    assert d.state == State.FIN_WAIT_2
    run_timers(d, 0.2)
    assert d.state == State.CLOSED


def test_fin_wait_2_timer_not_armed_for_half_close():
    """LS 8: a half-closed (shutdown only) FIN_WAIT_2 has no timer at all."""
    d = drill_in(State.FIN_WAIT_2, "tcp_fin_timeout=1", orphan=False)
    assert d.tcb.deadline is None
    assert run_timers(d, 10_000) == []
    assert d.state == State.FIN_WAIT_2


def test_peer_fin_before_fin_timeout_goes_to_time_wait():
    """RFC 9293 3.10.7.4 eighth, FIN-WAIT-2: the peer's FIN -> ACK and TIME_WAIT, which
    then runs 2*tcp_msl (not the rest of tcp_fin_timeout)."""
    d = drill_in(State.FIN_WAIT_2, "tcp_fin_timeout=7", "tcp_msl=10")
    run_timers(d, 5)
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    run_timers(d, 19.8)
    assert d.state == State.TIME_WAIT
    run_timers(d, 0.3)
    assert d.state == State.CLOSED


# ---------------------------------------------------------------------- retries2


def test_retransmission_exhaustion_times_out_without_rst():
    """RFC 9293 3.8.3 (R2) / LS 124: after tcp_retries2 retransmissions the connection is
    dropped: no RST on the wire, the application gets ETIMEDOUT, TcpExtTCPAbortOnTimeout
    and TcpEstabResets count it. The tuple then answers with a no-socket RST."""
    d = drill_in(State.ESTABLISHED, "tcp_retries2=3")
    d.send(b"q" * 10)
    d.expect("P. 1:11(10) ack 1")
    sent = run_timers(d, 100)
    assert [len(seg.payload) for _t, seg in sent] == [10, 10, 10]
    assert all(not seg.flags & RST for _t, seg in sent)
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
    assert len(run_timers(d, 0.2 + 0.4 + 0.01)) == 2
    d.inject(". 1:1(0) ack 11")
    d.send(b"b" * 10)
    d.expect("P. 11:21(10) ack 1")
    assert len(run_timers(d, 0.2 + 0.4 + 0.8 + 0.01)) == 3
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
    sent = run_timers(d, 10)
    assert [t for t, _ in sent] == [1.0, 2.0, 3.0]
    for _t, probe in sent[:2]:
        assert probe.flags == 0x10 and not probe.payload and probe.ts is not None
        assert (probe.seq - d.iss) & 0xFFFFFFFF == 0  # SND.UNA - 1
        assert (probe.ack - d.peer_isn) & 0xFFFFFFFF == 1
    rst = sent[2][1]
    assert rst.flags == RST | 0x10
    assert (rst.seq - d.iss) & 0xFFFFFFFF == 1 and rst.ts is not None
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
    sent = run_timers(d, 100)
    assert [t for t, _ in sent] == [10.0, 13.0, 16.0, 19.0, 22.0]
    assert d.stats["TcpExtTCPKeepAlive"] == 4
    assert sent[-1][1].flags & RST
    assert ConnectionClosed(errno.ETIMEDOUT) in d.events


def test_keepalive_answered_resets_idle_clock():
    """LS 131-132: any reply resets the idle clock and the probe count; idle is measured
    from the last segment received."""
    d = drill_in(State.ESTABLISHED, "tcp_keepalive_time=10", "tcp_keepalive_intvl=2",
                 "tcp_keepalive_probes=2")
    d.call(d.tcb.set_keepalive, True, d.now)
    run_timers(d, 4)
    d.inject(". 1:1(0) ack 1")  # traffic at t=4: the first probe moves to t=14
    sent = run_timers(d, 10.5)
    assert [t for t, _ in sent] == [10.0]
    d.inject(". 1:1(0) ack 1")  # the peer answers the probe
    sent = run_timers(d, 9.9)
    assert sent == []
    sent = run_timers(d, 20)
    assert [round(t, 1) for t, _ in sent] == [0.1, 2.1, 4.1]  # probe, probe, RST
    assert sent[-1][1].flags & RST


def test_no_keepalive_probe_while_data_is_unacknowledged():
    """LS 131: with data in flight the retransmission timer governs, not keepalive."""
    d = drill_in(State.ESTABLISHED, "tcp_retries2=15", "tcp_keepalive_time=1",
                 "tcp_keepalive_intvl=1", "tcp_keepalive_probes=1")
    d.call(d.tcb.set_keepalive, True, d.now)
    d.send(b"k" * 10)
    d.expect("P. 1:11(10) ack 1")
    sent = run_timers(d, 5)
    assert sent and all(len(seg.payload) == 10 for _t, seg in sent)
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
    sent = run_timers(d, 5)
    fins = [t for t, seg in sent if seg.flags & FIN]
    rsts = [(t, seg) for t, seg in sent if seg.flags & RST]
    assert fins and all(t < 2.0 for t in fins)
    assert len(rsts) == 1 and rsts[0][0] == 2.0
    assert (rsts[0][1].seq - d.iss) & 0xFFFFFFFF == 2  # R. seq=SND.NXT after the FIN
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
    sent = run_timers(d, 5)
    rsts = [(t, seg) for t, seg in sent if seg.flags & RST]
    assert len(rsts) == 1 and rsts[0][0] == 3.0
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
