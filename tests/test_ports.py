"""Ephemeral ports, TIME_WAIT reuse by connect() and ISNs (LS 70-83, 140-142;
RFC 6056, RFC 6528, RFC 7323 5.8), against the core on the fake clock."""

from __future__ import annotations

import errno as E
import statistics

import pytest
from drill import LOCAL, PEER_ISN, REMOTE, Drill

from ustack.table import make_key
from ustack.tcp.context import Context
from ustack.tcp.state import State
from ustack.wire.ip import ip_to_bytes
from ustack.wire.tcp import SYN

MASK = 0xFFFFFFFF
PEER_TS = 5000


def connect(d: Drill, rport: int = 80, remote: str = REMOTE, local: str = LOCAL,
            lport: int | None = None):
    return d.table.connect(local, remote, rport, d.now, lport=lport)


def syns(d: Drill) -> list:
    return [s for _, _, s in d.table.transmit(d.now) if s.flags & SYN]


def client_time_wait(d: Drill):
    """connect(), handshake, our close(), the peer's FIN: a client-side TIME_WAIT."""
    d.iss = None
    tcb = d.connect()
    d.expect("S 0:0(0)")
    d.inject("S. 0:0(0) ack 1 win 65535")
    d.expect(". 1:1(0) ack 1")
    d.close()
    d.expect("F. 1:1(0) ack 1")
    d.inject("F. 1:1(0) ack 2")
    d.expect(". 2:2(0) ack 2")
    assert d.state == State.TIME_WAIT
    return tcb


def no_port(d: Drill, **kw) -> None:
    with pytest.raises(OSError) as exc:
        connect(d, **kw) if kw else d.connect()
    assert exc.value.errno == E.EADDRNOTAVAIL
    assert exc.value.strerror == "Cannot assign requested address"


# ---------------------------------------------------------------------- the range


def test_default_range_and_even_ports_first():
    """LS 80-81: ports from [32768, 60999]; Linux tries the low parity (even) first."""
    d = Drill()
    ports = [connect(d).local[1] for _ in range(6)]
    assert all(32768 <= p <= 60999 and p % 2 == 0 for p in ports)
    assert len(set(ports)) == 6


def test_successive_connects_do_not_walk_one_port_at_a_time():
    """LS 81: after a success the perturbation slot moves by max(i, rand(0..7)*2) + 2,
    so the next start is not predictable as 'previous + 1'."""
    d = Drill()
    ports = [connect(d).local[1] for _ in range(20)]
    steps = {(b - a) % 28232 for a, b in zip(ports, ports[1:], strict=False)}
    assert len(steps) > 1 and all(s % 2 == 0 and s >= 2 for s in steps)


def test_different_destinations_start_at_different_offsets():
    """RFC 6056 3.3.4: the start offset is a keyed hash of the destination."""
    d = Drill()
    firsts = {connect(d, rport=1000 + i).local[1] for i in range(20)}
    assert len(firsts) > 10


def test_one_port_range_is_valid_and_serves_many_destinations():
    """LS 80, 82: "40000 40000" is a valid range; its one port serves any number of
    connections as long as the four-tuples differ; the same destination again: none."""
    d = Drill("ip_local_port_range=40000 40000")
    assert connect(d, rport=80).local[1] == 40000
    assert connect(d, rport=81).local[1] == 40000
    no_port(d, rport=80)


def test_exhaustion_with_ten_ports_raises_eaddrnotavail_and_sends_nothing():
    """LS 83: when every port of the range is taken for this destination, connect()
    fails at once with EADDRNOTAVAIL; no SYN leaves, nothing is counted."""
    d = Drill("ip_local_port_range=40000 40009")
    ports = set()
    for _ in range(10):
        ports.add(connect(d).local[1])
        assert len(syns(d)) == 1
    assert ports == set(range(40000, 40010))
    no_port(d, rport=80)
    assert syns(d) == [] and d.stats["TcpActiveOpens"] == 10


def test_odd_sized_range_uses_the_parity_scan_like_linux():
    """Linux __inet_hash_connect() rounds an odd-sized range down to an even number of
    candidates; with three ports two can be handed out to one destination."""
    d = Drill("ip_local_port_range=40000 40002")
    got = {connect(d).local[1] for _ in range(2)}
    assert got <= {40000, 40001, 40002} and len(got) == 2
    no_port(d, rport=80)


def test_listening_ports_are_skipped():
    """LS 82: a port bound by a listener is not an ephemeral candidate."""
    d = Drill("ip_local_port_range=40000 40001")
    d.table.listen(LOCAL, 40000)
    assert connect(d).local[1] == 40001
    no_port(d, rport=80)


def test_explicit_port_conflicts_are_eaddrnotavail():
    """Linux __inet_check_established(): an explicit local port whose four-tuple is in
    use fails with EADDRNOTAVAIL."""
    d = Drill()
    connect(d, lport=50000)
    no_port(d, rport=80, lport=50000)


# ---------------------------------------------------------------------- tcp_tw_reuse


def test_tw_reuse_0_never_takes_a_time_wait_port():
    d = Drill("ip_local_port_range=40000 40000", "tcp_tw_reuse=0")
    client_time_wait(d)
    d.advance(30)
    no_port(d)
    assert d.stats["TcpExtTWRecycled"] == 0


def test_tw_reuse_1_after_the_delay_continues_the_old_connection():
    """LS 70-72: with tcp_tw_reuse=1 a TIME_WAIT four-tuple is taken over once
    tcp_tw_reuse_delay (1 s) has passed since it entered TIME_WAIT; the new ISN is the
    old SND.NXT + 65537, the SYN echoes the inherited TS.Recent, the TSval continues
    the old clock; TcpExtTWRecycled counts it."""
    d = Drill("ip_local_port_range=40000 40000", "tcp_tw_reuse=1")
    client_time_wait(d)
    old_iss, old_tsval = d.iss, d.last_tsval
    d.advance(0.9)
    no_port(d)
    d.advance(0.2)
    d.iss = None
    tcb = d.connect()
    syn = d.expect("S 0:0(0)")
    assert tcb.local[1] == 40000 and syn.seq == (old_iss + 2 + 65537) & MASK
    assert syn.ts == ((old_tsval + 1100) & MASK, PEER_TS)
    assert d.stats["TcpExtTWRecycled"] == 1 and len(d.table.tw) == 0
    d.peer_isn = PEER_ISN + 1_000_000
    d.inject("S. 0:0(0) ack 1 win 65535")
    d.expect(". 1:1(0) ack 1")
    assert tcb.state == State.ESTABLISHED


def test_tw_reuse_delay_knob():
    d = Drill("ip_local_port_range=40000 40000", "tcp_tw_reuse=1", "tcp_tw_reuse_delay=100")
    client_time_wait(d)
    d.advance(0.05)
    no_port(d)
    d.advance(0.06)
    assert d.connect().local[1] == 40000


def test_tw_reuse_2_is_loopback_only():
    """LS 70(c): the default 2 allows reuse only when an address is loopback."""
    d = Drill("ip_local_port_range=40000 40000")  # tcp_tw_reuse=2 by default
    client_time_wait(d)
    d.advance(5)
    no_port(d)

    for local, remote in (("127.0.0.1", "127.0.0.2"), ("10.77.0.2", "127.0.0.1")):
        d = Drill("ip_local_port_range=40000 40000")
        key = make_key(ip_to_bytes(remote), ip_to_bytes(local), 80, 40000)
        d.table.tw.insert(key, snd_nxt=1000, rcv_nxt=2000, ts_recent=77,
                          ts_recent_stamp=d.now, ts_offset=0, wnd=100, wscale=0,
                          has_ts=True, now=d.now)
        no_port(d, remote=remote, local=local)  # within the delay
        d.advance(1.1)
        tcb = connect(d, remote=remote, local=local)
        assert tcb.local[1] == 40000 and tcb.iss == 1000 + 65537


def test_reused_isn_is_never_zero():
    """LS 72, Linux tcp_twsk_unique(): write_seq = tw_snd_nxt + 65535 + 2, and
    `if (!seq) seq = 1`."""
    d = Drill("ip_local_port_range=40000 40000", "tcp_tw_reuse=1")
    key = make_key(ip_to_bytes(REMOTE), ip_to_bytes(LOCAL), 80, 40000)
    d.table.tw.insert(key, snd_nxt=2**32 - 65537, rcv_nxt=2000, ts_recent=77,
                      ts_recent_stamp=d.now, ts_offset=0, wnd=100, wscale=0, has_ts=True,
                      now=d.now)
    d.advance(1.1)
    tcb = connect(d)
    assert tcb.local[1] == 40000 and tcb.iss == 1
    assert syns(d)[0].seq == 1 and d.stats["TcpExtTWRecycled"] == 1


def test_no_reuse_without_timestamps():
    """LS 70(b): only a TIME_WAIT that used timestamps can be reused (PAWS protects the
    new incarnation from the old one's duplicates, RFC 7323 5.8)."""
    d = Drill("ip_local_port_range=40000 40000", "tcp_tw_reuse=1", ts=False)
    client_time_wait(d)
    d.advance(5)
    no_port(d)
    no_port(d, rport=d.peer_port, lport=40000)  # not even an explicit bind (LS 73)


def test_explicit_port_takes_over_a_time_wait_with_timestamps_regardless():
    """LS 73: bind(port) + connect() takes over a TIME_WAIT with timestamps whatever
    tcp_tw_reuse says and without the delay."""
    d = Drill("tcp_tw_reuse=0")
    tcb = client_time_wait(d)
    lport = tcb.local[1]
    tcb2 = connect(d, rport=d.peer_port, lport=lport)
    assert tcb2.iss == (d.iss + 2 + 65537) & MASK
    assert d.stats["TcpExtTWRecycled"] == 1


# ---------------------------------------------------------------------- ISNs (RFC 6528)


def test_isn_of_one_tuple_grows_with_time():
    """RFC 6528 3 / LS 140: ISN = M + F(tuple, secret) with M a 4 us clock: two
    connects on one tuple one second apart differ by 250000."""
    d = Drill()
    first = connect(d, lport=50000)
    iss1 = first.iss
    d.table.call(first, d.now, first.close, d.now)  # SYN_SENT: gone, nothing sent (LS 36)
    assert d.state == State.CLOSED
    d.advance(1.0)
    iss2 = connect(d, lport=50000).iss
    assert (iss2 - iss1) & MASK == 250_000


def test_isns_of_different_tuples_are_uncorrelated():
    """RFC 6528: F is a keyed hash, so ISNs of neighbouring tuples at one instant look
    random (spread over the whole space, no trend with the port), and another stack's
    secret gives other ISNs for the same tuple."""
    d = Drill()
    ports = list(range(50000, 50200))
    isns = [connect(d, lport=p).iss for p in ports]
    assert len(set(isns)) == len(isns)
    assert statistics.pstdev(isns) > 0.8e9  # uniform on 2^32: ~1.24e9
    assert abs(statistics.correlation(ports, isns)) < 0.3
    diffs = {(b - a) & MASK for a, b in zip(isns, isns[1:], strict=False)}
    assert len(diffs) == len(isns) - 1
    other = Drill()
    other.ctx.secret = b"another-secret!!"
    assert connect(other, lport=50000).iss != isns[0]


def test_each_stack_draws_its_own_secret():
    """RFC 6528 3 ("the secret key ... SHOULD be ... random") and Linux secure_seq.c
    (net_secret and ts_secret drawn at boot): two stacks started without a given secret
    give the same four-tuple different ISNs and different TS offsets, so neither can be
    learned from another host running ustack."""
    key = make_key(ip_to_bytes(REMOTE), ip_to_bytes(LOCAL), 40000, 80)
    a, b = Context(), Context()
    assert a.secret != b.secret and len(a.secret) >= 16
    assert a.isn(key, 100.0) != b.isn(key, 100.0)
    assert a.ts_offset(key) != b.ts_offset(key)
