"""recovery.py on its own, against a fake sender: the state of a loss episode that
the wire only shows indirectly (RFC 5681 3.2, RFC 6582, RFC 8985 7). The SACK side
(RACK, PRR, undo) is drilled on the wire in test_rack.py; PRR's arithmetic alone in
test_prr.py."""

from __future__ import annotations

from ustack.stats import Stats
from ustack.tcp.cc import Reno
from ustack.tcp.recovery import Recovery
from ustack.tcp.rto import RtoEstimator
from ustack.tcp.sendq import SendQueue
from ustack.tcp.timers import Timer, Timers

MSS = 1000


class FakeSender:
    """A connection with 10 segments in flight from sequence number 0."""

    def __init__(self, sack: bool) -> None:
        self.snd_una = 0
        self.snd_nxt = self.snd_max = 10 * MSS
        self.snd_wnd = self.max_snd_wnd = 100 * MSS
        self.sendq = SendQueue()
        self.sendq.start_at(0)
        self.sendq.append(b"x" * 10 * MSS)
        self.sendq.on_transmit(0, 10 * MSS, 0.9)
        self.mss = MSS
        self.sack_ok = sack
        self.retries = 0
        self.resent: list[tuple[int, int]] = []
        self.new: list[int] = []
        self.state_open = True

    def send_mss(self) -> int:
        return MSS

    def unsent(self) -> int:
        return 0

    @property
    def in_flight(self) -> int:
        return self.snd_nxt - self.snd_una

    def open_for_probe(self) -> bool:
        return self.state_open

    def retransmit(self, seq: int, limit: int, now: float) -> int:
        n = min(limit, MSS)
        self.resent.append((seq, n))
        return n

    def retransmit_head(self, now: float) -> int:
        return self.retransmit(self.snd_una, MSS, now)

    def send_new(self, n: int, now: float) -> None:
        self.new.append(n)


def make(sack: bool) -> tuple[Recovery, FakeSender, Reno, Stats, Timers]:
    conn = FakeSender(sack)
    reno = Reno(MSS)
    stats = Stats()
    timers = Timers()
    rtt = RtoEstimator(0.2)
    return Recovery(conn, reno, timers, rtt, stats), conn, reno, stats, timers


def test_third_duplicate_ack_starts_newreno_recovery():
    rec, conn, reno, stats, _ = make(sack=False)
    rec.on_duplicate_ack(1.0)
    rec.on_duplicate_ack(1.0)
    assert not rec.in_recovery and conn.resent == []
    assert rec.limited_transmit() == 2 * MSS  # RFC 3042
    rec.on_duplicate_ack(1.0)
    assert rec.in_recovery and rec.dupacks == 3
    assert conn.resent == [(0, MSS)]  # the first unacknowledged segment
    assert reno.ssthresh == 5 * MSS and reno.cwnd == reno.ssthresh + 3 * MSS
    assert rec.recover == 10 * MSS
    assert stats["TcpExtTCPRenoRecovery"] == 1 and stats["TcpExtTCPDupAcks"] == 3
    rec.on_duplicate_ack(1.0)
    assert reno.cwnd == reno.ssthresh + 4 * MSS  # inflation


def test_newreno_partial_then_full_ack():
    rec, conn, reno, _, _ = make(sack=False)
    for _ in range(3):
        rec.on_duplicate_ack(1.0)
    conn.snd_una = 2 * MSS
    rec.on_ack(2 * MSS, 2 * MSS, 10 * MSS, 0, 1.1)  # partial: below recover
    assert rec.in_recovery and conn.resent[-1] == (2 * MSS, MSS)
    conn.snd_una = 10 * MSS
    rec.on_ack(8 * MSS, 10 * MSS, 8 * MSS, 0, 1.2)  # full ACK
    assert not rec.in_recovery and rec.recover is None
    assert reno.cwnd == min(reno.ssthresh, MSS + MSS)  # RFC 6582 3.2 step 3


def test_duplicate_acks_below_recover_start_nothing():
    """RFC 6582 3.2 step 1: after an RTO, duplicate ACKs for data sent before it."""
    rec, conn, _, _, _ = make(sack=False)
    conn.retries = 1
    rec.on_rto(2.0)
    for _ in range(5):
        rec.on_duplicate_ack(2.0)
    assert not rec.in_recovery and conn.resent == []


def test_probe_timer_is_armed_only_when_a_probe_may_help():
    rec, conn, _, stats, timers = make(sack=True)
    timers.set(Timer.RTO, 1.5)
    rec.arm_probe(1.0)
    assert timers.get(Timer.LOSS) is None  # no RTT sample: PTO 1 s, after the RTO
    rec.rtt.sample(0.010)
    timers.set(Timer.RTO, 1.5)
    rec.arm_probe(1.0)
    assert timers.get(Timer.LOSS) == 1.0 + 2 * 0.010 + 0.002  # RFC 8985 7.2
    rec.on_probe_timeout(1.022)
    assert stats["TcpExtTCPLossProbes"] == 1
    assert conn.resent == [(9 * MSS, MSS)]  # nothing new to send: the last segment
    assert rec.tlp_high == 10 * MSS
    rec.arm_probe(1.1)
    assert timers.get(Timer.LOSS) is None  # one probe at a time
