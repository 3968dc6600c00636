"""Explicit Congestion Notification (RFC 3168) as Linux does it with `tcp_ecn`.

The knob (config.py, Linux's default 2): 0 off; 1 ask for ECN in our SYNs and accept
it in the peer's; 2 accept it only when the peer asks (Linux's default: most hosts
answer, few ask). Negotiation (RFC 3168 6.1.1): the active side's SYN carries ECE|CWR
(an "ECN-setup SYN", Linux tcp_ecn_send_syn()), the SYN-ACK ECE alone
(tcp_ecn_make_synack()); a SYN-ACK with CWR too, or without ECE, leaves ECN off
(tcp_ecn_rcv_synack()). A SYN that already carries an ECT codepoint is taken for a
broken middlebox's and gets no ECN (tcp_ecn_create_request()). With
`tcp_ecn_fallback` (Linux's default 1) a retransmitted SYN asks no more
(tcp_ecn_clear_syn()), in case a middlebox drops ECN-setup SYNs.

An `Ecn` exists only on a connection that negotiated it (the TCB's `ecn` is None
otherwise, so a connection without ECN pays one attribute test per segment):

  - sender: new data goes out ECT(0) (not retransmissions, pure ACKs, SYNs or a bare
    FIN; Linux tcp_ecn_send()); an ECE on an ACK starts one congestion response per
    window of data (tcp_enter_cwr(): ssthresh from the controller, CWR on the next new
    data segment; further ECEs are ignored until SND.UNA passes the SND.NXT of that
    moment, and during loss recovery, which reduced cwnd already);
  - receiver: a CE mark on arriving data sets ECE on every segment we send until a
    data segment with CWR arrives (tcp_ecn_check_ce(), tcp_ecn_accept_cwr()).
"""

from __future__ import annotations

from .. import seq as sq
from ..wire.tcp import CWR, ECE

# The IP header's ECN field (RFC 3168 5): the two low bits of the TOS byte.
NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3
SETUP_SYN = ECE | CWR


def syn_asks(tcp_ecn: int, retransmission: bool, fallback: int) -> bool:
    """Does our SYN ask for ECN? (Linux tcp_ecn_send_syn(), tcp_ecn_clear_syn())."""
    return tcp_ecn == 1 and not (retransmission and fallback)


def accept_syn(tcp_ecn: int, flags: int, ip_ecn: int) -> bool:
    """A passive open: the peer's SYN is ECN-setup, we accept ECN (tcp_ecn 1 or 2) and
    the SYN itself is not ECT (Linux tcp_ecn_create_request())."""
    return bool(tcp_ecn) and flags & SETUP_SYN == SETUP_SYN and ip_ecn == NOT_ECT


def accept_synack(asked: bool, flags: int) -> bool:
    """An active open: ECE without CWR answers our ECN-setup SYN (RFC 3168 6.1.1,
    Linux tcp_ecn_rcv_synack())."""
    return asked and flags & SETUP_SYN == ECE


class Ecn:
    """The ECN state of one connection that negotiated it (Linux's tp->ecn_flags and
    high_seq for CWR)."""

    __slots__ = ("demand_cwr", "queue_cwr", "cwr_until", "seen")

    def __init__(self) -> None:
        self.demand_cwr = False  # receiver: ECE on what we send (TCP_ECN_DEMAND_CWR)
        self.queue_cwr = False  # sender: CWR on the next new data (TCP_ECN_QUEUE_CWR)
        # sender: SND.NXT when we last reduced; no new response to ECE until SND.UNA
        # is beyond it (Linux's CWR state, which ends when snd_una passes high_seq)
        self.cwr_until: int | None = None
        self.seen = False  # an ECT or CE segment arrived (TCP_ECN_SEEN)

    # --- receiver

    def on_data(self, flags: int, ip_ecn: int) -> bool:
        """A segment with data: True if the ACK should leave at once (CWR: the sender
        may be down to a tiny window; CE: a first mark, Linux's quick-ACK mode)."""
        now = False
        if flags & CWR:
            self.demand_cwr = False  # tcp_ecn_accept_cwr()
            now = True
        if ip_ecn == CE:
            if not self.demand_cwr:
                self.demand_cwr = True
                now = True
            self.seen = True
        elif ip_ecn:
            self.seen = True
        return now

    # --- sender

    def on_ack(self, una: int, ece: bool, snd_nxt: int, recovering: bool) -> bool:
        """An acceptable ACK with data outstanding: True if its ECE starts a congestion
        response now (Linux tcp_try_to_open() -> tcp_enter_cwr())."""
        until = self.cwr_until
        if until is not None and sq.gt(una, until):
            self.cwr_until = until = None  # CWR held until beyond high_seq
        if not ece or until is not None or recovering:
            return False
        self.on_reduction(snd_nxt)
        return True

    def on_reduction(self, snd_nxt: int) -> None:
        """cwnd was reduced (ECE, loss recovery, RTO): CWR on the next new data, and
        the rest of this window's ECEs are the same event (tcp_init_cwnd_reduction()
        -> tcp_ecn_queue_cwr())."""
        self.queue_cwr = True
        self.cwr_until = snd_nxt

    def __repr__(self) -> str:
        return (f"<Ecn demand_cwr={self.demand_cwr} queue_cwr={self.queue_cwr} "
                f"cwr_until={self.cwr_until}>")
