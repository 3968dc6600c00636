"""Sequence-number arithmetic modulo 2**32 (RFC 9293 section 3.4).

Plain functions on ints so the hot path pays no object overhead. Every comparison
of sequence numbers in ustack goes through here, so wraparound lives in one place.
"""

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def add(a: int, n: int) -> int:
    return (a + n) & MASK


def diff(a: int, b: int) -> int:
    """Signed distance a - b, in [-2**31, 2**31)."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def lt(a: int, b: int) -> bool:
    return a != b and ((b - a) & MASK) < HALF


def le(a: int, b: int) -> bool:
    return ((b - a) & MASK) < HALF


def gt(a: int, b: int) -> bool:
    return lt(b, a)


def ge(a: int, b: int) -> bool:
    return le(b, a)


def in_range(v: int, a: int, b: int) -> bool:
    """a <= v < b, modulo 2**32."""
    return ((v - a) & MASK) < ((b - a) & MASK)


def max_seq(a: int, b: int) -> int:
    return b if lt(a, b) else a
