"""PRR's arithmetic on its own (RFC 6937 3, Linux tcp_cwnd_reduction()), in segments:
the proportional part while the flight exceeds ssthresh, the slow-start reduction bound
(SSRB) below it, the forced first retransmission. The same rules on the wire: the RFC's
first example in tests/test_rack.py."""

from __future__ import annotations

from ustack.tcp.prr import Prr


def test_proportional_part_sends_ssthresh_over_prior_cwnd_of_what_is_delivered():
    """ssthresh 10 of a prior cwnd of 20: one segment out per two delivered, rounded up
    (so the first ACK already sends one: the fast retransmit)."""
    prr = Prr()
    prr.start(20, 10)
    sent = []
    for flight in range(18, 10, -1):
        n = prr.sndcnt(1, flight, una_advanced=False, newly_lost=False)
        sent.append(n)
        prr.out += n
    assert sent == [1, 0, 1, 0, 1, 0, 1, 0]
    assert prr.delivered == 8 and prr.out == 4
    # At ssthresh the bound takes over: ssthresh - flight = 0, nothing more.
    assert prr.sndcnt(1, 10, una_advanced=False, newly_lost=False) == 0


def test_slow_start_reduction_bound_below_ssthresh():
    """After a burst of losses the flight (4) is below ssthresh (10): each ACK that
    advances SND.UNA without a new loss lets out what it delivered plus one (slow start
    back towards ssthresh); an ACK that marked a new loss only what it delivered
    (the conservative bound); never beyond ssthresh - flight."""
    prr = Prr()
    prr.start(20, 10)
    assert prr.sndcnt(1, 4, una_advanced=False, newly_lost=True) == 1
    prr.out += 1
    assert prr.sndcnt(1, 5, una_advanced=True, newly_lost=False) == 2
    prr.out += 2
    assert prr.sndcnt(1, 6, una_advanced=True, newly_lost=True) == 1
    prr.out += 1
    assert prr.sndcnt(3, 9, una_advanced=True, newly_lost=False) == 1  # ssthresh - flight


def test_an_ack_that_delivers_nothing_leaves_cwnd_alone_and_the_first_send_is_forced():
    prr = Prr()
    prr.start(10, 5)
    assert prr.sndcnt(0, 9, una_advanced=False, newly_lost=False) is None
    # Proportional arithmetic would say ceil(5 * 1 / 10) = 1 anyway; with a tiny share
    # (ssthresh 1 of 100) it says 1 too: the retransmission must go out.
    prr.start(100, 1)
    assert prr.sndcnt(1, 50, una_advanced=False, newly_lost=True) == 1
    prr.out += 1
    assert prr.sndcnt(1, 50, una_advanced=False, newly_lost=False) == 0
