"""Reno's window growth and halving (RFC 5681), Linux's `reno`: slow start with RFC
3465 L=1, congestion avoidance by about one MSS per RTT, ssthresh = FlightSize / 2.
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
                self.cwnd += min(acked, mss)  # slow start (RFC 5681 3.1, RFC 3465 L=1)
        elif flight + mss >= self.cwnd:
            self.cwnd += max(mss * mss // self.cwnd, 1)  # congestion avoidance (eq. 3)

    def ssthresh_after_loss(self, flight: int) -> int:
        return max(flight // 2, 2 * self.mss)  # RFC 5681 equation 4
