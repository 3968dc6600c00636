"""TIME_WAIT as a separate, small thing (Linux tcp_timewait_sock / tcp_minisocks.c).

When a connection enters TIME_WAIT its TCB is dropped and the few fields that still
matter are packed into one short `bytes` record, keyed by the same 12-byte four-tuple
key the demultiplexer slices from each frame. A million of them fit in well under
200 MB (benchmarks/bench_timewait.py measures bytes per record).

Expiry is bucketed: records are appended to 50 ms time buckets in a deque, and since
2*MSL is a constant, buckets are already in expiry order. Restarting a record's timer
re-appends its key to the newest bucket; the stale reference is skipped when its old
bucket comes due (the record's own expiry says it is not yet time). O(1) amortised per
record, one deadline for the whole table.

`process()` is the pure verdict function of Linux's tcp_timewait_state_process(): it
returns what to do; the table acts on it.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from typing import NamedTuple

from .. import seq as sq
from ..wire.tcp import ACK, RST, SYN, Segment
from .context import Context

log = logging.getLogger("ustack.timewait")

# snd_nxt, rcv_nxt, ts_recent, ts_offset, wnd field, wscale, flags, then times in ms since
# the table's epoch: ts_recent_stamp, expires, last out-of-window ACK, entered.
_REC = struct.Struct("<IIIIHBBIIII")
F_HAS_TS = 1
BUCKET_MS = 50
TCP_PAWS_MSL = 60.0  # Linux: TS.Recent older than this is not used to reject (LS 95)

TW_NOTHING, TW_ACK, TW_SYN = 0, 1, 2


class TwRecord(NamedTuple):
    snd_nxt: int
    rcv_nxt: int
    ts_recent: int
    ts_offset: int
    wnd: int  # the window field to advertise (already shifted)
    wscale: int
    flags: int
    ts_recent_stamp: float
    expires: float
    last_oow: float
    entered: float

    @property
    def has_ts(self) -> bool:
        return bool(self.flags & F_HAS_TS)


class TimeWaitTable:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.records: dict[bytes, bytes] = {}
        self.buckets: deque[tuple[int, list[bytes]]] = deque()
        self.epoch: float | None = None
        self._last_overflow_log = -1e9

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: bytes) -> bool:
        return key in self.records

    # --- time in ms since the epoch, so every field fits 32 bits for 49 days

    def _ms(self, now: float) -> int:
        if self.epoch is None:
            # An hour back, so "never" (an old time clipped to 0) is far in the past.
            self.epoch = now - 3600.0
        return max(int((now - self.epoch) * 1000), 0) & 0xFFFFFFFF

    def _t(self, ms: int) -> float:
        return (self.epoch or 0.0) + ms / 1000

    def get(self, key: bytes) -> TwRecord | None:
        raw = self.records.get(key)
        if raw is None:
            return None
        v = _REC.unpack(raw)
        return TwRecord(*v[:7], self._t(v[7]), self._t(v[8]), self._t(v[9]), self._t(v[10]))

    def _put(self, key: bytes, r: TwRecord) -> None:
        self.records[key] = _REC.pack(
            r.snd_nxt, r.rcv_nxt, r.ts_recent, r.ts_offset, r.wnd, r.wscale, r.flags,
            self._ms(r.ts_recent_stamp), self._ms(r.expires), self._ms(r.last_oow),
            self._ms(r.entered))

    def _enqueue(self, key: bytes, expires_ms: int) -> None:
        idx = expires_ms // BUCKET_MS
        if self.buckets and self.buckets[-1][0] >= idx:
            self.buckets[-1][1].append(key)
        else:
            self.buckets.append((idx, [key]))

    def insert(self, key: bytes, r: TwRecord, now: float) -> bool:
        """Add a TIME_WAIT record; False when tcp_max_tw_buckets is reached (LS 64)."""
        stats = self.ctx.stats
        if len(self.records) >= self.ctx.config.tcp_max_tw_buckets and key not in self.records:
            stats["TcpExtTCPTimeWaitOverflow"] += 1
            if now - self._last_overflow_log >= 1.0:
                self._last_overflow_log = now
                log.warning("TCP: time wait bucket table overflow")
            return False
        self._ms(now)
        self._put(key, r)
        self._enqueue(key, self._ms(r.expires))
        stats["TcpExtTW"] += 1
        return True

    def remove(self, key: bytes) -> None:
        self.records.pop(key, None)

    def restart(self, key: bytes, r: TwRecord, now: float) -> TwRecord:
        """Restart the 2*MSL timer (RFC 9293 3.10.7.4)."""
        r = r._replace(expires=now + 2 * self.ctx.config.tcp_msl)
        self._put(key, r)
        self._enqueue(key, self._ms(r.expires))
        return r

    def next_expiry(self) -> float | None:
        if not self.buckets:
            return None
        return self._t((self.buckets[0][0] + 1) * BUCKET_MS)

    def expire(self, now: float) -> int:
        """Drop every record whose 2*MSL has run out. Returns how many went."""
        if self.epoch is None:
            return 0
        now_ms = self._ms(now)
        records = self.records
        gone = 0
        buckets = self.buckets
        while buckets and (buckets[0][0] + 1) * BUCKET_MS <= now_ms:
            _, keys = buckets.popleft()
            for key in keys:
                raw = records.get(key)
                # _REC field 8 is `expires`; a later value means the timer was restarted
                # and a newer bucket holds the key.
                if raw is not None and _REC.unpack(raw)[8] <= now_ms:
                    del records[key]
                    gone += 1
        return gone

    # ------------------------------------------------------------------ verdicts

    def ack_segment(self, key: bytes, r: TwRecord, now: float) -> Segment:
        """The TIME_WAIT ACK: . SND.NXT ack RCV.NXT, TS echoing TS.Recent (LS 52)."""
        seg = Segment(int.from_bytes(key[10:12], "big"), int.from_bytes(key[8:10], "big"),
                      r.snd_nxt, r.rcv_nxt, ACK, r.wnd)
        if r.has_ts:
            seg.ts = ((int(now * 1000) + r.ts_offset) & 0xFFFFFFFF, r.ts_recent)
        return seg

    def process(self, key: bytes, seg: Segment, now: float) -> tuple[int, Segment | int | None]:
        """A segment for a TIME_WAIT four-tuple (Linux tcp_timewait_state_process()).

        Returns (TW_NOTHING, None), (TW_ACK, ack_segment) or (TW_SYN, iss) for a SYN that
        may open a new incarnation.
        """
        r = self.get(key)
        assert r is not None
        cfg = self.ctx.config
        stats = self.ctx.stats
        flags = seg.flags
        ts = seg.ts if r.has_ts else None
        # PAWS for minisockets is strict, and applies to RSTs too (LS 95).
        paws_reject = bool(
            ts is not None and r.ts_recent and sq.diff(r.ts_recent, ts[0]) > 0
            and now - r.ts_recent_stamp < TCP_PAWS_MSL)
        end = (seg.seq + seg.seg_len) & 0xFFFFFFFF
        if not paws_reject and seg.seq == r.rcv_nxt and (end == seg.seq or flags & RST):
            # In window: only a RST or a bare ACK can be here.
            if flags & RST:
                if not cfg.tcp_rfc1337:
                    # RFC 1337 describes TIME_WAIT assassination by a RST; RFC 9293 3.10.7.4
                    # says a RST in TIME_WAIT closes. Linux (tcp_rfc1337=0, default) lets
                    # an exact RST kill the record, so ustack does too; tcp_rfc1337=1
                    # applies RFC 1337's fix F1 and ignores it.
                    self.remove(key)
                    return TW_NOTHING, None
            else:
                r = self.restart(key, r, now)  # LS 53(a): silently
            if ts is not None:
                self._put(key, r._replace(ts_recent=ts[0], ts_recent_stamp=now))
            return TW_NOTHING, None
        # RFC 6191 / RFC 9293 3.10.7.4 / LS 58: a new SYN may reopen the tuple when it is
        # provably newer, by timestamp or by sequence number.
        if flags & SYN and not flags & (RST | ACK) and not paws_reject and (
                sq.gt(seg.seq, r.rcv_nxt)
                or (ts is not None and sq.diff(r.ts_recent, ts[0]) < 0)):
            iss = (r.snd_nxt + 65535 + 2) & 0xFFFFFFFF  # LS 60: beyond the old SND.NXT
            return TW_SYN, iss or 1
        if paws_reject:
            stats["TcpExtPAWSTimewait"] += 1
        if flags & RST:
            return TW_NOTHING, None  # out of window or PAWS-failing RST: ignored (LS 57)
        if paws_reject or flags & ACK:
            r = self.restart(key, r, now)  # LS 53(b), (c)
        # Segments that occupy sequence space are always answered; pure ACKs and SYNs
        # at most once per tcp_invalid_ratelimit (LS 56).
        if end == seg.seq or flags & SYN:
            if now - r.last_oow < cfg.tcp_invalid_ratelimit / 1000:
                stats["TcpExtTCPACKSkippedTimeWait"] += 1
                return TW_NOTHING, None
            r = r._replace(last_oow=now)
            self._put(key, r)
        return TW_ACK, self.ack_segment(key, r, now)

    def reusable(self, r: TwRecord, loopback: bool, now: float) -> bool:
        """May an active open take this TIME_WAIT four-tuple? (tcp_twsk_unique, LS 70-71)."""
        cfg = self.ctx.config
        if not r.has_ts or cfg.tcp_tw_reuse == 0:
            return False
        if cfg.tcp_tw_reuse == 2 and not loopback:
            return False
        return (now - r.entered) * 1000 > cfg.tcp_tw_reuse_delay
