"""SYN cookies as Linux builds them (net/ipv4/syncookies.c; LINUX-SPEC-2 items 244-249).

The SYN-ACK's ISN carries the whole request, so a listener under a SYN flood keeps
nothing per SYN:

    ISN = H0(4-tuple) + client_ISN + (count << 24) + ((H1(4-tuple, count) + mssind) mod 2^24)

`count` is a minute counter, H0 and H1 two keyed hashes, `mssind` the index of the
client's MSS rounded down in `MSSTAB`. With timestamps, the low 6 bits of our first
TSval carry the peer's window scale, SACK-permitted and ECN (cookie_init_timestamp());
without them those options are lost, as in Linux.

One difference from Linux: the hash is keyed BLAKE2b (4-byte digest) rather than
SipHash-2-4, which the standard library does not expose; the keys come from the stack's
secret (Context.secret), so every worker sharing that secret validates the others'
cookies. Pure functions: the table decides when to use them.
"""

from __future__ import annotations

import hashlib

MASK = 0xFFFFFFFF
COOKIEBITS = 24  # Linux COOKIEBITS: the low bits hold hash + MSS index
COOKIEMASK = (1 << COOKIEBITS) - 1
MAX_SYNCOOKIE_AGE = 2  # include/net/tcp.h: a cookie is good for 1-2 minutes
SYNCOOKIE_PERIOD = 60.0  # TCP_SYNCOOKIE_PERIOD, seconds per count
SYNCOOKIE_VALID = 2 * SYNCOOKIE_PERIOD  # TCP_SYNCOOKIE_VALID
# Linux msstab[] (syncookies.c): the MSS values a cookie can say.
MSSTAB = (536, 1300, 1440, 1460)
TSBITS = 6  # Linux TSBITS
TSMASK = (1 << TSBITS) - 1
TS_OPT_WSCALE_MASK = 0xF  # wscale, 0xF = "no window scaling"
TS_OPT_SACK = 1 << 4
TS_OPT_ECN = 1 << 5


class CookieKeys:
    """The two hash keys, derived once from the stack's secret (Linux syncookie_secret[2])."""

    __slots__ = ("secret", "k0", "k1")

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.k0 = hashlib.blake2b(secret, digest_size=32, person=b"syncookie-k0").digest()
        self.k1 = hashlib.blake2b(secret, digest_size=32, person=b"syncookie-k1").digest()


def _hash(k: bytes, key: bytes, count: int) -> int:
    """Linux cookie_hash(saddr, daddr, sport << 16 | dport, count): `key` is the 12-byte
    demux key of the client's segment (its saddr, daddr, sport, dport, in that order)."""
    return int.from_bytes(hashlib.blake2b(key + (count & MASK).to_bytes(4, "big"),
                                          key=k, digest_size=4).digest(), "big")


def cookie_time(now: float) -> int:
    """tcp_cookie_time(): the minute counter."""
    return int(now // SYNCOOKIE_PERIOD) & MASK


def mss_index(mss: int) -> int:
    """The largest MSSTAB entry <= mss (__cookie_v4_init_sequence()); below 1300: 536."""
    for i in range(len(MSSTAB) - 1, 0, -1):
        if mss >= MSSTAB[i]:
            return i
    return 0


def init_sequence(keys: CookieKeys, key: bytes, client_isn: int, mssind: int,
                  now: float) -> int:
    """secure_tcp_syn_cookie(): our ISN for the SYN whose demux key is `key`."""
    count = cookie_time(now)
    return (_hash(keys.k0, key, 0) + client_isn + (count << COOKIEBITS)
            + ((_hash(keys.k1, key, count) + mssind) & COOKIEMASK)) & MASK


def check(keys: CookieKeys, key: bytes, seq: int, ack: int, now: float) -> int:
    """__cookie_v4_check() for an ACK with SEG.SEQ `seq` and SEG.ACK `ack`: the MSS the
    cookie encodes, or 0 when it is not one of ours or too old (check_tcp_syn_cookie())."""
    cookie = (ack - 1) & MASK
    client_isn = (seq - 1) & MASK
    count = cookie_time(now)
    cookie = (cookie - _hash(keys.k0, key, 0) - client_isn) & MASK
    diff = (count - (cookie >> COOKIEBITS)) & (MASK >> COOKIEBITS)
    if diff >= MAX_SYNCOOKIE_AGE:
        return 0
    mssind = (cookie - _hash(keys.k1, key, count - diff)) & COOKIEMASK
    return MSSTAB[mssind] if mssind < len(MSSTAB) else 0


def init_timestamp(ts_now: int, wscale: int | None, sack: bool, ecn: bool) -> int:
    """cookie_init_timestamp(): the TS clock (ms, before the per-connection offset) with
    its low 6 bits replaced by the options; never ahead of the clock."""
    options = TS_OPT_WSCALE_MASK if wscale is None else wscale & TS_OPT_WSCALE_MASK
    if sack:
        options |= TS_OPT_SACK
    if ecn:
        options |= TS_OPT_ECN
    ts = ((ts_now >> TSBITS) << TSBITS) | options
    if ts > ts_now:
        ts -= 1 << TSBITS
    return ts & MASK


def timestamp_decode(tsecr: int, *, timestamps: bool, sack_on: bool, ws_on: bool
                     ) -> tuple[bool, int | None, bool, bool]:
    """cookie_timestamp_decode() for an ACK with TS whose TSecr (less our offset) is
    `tsecr`: (acceptable, the peer's wscale or None, SACK-permitted, ECN). Rejected
    when the options ask for what the knobs now turn off."""
    if not timestamps:
        return False, None, False, False
    sack = bool(tsecr & TS_OPT_SACK)
    ecn = bool(tsecr & TS_OPT_ECN)
    if sack and not sack_on:
        return False, None, False, False
    ws = tsecr & TS_OPT_WSCALE_MASK
    if ws == TS_OPT_WSCALE_MASK:
        return True, None, sack, ecn
    return ws_on, ws, sack, ecn
