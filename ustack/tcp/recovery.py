"""Loss detection and recovery for one connection, as Linux's tcp_input.c does it.

With SACK: the congestion states of tcp_fastretrans_alert() (Open, Disorder, CWR,
Recovery, Loss), RACK-TLP (RFC 8985; rack.py) as the loss detector on the send queue's
record of what was sent when, PRR (RFC 6937; prr.py) for the window during recovery,
D-SACK (RFC 2883) and timestamps (Eifel, RFC 3522) to undo a spurious reduction, F-RTO
(RFC 5682) for a spurious timeout. `tcp_recovery=0` marks losses by RFC 6675's
DupThresh rule instead of RACK.

Without SACK: NewReno (RFC 5681 3.2, RFC 6582) with window inflation, the third
duplicate ACK starting fast retransmit.

The TCB calls in at fixed points (each ACK, the output loop, the RTO, the LOSS timer)
and this module calls back through the small `Sender` interface to put segments on
the wire. Its deadline is the LOSS slot of the TCB's timers: the reordering timer
(RACK) or the probe timeout (TLP), never both (the TLP is armed only in Open/CWR).
The window arithmetic is the congestion controller's (cc/).
"""

from __future__ import annotations

from typing import Protocol

from .. import seq as sq
from ..stats import Stats
from .cc import CongestionControl
from .cc.base import INFINITE_SSTHRESH
from .prr import Prr
from .rack import TIMEOUT_MIN, Rack
from .rto import RtoEstimator
from .sack import DUPTHRESH, Scoreboard
from .sendq import LOST, RETRANSMITTED, SACKED, SendQueue, Sent
from .timers import Timer, Timers

MASK = 0xFFFFFFFF

# Linux's icsk_ca_state names (ss -i prints them lower-case).
OPEN, DISORDER, CWR, RECOVERY, LOSS = "Open", "Disorder", "CWR", "Recovery", "Loss"
_ORDER = {OPEN: 0, DISORDER: 1, CWR: 2, RECOVERY: 3, LOSS: 4}

RACK_LOSS_DETECTION = 0x1  # tcp_recovery bit (Linux TCP_RACK_LOSS_DETECTION)


class Sender(Protocol):
    """What recovery needs from the connection (the TCB implements it)."""

    snd_una: int
    snd_nxt: int
    snd_max: int
    snd_wnd: int
    max_snd_wnd: int
    mss: int
    sack_ok: bool
    retries: int
    sendq: SendQueue

    def send_mss(self) -> int: ...
    def unsent(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    def open_for_probe(self) -> bool: ...
    def retransmit(self, seq: int, limit: int, now: float) -> int: ...
    def retransmit_head(self, now: float) -> int: ...
    def send_new(self, n: int, now: float) -> None: ...


def _segs(n: int, mss: int) -> int:
    return -(-n // mss) if n > 0 else 0


class Recovery:
    """The loss-recovery state of one connection (Linux's tcp_sock fields of the same
    names where there is one)."""

    __slots__ = ("conn", "cc", "timers", "rtt", "stats", "sb", "dupacks", "recover",
                 "in_recovery", "tlp_high", "tlp_rtx", "ca_state", "high_seq", "rack",
                 "prr", "prior_cwnd", "prior_ssthresh", "undo_marker", "undo_retrans",
                 "retrans_stamp", "frto", "reordering", "reord_seen", "total_retrans",
                 "dsack_dups", "bits", "early_retrans", "frto_knob", "sysctl_reordering",
                 "max_reordering", "loss_kind", "any_lost", "_fack", "_delivered",
                 "_orig_acked", "_dsack_tlp", "_newly_lost", "_reord", "frto_new", "_sacked_ack")

    def __init__(self, conn: Sender, cc: CongestionControl, timers: Timers,
                 rtt: RtoEstimator, stats: Stats, recovery: int = 1, early_retrans: int = 3,
                 frto: int = 2, reordering: int = 3, max_reordering: int = 300) -> None:
        self.conn = conn
        self.cc = cc
        self.timers = timers
        self.rtt = rtt
        self.stats = stats
        self.bits = recovery  # tcp_recovery
        self.early_retrans = early_retrans
        self.frto_knob = frto
        self.sysctl_reordering = reordering
        self.max_reordering = max_reordering
        self.sb = Scoreboard()  # what the peer reported SACKed (RFC 2018)
        self.ca_state = OPEN
        self.high_seq = 0  # SND.MAX when the current state began
        self.rack = Rack(recovery)
        self.prr = Prr()
        self.prior_cwnd = 0
        self.prior_ssthresh = 0
        self.undo_marker: int | None = None  # SND.UNA when the reduction began
        self.undo_retrans = -1  # retransmissions not yet proven spurious by a D-SACK
        self.retrans_stamp: int | None = None  # TSval of the episode's first retransmission
        self.frto = False
        self.frto_new = False  # F-RTO step 2.b: this ACK sends new data, not retransmissions
        self.reordering = reordering  # Linux tp->reordering, in segments
        self.reord_seen = 0
        self.total_retrans = 0  # segments retransmitted, over the connection's life
        self.dsack_dups = 0
        self.loss_kind: str | None = None  # what the LOSS timer is: "reo" or "tlp"
        self.any_lost = False  # some record may carry LOST (pipe() then walks)
        # Per-ACK scratch (Linux's sacktag state and flags).
        self._fack: int | None = None
        self._delivered = 0
        self._orig_acked = False
        self._dsack_tlp = False
        self._newly_lost = 0
        self._reord: tuple[int, int] | None = None
        self._sacked_ack = False  # on_sack() ran for this ACK
        # NewReno (no SACK): duplicate ACKs and RFC 6582 "recover".
        self.dupacks = 0
        self.recover: int | None = None
        self.in_recovery = False  # the Recovery state (fast recovery), either kind
        # Tail loss probe (RFC 8985 7): TLP.end_seq while one is out, and whether it
        # was a retransmission.
        self.tlp_high: int | None = None
        self.tlp_rtx = False

    # ------------------------------------------------------------------ views

    def _walk(self) -> tuple[int, int, int, int]:
        """(pipe, sacked, lost, retransmitted-and-outstanding) in octets, from the send
        record below SND.NXT (Linux tcp_packets_in_flight() = packets_out - sacked_out
        - lost_out + retrans_out). Above SND.NXT (go-back-N after an RTO) is not out."""
        c = self.conn
        nxt = c.snd_nxt
        pipe = sacked = lost = rtx = 0
        for rec in c.sendq.sent:
            if (rec.start - nxt) & MASK < 0x80000000:  # start >= nxt
                break
            n = ((rec.end if (nxt - rec.end) & MASK < 0x80000000 else nxt) - rec.start) & MASK
            f = rec.flags
            if f & SACKED:
                sacked += n
            elif f & LOST:
                lost += n
            else:
                pipe += n
                if f & RETRANSMITTED:
                    rtx += n
        self.any_lost = lost > 0
        return pipe, sacked, lost, rtx

    def pipe(self) -> int:
        """Octets in flight: sent, not SACKed, not deemed lost (RFC 6675 pipe)."""
        c = self.conn
        if not self.sb.blocks and not self.any_lost:
            return (c.snd_nxt - c.snd_una) & MASK
        return self._walk()[0]

    def flight(self) -> int:
        return self.pipe()

    def limited_transmit(self) -> int:
        """RFC 3042 limited transmit (NewReno): extra window for the first duplicate
        ACKs. With SACK the SACKed octets leave the pipe, which does the same."""
        c = self.conn
        if not self.in_recovery and not c.sack_ok and 0 < self.dupacks < DUPTHRESH:
            return self.dupacks * c.mss
        return 0

    def next_sacked(self, seq: int) -> tuple[int, int] | None:
        sb = self.sb
        return sb.next_sacked(seq) if sb else None

    # The read-only view `ss -i` / TCP_INFO shows (Linux tcp_sock fields, segments).

    @property
    def sacked_out(self) -> int:
        if self.conn is None:
            return 0  # released (Tcb.release): no queues, as after Linux's tcp_done()
        if not self.conn.sack_ok:
            return self.dupacks
        return _segs(self.sb.sacked, self.conn.mss)

    @property
    def lost_out(self) -> int:
        c = self.conn
        if c is None:
            return 0
        lost = self._walk()[2]
        if self.ca_state == LOSS:
            # Go-back-N: what lies above SND.NXT and is not SACKed is deemed lost.
            above = sq.diff(c.snd_max, c.snd_nxt)
            if above > 0:
                lost += above - (self.sb.sacked - self.sb.sacked_below(c.snd_nxt))
        return _segs(lost, c.mss)

    @property
    def retrans_out(self) -> int:
        if self.conn is None:
            return 0
        return _segs(self._walk()[3], self.conn.mss)

    @property
    def delivery_rate(self) -> None:
        return None  # not computed (Linux tcp_rate.c is not ported)

    @property
    def app_limited(self) -> bool:
        return False

    def _in_reduction(self) -> bool:
        return self.ca_state in (RECOVERY, CWR)

    # ------------------------------------------------------------------ ACKs

    def on_sack(self, blocks: tuple[tuple[int, int], ...], old_una: int, ack: int,
                now: float = 0.0) -> tuple[int, int]:
        """The SACK blocks of an acceptable ACK: (octets newly SACKed, D-SACKs). Marks
        the send record (Linux tcp_sacktag_write_queue()) and feeds RACK."""
        c = self.conn
        sb = self.sb
        prior_fack = sb.high
        self._sacked_ack = True
        newly, dsack = sb.update(blocks, old_una, c.snd_max, ack)
        self._fack = prior_fack  # Linux's prior_fack: the highest SACK before this ACK
        if dsack:
            self._check_dsack(blocks, ack, old_una)
        if newly:
            mark = c.sendq.mark_records
            rack = self.rack
            for left, right in blocks[1:] if dsack else blocks:
                for rec in mark(left, right, SACKED):
                    rack.advance(rec, now)
                    self._newly_delivered(rec, prior_fack)
            self._delivered += newly
            self._reord_check()
        return newly, dsack

    def _partly_acked(self, n: int, low: int, prior_fack: int | None, now: float) -> None:
        """The front of the first record was acknowledged (a burst is one record, so
        this is the common case): delivered, as Linux's tcp_tso_acked() part of an skb
        (tcp_clean_rtx_queue() advances RACK with it too)."""
        self._delivered += n
        sent = self.conn.sendq.sent
        if sent:
            rec = sent[0]
            self.rack.advance(rec, now)
            self._newly_delivered(rec, prior_fack, low)

    def _newly_delivered(self, rec: Sent, prior_fack: int | None, low: int | None = None) -> None:
        """A record newly (S)ACKed: evidence of reordering (a never-retransmitted
        segment below the highest SACK, Linux tcp_check_sack_reordering()) and, for
        F-RTO, of original data delivered (FLAG_ORIG_SACK_ACKED)."""
        if rec.flags & RETRANSMITTED:
            return
        start = rec.start if low is None else low
        if prior_fack is not None and sq.lt(start, prior_fack):
            # Once per ACK and path, for the lowest such segment (Linux state->reord).
            if self._reord is None or sq.lt(start, self._reord[0]):
                self._reord = (start, prior_fack)
        if self.ca_state == LOSS and sq.le(rec.end, self.high_seq):
            self._orig_acked = True

    def _reord_check(self) -> None:
        if self._reord is not None:
            self._reordered(self._reord[0], self._reord[1], ts=False)
            self._reord = None

    def _reordered(self, low: int, fack: int, ts: bool) -> None:
        """Linux tcp_check_sack_reordering(): data at `low` arrived after `fack`."""
        mss = self.conn.mss
        metric = sq.diff(fack, low)
        if metric <= 0:
            return
        if metric > self.reordering * mss:
            self.reordering = min(-(-metric // mss), self.max_reordering)
        self.reord_seen += 1
        self.stats["TcpExtTCPTSReorder" if ts else "TcpExtTCPSACKReorder"] += 1

    def _check_dsack(self, blocks: tuple[tuple[int, int], ...], ack: int, old_una: int) -> None:
        """Linux tcp_check_dsack() / tcp_dsack_seen() (RFC 2883 4, RFC 3708)."""
        c = self.conn
        start, end = blocks[0]
        self.stats["TcpExtTCPDSACKRecv" if sq.lt(start, ack) else "TcpExtTCPDSACKOfoRecv"] += 1
        length = sq.diff(end, start)
        if length <= 0 or length > max(c.max_snd_wnd, c.mss):
            self.stats["TcpExtTCPDSACKIgnoredDubious"] += 1
            return
        segs = _segs(length, c.mss)
        if length <= c.mss and self.tlp_high is not None and self.tlp_high == end:
            self._dsack_tlp = True  # the probe was a duplicate
        self.dsack_dups += segs
        if self.dsack_dups > self.total_retrans:
            # More duplicates than we ever retransmitted: not ours to count.
            self.stats["TcpExtTCPDSACKIgnoredDubious"] += 1
            return
        if self.reord_seen and not self._dsack_tlp:
            self.rack.dsack_seen = True  # RACK widens its window (tcp_rack_update_reo_wnd)
        self.stats["TcpExtTCPDSACKRecvSegs"] += segs
        self._delivered += length  # a spurious retransmission was delivered
        if (self.undo_marker is not None and self.undo_retrans > 0
                and sq.gt(end, self.undo_marker)):
            self.undo_retrans = max(0, self.undo_retrans - segs)

    def on_ack(self, acked: int, ack: int, flight: int, dsack: int, now: float,
               removed: list[Sent] | None = None, tsecr: int | None = None,
               newly_sacked: int = 0) -> None:
        """An acceptable ACK, after SND.UNA moved to `ack` (by `acked` octets, maybe 0)
        and the record dropped `removed`; `flight` was outstanding before it."""
        if not self.conn.sack_ok:
            if acked > 0:
                self._newreno_ack(acked, ack, flight, dsack, now)
            return
        c = self.conn
        sb = self.sb
        self.frto_new = False
        prior_fack = self._fack if self._fack is not None or self._sacked_ack else sb.high
        if sb.blocks:
            sb.advance(ack)
        una_adv = acked > 0
        if removed:
            rack = self.rack
            gone = 0
            for rec in removed:
                n = sq.diff(rec.end, rec.start)
                gone += n
                if rec.flags & SACKED:
                    continue
                self._delivered += n
                rack.advance(rec, now)
                self._newly_delivered(rec, prior_fack)
            if acked > gone:
                self._partly_acked(acked - gone, (ack - (acked - gone)) & MASK, prior_fack, now)
        elif acked > 0:
            self._partly_acked(acked, (ack - acked) & MASK, prior_fack, now)
        self._reord_check()
        dup = una_adv is False and newly_sacked > 0
        if dup:
            self.dupacks += 1
            self.stats["TcpExtTCPDupAcks"] += 1
        if self.tlp_high is not None and sq.ge(ack, self.tlp_high):
            self._process_tlp_ack(ack, una_adv, dup)
        self.rack.update_reo_wnd(now, self.rtt.srtt)
        self._newly_lost = 0
        if dup or newly_sacked or dsack or self.ca_state != OPEN:
            # The reduction is from FlightSize before this ACK (RFC 5681 eq. 4), at most
            # cwnd: what SACKs let out beyond it is no measure of the path (Linux's
            # Reno halves cwnd, tcp_reno_ssthresh(); RFC 6937's examples do the same).
            flight_size = min(sq.diff(c.snd_max, c.snd_una) + max(acked, 0), self.cc.cwnd)
            self._fastretrans_alert(una_adv, dup, newly_sacked, flight_size, tsecr, now)
        # tcp_cong_control(): PRR in a reduction, else growth on in-order delivery
        # (or on any delivery once reordering is known to be high, tcp_may_raise_cwnd()).
        mss = c.mss
        if self._in_reduction():
            sndcnt = self.prr.sndcnt(_segs(self._delivered, mss), _segs(self.pipe(), mss),
                                     una_adv, self._newly_lost > 0)
            if sndcnt is not None:
                self.cc.cwnd = (_segs(self.pipe(), mss) + sndcnt) * mss
        elif una_adv:
            self.cc.on_ack(acked, flight, now)
        elif self.reordering > self.sysctl_reordering and self._delivered:
            self.cc.on_ack(self._delivered, flight, now)
        if una_adv:
            self.dupacks = 0
        self._delivered = 0
        self._fack = None
        self._sacked_ack = False
        self._orig_acked = False
        self._dsack_tlp = False

    # ------------------------------------------------------------------ the states

    def _fastretrans_alert(self, una_adv: bool, dup: bool, newly_sacked: int, flight: int,
                           tsecr: int | None, now: float) -> None:
        """Linux tcp_fastretrans_alert() for a SACK connection."""
        c = self.conn
        state = self.ca_state
        # D. Exit conditions: high_seq acknowledged.
        if state == OPEN:
            self.retrans_stamp = None
        elif sq.ge(c.snd_una, self.high_seq):
            if state == CWR:
                if c.snd_una != self.high_seq:
                    self._end_cwnd_reduction()
                    self._set_state(OPEN)
            elif state == RECOVERY:
                self._try_undo_recovery(tsecr)
                self._end_cwnd_reduction()
        # E. Process the state.
        state = self.ca_state
        if state == RECOVERY:
            if una_adv and self._try_undo_partial(tsecr):
                return
            if self._try_undo_dsack():
                self._try_to_open()
            self._identify_loss(now)
            if self.ca_state != RECOVERY:
                if not self.any_lost:
                    return
                self._enter_recovery(flight)
            return
        if state == LOSS:
            if self._process_loss(una_adv, dup, newly_sacked, tsecr):
                return
            self._identify_loss(now)
            if self.ca_state != OPEN:
                return
        if self.ca_state in (OPEN, DISORDER):
            self._try_undo_dsack()
        self._identify_loss(now)
        if not self.any_lost:
            self._try_to_open()
            return
        self._enter_recovery(flight)

    def _set_state(self, state: str) -> None:
        self.ca_state = state
        self.in_recovery = state == RECOVERY
        if state not in (OPEN, CWR) and self.loss_kind == "tlp":
            self.timers.clear(Timer.LOSS)
            self.loss_kind = None

    def _try_to_open(self) -> None:
        """Linux tcp_try_to_open() / tcp_try_keep_open(): Disorder while SACKed or lost
        data or retransmissions remain, else Open."""
        if self.ca_state == CWR:
            return
        pipe, sacked, lost, rtx = self._walk()
        state = DISORDER if sacked or lost or rtx else OPEN
        if state == OPEN:
            self.retrans_stamp = None
        if self.ca_state != state:
            self._set_state(state)
            self.high_seq = self.conn.snd_max

    def _identify_loss(self, now: float) -> None:
        """Linux tcp_identify_packet_loss(): RACK, or RFC 6675's DupThresh rule when
        tcp_recovery is 0. Records above SND.NXT (go-back-N) are the RTO's business."""
        c = self.conn
        if not c.sendq.sent:
            self.any_lost = False
            return
        if not self.bits & RACK_LOSS_DETECTION:
            self._dupthresh_mark()
            return
        rack = self.rack
        if not rack.advanced:
            self._walk()
            return
        rack.advanced = False
        reo_wnd = rack.reo_wnd(self.reord_seen, _ORDER[self.ca_state] >= _ORDER[RECOVERY],
                               self.sacked_out, self.reordering, self.rtt.srtt)
        nxt = c.snd_nxt
        records = [r for r in c.sendq.sent if sq.lt(r.start, nxt)] if nxt != c.snd_max \
            else c.sendq.sent
        lost, wait = rack.detect_loss(records, now, reo_wnd)
        for rec in lost:
            self._mark_lost(rec)
        if wait > 0:
            # The reordering timer (Linux ICSK_TIME_REO_TIMEOUT): the longest wait, plus
            # TCP_TIMEOUT_MIN.
            self.loss_kind = "reo"
            self.timers.set(Timer.LOSS, now + wait + TIMEOUT_MIN)
        elif self.loss_kind == "reo":
            self.timers.clear(Timer.LOSS)
            self.loss_kind = None
        self._walk()

    def _mark_lost(self, rec: Sent) -> None:
        """Linux tcp_mark_skb_lost(): a retransmission found lost again is counted."""
        segs = _segs(sq.diff(rec.end, rec.start), self.conn.mss)
        if rec.flags & RETRANSMITTED:
            self.stats["TcpExtTCPLostRetransmit"] += segs
        rec.flags |= LOST
        self._newly_lost += segs
        self.any_lost = True

    def _dupthresh_mark(self) -> None:
        """tcp_recovery=0: RFC 6675 IsLost() on the holes (Linux tcp_update_scoreboard()
        when RACK is off)."""
        c = self.conn
        for start, end, lost in self.sb.holes(c.snd_una, c.snd_max, c.mss):
            if not lost:
                break
            q = c.sendq
            for rec in q.mark_records(start, end, LOST):
                if rec.flags & RETRANSMITTED:
                    rec.flags &= ~LOST  # already resent once in this episode
                else:
                    self._newly_lost += 1
                    self.any_lost = True
        self._walk()

    def _enter_recovery(self, flight: int) -> None:
        """Linux tcp_enter_recovery()."""
        self.stats["TcpExtTCPSackRecovery" if self.conn.sack_ok else "TcpExtTCPRenoRecovery"] += 1
        self.prior_ssthresh = 0
        self._init_undo()
        if not self._in_reduction():
            self.prior_ssthresh = self._current_ssthresh()
            self._init_cwnd_reduction(flight)
        self._set_state(RECOVERY)

    def _current_ssthresh(self) -> int:
        """Linux tcp_current_ssthresh(): what undo may restore."""
        cc = self.cc
        if self._in_reduction():
            return cc.ssthresh
        return max(cc.ssthresh, (cc.cwnd >> 1) + (cc.cwnd >> 2))

    def _init_cwnd_reduction(self, flight: int) -> None:
        """Linux tcp_init_cwnd_reduction(): PRR starts from the current cwnd; ssthresh
        from the controller (where CUBIC records W_max)."""
        c = self.conn
        cc = self.cc
        self.high_seq = c.snd_max
        self.tlp_high = None
        self.prior_cwnd = cc.cwnd
        cc.ssthresh = cc.ssthresh_after_loss(flight)
        self.prr.start(_segs(cc.cwnd, c.mss), cc.ssthresh // c.mss)

    def _end_cwnd_reduction(self) -> None:
        """Linux tcp_end_cwnd_reduction(): cwnd = ssthresh unless the reduction was
        undone."""
        cc = self.cc
        if cc.ssthresh < INFINITE_SSTHRESH and (self.ca_state == CWR
                                                 or self.undo_marker is not None):
            cc.cwnd = cc.ssthresh

    # ------------------------------------------------------------------ undo

    def _init_undo(self) -> None:
        """Linux tcp_init_undo(): the retransmissions D-SACKs must account for."""
        self.undo_marker = self.conn.snd_una
        self.undo_retrans = self.retrans_out
        if self.tlp_high is not None and self.tlp_rtx:
            self.undo_retrans += 1
        if not self.undo_retrans:
            self.undo_retrans = -1  # 0 would mean "every retransmission was spurious"

    def _packet_delayed(self, tsecr: int | None) -> bool:
        """Linux tcp_packet_delayed(): the ACK echoes a timestamp older than our first
        retransmission, so the original arrived (Eifel, RFC 3522 2), or nothing was
        retransmitted at all."""
        if self.retrans_stamp is None:
            return True
        return bool(tsecr) and sq.lt(tsecr, self.retrans_stamp)

    def _may_undo(self, tsecr: int | None) -> bool:
        return self.undo_marker is not None and (not self.undo_retrans
                                                 or self._packet_delayed(tsecr))

    def _undo(self, unmark_loss: bool) -> None:
        """Linux tcp_undo_cwnd_reduction()."""
        c = self.conn
        if unmark_loss:
            c.sendq.clear_flag(LOST)
            self.any_lost = False
            if sq.lt(c.snd_nxt, c.snd_max):
                c.snd_nxt = c.snd_max  # go-back-N stops: nothing was lost
        if self.prior_ssthresh:
            self.cc.undo(self.prior_cwnd, self.prior_ssthresh)
        self.undo_marker = None
        self.rack.advanced = True

    def _try_undo_recovery(self, tsecr: int | None) -> None:
        """Linux tcp_try_undo_recovery(): high_seq acknowledged."""
        if self._may_undo(tsecr):
            self._undo(False)
            self.stats["TcpExtTCPLossUndo" if self.ca_state == LOSS else "TcpExtTCPFullUndo"] += 1
        elif self.rack.reo_wnd_persist:
            self.rack.reo_wnd_persist -= 1
        self._set_state(OPEN)

    def _try_undo_dsack(self) -> bool:
        """Linux tcp_try_undo_dsack(): D-SACKs covered every retransmission."""
        if self.undo_marker is not None and not self.undo_retrans:
            self.rack.reo_wnd_persist = min(16, self.rack.reo_wnd_persist + 1)
            self._undo(False)
            self.stats["TcpExtTCPDSACKUndo"] += 1
            return True
        return False

    def _try_undo_partial(self, tsecr: int | None) -> bool:
        """Linux tcp_try_undo_partial(): a partial ACK whose timestamp shows the hole
        was filled by a delayed original, not by our retransmission."""
        if self.undo_marker is not None and self._packet_delayed(tsecr):
            fack = self.sb.high
            if fack is not None:
                self._reordered(self.conn.snd_una, fack, ts=True)
            if self.retrans_out:
                return True  # clock out new data, mark no more losses
            self._undo(True)
            self.stats["TcpExtTCPPartialUndo"] += 1
            self._set_state(OPEN)
            self._try_to_open()
        return False

    def _try_undo_loss(self, frto_undo: bool, tsecr: int | None) -> bool:
        """Linux tcp_try_undo_loss(): the RTO was spurious."""
        if frto_undo or self._may_undo(tsecr):
            self._undo(True)
            self.stats["TcpExtTCPLossUndo"] += 1
            if frto_undo:
                self.stats["TcpExtTCPSpuriousRTOs"] += 1
            self.conn.retries = 0
            self.rtt.reset_backoff()
            self._set_state(OPEN)
            self._try_to_open()
            return True
        return False

    def _process_loss(self, una_adv: bool, dup: bool, newly_sacked: int,
                      tsecr: int | None) -> bool:
        """Linux tcp_process_loss() with F-RTO (RFC 5682 3.1, SACK-enhanced). True: the
        ACK is fully handled."""
        c = self.conn
        recovered = sq.ge(c.snd_una, self.high_seq)
        if una_adv and self._try_undo_loss(False, tsecr):
            return True
        if self.frto:
            # Step 3.b: never-retransmitted data was (S)ACKed: the timeout was spurious.
            if self._orig_acked and self._try_undo_loss(True, tsecr):
                return True
            if sq.gt(c.snd_max, self.high_seq):
                if newly_sacked or dup:
                    # Step 3.a: the loss was real; conventional recovery: what step
                    # 2.b marked lost is resent (retransmit_lost()).
                    self.frto = False
            elif una_adv and not recovered:
                # Step 2.b: send new data instead of more retransmissions. Go-back-N
                # stops; what it had not resent yet counts as lost (as Linux's
                # tcp_timeout_mark_lost() marked it) and waits for step 3.
                self.high_seq = c.snd_max
                room = sq.diff((c.snd_una + c.snd_wnd) & MASK, c.snd_max)
                if c.unsent() > 0 and room > 0:
                    if sq.lt(c.snd_nxt, c.snd_max):
                        c.sendq.mark_records(c.snd_nxt, c.snd_max, LOST)
                        self.any_lost = True
                        c.snd_nxt = c.snd_max
                    self.frto_new = True
                    return True
                self.frto = False
        if recovered:
            self._try_undo_recovery(tsecr)
            if self.ca_state == OPEN:
                self._try_to_open()
            return True
        return False

    # ------------------------------------------------------------------ NewReno

    def _newreno_ack(self, acked: int, ack: int, flight: int, dsack: int, now: float) -> None:
        """An ACK of `acked` new bytes without SACK (RFC 5681 3.2, RFC 6582)."""
        if self.tlp_high is not None and sq.ge(ack, self.tlp_high):
            self.tlp_high = None
        cc = self.cc
        mss = self.conn.mss
        self.dupacks = 0
        if self.in_recovery:
            if sq.ge(ack, self.recover):
                # Full ACK: recovery is over; NewReno bounds cwnd by what is in flight
                # (RFC 6582 3.2 step 3).
                self.recover = None
                out = sq.diff(self.conn.snd_max, ack)
                cc.on_exit_recovery(max(out, mss) + mss)
                self._set_state(OPEN)
            else:
                # NewReno partial ACK (RFC 6582 3.2 step 4): retransmit the next hole,
                # deflate by what was acknowledged.
                self.conn.retransmit_head(now)
                cc.deflate(acked)
            return
        if self.recover is not None and sq.ge(ack, self.recover):
            self.recover = None  # all data sent before the last RTO is acknowledged
            self._set_state(OPEN)
        elif self.ca_state == DISORDER:
            self._set_state(OPEN)
        cc.on_ack(acked, flight, now)

    def on_duplicate_ack(self, now: float) -> None:
        """Without SACK: RFC 5681 3.2 fast retransmit on the third duplicate ACK, then
        NewReno (Linux counts the duplicates as sacked_out against `reordering`)."""
        self.dupacks += 1
        self.stats["TcpExtTCPDupAcks"] += 1
        c = self.conn
        if self.in_recovery:
            self.cc.inflate(c.mss)  # RFC 5681 3.2 step 4: a segment left the network
            return
        if self.recover is not None:
            # RFC 6582 3.2 step 1: duplicate ACKs below `recover` of the last RTO or
            # recovery do not start another one.
            return
        if self.ca_state == OPEN:
            self._set_state(DISORDER)
        if self.dupacks >= self.reordering:
            self._enter_newreno(now)

    def _enter_newreno(self, now: float) -> None:
        c = self.conn
        self.cc.on_congestion_event(sq.diff(c.snd_max, c.snd_una), now)
        self.recover = c.snd_max
        self.high_seq = c.snd_max
        self._set_state(RECOVERY)
        self.timers.clear(Timer.LOSS)
        self.loss_kind = None
        self.tlp_high = None
        self.stats["TcpExtTCPRenoRecovery"] += 1
        self.cc.inflate(DUPTHRESH * c.mss)  # RFC 5681 3.2 step 3: ssthresh + 3 SMSS
        c.retransmit_head(now)  # RFC 5681 3.2 step 2

    # ------------------------------------------------------------------ output

    def retransmit_lost(self, now: float) -> tuple[bool, int]:
        """Linux tcp_xmit_retransmit_queue(): resend what is marked lost, oldest first,
        while the window has room. Returns (sent anything, pipe after)."""
        c = self.conn
        pipe = self.pipe()
        if not self.any_lost:
            return False, pipe
        q = c.sendq
        mss = c.mss
        cwnd = self.cc.cwnd
        seq = c.snd_una
        sent = False
        while cwnd - pipe >= mss:
            rec = q.next_flagged(seq, LOST, SACKED)
            if rec is None or not sq.lt(rec.start, c.snd_nxt):
                break
            start = rec.start
            k = c.retransmit(start, sq.diff(rec.end, start), now)
            if not k:
                break
            pipe += k
            seq = (start + k) & MASK
            sent = True
        return sent, pipe

    def on_sent(self, n: int, retransmission: bool, tsval: int | None) -> None:
        """The TCB sent `n` octets (a retransmission or not): PRR's prr_out, the undo
        bookkeeping of retransmissions (Linux tcp_retransmit_skb())."""
        segs = _segs(n, self.conn.mss)
        if self._in_reduction():
            self.prr.out += segs
        if retransmission:
            self.total_retrans += segs
            if self.retrans_stamp is None:
                self.retrans_stamp = tsval if tsval else 0
            if self.undo_retrans < 0:
                self.undo_retrans = 0
            self.undo_retrans += segs

    # ------------------------------------------------------------------ the RTO

    def on_rto(self, now: float) -> None:
        """A retransmission timeout (Linux tcp_enter_loss()): the Loss state, ssthresh
        once per window, F-RTO armed. The TCB then resends the head and goes back N."""
        c = self.conn
        cc = self.cc
        flight = sq.diff(c.snd_max, c.snd_una)
        state = self.ca_state
        new_recovery = _ORDER[state] < _ORDER[RECOVERY]
        first = (_ORDER[state] <= _ORDER[DISORDER] or not sq.gt(self.high_seq, c.snd_una)
                 or (state == LOSS and c.retries == 1))
        if first:
            self.prior_ssthresh = self._current_ssthresh()
            self.prior_cwnd = cc.cwnd
            self._init_undo()
        cc.on_rto(flight, first=first)
        if _ORDER[state] <= _ORDER[DISORDER] and self.sacked_out >= self.sysctl_reordering:
            self.reordering = min(self.reordering, self.sysctl_reordering)
        self._set_state(LOSS)
        self.high_seq = c.snd_max
        self.tlp_high = None
        self.frto = bool(self.frto_knob) and c.sack_ok and (new_recovery or c.retries > 1)
        self.recover = c.snd_max  # NewReno: no fast retransmit below it (RFC 6582 4)
        self.dupacks = 0
        self.timers.clear(Timer.LOSS)
        self.loss_kind = None
        c.sendq.clear_flag(LOST)  # go-back-N resends everything not SACKed
        self.any_lost = False
        if c.retries >= 2:
            self.sb.clear()  # RFC 2018 8: the receiver may have reneged; stop trusting SACKs

    # ------------------------------------------------------------------ the LOSS timer

    def on_loss_timer(self, now: float) -> None:
        kind = self.loss_kind
        self.loss_kind = None
        if kind == "reo":
            self._reo_timeout(now)
        elif kind == "tlp":
            self.on_probe_timeout(now)

    def _reo_timeout(self, now: float) -> None:
        """Linux tcp_rack_reo_timeout(): the reordering window ran out."""
        c = self.conn
        before = self._newly_lost = 0
        self.rack.advanced = True
        state = self.ca_state
        self._identify_loss(now)
        if self._newly_lost > before and state != LOSS:
            if self.ca_state != RECOVERY:
                self._enter_recovery(sq.diff(c.snd_max, c.snd_una))
                mss = c.mss
                pipe = _segs(self.pipe(), mss)
                sndcnt = self.prr.sndcnt(1, pipe, False, True)
                self.cc.cwnd = (pipe + (sndcnt or 0)) * mss
        self._newly_lost = 0

    # ------------------------------------------------------------------ tail loss probe

    def arm_probe(self, now: float) -> None:
        """Linux tcp_schedule_loss_probe() (RFC 8985 7.2): with SACK, in Open or CWR,
        data in flight and no probe outstanding, PTO = 2 * SRTT plus 2 ms, or plus
        tcp_rto_min (the delayed-ACK allowance) when one segment is out; 1 s without
        an RTT sample; never after the RTO."""
        c = self.conn
        timers = self.timers
        if self.loss_kind == "reo":
            if timers.is_set(Timer.LOSS):
                return  # the reordering timer has the slot
            self.loss_kind = None  # cleared by the TCB (all acknowledged)
        if (self.early_retrans not in (3, 4) or self.tlp_high is not None
                or self.ca_state not in (OPEN, CWR) or not c.sack_ok or c.retries
                or not c.open_for_probe() or c.snd_una == c.snd_max):
            if self.loss_kind == "tlp":
                timers.clear(Timer.LOSS)
                self.loss_kind = None
            return
        srtt = self.rtt.srtt
        if srtt is None:
            pto = 1.0
        elif sq.diff(c.snd_max, c.snd_una) > c.mss:
            pto = 2 * srtt + TIMEOUT_MIN
        else:
            pto = 2 * srtt + self.rtt.rto_min
        at = now + pto
        rto_at = timers.get(Timer.RTO)
        if rto_at is None or at < rto_at:
            timers.set(Timer.LOSS, at)
            self.loss_kind = "tlp"
        elif self.loss_kind == "tlp":
            timers.clear(Timer.LOSS)
            self.loss_kind = None

    def on_probe_timeout(self, now: float) -> None:
        """Linux tcp_send_loss_probe() (RFC 8985 7.3): one new segment if the peer's
        window allows, else the last segment again, so that an ACK (with SACK) comes
        back and RACK can see the loss without waiting for the RTO."""
        c = self.conn
        if (not c.open_for_probe() or self.ca_state not in (OPEN, CWR)
                or self.tlp_high is not None or c.snd_una == c.snd_max):
            return
        unsent = c.unsent()
        room = sq.diff((c.snd_una + c.snd_wnd) & MASK, c.snd_nxt)
        if unsent > 0 and room > 0 and c.snd_nxt == c.snd_max:
            c.send_new(min(unsent, c.send_mss(), room), now)
            self.tlp_rtx = False
        else:
            seq = (c.snd_max - min(c.mss, sq.diff(c.snd_max, c.snd_una))) & MASK
            if not c.retransmit(seq, sq.diff(c.snd_max, seq), now):
                return
            self.tlp_rtx = True
        self.stats["TcpExtTCPLossProbes"] += 1
        self.tlp_high = c.snd_max
        self.timers.set(Timer.RTO, now + self.rtt.current())  # RFC 8985 7.3: from the probe

    def _process_tlp_ack(self, ack: int, una_adv: bool, dup: bool) -> None:
        """Linux tcp_process_tlp_ack() (RFC 8985 7.4)."""
        if not self.tlp_rtx or self._dsack_tlp:
            self.tlp_high = None  # new data ACKed, or both copies arrived (D-SACK)
        elif sq.gt(ack, self.tlp_high):
            # The probe repaired a loss: one reduction (CWR), done at once.
            c = self.conn
            self._init_cwnd_reduction(sq.diff(c.snd_max, c.snd_una))
            self._set_state(CWR)
            self._end_cwnd_reduction()
            self._set_state(OPEN)
            self._try_to_open()
            self.stats["TcpExtTCPLossProbeRecovery"] += 1
        elif not una_adv and not dup:
            self.tlp_high = None  # a pure duplicate ACK: both copies arrived
