"""The retransmission timeout estimator (RFC 6298), as Linux tunes it.

Pure arithmetic: samples in, RTO out. The TCB decides when a sample is valid
(Karn's algorithm, or any ACK carrying a timestamp echo, RFC 7323 section 4).
"""

from __future__ import annotations

RTO_INITIAL = 1.0  # RFC 6298 2.1
RTO_MAX = 120.0  # Linux TCP_RTO_MAX; RFC 6298 2.5 allows a maximum of at least 60 s
RTO_FALLBACK = 3.0  # RFC 6298 5.7; Linux TCP_TIMEOUT_FALLBACK


class RtoEstimator:
    __slots__ = ("srtt", "rttvar", "rto", "rto_min", "backoff", "min_rtt")

    def __init__(self, rto_min: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self.rto_min = rto_min
        self.backoff = 0  # exponent of the current backoff (RFC 6298 5.5)
        self.min_rtt: float | None = None  # lowest sample (TCP_INFO min_rtt; Linux
        # keeps a 5-minute windowed minimum, tcp_update_rtt_min())

    def sample(self, r: float) -> None:
        """Feed one RTT measurement in seconds (RFC 6298 2.2 and 2.3)."""
        if r < 0:
            return
        if self.min_rtt is None or r < self.min_rtt:
            self.min_rtt = r
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        # Linux adds the floor to SRTT (RTO ~ RTT + 200 ms on a LAN) instead of RFC 6298
        # 2.4's 1 s minimum; tcp_rto_min_ms is that floor.
        self.rto = min(max(self.srtt + max(4 * self.rttvar, self.rto_min), self.rto_min), RTO_MAX)

    def current(self) -> float:
        """The RTO with the exponential backoff applied (RFC 6298 5.5), capped at 120 s."""
        return min(self.rto * (1 << self.backoff), RTO_MAX)

    def back_off(self) -> None:
        if self.rto * (1 << self.backoff) < RTO_MAX:
            self.backoff += 1

    def reset_backoff(self) -> None:
        self.backoff = 0

    def handshake_done(self) -> None:
        """RFC 6298 5.7 as Linux applies it (tcp_init_metrics()): a handshake that gave no
        RTT sample (its SYN or SYN-ACK was retransmitted and no timestamp timed it) starts
        the data transfer with a 3 s RTO instead of the 1 s initial one, unbacked-off."""
        if self.srtt is None:
            self.rto = max(self.rto, RTO_FALLBACK)
            self.backoff = 0
