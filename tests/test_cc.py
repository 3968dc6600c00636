"""Congestion controllers on their own, on synthetic ACK streams, with no TCB (as
aioquic tests its controllers). Figures follow RFC 5681 and RFC 6582."""

from __future__ import annotations

import pytest

from ustack.config import CONGESTION_CONTROLS, Config, ConfigError, apply_settings
from ustack.tcp import cc
from ustack.tcp.cc import IW_SEGMENTS, Cubic, Reno
from ustack.tcp.cc.base import INFINITE_SSTHRESH

MSS = 1000


def test_registry_matches_the_knob():
    assert cc.available() == CONGESTION_CONTROLS
    assert isinstance(cc.create("reno", MSS), Reno)
    assert isinstance(cc.create("cubic", MSS), Cubic)
    with pytest.raises(ValueError, match="unknown congestion control 'vegas'"):
        cc.create("vegas", MSS)
    assert Config().tcp_congestion_control == "cubic"  # Linux's default
    assert apply_settings(Config(), ["tcp_congestion_control=reno"]).tcp_congestion_control == "reno"
    with pytest.raises(ConfigError, match="must be one of reno, cubic"):
        apply_settings(Config(), ["net.ipv4.tcp_congestion_control=vegas"])


def test_initial_window_follows_the_mss():
    r = Reno(1460)
    assert (r.cwnd, r.ssthresh) == (IW_SEGMENTS * 1460, INFINITE_SSTHRESH)
    r.set_mss(MSS)
    assert r.cwnd == IW_SEGMENTS * MSS
    r.on_handshake_loss()
    assert r.cwnd == MSS  # RFC 5681 3.1: one segment after a lost SYN


def test_slow_start_grows_by_all_acked_bytes_up_to_ssthresh():
    """Linux tcp_slow_start(): an ACK adds all it covers (no RFC 3465 L cap), so a
    stretch ACK for a super-segment counts in full; never beyond ssthresh."""
    r = Reno(MSS)
    flight = r.cwnd
    r.on_ack(MSS, flight, 0.0)
    assert r.cwnd == 11 * MSS
    r.on_ack(3 * MSS, flight, 0.0)  # a stretch ACK adds what it covers
    assert r.cwnd == 14 * MSS
    r.on_ack(500, flight, 0.0)
    assert r.cwnd == 14 * MSS + 500
    r.ssthresh = 15 * MSS
    r.on_ack(10 * MSS, flight, 0.0)
    assert r.cwnd == 15 * MSS


def test_slow_start_needs_a_used_window():
    """RFC 7661 / Linux tcp_is_cwnd_limited(): in slow start, only if cwnd < 2*flight."""
    r = Reno(MSS)
    r.on_ack(MSS, 5 * MSS, 0.0)  # cwnd 10 MSS = 2 * flight: not limited
    assert r.cwnd == 10 * MSS
    r.on_ack(MSS, 5 * MSS + 1, 0.0)
    assert r.cwnd == 11 * MSS


def test_congestion_avoidance_adds_about_one_mss_per_window():
    """RFC 5681 equation 3: cwnd += SMSS*SMSS/cwnd per ACK, when the window is full."""
    r = Reno(MSS)
    r.ssthresh = r.cwnd = 10 * MSS
    start = r.cwnd
    for _ in range(10):  # one window of ACKs
        r.on_ack(MSS, r.cwnd, 0.0)
    assert start + 0.95 * MSS <= r.cwnd < start + MSS  # the increments shrink as cwnd grows
    before = r.cwnd
    r.on_ack(MSS, r.cwnd - 2 * MSS, 0.0)  # not cwnd-limited: no growth
    assert r.cwnd == before


def test_loss_halves_flight_with_a_floor_of_two_segments():
    r = Reno(MSS)
    r.cwnd = 20 * MSS
    r.on_congestion_event(18 * MSS, 0.0)
    assert (r.ssthresh, r.cwnd) == (9 * MSS, 9 * MSS)  # RFC 5681 equation 4
    r.on_congestion_event(MSS, 0.0)
    assert r.ssthresh == 2 * MSS


def test_reno_style_inflation_and_deflation():
    """RFC 5681 3.2 steps 3-4, RFC 6582 3.2 steps 3-4."""
    r = Reno(MSS)
    r.on_congestion_event(10 * MSS, 0.0)
    r.inflate(3 * MSS)
    assert r.cwnd == r.ssthresh + 3 * MSS
    r.inflate(MSS)
    assert r.cwnd == r.ssthresh + 4 * MSS
    r.deflate(2 * MSS)  # partial ACK of 2 SMSS: minus 2, plus 1
    assert r.cwnd == r.ssthresh + 3 * MSS
    r.deflate(100)  # less than an SMSS: no add-back
    assert r.cwnd == r.ssthresh + 3 * MSS - 100
    r.on_exit_recovery(bound=3 * MSS)  # min(ssthresh, FlightSize + SMSS)
    assert r.cwnd == 3 * MSS
    r.on_exit_recovery()
    assert r.cwnd == r.ssthresh


def test_rto_takes_ssthresh_once_per_episode():
    r = Reno(MSS)
    r.cwnd = 30 * MSS
    r.on_rto(20 * MSS, first=True)
    assert (r.ssthresh, r.cwnd) == (10 * MSS, MSS)
    r.on_rto(20 * MSS, first=False)  # the retransmission timed out too
    assert (r.ssthresh, r.cwnd) == (10 * MSS, MSS)


def test_idle_restart_keeps_three_quarters_in_ssthresh():
    r = Reno(MSS)
    r.ssthresh = 8 * MSS
    r.cwnd = 40 * MSS
    r.on_idle_restart()
    assert (r.cwnd, r.ssthresh) == (IW_SEGMENTS * MSS, 30 * MSS)
    r.cwnd = 5 * MSS
    r.on_idle_restart()  # below the initial window: unchanged
    assert r.cwnd == 5 * MSS
