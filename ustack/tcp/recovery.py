"""Loss detection and recovery for one connection: duplicate ACKs and fast retransmit
(RFC 5681 3.2), NewReno without SACK (RFC 6582), conservative SACK recovery with
lost-retransmission detection (RFC 6675, Linux tcp_mark_lost_retrans()), and the tail
loss probe (RFC 8985 7). The state of an episode lives here, not in the TCB; the
window arithmetic is the congestion controller's (cc/).

The TCB calls in at fixed points (an ACK, a duplicate ACK, the output loop, the RTO)
and this module calls back through the small `Sender` interface to put segments on
the wire. Its own deadline is the LOSS slot of the TCB's timers (the probe timeout);
RACK-TLP (RFC 8985) is meant to replace this module behind the same entry points.
"""

from __future__ import annotations

from typing import Protocol

from .. import seq as sq
from ..stats import Stats
from .cc import CongestionControl
from .rto import RtoEstimator
from .sack import DUPTHRESH, Scoreboard
from .timers import Timer, Timers

MASK = 0xFFFFFFFF


class Sender(Protocol):
    """What recovery needs from the connection (the TCB implements it)."""

    snd_una: int
    snd_nxt: int
    snd_max: int
    snd_wnd: int
    mss: int
    sack_ok: bool
    retries: int

    def send_mss(self) -> int: ...
    def unsent(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    def open_for_probe(self) -> bool: ...
    def retransmit(self, seq: int, limit: int, now: float) -> int: ...
    def retransmit_head(self, now: float) -> int: ...
    def send_new(self, n: int, now: float) -> None: ...


class Recovery:
    """NewReno / SACK recovery and TLP state of one connection."""

    __slots__ = ("conn", "cc", "timers", "rtt", "stats", "sb", "dupacks", "recover",
                 "in_recovery", "high_rxt", "rtx_marks", "rtx_lost", "tlp_high", "tlp_rtx")

    def __init__(self, conn: Sender, cc: CongestionControl, timers: Timers,
                 rtt: RtoEstimator, stats: Stats) -> None:
        self.conn = conn
        self.cc = cc
        self.timers = timers
        self.rtt = rtt
        self.stats = stats
        self.sb = Scoreboard()  # what the peer reported SACKed (RFC 2018)
        self.dupacks = 0
        # RFC 6582 "recover": snd_max at the last fast retransmit or RTO, None once it is
        # acknowledged; no new fast retransmit until then.
        self.recover: int | None = None
        self.in_recovery = False  # fast recovery: RFC 6675 with SACK, else NewReno
        self.high_rxt = 0  # RFC 6675 HighRxt: retransmitted up to here in this recovery
        # Retransmissions of this SACK recovery as [start, end, snd_max when sent], and
        # those found lost again (Linux's lost-retransmit detection, before RACK).
        self.rtx_marks: list[list[int]] = []
        self.rtx_lost: list[list[int]] = []
        # Tail loss probe (RFC 8985 7): TLP.end_seq while one is out, and whether it
        # was a retransmission.
        self.tlp_high: int | None = None
        self.tlp_rtx = False

    # ------------------------------------------------------------------ views

    def flight(self) -> int:
        """Outside SACK recovery: what is in flight less what the peer SACKed."""
        c = self.conn
        sb = self.sb
        if not sb.blocks:
            return (c.snd_nxt - c.snd_una) & MASK
        return c.in_flight - sb.sacked_below(c.snd_nxt)

    def limited_transmit(self) -> int:
        """RFC 3042 limited transmit: extra window for the first duplicate ACKs."""
        c = self.conn
        if not self.in_recovery and not c.sack_ok and 0 < self.dupacks < DUPTHRESH:
            return self.dupacks * c.mss
        return 0

    def next_sacked(self, seq: int) -> tuple[int, int] | None:
        sb = self.sb
        return sb.next_sacked(seq) if sb else None

    # ------------------------------------------------------------------ ACKs

    def on_sack(self, blocks: tuple[tuple[int, int], ...], old_una: int, ack: int) -> tuple[int, int]:
        """The SACK blocks of an acceptable ACK: (octets newly SACKed, D-SACKs)."""
        c = self.conn
        newly, dsack = self.sb.update(blocks, old_una, c.snd_max, ack)
        if dsack:
            self.stats["TcpExtTCPDSACKRecv"] += dsack
        if newly and self.rtx_marks:
            self._detect_lost_retransmits()
        return newly, dsack

    def on_ack(self, acked: int, ack: int, flight: int, dsack: int, now: float) -> None:
        """An ACK of `acked` new bytes up to `ack`; `flight` was outstanding before it."""
        sb = self.sb
        if sb.blocks:
            sb.advance(ack)
        if self.tlp_high is not None and sq.ge(ack, self.tlp_high):
            self._tlp_acked(flight, dsack)
        cc = self.cc
        mss = self.conn.mss
        self.dupacks = 0
        if self.in_recovery:
            if sq.ge(ack, self.recover):
                # Full ACK: recovery is over. RFC 6675 / RFC 5681 3.2 step 6: cwnd =
                # ssthresh; NewReno bounds it by what is in flight (RFC 6582 3.2 step 3).
                self.in_recovery = False
                self.recover = None
                if self.conn.sack_ok:
                    cc.on_exit_recovery()
                else:
                    out = sq.diff(self.conn.snd_max, ack)
                    cc.on_exit_recovery(max(out, mss) + mss)
            elif not self.conn.sack_ok:
                # NewReno partial ACK (RFC 6582 3.2 step 4): retransmit the next hole,
                # deflate by what was acknowledged.
                self.conn.retransmit_head(now)
                cc.deflate(acked)
            # With SACK, the output loop sends what NextSeg() picks (RFC 6675 5 step C).
            return
        if self.recover is not None and sq.ge(ack, self.recover):
            self.recover = None  # all data sent before the last RTO is acknowledged
        cc.on_ack(acked, flight, now)

    def on_duplicate_ack(self, now: float) -> None:
        """RFC 5681 3.2 fast retransmit on the third duplicate ACK (or RFC 6675 IsLost()
        of the first segment with SACK), then NewReno or SACK recovery."""
        self.dupacks += 1
        self.stats["TcpExtTCPDupAcks"] += 1
        c = self.conn
        if self.in_recovery:
            if not c.sack_ok:
                self.cc.inflate(c.mss)  # RFC 5681 3.2 step 4: a segment left the network
            return
        if self.recover is not None:
            # RFC 6582 3.2 step 1 (and RFC 6675 5 step 2): duplicate ACKs below `recover`
            # of the last RTO or recovery do not start another one.
            return
        sb = self.sb
        if self.dupacks >= DUPTHRESH or (c.sack_ok and (
                sb.sacked > (DUPTHRESH - 1) * c.mss or len(sb.blocks) >= DUPTHRESH)):
            self._enter_recovery(now)

    def _enter_recovery(self, now: float) -> None:
        c = self.conn
        mss = c.mss
        # RFC 5681 eq. 4 (the controller's rule): ssthresh from FlightSize.
        self.cc.on_congestion_event(sq.diff(c.snd_max, c.snd_una), now)
        self.recover = c.snd_max
        self.in_recovery = True
        self.high_rxt = c.snd_una
        self.rtx_marks.clear()
        self.rtx_lost.clear()
        self.timers.clear(Timer.LOSS)
        self.tlp_high = None
        if c.sack_ok:
            self.stats["TcpExtTCPSackRecovery"] += 1  # RFC 6675 5 step (4.2): cwnd = ssthresh
        else:
            self.stats["TcpExtTCPRenoRecovery"] += 1
            self.cc.inflate(DUPTHRESH * mss)  # RFC 5681 3.2 step 3: ssthresh + 3 SMSS
        # RFC 5681 3.2 step 2 / RFC 6675 (4.3): resend the first unacknowledged segment.
        n = c.retransmit_head(now)
        self.high_rxt = (c.snd_una + n) & MASK
        if n and c.sack_ok:
            self.rtx_marks.append([c.snd_una, self.high_rxt, c.snd_max])

    def on_rto(self) -> None:
        """A retransmission timeout ended any recovery: RFC 6582 4 / RFC 6675 5.1, no
        fast retransmit for duplicate ACKs of data sent before the timeout."""
        c = self.conn
        self.in_recovery = False
        self.recover = c.snd_max
        self.dupacks = 0
        self.rtx_marks.clear()
        self.rtx_lost.clear()
        self.timers.clear(Timer.LOSS)
        self.tlp_high = None
        if c.retries >= 2:
            self.sb.clear()  # RFC 2018 8: the receiver may have reneged; stop trusting SACKs

    # ------------------------------------------------------------------ SACK recovery

    def pipe(self) -> int:
        """RFC 6675 SetPipe(): octets still in the network during SACK recovery. Per
        un-SACKed range: its octets unless IsLost(), plus those retransmitted (below
        HighRxt) unless that retransmission was found lost too."""
        c = self.conn
        hr = self.high_rxt
        pipe = 0
        for start, end, lost in self.sb.holes(c.snd_una, c.snd_max, c.mss):
            if not lost:
                pipe += sq.diff(end, start)
            if sq.lt(start, hr):
                pipe += sq.diff(end if sq.le(end, hr) else hr, start)
                for a, b in self.rtx_lost:
                    lo = a if sq.gt(a, start) else start
                    hi = b if sq.lt(b, end) else end
                    if sq.lt(lo, hi):
                        pipe -= sq.diff(hi, lo)
        return pipe

    def _next_seg(self, lost_only: bool) -> tuple[int, int] | None:
        """RFC 6675 NextSeg(): a lost retransmission first, then rule 1 (the first lost
        octet above HighRxt) or, if not `lost_only`, rule 3 (the first un-SACKed octet
        above HighRxt below HighSACK): (seq, octets up to the end of that range)."""
        c = self.conn
        holes = self.sb.holes(c.snd_una, c.snd_max, c.mss)
        while self.rtx_lost:
            a, b = self.rtx_lost[0]
            for start, end, _lost in holes:
                lo = a if sq.gt(a, start) else start
                hi = b if sq.lt(b, end) else end
                if sq.lt(lo, hi):
                    return lo, sq.diff(hi, lo)
            self.rtx_lost.pop(0)  # SACKed or acknowledged meanwhile
        hr = self.high_rxt
        high = self.sb.high
        for start, end, lost in holes:
            if sq.le(end, hr):
                continue
            s = start if sq.gt(start, hr) else hr
            if lost or (not lost_only and high is not None and sq.lt(s, high)):
                return s, sq.diff(end, s)
            if lost_only:
                return None  # lost ranges are a prefix of the holes
        return None

    def sack_retransmit(self, now: float, pipe: int, lost_only: bool) -> tuple[bool, int]:
        """RFC 6675 5 step (C): while cwnd - pipe >= 1 SMSS, resend NextSeg()."""
        c = self.conn
        sent = False
        while self.cc.cwnd - pipe >= c.mss:
            nxt = self._next_seg(lost_only)
            if nxt is None:
                break
            seq, octets = nxt
            k = c.retransmit(seq, octets, now)
            if not k:
                break
            end = (seq + k) & MASK
            lost = self.rtx_lost
            if lost and sq.le(lost[0][0], seq) and sq.lt(seq, lost[0][1]):
                lost[0][0] = end  # resent again
                if not sq.lt(end, lost[0][1]):
                    lost.pop(0)
            elif sq.gt(end, self.high_rxt):
                self.high_rxt = end
            self.rtx_marks.append([seq, end, c.snd_max])
            pipe += k
            sent = True
        return sent, pipe

    def _detect_lost_retransmits(self) -> None:
        """A retransmission is lost if the peer SACKs data first sent more than one
        segment after it while it is still missing (Linux tcp_mark_lost_retrans(), the
        idea RACK generalizes, RFC 8985 6.2). Its octets become NextSeg() candidates."""
        c = self.conn
        high = self.sb.high
        if high is None:
            return
        keep = []
        for mark in self.rtx_marks:
            start, end, smax = mark
            if sq.le(end, c.snd_una):
                continue
            if not sq.gt(high, (smax + c.mss) & MASK):
                keep.append(mark)
                continue
            blk = self.sb.next_sacked(start)
            if blk is None or sq.gt(blk[0], start) or sq.lt(blk[1], end):
                self.stats["TcpExtTCPLostRetransmit"] += 1
                self.rtx_lost.append([start if sq.gt(start, c.snd_una) else c.snd_una, end])
        self.rtx_marks = keep

    # ------------------------------------------------------------------ tail loss probe

    def arm_probe(self, now: float) -> None:
        """RFC 8985 7.2 (Linux tcp_schedule_loss_probe()): with SACK, in the open state,
        more than one segment out and no probe outstanding, a probe timeout of
        2 * SRTT + 2 ms, unless the RTO comes first. A single segment is left to the
        RTO (Linux's PTO would add the 200 ms floor and be about the RTO; LS 122)."""
        c = self.conn
        timers = self.timers
        if (self.tlp_high is not None or self.in_recovery or self.recover is not None
                or not c.sack_ok or self.rtt.srtt is None or c.retries
                or not c.open_for_probe()
                or sq.diff(c.snd_max, c.snd_una) <= c.mss):
            timers.clear(Timer.LOSS)
            return
        at = now + 2 * self.rtt.srtt + 0.002
        rto_at = timers.get(Timer.RTO)
        if rto_at is None or at < rto_at:
            timers.set(Timer.LOSS, at)
        else:
            timers.clear(Timer.LOSS)

    def on_probe_timeout(self, now: float) -> None:
        """RFC 8985 7.3: send one new segment if the peer's window allows, else resend
        the last one, so that an ACK (with SACK) comes back and recovery can start
        without waiting for the RTO."""
        c = self.conn
        if (not c.open_for_probe() or self.in_recovery
                or self.recover is not None or self.tlp_high is not None
                or c.snd_una == c.snd_max):
            return
        self.stats["TcpExtTCPLossProbes"] += 1
        unsent = c.unsent()
        room = c.snd_wnd - c.in_flight
        if unsent > 0 and room > 0 and c.snd_nxt == c.snd_max:
            c.send_new(min(unsent, c.send_mss(), room), now)
            self.tlp_rtx = False
        else:
            seq = (c.snd_max - min(c.mss, sq.diff(c.snd_max, c.snd_una))) & MASK
            c.retransmit(seq, sq.diff(c.snd_max, seq), now)
            self.tlp_rtx = True
        self.tlp_high = c.snd_max
        self.timers.set(Timer.RTO, now + self.rtt.current())  # RFC 8985 7.3: from the probe

    def _tlp_acked(self, flight: int, dsack: int) -> None:
        """RFC 8985 7.4: the ACK covers the probe. If the probe was a retransmission and
        the peer did not report it as a duplicate (D-SACK), it repaired a loss: reduce
        the window as for any loss."""
        if self.tlp_rtx and not dsack:
            self.stats["TcpExtTCPLossProbeRecovery"] += 1
            self.cc.on_congestion_event(flight, 0.0)
        self.tlp_high = None
