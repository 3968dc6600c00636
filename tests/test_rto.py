"""The RTO estimator (RFC 6298 with Linux's floor, LS 120-121) against a reference model,
over arbitrary sample sequences (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp.rto import RTO_INITIAL, RTO_MAX, RtoEstimator

samples = st.lists(st.floats(min_value=0.0, max_value=100.0, allow_nan=False), max_size=60)
floors = st.sampled_from([0.001, 0.01, 0.2, 1.0])


def model(rs: list[float], rto_min: float) -> tuple[float | None, float, float]:
    """RFC 6298 2.2-2.3 literally, with Linux's RTO = SRTT + max(4 RTTVAR, floor), then
    clamped to [floor, 120 s] (2.4-2.5 with Linux's constants)."""
    srtt: float | None = None
    rttvar = 0.0
    rto = 1.0  # 2.1
    for r in rs:
        if srtt is None:
            srtt, rttvar = r, r / 2
        else:
            rttvar = (1 - 1 / 4) * rttvar + 1 / 4 * abs(srtt - r)
            srtt = (1 - 1 / 8) * srtt + 1 / 8 * r
        rto = min(max(srtt + max(4 * rttvar, rto_min), rto_min), 120.0)
    return srtt, rttvar, rto


@settings(max_examples=300)
@given(samples, floors)
def test_estimator_matches_the_rfc_6298_model(rs, rto_min):
    est = RtoEstimator(rto_min)
    for r in rs:
        est.sample(r)
        assert rto_min <= est.rto <= RTO_MAX
    srtt, rttvar, rto = model(rs, rto_min)
    if srtt is None:
        assert est.srtt is None and est.rto == RTO_INITIAL
    else:
        assert est.srtt == pytest.approx(srtt)
        assert est.rttvar == pytest.approx(rttvar)
        assert est.rto == pytest.approx(rto)


@given(samples, floors, st.integers(min_value=0, max_value=20))
def test_backoff_doubles_up_to_the_ceiling_and_resets(rs, rto_min, n):
    est = RtoEstimator(rto_min)
    for r in rs:
        est.sample(r)
    base = est.current()
    assert base == est.rto
    prev = base
    for _ in range(n):
        est.back_off()
        cur = est.current()
        # RFC 6298 5.5: doubled each time; never above the 120 s maximum (2.5).
        assert cur == pytest.approx(min(prev * 2, RTO_MAX))
        prev = cur
    est.reset_backoff()
    assert est.current() == base


def test_first_sample_and_initial_value():
    est = RtoEstimator(0.2)
    assert est.current() == 1.0  # RFC 6298 2.1
    est.sample(0.1)
    assert (est.srtt, est.rttvar) == (0.1, 0.05)  # 2.2
    assert est.rto == pytest.approx(0.1 + 0.2)  # SRTT + max(4 * RTTVAR, floor) = 0.1 + 0.2
    est.sample(-1.0)  # a bogus (negative) sample changes nothing
    assert est.srtt == 0.1


def test_a_long_rtt_is_capped_at_120_seconds():
    est = RtoEstimator(0.2)
    est.sample(100.0)
    assert est.rto == RTO_MAX
    est.back_off()
    assert est.current() == RTO_MAX
