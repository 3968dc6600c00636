"""The Internet checksum (RFC 1071).

The one's-complement sum of 16-bit words equals the big-endian integer of the data
modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF), so one `int.from_bytes` and one `%`
replace a Python loop over words: about 3 us for a 1460-byte segment here, against
~60 us for a word loop and ~9 us for array('H') summing (benchmarks/bench_wire.py).
"""

from __future__ import annotations


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """One's-complement sum of `data` (odd length padded with a zero byte), 0..0xFFFF."""
    if len(data) & 1:
        n = int.from_bytes(data, "big") << 8
    else:
        n = int.from_bytes(data, "big")
    if n == 0:
        return 0
    s = n % 0xFFFF
    return s or 0xFFFF


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The checksum field value for `data` (with its checksum field zeroed)."""
    s = ones_sum(data) + initial
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return ones_sum(src + dst + bytes((0, proto, length >> 8, length & 0xFF)))


_MASKS: dict[int, int] = {}


def mod_ffff(x: int, nbytes: int) -> int:
    """x % 0xFFFF for the big-endian integer of `nbytes` bytes, by folding first.

    2**16 == 1 mod 0xFFFF, so the high half of x (cut at a multiple of 16 bits) may be
    added to the low half without changing the remainder: three folds take a 1448-byte
    segment's integer to 1/8 of its size with shifts, masks and an addition, which is
    cheaper than dividing the whole of it (benchmarks/bench_wire.py "checksum":
    from_bytes + % 2.9 us, folded 2.1 us, for 1460 bytes).
    """
    bits = nbytes * 8
    while bits > 2048:
        h = (bits >> 5) << 4  # half the bits, rounded down to a multiple of 16
        m = _MASKS.get(h)
        if m is None:
            m = _MASKS[h] = (1 << h) - 1
        x = (x >> h) + (x & m)
        bits -= h - 1
    return x % 0xFFFF
