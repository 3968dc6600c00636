"""The interface every congestion controller implements (Linux's tcp_congestion_ops,
smoltcp's `Controller`, aioquic's `QuicCongestionControl`).

A controller owns `cwnd` and `ssthresh`, in bytes, and nothing else of the connection:
the TCB and the loss recovery (recovery.py) tell it what happened, at fixed points,
and read `cwnd` back. No clock, no I/O; `now` is passed in where an algorithm needs
time (CUBIC's curve and HyStart do). The hooks without a body (configure's knobs,
on_tx_start, on_rtt) are optional: Reno needs none of them.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, ClassVar

IW_SEGMENTS = 10  # RFC 6928 initial window
INFINITE_SSTHRESH = 1 << 30  # Linux TCP_INFINITE_SSTHRESH is 0x7fffffff segments


class CongestionControl:
    """Window state and the events that move it. Subclasses override the growth rule
    (`on_ack`) and the reduction (`ssthresh_after_loss`)."""

    name: ClassVar[str] = ""
    # True: the TCB passes per-ACK RTT samples to on_rtt() (it costs a walk over the
    # acknowledged send records, so only for a controller that uses them).
    wants_rtt: ClassVar[bool] = False
    __slots__ = ("mss", "cwnd", "ssthresh", "stats")

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = IW_SEGMENTS * mss
        self.ssthresh = INFINITE_SSTHRESH
        self.stats: MutableMapping[str, int] | None = None

    def configure(self, config: Any, stats: MutableMapping[str, int] | None) -> None:
        """Optional: the algorithm's knobs from the stack's Config, and the counters it
        increments (Linux's per-module parameters and MIBs)."""
        self.stats = stats

    # --- the connection's life

    def set_mss(self, mss: int) -> None:
        """The handshake fixed the segment size: the initial window follows it."""
        self.mss = mss
        self.cwnd = IW_SEGMENTS * mss

    def on_handshake_loss(self) -> None:
        """RFC 5681 3.1: after a lost SYN or SYN-ACK the initial window is one segment
        (the TCB decides when this applies, as Linux does)."""
        self.cwnd = self.mss

    def on_idle_restart(self) -> None:
        """RFC 5681 4.1 / RFC 7661: idle for more than an RTO, restart from at most the
        initial window; ssthresh keeps 3/4 of the old one (Linux tcp_cwnd_restart())."""
        restart = IW_SEGMENTS * self.mss
        if self.cwnd > restart:
            self.ssthresh = max(self.ssthresh, self.cwnd * 3 // 4)
            self.cwnd = restart

    def on_tx_start(self, now: float, idle: float) -> None:
        """Optional: transmission starts with nothing in flight, `idle` seconds after
        the last send (Linux's cwnd_event(CA_EVENT_TX_START))."""

    def on_rtt(self, rtt: float, now: float, snd_una: int, snd_nxt: int) -> None:
        """Optional, called when `wants_rtt`: an ACK of new data timed the newest
        segment it covers, none of them retransmitted (Linux's pkts_acked() with
        ack_sample.rtt_us), before on_ack(); SND.UNA already moved."""

    # --- outside recovery

    @property
    def in_slow_start(self) -> bool:
        return self.cwnd < self.ssthresh

    def on_ack(self, acked: int, flight: int, now: float) -> None:
        """An ACK of `acked` new bytes outside recovery; `flight` is what was
        outstanding before it (for the cwnd-limited test)."""
        raise NotImplementedError

    # --- loss

    def ssthresh_after_loss(self, flight: int) -> int:
        """The new ssthresh on a congestion event (Linux's .ssthresh)."""
        raise NotImplementedError

    def on_congestion_event(self, flight: int, now: float) -> None:
        """Loss detected (fast retransmit, or a loss probe that repaired one): ssthresh
        from the algorithm, cwnd down to it (RFC 5681 3.2 step 2, RFC 6675 5 (4.2))."""
        self.ssthresh = self.ssthresh_after_loss(flight)
        self.cwnd = self.ssthresh

    def on_exit_recovery(self, bound: int | None = None) -> None:
        """Recovery ended with a full ACK: cwnd = ssthresh (RFC 6675, RFC 5681 3.2 step
        6), at most `bound` if given (RFC 6582 3.2 step 3's "min(ssthresh, FlightSize +
        SMSS)")."""
        self.cwnd = self.ssthresh if bound is None else min(self.ssthresh, bound)

    def on_rto(self, flight: int, first: bool) -> None:
        """RFC 5681 3.1 equation 4 / RFC 6298 5.5: cwnd to one segment; ssthresh only
        on the first timeout of a loss episode (Linux tcp_enter_loss())."""
        if first:
            self.ssthresh = self.ssthresh_after_loss(flight)
        self.cwnd = self.mss

    # --- window inflation for Reno-style recovery without SACK

    def inflate(self, n: int) -> None:
        """RFC 5681 3.2 steps 3-4: segments that left the network (duplicate ACKs)."""
        self.cwnd += n

    def deflate(self, acked: int) -> None:
        """RFC 6582 3.2 step 4 (partial ACK): deflate by what was acknowledged, add back
        one SMSS if that was at least one SMSS."""
        mss = self.mss
        self.cwnd = max(self.cwnd - acked + (mss if acked >= mss else 0), mss)

    def __repr__(self) -> str:
        return f"<{self.name} cwnd={self.cwnd} ssthresh={self.ssthresh}>"

    def undo(self, prior_cwnd: int, prior_ssthresh: int) -> None:
        """The reduction was spurious (D-SACK, Eifel, F-RTO): Linux
        tcp_undo_cwnd_reduction() with Reno's and CUBIC's .undo_cwnd."""
        self.cwnd = max(self.cwnd, prior_cwnd)
        self.ssthresh = max(self.ssthresh, prior_ssthresh)
