"""Proportional Rate Reduction (RFC 6937), as Linux's tcp_cwnd_reduction() does it: the
window during fast recovery (or CWR), in segments.

While more than ssthresh is in flight, each ACK lets out ssthresh/prior_cwnd of what it
delivered (the proportional part); once the flight is at or below ssthresh, it grows
back towards ssthresh by what was delivered plus one segment per ACK that advanced
SND.UNA without revealing a new loss (the slow-start reduction bound, SSRB), never
beyond ssthresh. Pure arithmetic.
"""

from __future__ import annotations


class Prr:
    __slots__ = ("prior_cwnd", "ssthresh", "delivered", "out")

    def __init__(self) -> None:
        self.prior_cwnd = 0  # segments: cwnd when the reduction began (RFC 6937 RecoverFS)
        self.ssthresh = 0  # segments
        self.delivered = 0  # prr_delivered
        self.out = 0  # prr_out

    def start(self, prior_cwnd: int, ssthresh: int) -> None:
        """Linux tcp_init_cwnd_reduction()."""
        self.prior_cwnd = max(prior_cwnd, 1)
        self.ssthresh = ssthresh
        self.delivered = 0
        self.out = 0

    def sndcnt(self, delivered: int, in_flight: int, una_advanced: bool, newly_lost: bool) -> int | None:
        """RFC 6937 3 on one ACK that delivered `delivered` segments with `in_flight`
        still out: how many segments may be sent now (None: the ACK delivered nothing
        and cwnd stays). The new cwnd is in_flight + sndcnt."""
        if delivered <= 0:
            return None
        self.delivered += delivered
        delta = self.ssthresh - in_flight
        if delta < 0:
            # Proportional: CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out.
            sndcnt = -(-(self.ssthresh * self.delivered) // self.prior_cwnd) - self.out
        else:
            # Linux's SSRB: MAX(prr_delivered - prr_out, DeliveredData) + 1 if the ACK
            # advanced SND.UNA and marked no new loss (else the conservative bound).
            sndcnt = max(self.delivered - self.out, delivered)
            if una_advanced and not newly_lost:
                sndcnt += 1
            sndcnt = min(delta, sndcnt)
        # The fast retransmit goes out whatever the arithmetic says.
        return max(sndcnt, 0 if self.out else 1)
