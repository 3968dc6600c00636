"""RACK (RFC 8985 6), Linux's net/ipv4/tcp_recovery.c: time-based loss detection.

A segment is lost when a segment sent after it was delivered (cumulatively ACKed or
SACKed) more than one RTT plus a reordering window ago, and it was not. The state is
the most recently *sent* delivered segment (its transmit time and end) and the RTT
measured on it; the window adapts to the reordering the connection has shown.

Pure data: the records come from the send queue (sendq.Sent), times are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable

from .sendq import LOST, RETRANSMITTED, SACKED, Sent

MASK = 0xFFFFFFFF
TIMEOUT_MIN = 0.002  # Linux TCP_TIMEOUT_MIN_US: slack added to the reordering timer
RECOVERY_THRESH = 16  # Linux TCP_RACK_RECOVERY_THRESH: recoveries a widened window lasts
MIN_RTT_WLEN = 300.0  # Linux tcp_min_rtt_wlen (s)

STATIC_REO_WND = 0x2  # tcp_recovery bits (Linux TCP_RACK_STATIC_REO_WND ...)
NO_DUPTHRESH = 0x4


def _sent_after(t1: float, t2: float, seq1: int, seq2: int) -> bool:
    """Linux tcp_skb_sent_after(): (t1, seq1) was sent after (t2, seq2)."""
    return t1 > t2 or (t1 == t2 and 0 < ((seq1 - seq2) & MASK) < 0x80000000)


class Rack:
    __slots__ = ("mstamp", "end_seq", "rtt", "advanced", "reo_wnd_steps", "reo_wnd_persist",
                 "dsack_seen", "last_adjust", "min_rtt", "min_rtt_at", "bits")

    def __init__(self, bits: int) -> None:
        self.bits = bits  # tcp_recovery
        self.mstamp: float | None = None  # RACK.xmit_ts
        self.end_seq = 0  # RACK.end_seq
        self.rtt = 0.0  # RACK.rtt
        self.advanced = False  # a new delivery since the last loss scan
        self.reo_wnd_steps = 1
        self.reo_wnd_persist = 0
        self.dsack_seen = False
        self.last_adjust = -1e9
        self.min_rtt: float | None = None
        self.min_rtt_at = 0.0

    def advance(self, rec: Sent, now: float) -> None:
        """Linux tcp_rack_advance(): `rec` was just delivered."""
        rtt = now - rec.time
        if rec.flags & RETRANSMITTED and self.min_rtt is not None and rtt < self.min_rtt:
            # Delivered sooner than any RTT seen: the original, not the retransmission,
            # arrived; the sample would be wrong (RFC 8985 6.2 step 2).
            return
        if not rec.flags & RETRANSMITTED:
            # tcp_update_rtt_min(): a windowed minimum over tcp_min_rtt_wlen.
            if (self.min_rtt is None or rtt <= self.min_rtt
                    or now - self.min_rtt_at > MIN_RTT_WLEN):
                self.min_rtt = rtt
                self.min_rtt_at = now
        self.advanced = True
        self.rtt = rtt
        if self.mstamp is None or _sent_after(rec.time, self.mstamp, rec.end, self.end_seq):
            self.mstamp = rec.time
            self.end_seq = rec.end

    def reo_wnd(self, reord_seen: int, in_recovery: bool, sacked_segs: int,
                reordering: int, srtt: float | None) -> float:
        """Linux tcp_rack_reo_wnd() (RFC 8985 6.2 step 4)."""
        if not reord_seen:
            # No reordering seen yet: be aggressive in recovery, and once DupThresh
            # segments are SACKed (RFC 8985 6.2's "RACK.reo_wnd = 0" fallback).
            if in_recovery:
                return 0.0
            if sacked_segs >= reordering and not self.bits & NO_DUPTHRESH:
                return 0.0
        w = (self.min_rtt or 0.0) / 4 * self.reo_wnd_steps
        return min(w, srtt) if srtt is not None else w

    def update_reo_wnd(self, now: float, srtt: float | None) -> None:
        """Linux tcp_rack_update_reo_wnd(): a D-SACK seen after reordering widens the
        window by min_rtt/4, at most once per round trip (Linux counts a round by the
        delivered count; here by SRTT), for the next 16 recoveries."""
        if self.bits & STATIC_REO_WND:
            return
        if self.dsack_seen and srtt is not None and now - self.last_adjust < srtt:
            self.dsack_seen = False
        if self.dsack_seen:
            self.reo_wnd_steps = min(255, self.reo_wnd_steps + 1)
            self.dsack_seen = False
            self.last_adjust = now
            self.reo_wnd_persist = RECOVERY_THRESH
        elif not self.reo_wnd_persist:
            self.reo_wnd_steps = 1

    def detect_loss(self, records: Iterable[Sent], now: float, reo_wnd: float,
                    below: int | None = None) -> tuple[list[Sent], float]:
        """Linux tcp_rack_detect_loss(): the records to mark lost, and the longest wait
        (s) before another would be (0.0: none pending). Records that are SACKed, or
        marked lost and not retransmitted since, are skipped."""
        lost: list[Sent] = []
        wait = 0.0
        ts = self.mstamp
        if ts is None:
            return lost, wait
        end_seq = self.end_seq
        rtt = self.rtt
        for rec in records:
            if rec.flags & (SACKED | LOST):
                continue
            if not _sent_after(ts, rec.time, end_seq, rec.end):
                continue
            remaining = rtt + reo_wnd - (now - rec.time)
            if remaining <= 0:
                lost.append(rec)
            elif remaining > wait:
                wait = remaining
        return lost, wait
