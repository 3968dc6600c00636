"""Reno's window growth and halving (RFC 5681), Linux's `reno`: slow start by the bytes
each ACK covers, congestion avoidance by about one MSS per RTT, ssthresh =
FlightSize / 2.

Linux deviates from RFC 3465 here, and so do we: its slow start adds every segment an
ACK covers (tcp_slow_start(): cwnd + acked, capped at ssthresh), where the RFC caps the
growth per ACK at L * SMSS (L = 2 recommended, RFC 5681 says 1). A receiver that ACKs
each 64 KB super-segment once (GRO, LINUX-SPEC-2 item 211) would otherwise hold the
window to one MSS more per 44 segments.
The NewReno part (RFC 6582: partial ACKs, `recover`) is loss recovery's, in
recovery.py, as Linux keeps it in tcp_input.c rather than in tcp_cong.c."""

from __future__ import annotations

from .base import CongestionControl


class Reno(CongestionControl):
    name = "reno"
    __slots__ = ()

    def on_ack(self, acked: int, flight: int, now: float) -> None:
        # Grow only a window that is being used (RFC 7661; Linux tcp_is_cwnd_limited():
        # in slow start, cwnd < 2 * flight).
        mss = self.mss
        if self.cwnd < self.ssthresh:
            if self.cwnd < 2 * flight:
                self.cwnd = min(self.cwnd + acked, self.ssthresh)  # tcp_slow_start()
        elif flight + mss >= self.cwnd:
            # RFC 5681 equation 3 per MSS acknowledged, so a stretch ACK counts for all
            # it covers (Linux tcp_cong_avoid_ai() counts acked segments).
            self.cwnd += max(mss * acked // self.cwnd, 1)

    def ssthresh_after_loss(self, flight: int) -> int:
        return max(flight // 2, 2 * self.mss)  # RFC 5681 equation 4
