"""CUBIC (RFC 9438, Linux tcp_cubic.c) on synthetic ACK streams, with no TCB: the
window against RFC 9438's formulas (W_cubic, K, beta_cubic, W_est, fast convergence)
and HyStart's two exits. Windows are in segments of MSS bytes; the controller's own
arithmetic is Linux's integer version, so the figures are compared with tolerances."""

from __future__ import annotations

import pytest
from drill import Drill

from ustack.config import Config, apply_settings
from ustack.stats import Stats
from ustack.tcp import cc
from ustack.tcp.cc import Cubic
from ustack.tcp.cc.base import INFINITE_SSTHRESH
from ustack.tcp.cc.cubic import CubicParams, cubic_root

MSS = 1000
C = 0.4  # RFC 9438 4.2
BETA = 0.7  # RFC 9438 4.6 (Linux 717/1024)
ALPHA = 3 * (1 - BETA) / (1 + BETA)  # RFC 9438 4.3


def w_cubic(t: float, w_max: float, k: float) -> float:
    return C * (t - k) ** 3 + w_max  # RFC 9438 eq. 1


def after_loss(w_max: int, rtt: float, *settings: str) -> tuple[Cubic, Stats]:
    """A controller in congestion avoidance that just lost at cwnd = w_max, its minimum
    RTT known (delay_min comes from samples before the loss)."""
    stats = Stats()
    c = cc.create("cubic", MSS, apply_settings(Config(), list(settings)), stats)
    assert isinstance(c, Cubic)
    c.on_rtt(rtt, 0.0, 0, 0)
    c.cwnd = w_max * MSS
    c.on_congestion_event(c.cwnd, 0.0)
    return c, stats


def run(c: Cubic, rtt: float, t0: float, duration: float) -> list[tuple[float, float]]:
    """A cwnd-limited flow: each RTT the whole window is ACKed, one segment per ACK,
    evenly spread. Returns (time since t0, cwnd in segments) at each round's end."""
    out = []
    now = t0
    while now < t0 + duration - 1e-9:
        w = c.cwnd // MSS
        for i in range(w):
            c.on_ack(MSS, c.cwnd, now + rtt * i / w)
        now += rtt
        out.append((now - t0, c.cwnd / MSS))
    return out


def test_registered_and_the_default():
    assert "cubic" in cc.available()
    assert Config().tcp_congestion_control == "cubic"
    c = cc.create(Config().tcp_congestion_control, MSS)
    assert isinstance(c, Cubic) and c.ssthresh == INFINITE_SSTHRESH  # initial_ssthresh=0
    # the module parameters as knobs, also under their /sys/module name
    cfg = apply_settings(Config(), ["tcp_cubic.hystart=0", "cubic_beta=512"])
    assert (cfg.cubic_hystart, cfg.cubic_beta) == (0, 512)
    assert CubicParams.from_config(Config()) == CubicParams()  # Linux's defaults twice
    assert CubicParams.from_config(cfg) == CubicParams(hystart=0, beta=512)


def test_cubic_root_is_exact():
    for a in (0, 1, 7, 8, 26, 27, 10**9, 10**9 + 1, 3 ** 39, 3 ** 39 - 1):
        r = cubic_root(a)
        assert r ** 3 <= a < (r + 1) ** 3


def test_multiplicative_decrease_is_beta_0_7():
    """RFC 9438 4.6: ssthresh = cwnd * beta_cubic; Linux 717/1024, at least 2."""
    c, _ = after_loss(100, 0.1)
    assert c.ssthresh == c.cwnd == 100 * 717 // 1024 * MSS == 70 * MSS
    assert c.last_max_cwnd == 100  # W_max
    c.cwnd = 2 * MSS
    assert c.ssthresh_after_loss(2 * MSS) == 2 * MSS


def test_fast_convergence_lowers_w_max():
    """RFC 9438 4.7: a loss below the last W_max sets W_max = cwnd * (1 + beta) / 2."""
    c, _ = after_loss(100, 0.1)
    c.cwnd = 80 * MSS
    c.on_congestion_event(c.cwnd, 1.0)
    assert c.last_max_cwnd == 80 * (1024 + 717) // 2048 == 68
    assert c.cwnd == 80 * 717 // 1024 * MSS
    off, _ = after_loss(100, 0.1, "cubic_fast_convergence=0")
    off.cwnd = 80 * MSS
    off.on_congestion_event(off.cwnd, 1.0)
    assert off.last_max_cwnd == 80


def test_k_is_the_time_back_to_w_max():
    """RFC 9438 eq. 2: K = cbrt((W_max - cwnd_epoch) / C), computed at the epoch's first
    ACK; the epoch starts then (Linux bictcp_update())."""
    c, _ = after_loss(100, 0.1)
    c.on_ack(MSS, c.cwnd, 5.0)
    assert c.epoch_start == 5.0 and c.origin_point == 100
    k = ((100 - 70) / C) ** (1 / 3)
    assert c.K / 1024 == pytest.approx(k, rel=0.005)


@pytest.mark.parametrize("w_max,rtt", [(100, 0.1), (400, 0.1), (1000, 0.2)])
def test_window_follows_w_cubic(w_max: int, rtt: float):
    """In the CUBIC region (long RTT: W_est stays below) cwnd tracks W_cubic(t): concave
    up to W_max at K, convex beyond (RFC 9438 4.2). cwnd chases W_cubic(t + RTT) one
    segment per cnt ACKs, so it reaches it about an RTT later: cwnd(t) ~ W_cubic(t)."""
    c, _ = after_loss(w_max, rtt, "cubic_tcp_friendliness=0")
    k = ((w_max - w_max * 717 // 1024) / C) ** (1 / 3)
    trace = run(c, rtt, 10.0, 1.6 * k)
    for t, w in trace[2:]:
        want = w_cubic(t, w_max, k)
        assert abs(w - want) <= max(3, 0.03 * w_max), (t, w, want)
    # the plateau: near W_max around K, the window grows least per RTT there
    steps = [b[1] - a[1] for a, b in zip(trace, trace[1:], strict=False)]
    at_k = min(range(len(steps)), key=lambda i: abs(trace[i][0] - k))
    assert steps[at_k] <= min(steps[1], steps[-1])
    assert trace[-1][1] > w_max  # convex region: probing beyond W_max


def test_reno_friendly_region_follows_w_est():
    """RFC 9438 4.3: with a short RTT Reno would grow faster than the cubic curve;
    cwnd then follows W_est = W_max*beta + alpha*t/RTT (Linux: one segment of tcp_cwnd
    per (cwnd * 15) >> 3 acked segments)."""
    rtt, w_max = 0.005, 100
    c, _ = after_loss(w_max, rtt)
    k = ((w_max - 70) / C) ** (1 / 3)
    trace = run(c, rtt, 10.0, 1.0)
    for t, w in trace[20:]:
        w_est = w_max * 717 / 1024 + ALPHA * t / rtt
        assert w >= w_cubic(t, w_max, k) + 5  # well above the curve
        assert abs(w - w_est) <= max(3, 0.05 * w_est), (t, w, w_est)
    off, _ = after_loss(w_max, rtt, "cubic_tcp_friendliness=0")
    t, w = run(off, rtt, 10.0, 1.0)[-1]
    assert abs(w - w_cubic(t, w_max, k)) <= 3  # without it: the curve


def test_growth_at_most_one_and_a_half_per_rtt():
    """Linux's cnt >= 2: one segment per two ACKed, even far below the curve."""
    c, _ = after_loss(1000, 0.1)
    c.cwnd = c.ssthresh = 20 * MSS  # far below W_max, in congestion avoidance
    trace = run(c, 0.1, 10.0, 1.0)
    for (_, a), (_, b) in zip([(0, 20.0)] + trace[:-1], trace, strict=True):
        assert b <= 1.5 * a + 1


def test_rto_forgets_w_max_and_slow_starts():
    c, _ = after_loss(100, 0.1)
    run(c, 0.1, 10.0, 1.0)
    c.on_rto(c.cwnd, first=True)
    assert c.cwnd == MSS and c.last_max_cwnd == 0 and c.delay_min == 0
    assert c.epoch_start is None and c.in_slow_start


def test_idle_time_does_not_advance_the_curve():
    """cubictcp_cwnd_event(CA_EVENT_TX_START): the epoch moves by the idle time."""
    c, _ = after_loss(100, 0.1)
    c.on_ack(MSS, c.cwnd, 5.0)
    c.on_tx_start(7.0, 2.0)
    assert c.epoch_start == 7.0
    c.on_tx_start(7.5, 10.0)
    assert c.epoch_start == 7.5  # never beyond now


def slow_start(*settings: str, cwnd: int = 16) -> tuple[Cubic, Stats]:
    stats = Stats()
    c = cc.create("cubic", MSS, apply_settings(Config(), list(settings)), stats)
    c.cwnd = cwnd * MSS
    return c, stats


def feed(c: Cubic, times: list[float], rtts: list[float], una: int, nxt: int) -> None:
    for i, (t, r) in enumerate(zip(times, rtts, strict=True)):
        c.on_rtt(r, t, una + i * MSS, nxt)


def test_hystart_exits_on_delay_increase():
    """Linux hystart_update() HYSTART_DELAY: after 8 samples in a round, a round
    minimum above delay_min + clamp(delay_min/8, 4 ms, 16 ms) ends slow start."""
    c, stats = slow_start("cubic_hystart_detect=2")
    # round 1: 20 ms, ACKs 5 ms apart (no ACK train)
    feed(c, [0.1 + 0.005 * i for i in range(16)], [0.020] * 16, una=1, nxt=16001)
    assert c.delay_min == 20000 and c.in_slow_start
    # round 2 (SND.UNA passed the round's end): 24.5 ms > 20 + 4 ms
    feed(c, [0.3 + 0.005 * i for i in range(9)], [0.0245] * 9, una=16002, nxt=40000)
    assert not c.in_slow_start and c.ssthresh == c.cwnd
    assert stats["TcpExtTCPHystartDelayDetect"] == 1
    assert stats["TcpExtTCPHystartDelayCwnd"] == 16
    assert stats["TcpExtTCPHystartTrainDetect"] == 0


def test_hystart_stays_in_slow_start_below_the_threshold():
    c, stats = slow_start("cubic_hystart_detect=2")
    feed(c, [0.1 + 0.005 * i for i in range(16)], [0.020] * 16, una=1, nxt=16001)
    feed(c, [0.3 + 0.005 * i for i in range(30)], [0.0235] * 30, una=16002, nxt=40000)
    assert c.in_slow_start and stats["TcpExtTCPHystartDelayDetect"] == 0
    # and below hystart_low_window nothing is checked at all
    small, st2 = slow_start("cubic_hystart_detect=2", cwnd=15)
    feed(small, [0.1 + 0.005 * i for i in range(16)], [0.020] * 16, una=1, nxt=16001)
    feed(small, [0.3 + 0.005 * i for i in range(16)], [0.100] * 16, una=16002, nxt=40000)
    assert small.in_slow_start and st2["TcpExtTCPHystartDelayDetect"] == 0


def test_hystart_exits_on_ack_train():
    """HYSTART_ACK_TRAIN: ACKs closer than 2 ms apart, the train (from the round's
    start) longer than (delay_min + ack delay cushion) / 2 ends slow start. delay_min
    is 4 ms, the cushion at most 1 ms: the train must exceed 2.5 ms."""
    c, stats = slow_start("cubic_hystart_detect=1")
    c.on_rtt(0.004, 0.0, 1, 16001)  # delay_min, and the round starts
    times = [0.0 + 0.0002 * i for i in range(1, 30)]
    exit_at = None
    for i, t in enumerate(times):
        c.on_rtt(0.004, t, 1 + i, 16001)
        if exit_at is None and not c.in_slow_start:
            exit_at = t
    assert exit_at is not None and 0.0025 < exit_at <= 0.0028
    assert c.ssthresh == 16 * MSS
    assert stats["TcpExtTCPHystartTrainDetect"] == 1
    assert stats["TcpExtTCPHystartTrainCwnd"] == 16


def test_hystart_ack_train_broken_by_a_gap():
    """ACKs more than hystart_ack_delta_us (2 ms) apart are no train."""
    c, stats = slow_start("cubic_hystart_detect=1")
    c.on_rtt(0.004, 0.0, 1, 16001)
    for i in range(1, 30):
        c.on_rtt(0.004, 0.0025 * i, 1 + i, 16001)
    assert c.in_slow_start and stats["TcpExtTCPHystartTrainDetect"] == 0


def test_hystart_off_and_initial_ssthresh():
    c, stats = slow_start("cubic_hystart=0", "cubic_initial_ssthresh=50")
    assert c.ssthresh == 50 * MSS  # cubictcp_init(): only without HyStart
    feed(c, [0.1 + 0.005 * i for i in range(16)], [0.020] * 16, una=1, nxt=16001)
    feed(c, [0.3 + 0.005 * i for i in range(16)], [0.100] * 16, una=16002, nxt=40000)
    assert c.in_slow_start and sum(stats[k] for k in stats if "Hystart" in k) == 0


def test_slow_start_leftover_feeds_the_cubic_update():
    """cubictcp_cong_avoid(): tcp_slow_start() to ssthresh, the rest to CUBIC."""
    c, _ = slow_start(cwnd=10)
    c.ssthresh = 12 * MSS
    c.on_ack(4 * MSS, 10 * MSS, 1.0)
    assert c.cwnd == 12 * MSS and c.epoch_start == 1.0 and c.cwnd_cnt == 2


# ------------------------------------------------------------------ through a TCB

def tcb_established() -> Drill:
    d = Drill()
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1 win 1000")
    d.accept()
    return d


def test_tcb_feeds_rtt_samples_from_the_send_record():
    """The TCB's call site (Linux's ca_rtt): the age of the newest segment an ACK
    covers, in microseconds; none from an ACK that covers a retransmission."""
    mss = 1448
    d = tcb_established()
    c = d.tcb.cc
    assert isinstance(c, Cubic) and c.delay_min == 0
    d.send(4 * mss)
    assert len(d.take()) == 4
    d.advance(0.001)
    d.inject(f". 1:1(0) ack {1 + 2 * mss}")
    assert c.delay_min == pytest.approx(1000, abs=2)
    d.advance(0.3)  # the rest is lost: the RTO resends the head and forgets delay_min
    d.take()
    assert d.stats["TcpExtTCPTimeouts"] >= 1 and c.delay_min == 0
    d.inject(f". 1:1(0) ack {1 + 4 * mss}")  # covers a retransmission: no sample
    assert c.delay_min == 0
    d.take()


def test_tcb_reports_the_start_of_transmission_after_idle():
    """CA_EVENT_TX_START: new data with nothing in flight moves CUBIC's epoch by the
    time since the last send."""
    mss = 1448
    d = tcb_established()
    c = d.tcb.cc
    d.send(mss)
    d.take()
    d.inject(f". 1:1(0) ack {1 + mss}")
    c.epoch_start = d.w.now  # as if in congestion avoidance since now
    start = c.epoch_start
    d.advance(0.1)
    d.send(mss)
    d.take()
    assert c.epoch_start == pytest.approx(start + 0.1)
