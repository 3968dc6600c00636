"""Sequence arithmetic (ustack/seq.py) against a big-int model of unwrapped sequence space.

The model: a connection's true byte positions are unbounded integers; the wire carries them
modulo 2**32. Two positions less than 2**31 apart compare as their true values do, so each
property draws a true position `x` (well past 2**32, so wraparound is common) and a signed
distance, wraps both, and checks ustack's answer against plain integer comparison.
"""

from hypothesis import given
from hypothesis import strategies as st

from ustack import seq

MOD = 1 << 32
HALF = 1 << 31

# True positions span several wraps; distances stay strictly inside the half-space where
# modular comparison is defined.
positions = st.integers(min_value=0, max_value=(1 << 40)) | st.integers(
    min_value=MOD - 1000, max_value=MOD + 1000)
distances = st.integers(min_value=-(HALF - 1), max_value=HALF - 1) | st.integers(
    min_value=-1000, max_value=1000)
wires = st.integers(min_value=0, max_value=MOD - 1)


def wrap(x: int) -> int:
    return x % MOD


@given(positions, distances)
def test_comparisons_match_unwrapped_ints(x, d):
    a, b = wrap(x), wrap(x + d)
    y = x + d
    assert seq.lt(a, b) == (x < y)
    assert seq.le(a, b) == (x <= y)
    assert seq.gt(a, b) == (x > y)
    assert seq.ge(a, b) == (x >= y)
    assert seq.max_seq(a, b) == wrap(max(x, y))


@given(positions, distances)
def test_diff_is_the_signed_distance(x, d):
    assert seq.diff(wrap(x + d), wrap(x)) == d
    assert seq.diff(wrap(x), wrap(x + d)) == -d


@given(wires, wires)
def test_diff_range_and_consistency_with_add(a, b):
    d = seq.diff(a, b)
    assert -HALF <= d < HALF
    assert seq.add(b, d) == a


@given(positions, st.integers(min_value=-(1 << 40), max_value=1 << 40))
def test_add_wraps(x, n):
    r = seq.add(wrap(x), n)
    assert r == wrap(x + n)
    assert 0 <= r < MOD


@given(positions, st.integers(min_value=0, max_value=HALF),
       st.integers(min_value=-(HALF - 1), max_value=HALF - 1))
def test_in_range_is_a_half_open_window(x, width, u):
    """in_range(v, a, a + width) is a <= v < a + width for any window up to 2**31."""
    a, b, v = wrap(x), wrap(x + width), wrap(x + u)
    assert seq.in_range(v, a, b) == (x <= x + u < x + width)


@given(wires)
def test_reflexive(a):
    assert not seq.lt(a, a) and not seq.gt(a, a)
    assert seq.le(a, a) and seq.ge(a, a)
    assert seq.diff(a, a) == 0
    assert not seq.in_range(a, a, a)  # an empty window holds nothing


def test_wraparound_edges():
    assert seq.lt(0xFFFFFFFF, 0)
    assert seq.gt(0, 0xFFFFFFFF)
    assert seq.le(0xFFFFFFFF, 0) and not seq.ge(0xFFFFFFFF, 0)
    assert seq.diff(0, 0xFFFFFFFF) == 1
    assert seq.diff(0xFFFFFFFF, 0) == -1
    assert seq.add(0xFFFFFFFF, 1) == 0
    assert seq.add(0, -1) == 0xFFFFFFFF
    assert seq.in_range(0, 0xFFFFFFFF, 1)
    assert seq.in_range(0xFFFFFFFF, 0xFFFFFFF0, 5)
    assert not seq.in_range(5, 0xFFFFFFF0, 5)
    assert seq.max_seq(0xFFFFFFFF, 3) == 3


def test_half_space_boundary():
    # Just inside the half-space: ordinary ordering.
    assert seq.lt(0, HALF - 1) and seq.gt(HALF - 1, 0)
    assert seq.diff(HALF - 1, 0) == HALF - 1
    assert seq.lt(HALF + 1, 0)  # 2**31 + 1 ahead is 2**31 - 1 behind
    # Exactly 2**31 apart the order is undefined (RFC 1982): neither precedes the other,
    # and diff reports the distance as -2**31 in both directions.
    assert not seq.lt(0, HALF) and not seq.lt(HALF, 0)
    assert not seq.le(0, HALF) and not seq.le(HALF, 0)
    assert not seq.gt(0, HALF) and not seq.gt(HALF, 0)
    assert seq.diff(HALF, 0) == -HALF
    assert seq.diff(0, HALF) == -HALF
    # A window of exactly 2**31 holds the 2**31 values from its left edge.
    assert seq.in_range(HALF - 1, 0, HALF)
    assert not seq.in_range(HALF, 0, HALF)
