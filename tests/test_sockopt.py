"""Socket options by Linux's numbers (ustack/sockopt.py): each one changes what it
should, on the wire where it changes the wire (drills on a virtual clock)."""

from __future__ import annotations

import errno
import importlib.util
import socket as S
import struct

import pytest
from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)

from ustack.config import Config, ConfigError, apply_settings
from ustack.sockopt import getsockopt, listener_setsockopt, notsent_room, setsockopt
from ustack.tcp.events import ConnectionClosed
from ustack.tcp.state import State

TCP, SOL = S.IPPROTO_TCP, S.SOL_SOCKET


def opt(d: Drill, level: int, name: int, value) -> None:
    """setsockopt() as a user call on the drill's connection (output goes out)."""
    d.call(setsockopt, d.tcb, level, name, value, d.w.now)


def closed_with(d: Drill) -> list[int]:
    return [e.errno for e in d.events if isinstance(e, ConnectionClosed)]


# ---------------------------------------------------------------------- TCP_MAXSEG

def test_maxseg_clamps_the_mss_announced_and_the_segments_sent():
    """TCP_MAXSEG 1000 on the listener: the SYN-ACK announces 1000 (tcp_advertise_mss()
    / user_mss), and data leaves in 1000 - 12 (timestamps) byte segments although the
    peer offered 1460."""
    d = Drill()
    lst = d.listen(80)
    listener_setsockopt(lst, d.ctx, [(TCP, S.TCP_MAXSEG, 1000)])
    d.script("""
        +0 < S 0:0(0) win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>
        +0 > S. 0:0(0) ack 1 <mss 1000,sackOK,TS val * ecr 100,nop,wscale *>
        +0.01 < . 1:1(0) ack 1 win 1000
        +0 accept()
        +0 send(1976)
        +0 > . 1:989(988) ack 1
        +0 > P. 989:1977(988) ack 1
    """, more=True)
    d.take()
    assert getsockopt(d.tcb, TCP, S.TCP_MAXSEG) == 988  # mss_cache once connected


def test_maxseg_default_and_validation():
    d = Drill()
    d.established_passive()
    tcb = d.tcb
    assert getsockopt(tcb, TCP, S.TCP_MAXSEG) == 1448  # 1460 less timestamps
    for bad in (1, 87, 32768):
        with pytest.raises(OSError) as ei:
            setsockopt(tcb, TCP, S.TCP_MAXSEG, bad)
        assert ei.value.errno == errno.EINVAL
    setsockopt(tcb, TCP, S.TCP_MAXSEG, 0)  # 0: no clamp
    setsockopt(tcb, TCP, S.TCP_MAXSEG, 88)


# ---------------------------------------------------------------------- Nagle, cork, MSG_MORE

def test_nodelay_sends_what_nagle_holds():
    d = Drill()
    d.established_passive()
    assert getsockopt(d.tcb, TCP, S.TCP_NODELAY) == 0
    d.script("""
        +0 send(100)
        +0 > P. 1:101(100) ack 1
        +0 send(100)
        +0 wait
    """)  # the second small segment waits behind the first (Nagle, Minshall)
    opt(d, TCP, S.TCP_NODELAY, 1)
    d.expect("P. 101:201(100) ack 1")
    assert getsockopt(d.tcb, TCP, S.TCP_NODELAY) == 1


def test_cork_holds_partial_segments_until_full_or_uncorked():
    """TCP_CORK (tcp_nagle_check() with TCP_NAGLE_CORK): even with TCP_NODELAY set
    before it and nothing in flight, sub-MSS data waits; a full MSS goes; uncork sends
    the rest."""
    d = Drill()
    d.established_passive()
    opt(d, TCP, S.TCP_NODELAY, 1)
    opt(d, TCP, S.TCP_CORK, 1)
    assert getsockopt(d.tcb, TCP, S.TCP_CORK) == 1
    d.script("""
        +0 send(100)
        +0.1 wait
        +0 send(2000)
        +0 > . 1:1449(1448) ack 1
        +0.01 < . 1:1(0) ack 1449 win 257
        +0.05 wait
    """)
    opt(d, TCP, S.TCP_CORK, 0)
    d.expect("P. 1449:2101(652) ack 1")


def test_cork_holds_only_until_the_probe_timer():
    """Linux holds corked data until the probe timer (tcp_check_probe_timer(), the RTO,
    at least 200 ms), whose tcp_write_wakeup() sends it: tcp(7)'s "200 ms ceiling".
    tests/pkt/cork-ceiling.pkt is the same against the kernel."""
    d = Drill()
    d.established_passive()
    opt(d, TCP, S.TCP_CORK, 1)
    d.script("""
        +0 send(100)
        +0.15 wait
        +0.05 > P. 1:101(100) ack 1
        +0.01 < . 1:1(0) ack 101 win 257
    """)


def test_cork_fin_pushes():
    """close()/shutdown() pushes corked data with the FIN (tcp_send_fin())."""
    d = Drill()
    d.established_passive()
    opt(d, TCP, S.TCP_CORK, 1)
    d.script("""
        +0 send(100)
        +0 wait
        +0.1 shutdown()
        +0 > FP. 1:101(100) ack 1
    """)


def test_msg_more_holds_the_tail_until_the_next_write():
    """send(..., MSG_MORE): tcp_push() with TCP_NAGLE_CORK for that write only."""
    d = Drill()
    d.established_passive()
    d.call(d.tcb.send, b"a" * 100, d.w.now, True)
    d.expect_nothing()
    d.advance(0.1)
    d.expect_nothing()
    d.call(d.tcb.send, b"b" * 50, d.w.now, False)
    d.expect("P. 1:151(150) ack 1")


def test_nodelay_pushes_what_msg_more_held():
    """TCP_NODELAY on pushes the pending frames (__tcp_sock_set_nodelay(): NAGLE_PUSH),
    past an earlier send()'s MSG_MORE (Google's nagle/sockopt_cork_nodelay.pkt)."""
    d = Drill()
    d.established_passive()
    d.call(d.tcb.send, b"a" * 40, d.w.now, True)
    d.advance(0.05)
    d.expect_nothing()
    opt(d, TCP, S.TCP_NODELAY, 1)
    d.expect("P. 1:41(40) ack 1")


def test_ip_tos_marks_our_packets_and_mtu_discover_is_kept():
    """IP_TOS sets the DSCP bits of the TOS byte (ECN's two stay TCP's, as Linux's
    __ip_sock_set_tos() keeps INET_ECN_MASK); IP_MTU_DISCOVER is validated and kept
    (ustack sends DF and does no PMTU discovery whatever its value)."""
    from ustack.wire.ip import ip_to_bytes
    from ustack.wire.tcp import build_tcp_ipv4

    d = Drill()
    d.established_passive()
    opt(d, S.IPPROTO_IP, S.IP_TOS, 0x2B)  # DSCP 10 and an ECN value that is dropped
    assert getsockopt(d.tcb, S.IPPROTO_IP, S.IP_TOS) == 0x28
    d.send(10)
    seg = d.expect("P. 1:11(10) ack 1")
    frame = build_tcp_ipv4(seg, ip_to_bytes("10.77.0.2"), ip_to_bytes("10.77.0.1"), 1)
    assert frame[1] == 0x28 and frame[6] & 0x40  # the TOS byte, and DF
    opt(d, S.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER, IP_PMTUDISC_DONT
    assert getsockopt(d.tcb, S.IPPROTO_IP, 10) == 0
    with pytest.raises(OSError) as ei:
        setsockopt(d.tcb, S.IPPROTO_IP, 10, 6)
    assert ei.value.errno == errno.EINVAL


# ---------------------------------------------------------------------- TCP_USER_TIMEOUT

def _unanswered(d: Drill, until: float) -> None:
    """Run the clock to `until` (since the drill's start) taking what leaves."""
    while d.elapsed < until - 1e-9:
        d.w.step_to(min(d.w.now + 0.05, d.w.now + (until - d.elapsed)))
        d.take()


def test_user_timeout_ends_retransmission_with_etimedout_on_time():
    """TCP_USER_TIMEOUT 3000: retransmissions stop and the connection dies ETIMEDOUT
    3 s after the unacknowledged data was first sent (retransmits_timed_out(), with
    the last RTO clamped by tcp_clamp_rto_to_user_timeout()), no RST; without the
    option tcp_retries2 would keep it for minutes."""
    d = Drill()
    d.established_passive()
    opt(d, TCP, S.TCP_USER_TIMEOUT, 3000)
    assert getsockopt(d.tcb, TCP, S.TCP_USER_TIMEOUT) == 3000
    t0 = d.elapsed
    d.send(100)
    d.expect("P. 1:101(100) ack 1")
    _unanswered(d, t0 + 2.95)
    assert d.state == State.ESTABLISHED
    _unanswered(d, t0 + 3.05)
    assert d.state == State.CLOSED
    assert closed_with(d) == [errno.ETIMEDOUT]
    assert d.stats["TcpOutRsts"] == 0


def test_without_user_timeout_retransmission_goes_on():
    d = Drill()
    d.established_passive()
    d.send(100)
    d.expect("P. 1:101(100) ack 1")
    _unanswered(d, d.elapsed + 3.1)
    assert d.state == State.ESTABLISHED


def test_user_timeout_bounds_zero_window_probing_even_when_answered():
    """The peer answers every zero-window probe with win 0: RFC 1122 would keep the
    connection forever; TCP_USER_TIMEOUT ends it that long after the first probe
    (tcp_probe_timer(), icsk_probes_tstamp)."""
    d = Drill()
    d.established_passive()
    d.inject(". 1:1(0) ack 1 win 0")
    opt(d, TCP, S.TCP_USER_TIMEOUT, 2000)
    d.send(100)
    first = None
    while d.state != State.CLOSED and d.elapsed < 30:
        d.w.step_to(d.w.now + 0.01)
        for _seg in d.take():
            if first is None:
                first = d.elapsed
            d.inject(". 1:1(0) ack 1 win 0")  # answered, window still shut
    assert first is not None and d.state == State.CLOSED
    assert closed_with(d) == [errno.ETIMEDOUT]
    assert 2.0 - 0.02 <= d.elapsed - first <= 2.0 + 0.02


def test_user_timeout_replaces_keepalive_probe_count():
    """Keepalive idle 1 s, interval 1 s, 9 probes; TCP_USER_TIMEOUT 2500 ms: the
    connection is reset at the first keepalive expiry 2.5 s past the last segment
    received with a probe out (tcp_keepalive_timer()), not after 9 probes."""
    d = Drill()
    d.established_passive()
    for name, v in ((S.TCP_KEEPIDLE, 1), (S.TCP_KEEPINTVL, 1), (S.TCP_KEEPCNT, 9)):
        opt(d, TCP, name, v)
    opt(d, SOL, S.SO_KEEPALIVE, 1)
    opt(d, TCP, S.TCP_USER_TIMEOUT, 2500)
    t0 = d.elapsed
    d.script("""
        +1 > . 0:0(0) ack 1
        +1 > . 0:0(0) ack 1
        +1 > R. 1:1(0) ack 1
    """)
    assert d.state == State.CLOSED and closed_with(d) == [errno.ETIMEDOUT]
    assert abs(d.elapsed - t0 - 3.0) < 0.01


# ---------------------------------------------------------------------- buffers

def test_so_rcvbuf_doubles_bounds_and_shows_in_the_syn_ack():
    """SO_RCVBUF: Linux doubles the value (sk_setsockopt()), bounds it by rmem_max,
    floors it at SOCK_MIN_RCVBUF; set on the listener it decides the SYN-ACK's window
    and scale (tcp_select_initial_window())."""
    d = Drill()
    lst = d.listen(80)
    listener_setsockopt(lst, d.ctx, [(SOL, S.SO_RCVBUF, 4096)])
    d.script("""
        +0 < S 0:0(0) win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>
        +0 > S. 0:0(0) ack 1 win 8192 <mss 1460,sackOK,TS val * ecr 100,nop,wscale 0>
        +0.01 < . 1:1(0) ack 1 win 1000
        +0 accept()
    """)
    tcb = d.tcb
    assert getsockopt(tcb, SOL, S.SO_RCVBUF) == 8192
    setsockopt(tcb, SOL, S.SO_RCVBUF, 1 << 30)
    assert getsockopt(tcb, SOL, S.SO_RCVBUF) == 2 * Config().rmem_max
    setsockopt(tcb, SOL, S.SO_RCVBUF, 1)
    assert getsockopt(tcb, SOL, S.SO_RCVBUF) == 2304


def test_so_sndbuf_bounds_what_the_application_may_queue():
    d = Drill()
    d.established_passive()
    tcb = d.tcb
    assert getsockopt(tcb, SOL, S.SO_SNDBUF) == Config().tcp_wmem[1]
    setsockopt(tcb, SOL, S.SO_SNDBUF, 5000)
    assert getsockopt(tcb, SOL, S.SO_SNDBUF) == 10000
    assert notsent_room(tcb) == 10000
    d.inject(". 1:1(0) ack 1 win 0")  # nothing may leave: all of it stays queued
    d.send(12000)
    assert notsent_room(tcb) == -2000  # what the transport counts beyond the buffer
    setsockopt(tcb, SOL, S.SO_SNDBUF, 1)
    assert getsockopt(tcb, SOL, S.SO_SNDBUF) == 4608  # SOCK_MIN_SNDBUF
    d.take()


def test_notsent_lowat_limits_unsent_data():
    """TCP_NOTSENT_LOWAT (tcp_stream_memory_free()): the room counts only unsent bytes
    against the mark, so it closes long before the send buffer is full."""
    d = Drill(wscale=None)  # the window below as it stands
    d.established_passive()
    tcb = d.tcb
    d.inject(". 1:1(0) ack 1 win 2896")  # two segments may leave
    setsockopt(tcb, TCP, S.TCP_NOTSENT_LOWAT, 1000)
    assert getsockopt(tcb, TCP, S.TCP_NOTSENT_LOWAT) == 1000
    d.send(5000)
    d.take()
    assert tcb.unsent() == 5000 - 2896
    assert notsent_room(tcb) == 1000 - (5000 - 2896)
    setsockopt(tcb, TCP, S.TCP_NOTSENT_LOWAT, 0)  # off
    assert notsent_room(tcb) == tcb.snd_cap - 5000


# ---------------------------------------------------------------------- the others

def test_quickack_sends_the_pending_ack_now():
    """TCP_QUICKACK 0 lets ACKs be delayed; 1 sends the pending one at once
    (__tcp_sock_set_quickack(): tcp_cleanup_rbuf())."""
    d = Drill()
    d.established_passive()
    opt(d, TCP, S.TCP_QUICKACK, 0)
    assert getsockopt(d.tcb, TCP, S.TCP_QUICKACK) == 0
    d.script("""
        +0 < P. 1:101(100) ack 1 win 257
        +0.01 wait
    """)  # delayed (40 ms)
    opt(d, TCP, S.TCP_QUICKACK, 1)
    d.expect(". 1:1(0) ack 101")
    assert getsockopt(d.tcb, TCP, S.TCP_QUICKACK) == 1


def test_linger_and_keepalive_options():
    d = Drill()
    d.established_passive()
    tcb = d.tcb
    setsockopt(tcb, SOL, S.SO_LINGER, struct.pack("ii", 1, 7))
    assert tcb.linger == 7
    assert struct.unpack("ii", getsockopt(tcb, SOL, S.SO_LINGER, 8)) == (1, 7)
    setsockopt(tcb, SOL, S.SO_LINGER, struct.pack("ii", 0, 7))
    assert tcb.linger is None
    with pytest.raises(OSError) as ei:
        setsockopt(tcb, SOL, S.SO_LINGER, b"\1\0")
    assert ei.value.errno == errno.EINVAL
    for name, bad in ((S.TCP_KEEPIDLE, 0), (S.TCP_KEEPINTVL, 40000), (S.TCP_KEEPCNT, 128)):
        with pytest.raises(OSError):
            setsockopt(tcb, TCP, name, bad)
    opt(d, TCP, S.TCP_KEEPIDLE, 5)  # through the table: the timer is rescheduled
    opt(d, SOL, S.SO_KEEPALIVE, 1)
    assert (getsockopt(tcb, SOL, S.SO_KEEPALIVE), getsockopt(tcb, TCP, S.TCP_KEEPIDLE)) == (1, 5)
    d.script("""
        +5 > . 0:0(0) ack 1
        +0.01 < . 1:1(0) ack 1 win 257
    """)
    assert struct.unpack("i", getsockopt(tcb, TCP, S.TCP_KEEPIDLE, 4)) == (5,)


def test_congestion_is_chosen_per_connection():
    from ustack.tcp import cc
    d = Drill()
    d.established_passive()
    tcb = d.tcb
    default = Config().tcp_congestion_control.encode()
    assert getsockopt(tcb, TCP, S.TCP_CONGESTION, 16).rstrip(b"\0") == default
    for name in cc.available():
        setsockopt(tcb, TCP, S.TCP_CONGESTION, name.encode())
        assert tcb.cc.name == name and tcb.recovery.cc is tcb.cc
    with pytest.raises(OSError) as ei:
        setsockopt(tcb, TCP, S.TCP_CONGESTION, b"nosuch")
    assert ei.value.errno == errno.ENOENT


def test_so_error_after_a_reset():
    d = Drill()
    d.established_passive()
    assert getsockopt(d.tcb, SOL, S.SO_ERROR) == 0
    d.inject("R. 1:1(0) ack 1")
    assert getsockopt(d.tcb, SOL, S.SO_ERROR) == errno.ECONNRESET
    assert getsockopt(d.tcb, SOL, S.SO_ERROR) == 0  # reading clears it (sock_error())


def test_unknown_options_are_enoprotoopt():
    d = Drill()
    d.established_passive()
    for level, name in ((SOL, 9999), (TCP, 9999), (S.IPPROTO_IP, 99)):
        with pytest.raises(OSError) as ei:
            setsockopt(d.tcb, level, name, 1)
        assert ei.value.errno == errno.ENOPROTOOPT
        with pytest.raises(OSError):
            getsockopt(d.tcb, level, name)
    with pytest.raises(OSError) as ei:
        setsockopt(d.tcb, TCP, S.TCP_NODELAY, b"\1")  # shorter than an int
    assert ei.value.errno == errno.EINVAL


def test_tcp_info():
    d = Drill()
    d.established_passive()
    if importlib.util.find_spec("ustack.tcp.info") is None:
        with pytest.raises(OSError) as ei:  # wired when tcp/info.py lands
            getsockopt(d.tcb, TCP, S.TCP_INFO, 232)
        assert ei.value.errno == errno.ENOPROTOOPT
    else:
        info = getsockopt(d.tcb, TCP, S.TCP_INFO, 232)
        assert isinstance(info, bytes) and info[0] == 1  # tcpi_state TCP_ESTABLISHED


# ---------------------------------------------------------------------- stack knobs

def _idle_restart_cwnd(*knobs: str) -> tuple[int, int]:
    d = Drill(*knobs)
    d.established_passive()
    d.inject(". 1:1(0) ack 1 win 65535")
    d.tcb.cc.cwnd = 40 * d.tcb.mss  # as after a transfer
    before = d.tcb.cc.cwnd
    d.advance(5.0)  # idle for far more than an RTO
    d.send(100)
    d.take()
    return before, d.tcb.cc.cwnd


def test_slow_start_after_idle_knob():
    """tcp_slow_start_after_idle=1 (Linux's default): cwnd restarts after an idle RTO
    (tcp_cwnd_restart()); 0 keeps it."""
    before, after = _idle_restart_cwnd()
    assert after < before
    before, after = _idle_restart_cwnd("tcp_slow_start_after_idle=0")
    assert after == before


def test_mem_triples():
    assert Config().tcp_rmem == (4096, 262144, 6291456)
    c = apply_settings(Config(), ["net.ipv4.tcp_rmem=4096 87380 6291456",
                                  "tcp_wmem=8192", "net.core.wmem_max=1000000"])
    assert c.tcp_rmem == (4096, 87380, 6291456)
    assert c.tcp_wmem == (4096, 8192, 4194304)  # one integer: the default (as before)
    assert c.wmem_max == 1000000
    for bad in ("tcp_rmem=1 2", "tcp_rmem=9000 8000 10000", "tcp_wmem=100"):
        with pytest.raises(ConfigError):
            apply_settings(Config(), [bad])
    d = Drill("tcp_rmem=4096 16384 65536")
    d.established_passive()
    assert getsockopt(d.tcb, SOL, S.SO_RCVBUF) == 16384


def test_msg_more_tail_goes_with_the_next_ack_under_nagle_rules():
    """MSG_MORE corks one push only: with data in flight, the ACK's push
    (tcp_data_snd_check()) sends the held tail by the socket's Nagle setting."""
    d = Drill()
    d.established_passive()
    opt(d, TCP, S.TCP_NODELAY, 1)
    d.call(d.tcb.send, b"a" * 1548, d.w.now, True)
    d.expect(". 1:1449(1448) ack 1")  # the full segment goes; 100 bytes wait
    d.advance(0.05)
    d.expect_nothing()
    d.inject(". 1:1(0) ack 1449 win 257")
    d.expect("P. 1449:1549(100) ack 1")


def test_user_timeout_keeps_the_syn_retry_count():
    """tcp_write_timeout(): in SYN-SENT the tcp_syn_retries count still ends the attempt
    (TCP_USER_TIMEOUT may end it sooner, never later): with syn_retries 2 and a 600 s
    user timeout, connect() fails ETIMEDOUT after the third SYN's timeout (7 s)."""
    d = Drill("tcp_syn_retries=2")
    d.connect()
    d.take()
    opt(d, TCP, S.TCP_USER_TIMEOUT, 600_000)
    _unanswered(d, 8.0)
    assert d.state == State.CLOSED
    assert closed_with(d) == [errno.ETIMEDOUT]
    assert d.stats["TcpAttemptFails"] == 1


def test_tcp_info_after_the_tcb_was_released():
    """getsockopt(TCP_INFO) on a socket whose connection is gone and whose TCB was
    released (Tcb.release(), as the asyncio transport does after connection_lost):
    Linux answers state CLOSE with empty queues; it must not raise."""
    from ustack.tcp.info import unpack_tcp_info

    d = Drill()
    d.established_passive()
    d.send(3000)
    d.take()
    d.inject("R. 1:1(0) ack 1")
    assert d.state == State.CLOSED
    d.tcb.release()
    info = unpack_tcp_info(getsockopt(d.tcb, TCP, S.TCP_INFO, 0, d.w.now))
    assert info.state == 7 and info.sacked == info.lost == info.retrans == 0  # TCP_CLOSE


def test_a_request_checks_and_acks_with_the_listeners_so_rcvbuf_window():
    """A request of a listener with SO_RCVBUF 4096 offered win 8192, scale 0: a segment
    beyond that window is out of window (tcp_check_req() -> tcp_in_window()), answered
    with an ACK announcing the same window (tcp_v4_reqsk_send_ack(): rsk_rcv_wnd >>
    rcv_wscale); the request stays."""
    d = Drill()
    lst = d.listen(80)
    listener_setsockopt(lst, d.ctx, [(SOL, S.SO_RCVBUF, 4096)])
    d.script("""
        +0 < S 0:0(0) win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>
        +0 > S. 0:0(0) ack 1 win 8192 <mss 1460,sackOK,TS val * ecr 100,nop,wscale 0>
        +0.01 < . 9001:9101(100) ack 1 win 1000
        +0 > . 1:1(0) ack 1 win 8192
    """)
    assert d.key in d.table.reqs and d.key not in d.table.est
