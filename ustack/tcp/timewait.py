"""TIME_WAIT as a separate, small thing (Linux tcp_timewait_sock / tcp_minisocks.c).

When a connection enters TIME_WAIT its TCB is dropped and the few fields that still
matter (LS 51) are packed into one short `bytes` record, keyed by the same 12-byte
four-tuple key the demultiplexer slices from each frame. benchmarks/bench_timewait.py
measures the cost: about 165 bytes per record, a million of them in ~160 MB.

Times inside a record are 32-bit wrapping counters compared modulo 2**32, as Linux
keeps them (ms for the timers, seconds for ts_recent_stamp): a record lives at most a
few minutes, so a wrapping clock is exact for it and the table never needs an epoch.

Expiry is bucketed: keys are appended to 50 ms time buckets in a deque, and since
2*MSL is one constant, buckets come out in expiry order. Restarting a record's timer
re-appends its key to the newest bucket (unless it is there already); the stale
reference is skipped when its old bucket comes due (the record's own expiry says it is
not yet time). O(1) amortised per record, one deadline for the whole table, never a
timer per record.

`process()` is the verdict function of Linux's tcp_timewait_state_process(): it
returns what to do; the table acts on it.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from .. import seq as sq
from ..wire.tcp import ACK, RST, SYN, Segment
from . import paws
from .context import Context
from .events import Cause, TimeWaitOverflow, Why

MASK = 0xFFFFFFFF
# snd_nxt, rcv_nxt, ts_recent, ts_offset, ts_recent_stamp (s), expires (ms), last
# out-of-window ACK (ms, 0 = never), entered (ms), window field, wscale, flags.
_REC = struct.Struct("<IIIIIIIIHBB")
_EXPIRES = 5  # index of `expires` in _REC
F_HAS_TS = 1
BUCKET_MS = 50

TW_NOTHING, TW_ACK, TW_SYN = 0, 1, 2
_EXPIRED = Cause(Why.TWO_MSL)
_REUSED = Cause(Why.REUSED)


def ms32(now: float) -> int:
    """The wrapping millisecond clock of the records (Linux tcp_clock_ms())."""
    return int(now * 1000) & MASK


def sec32(now: float) -> int:
    """The wrapping second clock of ts_recent_stamp (Linux ktime_get_seconds())."""
    return int(now) & MASK


class TwRecord(NamedTuple):
    snd_nxt: int
    rcv_nxt: int
    ts_recent: int
    ts_offset: int
    ts_recent_stamp: int  # seconds, sec32()
    expires: int  # ms32()
    last_oow: int  # ms32(), 0 = never
    entered: int  # ms32()
    wnd: int  # the window field to advertise (already shifted)
    wscale: int
    flags: int

    @property
    def has_ts(self) -> bool:
        return bool(self.flags & F_HAS_TS)

    def remaining(self, now: float) -> float:
        """Seconds until expiry (for ss -o)."""
        return max(sq.diff(self.expires, ms32(now)), 0) / 1000

    def age(self, now: float) -> float:
        return ((ms32(now) - self.entered) & MASK) / 1000


class TimeWaitTable:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.records: dict[bytes, bytes] = {}
        # (bucket index on the ms clock // BUCKET_MS, keys): absolute, never wraps.
        self.buckets: deque[tuple[int, list[bytes]]] = deque()
        # Observers of records leaving the table, called with (key, cause): the trace
        # shows TIME_WAIT -> CLOSED, which has no TCB and so no StateChanged event.
        self.gone_hooks: list[Callable[[bytes, Cause], None]] = []

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: bytes) -> bool:
        return key in self.records

    def get(self, key: bytes) -> TwRecord | None:
        raw = self.records.get(key)
        if raw is None:
            return None
        return TwRecord._make(_REC.unpack(raw))

    def _put(self, key: bytes, r: TwRecord) -> None:
        self.records[key] = _REC.pack(*r)

    def _enqueue(self, key: bytes, expires_ms: int) -> None:
        """Queue `key` in the bucket of its expiry (absolute ms, not wrapped)."""
        idx = expires_ms // BUCKET_MS
        buckets = self.buckets
        if buckets and buckets[-1][0] >= idx:
            buckets[-1][1].append(key)
        else:
            buckets.append((idx, [key]))

    def insert(self, key: bytes, *, snd_nxt: int, rcv_nxt: int, ts_recent: int,
               ts_recent_stamp: float, ts_offset: int, wnd: int, wscale: int,
               has_ts: bool, now: float) -> bool:
        """Add a TIME_WAIT record (Linux tcp_time_wait()).

        False when tcp_max_tw_buckets records exist already (LS 64): the caller's TCB
        then just goes, counted as TcpExtTCPTimeWaitOverflow.
        """
        stats = self.ctx.stats
        if len(self.records) >= self.ctx.config.tcp_max_tw_buckets and key not in self.records:
            stats["TcpExtTCPTimeWaitOverflow"] += 1
            # Older Linux logged a line (net_ratelimit()); current kernels only count
            # (LS 64). ustack tells the operator through the shell's rate-limited log.
            self.ctx.notices.append(TimeWaitOverflow())
            return False
        now_ms = int(now * 1000)
        expires = now_ms + 2000 * self.ctx.config.tcp_msl
        r = TwRecord(snd_nxt, rcv_nxt, ts_recent, ts_offset,
                     sec32(ts_recent_stamp) if has_ts else 0,
                     expires & MASK, 0, now_ms & MASK,
                     wnd, wscale, F_HAS_TS if has_ts else 0)
        self._put(key, r)
        self._enqueue(key, expires)
        # Linux __inet_twsk_schedule() (LS 50): a TIME_WAIT scheduled for at most 4 s
        # counts as TWKilled, a longer one as TW. Here: tcp_msl <= 2.
        stats["TcpExtTWKilled" if self.ctx.config.tcp_msl <= 2 else "TcpExtTW"] += 1
        return True

    def remove(self, key: bytes, cause: Cause = _REUSED) -> None:
        if self.records.pop(key, None) is not None:
            for hook in self.gone_hooks:
                hook(key, cause)

    def _restart(self, key: bytes, r: TwRecord, now: float) -> TwRecord:
        """Restart the 2*MSL timer (RFC 9293 3.10.7.4; Linux inet_twsk_reschedule()).

        The key is queued again only when the new expiry falls in a later bucket than
        the one already holding it: restarts cost no memory beyond one reference per
        record per 50 ms, however fast a peer (or a spoofer who knows the four-tuple)
        sends segments that restart it."""
        now_ms = int(now * 1000)
        expires = now_ms + 2000 * self.ctx.config.tcp_msl
        queued = now_ms + sq.diff(r.expires, now_ms & MASK)  # the old expiry, unwrapped
        r = r._replace(expires=expires & MASK)
        if expires // BUCKET_MS > queued // BUCKET_MS:
            self._enqueue(key, expires)
        return r

    def next_expiry(self) -> float | None:
        if not self.buckets:
            return None
        return (self.buckets[0][0] + 1) * BUCKET_MS / 1000

    def expire(self, now: float) -> int:
        """Drop every record whose 2*MSL has run out. Returns how many went."""
        buckets = self.buckets
        if not buckets:
            return 0
        now_ms = int(now * 1000)
        t = now_ms & MASK
        records = self.records
        unpack = _REC.unpack
        gone = 0
        while buckets and (buckets[0][0] + 1) * BUCKET_MS <= now_ms:
            _, keys = buckets.popleft()
            for key in keys:
                raw = records.get(key)
                # A later `expires` means the timer was restarted and a newer bucket
                # holds the key too.
                if raw is not None and sq.diff(unpack(raw)[_EXPIRES], t) <= 0:
                    del records[key]
                    gone += 1
                    for hook in self.gone_hooks:
                        hook(key, _EXPIRED)
        return gone

    # ------------------------------------------------------------------ verdicts

    def ack_segment(self, key: bytes, r: TwRecord, now: float) -> Segment:
        """The TIME_WAIT ACK: . SND.NXT ack RCV.NXT win tw_rcv_wnd>>wscale, with
        TS val now+offset ecr TS.Recent only when TS.Recent != 0 (LS 52;
        Linux tcp_v4_timewait_ack())."""
        seg = Segment(int.from_bytes(key[10:12], "big"), int.from_bytes(key[8:10], "big"),
                      r.snd_nxt, r.rcv_nxt, ACK, r.wnd)
        if r.has_ts and r.ts_recent:
            seg.ts = ((ms32(now) + r.ts_offset) & MASK, r.ts_recent)
        return seg

    def process(self, key: bytes, seg: Segment, now: float) -> tuple[int, Segment | int | None]:
        """A segment for a TIME_WAIT four-tuple (Linux tcp_timewait_state_process()).

        Returns (TW_NOTHING, None), (TW_ACK, ack_segment) or (TW_SYN, iss) for a SYN that
        may open a new incarnation.
        """
        raw = self.records[key]
        r = TwRecord._make(_REC.unpack(raw))
        cfg = self.ctx.config
        flags = seg.flags
        # TS is only looked at if the old connection used it (LS 58).
        ts = seg.ts if r.flags & F_HAS_TS else None
        paws_reject = ts is not None and paws.reject_minisock(
            r.ts_recent, ts[0], (sec32(now) - r.ts_recent_stamp) & MASK, bool(flags & RST))
        end = (seg.seq + seg.seg_len) & MASK
        if not paws_reject and seg.seq == r.rcv_nxt and (end == seg.seq or flags & RST):
            # In window: only a RST or a bare ACK can be here.
            if flags & RST and not cfg.tcp_rfc1337:
                # RFC 1337 describes TIME_WAIT assassination by a RST; RFC 9293 3.10.7.4
                # says a RST in TIME_WAIT closes. Linux (tcp_rfc1337=0, default) lets
                # an exact RST kill the record, so ustack does too; tcp_rfc1337=1
                # applies RFC 1337's fix F1 and ignores it (LS 57).
                self.remove(key, Cause(Why.SEGMENT, seg))
                return TW_NOTHING, None
            # LS 53(a): a bare ACK restarts the timer silently. An exact RST ignored under
            # tcp_rfc1337=1 does not (Linux: inet_twsk_reschedule() is in the else branch
            # of `if (th->rst)`), but its TSval is still recorded.
            if not flags & RST:
                r = self._restart(key, r, now)
            if ts is not None:
                r = r._replace(ts_recent=ts[0], ts_recent_stamp=sec32(now))
            self._put(key, r)
            return TW_NOTHING, None
        # RFC 6191 / RFC 9293 3.10.7.4 / LS 58-59: a new SYN may reopen the tuple when it
        # is provably newer, by sequence number or by timestamp.
        if flags & SYN and not flags & (RST | ACK) and not paws_reject and (
                sq.gt(seg.seq, r.rcv_nxt)
                or (ts is not None and sq.diff(r.ts_recent, ts[0]) < 0)):
            iss = (r.snd_nxt + 65535 + 2) & MASK  # LS 60: beyond the old SND.NXT
            return TW_SYN, iss or 1
        if paws_reject:
            self.ctx.stats["TcpExtPAWSTimewait"] += 1  # Linux >= 6.15 (LS 95)
        if flags & RST:
            return TW_NOTHING, None  # out of window or PAWS-failing RST: ignored (LS 57)
        if paws_reject or flags & ACK:
            r = self._restart(key, r, now)  # LS 53(b), (c)
        # Segments that occupy sequence space (other than a SYN) are always answered;
        # pure ACKs and SYNs at most once per tcp_invalid_ratelimit (LS 56, Linux
        # tcp_oow_rate_limited()).
        if end == seg.seq or flags & SYN:
            t = ms32(now)
            if r.last_oow and 0 <= sq.diff(t, r.last_oow) < cfg.tcp_invalid_ratelimit:
                self.ctx.stats["TcpExtTCPACKSkippedTimeWait"] += 1
                self._put(key, r)
                return TW_NOTHING, None
            r = r._replace(last_oow=t or 1)
        self._put(key, r)
        return TW_ACK, self.ack_segment(key, r, now)

    def reusable(self, r: TwRecord, loopback: bool, now: float, bound: bool = False) -> bool:
        """May an active open take this TIME_WAIT four-tuple? (Linux tcp_twsk_unique(),
        LS 70-73). Only with timestamps: PAWS on the peer then rejects old duplicates
        (RFC 7323 5.8, LS 63). An explicitly bound port (`bound`) takes it whenever
        timestamps were on; an ephemeral port needs tcp_tw_reuse (2: loopback only)
        and tcp_tw_reuse_delay ms since the record was made."""
        if not r.has_ts:
            return False
        if bound:
            return True
        reuse = self.ctx.config.tcp_tw_reuse
        if reuse == 0 or (reuse == 2 and not loopback):
            return False
        return sq.diff(ms32(now), (r.entered + self.ctx.config.tcp_tw_reuse_delay) & MASK) > 0
