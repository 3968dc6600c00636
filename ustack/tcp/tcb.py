"""The TCP state machine of one connection: sans-IO.

Inputs: `handle_segment(seg, now)`, `handle_timer(now)` and the user calls (`send`, `recv`,
`shutdown`, `close`, `abort`). Outputs, pulled by the caller: segments appended to
`self.tx` (a list shared with the demultiplexer), events in `self.events`, and the next
deadline in `self.deadline` (the earliest of `self.timers`). No sockets, no clock, no
asyncio, no logging; state changes carry a `Cause` (events.py), formatted by the edges.

This module is the pair of Linux's tcp_input.c and tcp_output.c: the user calls, the
input ladder, text and FIN, and the output loop. What owns its own state lives beside
it: congestion control (`self.cc`, cc/), loss recovery and the loss probe
(`self.recovery`, recovery.py), the send buffer and its record of what was sent when
(`self.sendq`, sendq.py), the timers (`self.timers`, timers.py), PAWS (paws.py), the
RTO estimator (`self.rtt`, rto.py) and the reassembly queue (`self.ofo`, ofo.py).

Read RFC 9293 section 3.10 (event processing) alongside `_synchronized_input`; the
comments cite it. Where the RFC leaves a choice, ustack does what Linux does and
../shared/LINUX-SPEC.md item numbers are cited as "LS n".
"""

from __future__ import annotations

import errno as E

from .. import seq as sq
from ..wire.tcp import ACK, CWR, ECE, FIN, PSH, RST, SYN, Segment
from . import cc, ecn, paws, reqsock
from .cc import IW_SEGMENTS  # noqa: F401  (re-exported: tests and benchmarks)
from .context import Context
from .events import (
    Cause,
    Connected,
    ConnectionClosed,
    DataReceived,
    EofReceived,
    SendSpaceAvailable,
    StateChanged,
    Why,
)
from .mem import RMEM_MIN
from .ofo import OfoQueue
from .rcvq import RecvQueue
from .recovery import Recovery
from .rto import RtoEstimator
from .sendq import RETRANSMITTED, SACKED, SendQueue
from .state import State
from .timers import Timer, Timers

MASK = 0xFFFFFFFF
DEFAULT_MSS = 536  # RFC 9293 3.7.1: assumed when the peer sends no MSS option
# Linux net.ipv4.tcp_min_snd_mss (CVE-2019-11479): a smaller MSS option is raised to
# this, else the options every segment carries could leave no room for data.
MIN_SND_MSS = 48
OUR_MSS = 1460  # the MSS we advertise on the default MTU of 1500 (ctx.adv_mss: MTU - 40)
TS_OPT_LEN = 12
DELACK = 0.040  # Linux TCP_DELACK_MIN, the "at most 40 ms"
QUICKACKS = 16  # Linux TCP_MAX_QUICKACKS: ACK every segment at the start
OFO_MIN_BLOCKS = 64  # the out-of-order queue's block limit at least (Tcb._ofo_room)
FIN_TIMEOUT_MAX = 120.0

# State sets tested once or more per segment. A frozenset test is one hash lookup; a
# tuple of State members costs an enum attribute lookup per member (~40 ns each).
_NO_INPUT = frozenset((State.CLOSED, State.TIME_WAIT))  # TIME_WAIT: see timewait.py
_NO_OUTPUT = frozenset((State.CLOSED, State.LISTEN, State.SYN_SENT, State.SYN_RECEIVED,
                        State.TIME_WAIT))
_GONE = _NO_INPUT
# The fieldless events, one instance each: frozen and compared by type, so a segment
# need not allocate one (two per data segment and its ACK otherwise).
_CONNECTED, _SEND_SPACE, _DATA, _EOF = Connected(), SendSpaceAvailable(), DataReceived(), EofReceived()
# Timer slots used per segment, as globals: an enum attribute costs a lookup each time.
_DELACK, _RTO, _PERSIST, _KEEPALIVE = Timer.DELACK, Timer.RTO, Timer.PERSIST, Timer.KEEPALIVE
_RECEIVING = frozenset((State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2))
_ESTABLISHED = State.ESTABLISHED
_ACK_PSH = ACK | PSH
_OPEN = frozenset((State.ESTABLISHED, State.CLOSE_WAIT))  # where new data may go out
# Where a loss probe may go out: wherever data or our FIN can be outstanding (Linux
# tcp_schedule_loss_probe() has no state test beyond Fast Open).
_PROBE = frozenset((State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING,
                    State.LAST_ACK))
_REDUCING = frozenset(("Recovery", "CWR"))  # recovery.py's states where PRR counts prr_out


def no_socket_rst(seg: Segment, sport: int, dport: int) -> Segment:
    """The RST a segment would get if no connection owned it (RFC 9293 3.10.7.1, LS 19,
    Linux tcp_v4_send_reset()): R seq=SEG.ACK if it has ACK, else R. seq 0 ack
    SEG.SEQ+SEG.LEN (SYN and FIN count one); no options."""
    if seg.flags & ACK:
        return Segment(sport, dport, seg.ack, 0, RST)
    return Segment(sport, dport, 0, (seg.seq + seg.seg_len) & MASK, RST | ACK)


class Tcb:
    """Transmission control block. Attributes follow RFC 9293's names (snd_una, rcv_nxt ...)."""

    def __init__(self, ctx: Context, key: bytes, local: tuple[str, int], remote: tuple[str, int],
                 tx: list[tuple[bytes, bytes, Segment]] | None = None) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.key = key  # remote ip, local ip, remote port, local port: as sliced from a frame
        self.rip = key[0:4]
        self.lip = key[4:8]
        self.local = local
        self.remote = remote
        self.tx = tx if tx is not None else []
        self.events: list = []
        self.state = State.CLOSED
        self.created = 0.0
        self.owner = None  # the shell's transport, if any
        self.listener = None  # for passive opens until accepted
        # send sequence space (RFC 9293 3.3.1)
        self.iss = 0
        self.snd_una = 0
        self.snd_nxt = 0
        self.snd_max = 0  # highest sequence number sent, for go-back-N after an RTO
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0  # shift applied to the peer's window field
        self.sendq = SendQueue()  # unacknowledged bytes and what was sent when
        self.fin_queued = False  # the application shut down its sending side
        self.snd_cap = cfg.tcp_wmem[1]  # the triple's default (config.py)
        # receive sequence space
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wup = 0  # rcv_nxt when we last sent a window (Linux rcv_wup)
        self.rcv_adv = 0  # right edge we advertised; never moves left (RFC 9293 3.8.6)
        self.rcv_cap = cfg.tcp_rmem[1]
        self.rcv_wscale = 0
        self.rcvbuf = RecvQueue()
        self.ofo = OfoQueue()  # out-of-order data above rcv_nxt, merged blocks
        self.rcv_mss = DEFAULT_MSS  # the peer's segment size as seen (Linux rcv_mss)
        self.ofo_fin: int | None = None
        self.fin_received = False
        # options
        self.mss = DEFAULT_MSS  # payload bytes per segment we send (options subtracted)
        self.peer_mss = DEFAULT_MSS
        self.ts_ok = False
        self.ts_offset = 0
        self.ts_recent = 0
        self.ts_recent_stamp = 0.0
        self.sack_ok = False
        self.ws_ok = False
        # timers: absolute times or None (smoltcp's "timers are data")
        self.timers = Timers()  # smoltcp's "timers are data"; deadline is timers.next()
        self.queued: float | None = None  # owned by the shell's TimerQueue
        self.rtt = RtoEstimator(cfg.tcp_rto_min_ms / 1000)
        self.retries = 0  # consecutive RTO expiries without progress
        self.rtt_seq: int | None = None  # Karn: the segment being timed (RFC 6298 3)
        self.rtt_time = 0.0
        # congestion control (cc/) and loss recovery (recovery.py) own their state
        self.cc = cc.create(cfg.tcp_congestion_control, ctx.adv_mss, cfg, ctx.stats)
        self.recovery = Recovery(self, self.cc, self.timers, self.rtt, ctx.stats,
                                 cfg.tcp_recovery, cfg.tcp_early_retrans, cfg.tcp_frto,
                                 cfg.tcp_reordering, cfg.tcp_max_reordering)
        # RFC 2883: a D-SACK block [start, end) for the next ACK, sent once.
        self.dsack: tuple[int, int] | None = None
        # ECN (ecn.py): the state when negotiated, else None; whether our SYN asked
        self.ecn: ecn.Ecn | None = None
        self.ecn_asked = False
        self.snd_sml: int | None = None  # end of the last small segment sent (Nagle)
        self.last_send = 0.0
        # ACK policy
        self.output_due = False  # on ctx.output_due: output() runs at the batch's end
        self.ack_now = False
        # This segment's ACK cannot wait for the batch's end: a duplicate ACK (out of
        # order, duplicate or beyond-window data, a filled hole) is one per segment,
        # as the sender counts them (RFC 5681 4.2; Linux __tcp_ack_snd_check() with
        # an out-of-order queue). In-order data is ACKed once per batch, as GRO makes
        # one segment of a burst.
        self.ack_at_once = False
        self.unacked_segs = 0
        self.quickacks = QUICKACKS
        self.last_oow_ack = -1e9  # per-socket rate limit of invalid-segment ACKs
        # user state
        self.orphan = False  # the application closed and went away (Linux SOCK_DEAD)
        self.orphan_counted = False  # counted in ctx.orphans (Linux tcp_orphan_count)
        self.linger: float | None = None  # SO_LINGER seconds when on
        self.nodelay = False
        self.keepalive = False
        self.keepidle = cfg.tcp_keepalive_time
        self.keepintvl = cfg.tcp_keepalive_intvl
        self.keepcnt = cfg.tcp_keepalive_probes
        # More socket options (ustack/sockopt.py is their entry point, by Linux's names)
        self.cork = False  # TCP_CORK: hold partial segments (TCP_NAGLE_CORK)
        self.more = False  # MSG_MORE on the last send(): its partial tail waits too
        # Linux's TCP_NAGLE_PUSH: set with TCP_NODELAY, it overrides TCP_CORK from then
        # on (tcp_nagle_test()); only a send()'s own MSG_MORE still holds.
        self.nagle_push = False
        self.ip_tos = 0  # IP_TOS: the DSCP bits of our packets (ECN's two are TCP's)
        self.pmtudisc = 1  # IP_MTU_DISCOVER, IP_PMTUDISC_WANT (Linux's default)
        self.more_una = 0  # SND.UNA at that send(): an ACK beyond it ends the wait
        self.user_timeout = 0.0  # TCP_USER_TIMEOUT in seconds; 0 is off (RFC 5482)
        self.user_mss = 0  # TCP_MAXSEG (Linux tp->rx_opt.user_mss); 0 is off
        self.notsent_lowat = 0  # TCP_NOTSENT_LOWAT; 0 is off (Linux: sysctl, UINT_MAX)
        self.ut_start: float | None = None  # when the user-timeout clock started (RTO)
        self.probe_start: float | None = None  # the first zero-window probe (persist)
        self.error_reported = False  # SO_ERROR read `error` (sock_error() clears sk_err)
        self.probes_out = 0
        self.last_rcv = 0.0
        self.error = 0
        self.was_established = False
        # Per-connection counters for TCP_INFO and `ss -ti` (info.py), as Linux keeps
        # them in tcp_sock (RFC 4898 names): a few integer adds per segment.
        self.segs_in = 0
        self.segs_out = 0
        self.data_segs_in = 0
        self.data_segs_out = 0
        self.bytes_sent = 0  # data octets sent, retransmissions included
        self.bytes_retrans = 0
        self.retrans_segs = 0  # tp->total_retrans
        self.bytes_acked = 0
        self.bytes_received = 0
        self.rcv_ooopack = 0
        self.total_rto = 0
        self.total_rto_recoveries = 0
        self.last_data_rcv = 0.0
        # Linux's TCP_CHRONO_BUSY, approximated: time with data outstanding.
        self.busy_time = 0.0
        self.busy_since = 0.0
        # A sender-state recorder (ustack/record.py) or None: one test per ACK and
        # per segment sent while it is off.
        self.recorder = None

    # ------------------------------------------------------------------ helpers

    def __repr__(self) -> str:
        return f"<Tcb {self.local[0]}:{self.local[1]} {self.remote[0]}:{self.remote[1]} {self.state.name}>"

    def _set_state(self, new: State, cause: Cause) -> None:
        old = self.state
        if old == new:
            return
        stats = self.ctx.stats
        if new == State.ESTABLISHED:
            stats["TcpCurrEstab"] += 1
            self.was_established = True
        elif old in (State.ESTABLISHED, State.CLOSE_WAIT) and new not in (State.CLOSE_WAIT,):
            stats["TcpCurrEstab"] -= 1
        self.state = new
        if self.orphan_counted and (new is State.CLOSED or new is State.TIME_WAIT):
            self.orphan_counted = False  # inet_csk_destroy_sock(): no longer an orphan
            self.ctx.orphans -= 1
        self.events.append(StateChanged(old, new, cause))

    def _ts_now(self, now: float) -> int:
        return (int(now * 1000) + self.ts_offset) & MASK

    def rcv_window(self) -> int:
        """Free receive buffer space, not shrinking the edge already advertised."""
        free = self.rcv_cap - len(self.rcvbuf)
        if free < 0:
            free = 0
        # RFC 9293 3.8.6.2.2 receiver SWS avoidance: only move the edge right by at least
        # min(buffer/2, MSS).
        adv = (self.rcv_adv - self.rcv_nxt) & MASK if sq.le(self.rcv_nxt, self.rcv_adv) else 0
        if free > adv and free - adv < min(self.rcv_cap // 2, self.ctx.adv_mss):
            free = adv
        if self.ctx.mem.pressure and free > 4 * self.ctx.adv_mss:
            # tcp_mem pressure: no window growth, clamped to 4 advmss as Linux's
            # tcp_adjust_rcv_ssthresh() clamps rcv_ssthresh (LINUX-SPEC-2 item 395).
            free = 4 * self.ctx.adv_mss
        if free < adv:
            free = adv  # never shrink the window (RFC 9293 3.8.6.2.1)
        return min(free, 65535 << self.rcv_wscale)

    def _make(self, flags: int, seq: int, now: float, payload: bytes = b"") -> Segment:
        seg = Segment(self.local[1], self.remote[1], seq, 0, flags, 0, payload)
        if self.ip_tos:
            seg.ecn = self.ip_tos  # the whole TOS byte; ECT is ORed in by _transmit()
        if self.ecn is not None and self.ecn.demand_cwr:
            seg.flags |= ECE  # RFC 3168 6.1.3: until the peer's CWR (tcp_ecn_send())
        if flags & ACK:
            ws = self.rcv_wscale
            field = self.rcv_window() >> ws
            if sq.lt((self.rcv_nxt + (field << ws)) & MASK, self.rcv_adv) and field < 0xFFFF:
                # Scaling rounds down; round up instead of moving the right edge we
                # advertised to the left (RFC 9293 3.8.6.2.1; Linux tcp_select_window()).
                field += 1
            seg.ack = self.rcv_nxt
            seg.wnd = field
            if (self.ofo.blocks or self.dsack) and self.sack_ok and not flags & RST:
                # RFC 2018 4: every ACK reports what we hold above the hole; a D-SACK
                # block goes first, once (RFC 2883 4).
                limit = 3 if self.ts_ok else 4
                if self.dsack is not None:
                    seg.sack = (self.dsack,) + self.ofo.sack_blocks(limit - 1)
                    self.dsack = None
                else:
                    seg.sack = self.ofo.sack_blocks(limit)
            self.rcv_adv = (self.rcv_nxt + (field << self.rcv_wscale)) & MASK
            self.rcv_wup = self.rcv_nxt
            self.ack_now = False
            self.unacked_segs = 0
            if self.timers.at[_DELACK] is not None:
                self.timers.clear(_DELACK)
        if self.ts_ok:
            seg.ts = (self._ts_now(now), self.ts_recent)
        return seg

    def _emit(self, seg: Segment) -> None:
        self.tx.append((self.lip, self.rip, seg))
        # A super-segment counts as the wire segments it becomes, as Linux counts
        # tcp_skb_pcount() in __tcp_transmit_skb().
        n = -(-len(seg.payload) // seg.gso) if seg.gso else 1
        self.ctx.stats["TcpOutSegs"] += n
        self.segs_out += n
        if seg.flags & RST:
            self.ctx.stats["TcpOutRsts"] += 1

    def _send_ack(self, now: float) -> None:
        # seq = SND.MAX, Linux's snd_nxt (tcp_acceptable_seq()), not our snd_nxt, which
        # an RTO rewinds for go-back-N: the peer may already hold data up to SND.MAX, and
        # a zero-length segment left of its RCV.NXT is unacceptable (RFC 9293 3.10.7.4),
        # so it would drop the ACK unread. Two ends in go-back-N at once then never
        # learn of each other's progress and time out.
        self._emit(self._make(ACK, self.snd_max, now))

    def _send_rst(self, now: float) -> None:
        """A RST from a live socket: R. seq=SND.NXT ack=RCV.NXT, with TS (LS 18).

        Linux's SND.NXT is the highest sequence sent (our snd_max: an RTO rewinds our
        snd_nxt for go-back-N), clamped to the right edge of the peer's window
        (tcp_acceptable_seq()), so the RST lands in the peer's window."""
        seq = self.snd_max
        wnd_end = (self.snd_una + self.snd_wnd) & MASK
        # Beyond the window by less than the window's scaling granularity still counts
        # as inside (the peer rounds its window down to a multiple of 2^wscale).
        if sq.diff(seq, wnd_end) >= (1 << self.snd_wscale if self.ws_ok else 1):
            seq = wnd_end
        self._emit(self._make(RST | ACK, seq, now))

    def _send_stateless_rst(self, seg: Segment) -> None:
        """Answer `seg` with the no-socket RST (`no_socket_rst`); for a segment with ACK
        that is R seq=SEG.ACK."""
        self._emit(no_socket_rst(seg, self.local[1], self.remote[1]))

    def _oow_rate_limited(self, now: float, skipped: str) -> bool:
        """At most one dup/challenge ACK per tcp_invalid_ratelimit (LS 113, Linux
        __tcp_oow_rate_limited()); the time is taken when one is allowed."""
        if now - self.last_oow_ack < self.ctx.config.tcp_invalid_ratelimit / 1000:
            self.ctx.stats[skipped] += 1
            return True
        self.last_oow_ack = now
        return False

    def _oow_ack(self, now: float, skipped: str) -> None:
        """A duplicate ACK for an invalid segment, rate-limited per connection (LS 113)."""
        if not self._oow_rate_limited(now, skipped):
            self._send_ack(now)

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 3.2/4.2: an ACK with our current numbers, so a real peer resynchronizes.

        RFC 5961 7 limits, in Linux's order (tcp_send_challenge_ack()): the per-connection
        limit first, so a suppressed challenge does not spend the stack-wide budget; the
        counter only counts challenges actually sent."""
        if self._oow_rate_limited(now, "TcpExtTCPACKSkippedChallenge"):
            return
        if not self.ctx.challenge_ack_allowed(now):
            return
        self.ctx.stats["TcpExtTCPChallengeACK"] += 1
        self._send_ack(now)

    @property
    def deadline(self) -> float | None:
        """When `handle_timer` must next run (None: no timer set)."""
        return self.timers.next()

    @property
    def buf_end(self) -> int:
        return self.sendq.end

    @property
    def fin_sent(self) -> bool:
        return self.fin_queued and sq.gt(self.snd_max, self.buf_end)

    @property
    def fin_acked(self) -> bool:
        """Our FIN was sent and acknowledged."""
        return self.fin_sent and self.snd_una == self.snd_max

    @property
    def in_flight(self) -> int:
        return (self.snd_nxt - self.snd_una) & MASK

    def send_mss(self) -> int:
        """Payload bytes the next segment may carry: self.mss (the peer's MSS less the
        timestamps every segment carries) less the SACK blocks `_make` will add while we
        hold out-of-order data (RFC 6691: the sender reduces the data for the options it
        includes; Linux tcp_current_mss()). NOP, NOP, SACK kind and length: 4 + 8 per block.

        Bounded first by half the largest window the peer ever offered (Linux
        tcp_bound_to_half_wnd(), LINUX-SPEC-2 item 360): a peer whose window never
        reaches two segments gets segments it can take, instead of a wait for the
        persist timer; at least 68 bytes of header and data."""
        mss = self.mss
        maxw = self.max_snd_wnd
        if maxw:
            cutoff = maxw >> 1 if maxw > DEFAULT_MSS else maxw
            if mss > cutoff:
                mss = max(cutoff, 68 - 20 - (TS_OPT_LEN if self.ts_ok else 0))
        if (self.ofo.blocks or self.dsack) and self.sack_ok:
            n = len(self.ofo) + (self.dsack is not None)
            return mss - 4 - 8 * min(n, 3 if self.ts_ok else 4)
        return mss

    @property
    def send_queue(self) -> int:
        """Bytes not yet acknowledged (ss's Send-Q)."""
        return len(self.sendq)

    @property
    def recv_queue(self) -> int:
        """Bytes received and not yet read by the application (ss's Recv-Q)."""
        return len(self.rcvbuf)

    def adv_mss(self) -> int:
        """The MSS option we announce: the device's, clamped by TCP_MAXSEG (Linux
        tcp_advertise_mss(), tcp_openreq_init()'s user_mss)."""
        um = self.user_mss
        return um if um and um < self.ctx.adv_mss else self.ctx.adv_mss

    def _syn_options(self, seg: Segment, now: float, peer: Segment | None) -> None:
        cfg = self.ctx.config
        seg.mss = self.adv_mss()
        if cfg.tcp_sack and (peer is None or peer.sack_perm):
            seg.sack_perm = True
        if cfg.tcp_timestamps and (peer is None or peer.ts is not None):
            seg.ts = (self._ts_now(now), peer.ts[0] if peer is not None and peer.ts else 0)
        if cfg.tcp_window_scaling and (peer is None or peer.wscale is not None):
            seg.wscale = self.rcv_wscale

    def _choose_wscale(self) -> None:
        # reqsock.rcv_wscale(): Linux tcp_select_initial_window(); a receive buffer
        # other than tcp_rmem's default was set by SO_RCVBUF and clamps it.
        rmem = self.rcv_cap if self.rcv_cap != self.ctx.config.tcp_rmem[1] else 0
        self.rcv_wscale = reqsock.rcv_wscale(self.ctx, rmem)

    def _negotiate(self, syn: Segment, we_offered_ts: bool) -> None:
        """Apply the options of the peer's SYN or SYN-ACK (RFC 7323 2.2, 3.2; RFC 9293 3.7.1)."""
        cfg = self.ctx.config
        self.peer_mss = max(syn.mss, MIN_SND_MSS) if syn.mss else DEFAULT_MSS
        self.ws_ok = bool(cfg.tcp_window_scaling and syn.wscale is not None)
        if self.ws_ok:
            self.snd_wscale = syn.wscale
        else:
            self.snd_wscale = 0
            self.rcv_wscale = 0
        self.ts_ok = bool(cfg.tcp_timestamps and we_offered_ts and syn.ts is not None)
        if self.ts_ok:
            self.ts_recent = syn.ts[0]
            self.ts_recent_stamp = self.last_rcv
        self.sack_ok = bool(cfg.tcp_sack and syn.sack_perm)
        # TCP_MAXSEG clamps what we send too (mss_clamp = user_mss, tcp_sync_mss()).
        self.mss = min(self.peer_mss, self.adv_mss()) - (TS_OPT_LEN if self.ts_ok else 0)
        self.cc.set_mss(self.mss)

    # ------------------------------------------------------------------ opens

    def open_active(self, now: float, iss: int | None = None) -> None:
        """CLOSED -> SYN_SENT: send SYN (RFC 9293 3.10.1)."""
        self.created = now
        self.last_rcv = now
        self.iss = iss if iss is not None else self.ctx.isn(self.key, now)
        self.ts_offset = self.ctx.ts_offset(self.key)
        self.snd_una = self.iss
        self.snd_nxt = self.snd_max = (self.iss + 1) & MASK
        self.sendq.start_at(self.snd_nxt)
        self._choose_wscale()
        self.ecn_asked = self.ctx.config.tcp_ecn == 1
        self.ctx.stats["TcpActiveOpens"] += 1
        self._set_state(State.SYN_SENT, Cause(Why.CONNECT))
        self._send_syn(now)
        self.timers.set(Timer.RTO, now + self.rtt.current())

    def _send_syn(self, now: float) -> None:
        seg = Segment(self.local[1], self.remote[1], self.iss, 0, SYN, min(self.rcv_cap, 65535))
        self._syn_options(seg, now, None)
        cfg = self.ctx.config
        if ecn.syn_asks(cfg.tcp_ecn, self.retries > 0, cfg.tcp_ecn_fallback):
            seg.flags |= ecn.SETUP_SYN  # an ECN-setup SYN (RFC 3168 6.1.1)
        if self.ts_recent and seg.ts is not None:
            # A reused TIME_WAIT tuple echoes the inherited TS.Recent (LS 72).
            seg.ts = (seg.ts[0], self.ts_recent)
        self.rtt_seq = self.iss
        self.rtt_time = now
        self._emit(seg)

    def open_from_request(self, now: float, *, iss: int, irs: int,
                          peer_mss: int, snd_wscale: int | None, sack: bool,
                          ts_recent: int | None, snd_wnd: int, retrans: int,
                          synack_at: float | None, ecn_ok: bool = False) -> None:
        """LISTEN -> SYN_RECEIVED for a handshake that a request record (reqsock.py) or
        a SYN cookie (syncookie.py) carried until its ACK `ack` (Linux
        tcp_create_openreq_child()): the negotiated state comes from the request, not
        from a SYN; nothing is sent. The caller then hands the ACK to handle_segment().
        `synack_at` times the SYN-ACK for an RTT sample (None: retransmitted or a cookie,
        no sample; Karn). `ts_recent` None: no timestamps."""
        self.created = now
        self.last_rcv = now
        self.iss = iss
        self.ts_offset = self.ctx.ts_offset(self.key)
        self.irs = irs
        self.rcv_nxt = self.rcv_wup = (irs + 1) & MASK
        self.snd_una = iss
        self.snd_nxt = self.snd_max = (iss + 1) & MASK
        self.sendq.start_at(self.snd_nxt)
        self.snd_wnd = snd_wnd  # the SYN's, never scaled (RFC 7323 2.2)
        self.snd_wl1 = irs
        self.snd_wl2 = iss
        self._choose_wscale()
        self.peer_mss = max(peer_mss, MIN_SND_MSS)
        self.ws_ok = snd_wscale is not None
        self.snd_wscale = snd_wscale or 0
        if not self.ws_ok:
            self.rcv_wscale = 0
        self.ts_ok = ts_recent is not None
        if self.ts_ok:
            self.ts_recent = ts_recent
            self.ts_recent_stamp = now
        self.sack_ok = sack
        self.mss = min(self.peer_mss, self.adv_mss()) - (TS_OPT_LEN if self.ts_ok else 0)  # TCP_MAXSEG
        self.cc.set_mss(self.mss)
        self.rcv_adv = (self.rcv_nxt + min(self.rcv_cap, 65535)) & MASK
        self.retries = retrans
        self.rtt_seq = iss if synack_at is not None else None
        self.rtt_time = synack_at if synack_at is not None else now
        if ecn_ok:
            self._ecn_on()  # the SYN's ECN setup, accepted by the SYN-ACK's ECE
        # The cause is the SYN as the request remembers it (options left out).
        syn = Segment(self.remote[1], self.local[1], irs, 0, SYN, snd_wnd)
        self._set_state(State.SYN_RECEIVED, Cause(Why.SEGMENT, syn))

    def _send_synack(self, now: float) -> None:
        wnd = min(self.rcv_cap, 65535)
        seg = Segment(self.local[1], self.remote[1], self.iss, self.rcv_nxt,
                      SYN | ACK | ECE if self.ecn is not None else SYN | ACK, wnd)
        self.rcv_adv = (self.rcv_nxt + wnd) & MASK
        seg.mss = self.adv_mss()
        if self.sack_ok:
            seg.sack_perm = True
        if self.ts_ok:
            seg.ts = (self._ts_now(now), self.ts_recent)
        if self.ws_ok:
            seg.wscale = self.rcv_wscale
        self.rtt_seq = self.iss
        self.rtt_time = now
        self._emit(seg)

    # ------------------------------------------------------------------ user calls

    def send(self, data: bytes, now: float, more: bool = False) -> int:
        """Queue data (RFC 9293 3.10.2 SEND). Returns bytes accepted; raises on a closed side.

        `more`: Linux's MSG_MORE, tcp_push() with TCP_NAGLE_CORK for this write: a partial
        last segment waits for the next send() without it (or a full MSS, the FIN, or an
        ACK of data in flight, after which Nagle's own rule decides)."""
        if not self.state.can_send and self.state not in (State.SYN_SENT, State.SYN_RECEIVED):
            raise BrokenPipeError(E.EPIPE, "Broken pipe")
        if self.fin_queued:
            raise BrokenPipeError(E.EPIPE, "Broken pipe")
        self.sendq.append(data)
        self.more = more
        self.more_una = self.snd_una
        if self.state.synchronized:
            self.output_soon()
        return len(data)

    def recv(self, n: int, now: float) -> bytes:
        """Take up to n bytes the application reads; may send a window update."""
        if not self.rcvbuf:
            return b""
        data = self.rcvbuf.take(n)
        if self.state.can_recv:
            # Send a window update when reading opened the window by a useful amount
            # (RFC 9293 3.8.6.2.2), e.g. after the application drained a full buffer.
            old = (self.rcv_adv - self.rcv_nxt) & MASK
            new = self.rcv_window()
            if new - old >= self.rcv_cap // 4 or old < self.ctx.adv_mss <= new:
                self.ack_now = True
                self.output_soon()
        return data

    def shutdown(self, now: float) -> None:
        """SHUT_WR: queue a FIN behind the data (RFC 9293 3.10.4, LS 6, 9)."""
        if self.fin_queued:
            return
        if self.state == State.SYN_SENT:
            # Linux sends nothing for a connection that never got its SYN-ACK (LS 36).
            self._terminate(0, Cause(Why.SHUTDOWN))
            return
        if self.state in (State.ESTABLISHED, State.SYN_RECEIVED):
            self.fin_queued = True
            self._set_state(State.FIN_WAIT_1, Cause(Why.SHUTDOWN))
        elif self.state == State.CLOSE_WAIT:
            self.fin_queued = True
            self._set_state(State.LAST_ACK, Cause(Why.SHUTDOWN))
        else:
            return
        self.output_soon()

    def _ofo_room(self, start: int) -> bool:
        """The out-of-order queue is at its block limit: one block per KiB of receive
        buffer (at least OFO_MIN_BLOCKS), as Linux's truesize accounting would stop a
        peer that sends 1-byte segments with holes between them (each a block, and
        each add a walk of them all) long before the window is full. Room is made as
        Linux tcp_prune_ofo_queue() makes it, from the highest block down; a segment
        above every block is dropped instead (tcp_data_queue_ofo(): TCPOFODrop)."""
        stats = self.ctx.stats
        stats["TcpExtPruneCalled"] += 1
        if sq.ge(start, self.ofo.blocks[-1].end):
            stats["TcpExtTCPOFODrop"] += 1
            self.ack_now = self.ack_at_once = True
            return False
        self.ofo.drop_highest()
        stats["TcpExtOfoPruned"] += 1
        if self.ofo_fin is not None:
            self.ofo_fin = None  # it was at the end of the highest block
        return True

    def _mem_room(self, n: int, ofo: bool) -> bool:
        """Above tcp_mem[2] (mem.py): room only for a connection holding less than
        tcp_rmem's minimum (LINUX-SPEC-2 item 402). Else, as tcp_prune_queue(): the
        out-of-order queue goes (the peer sees its SACKs reneged), then the segment is
        dropped (items 396-397: TCPOFODrop out of order, RcvPruned and TCPRcvQDrop in
        order), and the ACK tells the peer where we are."""
        if len(self.rcvbuf) + self.ofo.size + n <= RMEM_MIN:
            return True
        stats = self.ctx.stats
        stats["TcpExtPruneCalled"] += 1
        if self.ofo:
            self.ofo.clear()
            self.ofo_fin = None
            stats["TcpExtOfoPruned"] += 1
        if ofo:
            stats["TcpExtTCPOFODrop"] += 1
        else:
            stats["TcpExtRcvPruned"] += 1
            stats["TcpExtTCPRcvQDrop"] += 1
        self.ack_now = self.ack_at_once = True
        return False

    def release(self) -> None:
        """Break this TCB's reference cycles (owner <-> transport, recovery <-> us) once
        it has left the table (CLOSED, or swapped for a TIME_WAIT record): refcounting
        then frees it at once, instead of the cyclic collector's rare full pass."""
        self.owner = None
        self.recovery.conn = None  # type: ignore[assignment]

    def close(self, now: float, unread: int = 0) -> None:
        """close(2): the application is done with the connection (RFC 9293 3.10.4).

        `unread` counts bytes the application layer took from us but never consumed
        (e.g. left in a StreamReader); together with our own receive buffer they decide
        between FIN and RST.
        """
        if self.state in (State.CLOSED, State.TIME_WAIT):
            return
        if self.state == State.SYN_SENT:
            if self.linger == 0:
                # Linux __tcp_close() counts the SO_LINGER {1, 0} abort here too (LS 31).
                self.ctx.stats["TcpExtTCPAbortOnData"] += 1
            self._terminate(0, Cause(Why.CLOSE))  # nothing sent (LS 36)
            return
        unread += len(self.rcvbuf)
        if unread:
            # RFC 9293 3.10.4 / RFC 2525 2.17 / Linux: closing with unread data loses it,
            # so tell the peer with a RST instead of a FIN (LS 30).
            self.ctx.stats["TcpExtTCPAbortOnClose"] += 1
            # Linux __tcp_close() sends this RST in every state (no tcp_need_reset()).
            self._abort(now, Why.CLOSE_UNREAD, rst=True)
            return
        if self.linger == 0:
            # SO_LINGER {1, 0}: abortive close (RFC 9293 3.10.5). Linux counts this as
            # TCPAbortOnData (LS 31), not TCPAbortOnLinger.
            self.ctx.stats["TcpExtTCPAbortOnData"] += 1
            self._abort(now, Why.LINGER_ZERO)
            return
        self.orphan = True
        self.shutdown(now)
        if self.linger:
            self.timers.set(Timer.LINGER, now + self.linger)
        if self.state == State.FIN_WAIT_2:
            self._arm_fin_wait_2(now)
        if (self.state is not State.CLOSED and self.state is not State.TIME_WAIT
                and not self.orphan_counted):  # a second close() is no second orphan
            self.ctx.orphans += 1
            self.orphan_counted = True
            # Linux __tcp_close(): tcp_check_oom(sk, 0) once the socket is an orphan;
            # over tcp_max_orphans it is reset (LINUX-SPEC-2 items 399-400a).
            if self.ctx.too_many_orphans(0):
                self._abort_on_memory(now)

    def _abort_on_memory(self, now: float) -> None:
        """Too many orphans: RST, CLOSED, TcpExtTCPAbortOnMemory (tcp_check_oom())."""
        self.ctx.stats["TcpExtTCPAbortOnMemory"] += 1
        self._abort(now, Why.ORPHANS, rst=True)

    def abort(self, now: float) -> None:
        """ABORT (RFC 9293 3.10.5): RST if synchronized, drop everything."""
        self._abort(now, Why.ABORT)

    def _abort(self, now: float, why: Why, rst: bool = False) -> None:
        """RFC 9293 3.10.5 ABORT as Linux tcp_disconnect() does it (LS 31): R. from
        SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1/2 and CLOSE_WAIT; from CLOSING and LAST_ACK
        only while something (data or our FIN) is still unsent, since the RFC says
        "delete the TCB" there and the peer already has all we will ever send. `rst`
        forces the RST in those two states too (close() with unread data, LS 30)."""
        st = self.state
        sent = st in (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.FIN_WAIT_2,
                      State.SYN_RECEIVED) or (
            st in (State.CLOSING, State.LAST_ACK) and (rst or not self.fin_sent))
        if sent:
            self._send_rst(now)
        if self.state in (State.ESTABLISHED, State.CLOSE_WAIT):
            self.ctx.stats["TcpEstabResets"] += 1
        # The cause says what went out, for the trace and the log (eventlog.py).
        self._terminate(0, Cause(why, rst_sent=sent))

    def drop(self, why: Why) -> None:
        """Delete the TCB silently, nothing sent: a half-open child of a listener that
        closed (LS 34), as Linux drops its request socks."""
        self._terminate(0, Cause(why))

    def _terminate(self, err: int, cause: Cause) -> None:
        """Delete the TCB: state CLOSED, timers off, the application told."""
        if self.state in _GONE:
            return  # a TIME_WAIT TCB is a husk: its record in timewait.py lives on
        self.error = err
        self._set_state(State.CLOSED, cause)
        self.timers.clear_all()
        self.sendq.clear()
        self.ofo.clear()
        self.events.append(ConnectionClosed(err))

    def set_linger(self, seconds: float | None) -> None:
        """SO_LINGER: None is off; 0 makes close() abort with a RST (RFC 9293 3.10.5);
        N > 0 gives close() N seconds to get everything acknowledged, else RST."""
        self.linger = seconds

    def set_nodelay(self, on: bool, now: float) -> None:
        """TCP_NODELAY: Nagle off; turning it on sends what Nagle held back (Linux
        tcp_push_pending_frames() from do_tcp_setsockopt())."""
        self.nodelay = on
        if on:
            # __tcp_sock_set_nodelay(): TCP_NAGLE_OFF | TCP_NAGLE_PUSH, and this push
            # is the socket's (an earlier send()'s MSG_MORE no longer holds it).
            self.nagle_push = True
            self.more = False
            self.output_soon()

    def set_keepalive(self, on: bool, now: float, idle: int | None = None,
                      intvl: int | None = None, cnt: int | None = None) -> None:
        """SO_KEEPALIVE with optional TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT overrides."""
        self.keepalive = on
        if idle is not None:
            self.keepidle = idle
        if intvl is not None:
            self.keepintvl = intvl
        if cnt is not None:
            self.keepcnt = cnt
        self._arm_keepalive(now)

    def set_cork(self, on: bool, now: float) -> None:
        """TCP_CORK: partial segments wait while on; off pushes them (Linux
        do_tcp_setsockopt() TCP_CORK -> __tcp_sock_set_cork(): tcp_push_pending_frames())."""
        self.cork = on
        if on:
            self.nagle_push = False  # a new cork holds, TCP_NODELAY or not (as 6.18 does)
        else:
            if self.nodelay:
                self.nagle_push = True  # __tcp_sock_set_cork(): uncorked with NAGLE_OFF
            self.output_soon()

    def set_user_timeout(self, seconds: float, now: float) -> None:
        """TCP_USER_TIMEOUT (RFC 5482 as Linux): how long sent data may stay
        unacknowledged (retransmissions, zero-window probes) before ETIMEDOUT; with
        keepalive on, it replaces the probe count. 0 is off."""
        self.user_timeout = seconds

    def set_maxseg(self, mss: int) -> None:
        """TCP_MAXSEG: Linux stores user_mss at any time but it only matters before the
        handshake (the MSS announced and mss_clamp); so here."""
        self.user_mss = mss

    def set_notsent_lowat(self, n: int) -> None:
        """TCP_NOTSENT_LOWAT: the application may queue only this much not yet sent
        (Linux tcp_stream_memory_free()); 0 is off."""
        self.notsent_lowat = n
        self.events.append(_SEND_SPACE)  # a raised mark may make room at once

    def set_buffers(self, sndbuf: int | None = None, rcvbuf: int | None = None) -> None:
        """SO_SNDBUF / SO_RCVBUF as sockopt.py computed them (doubled and bounded)."""
        if sndbuf is not None:
            self.snd_cap = sndbuf
            self.events.append(_SEND_SPACE)
        if rcvbuf is not None:
            self.rcv_cap = rcvbuf
            if self.state == State.CLOSED:
                self._choose_wscale()  # before the SYN, as Linux's tcp_select_initial_window()

    def set_quickack(self, on: bool, now: float) -> None:
        """TCP_QUICKACK: on enters quick-ACK mode (Linux tcp_enter_quickack_mode()) and
        sends a pending ACK now; off leaves it (the next ACKs may be delayed)."""
        if on:
            self.quickacks = QUICKACKS
            if self.unacked_segs:
                self.ack_now = True
                self.output_soon()
        else:
            self.quickacks = 0

    def set_congestion(self, name: str) -> None:
        """TCP_CONGESTION: another controller from cc's registry for this connection
        (Linux tcp_set_congestion_control(): its init() runs; cwnd and ssthresh carry on)."""
        old = self.cc
        new = cc.create(name, self.mss, self.ctx.config, self.ctx.stats)
        new.cwnd, new.ssthresh = old.cwnd, old.ssthresh
        self.cc = new
        self.recovery.cc = new

    def _user_timed_out(self, now: float) -> bool:
        """RFC 5482 / Linux retransmits_timed_out() with user_timeout: true once the
        clock started at the first retransmission (or probe) has run user_timeout."""
        if not self.user_timeout:
            return False
        if self.ut_start is None:
            self.ut_start = now
        return now - self.ut_start >= self.user_timeout

    def _clamp_to_user_timeout(self, at: float) -> float:
        """Linux tcp_clamp_rto_to_user_timeout(): the next RTO or probe no later than
        the user timeout's end, so the abort comes on time."""
        if self.user_timeout and self.ut_start is not None:
            return min(at, self.ut_start + self.user_timeout)
        return at

    def _arm_keepalive(self, now: float) -> None:
        if self.keepalive and not self.orphan and self.state in (
                State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_2, State.FIN_WAIT_1):
            base = self.last_rcv if self.probes_out == 0 else now
            self.timers.set(Timer.KEEPALIVE,
                            base + (self.keepidle if self.probes_out == 0 else self.keepintvl))
        elif self.timers.at[_KEEPALIVE] is not None:
            self.timers.clear(_KEEPALIVE)

    def _arm_fin_wait_2(self, now: float) -> None:
        """Orphaned FIN_WAIT_2 lives tcp_fin_timeout, at least 3.5 RTO (LS 41).

        Linux turns such an orphan into a FIN_WAIT2 minisocket (LS 43); ustack keeps the
        TCB, and answers as LS 44 says: pure ACKs ignored, out-of-window segments ACKed
        (rate-limited unless they carry data or FIN), data or a FIN beyond RCV.NXT ->
        R seq=SEG.ACK and gone (TCPAbortOnData), the FIN at RCV.NXT -> ACK and TIME_WAIT,
        an exact RST -> gone silently, expiry silent (LS 42). Deliberate deviations,
        because issue 3 asks for RFC 5961 in every synchronized state: an in-window but
        inexact RST and an in-window SYN get a challenge ACK here (RFC 5961 3.2, 4.2),
        where the minisocket would discard itself silently (RST) or send R (SYN).
        Counters differ slightly: TcpExtTW is not counted until TIME_WAIT, and a skipped
        ACK counts as TCPACKSkippedSeq (Linux: TCPACKSkippedFinWait2)."""
        t = min(float(self.ctx.config.tcp_fin_timeout), FIN_TIMEOUT_MAX)
        self.timers.set(Timer.FIN_WAIT_2, now + max(t, 3.5 * self.rtt.current()))
        self.timers.clear(Timer.KEEPALIVE)

    # ------------------------------------------------------------------ input

    # Header prediction on (tests turn it off to compare the two paths' output).
    fast_path = True

    def handle_segment(self, seg: Segment, now: float) -> None:
        """Process one arriving segment (RFC 9293 3.10.7)."""
        n = -(-len(seg.payload) // seg.gso) if seg.gso else 1
        self.segs_in += n  # tcp_segs_in(): every segment, data or not, in order or not
        if seg.payload:
            self.data_segs_in += n
        st = self.state
        if st is _ESTABLISHED and self.fast_path and self._predicted(seg):
            self._fast_input(seg, now)
        elif st == State.SYN_SENT:
            self._syn_sent_input(seg, now)
        elif st not in _NO_INPUT:
            self._synchronized_input(seg, now)

    def _syn_sent_input(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.3, SYN-SENT STATE."""
        flags = seg.flags
        # first, check the ACK bit
        if flags & ACK and not sq.in_range(seg.ack, (self.iss + 1) & MASK,
                                           (self.snd_nxt + 1) & MASK):
            if not flags & RST:
                self._send_stateless_rst(seg)  # R seq=SEG.ACK
            return
        # second, check the RST bit
        if flags & RST:
            if flags & ACK:
                self.ctx.stats["TcpAttemptFails"] += 1
                self._terminate(E.ECONNREFUSED, Cause(Why.SEGMENT, seg))
            return
        if not flags & SYN:
            return
        self.last_rcv = now
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_wup = self.rcv_adv = (seg.seq + 1) & MASK
        offered_ts = bool(self.ctx.config.tcp_timestamps)
        self._negotiate(seg, offered_ts)
        if (ecn.accept_synack(self.ecn_asked, flags) if flags & ACK else
                self.ecn_asked and flags & ecn.SETUP_SYN == ecn.SETUP_SYN):
            self._ecn_on()  # (a simultaneous open: Linux tcp_ecn_rcv_syn())
        if flags & ACK:
            if self.ts_ok and seg.ts[1] and not sq.in_range(
                    seg.ts[1], self._ts_now(self.created), (self._ts_now(now) + 1) & MASK):
                # TSecr outside [our first SYN's TSval, now] (LS 97, Linux
                # tcp_rcv_synsent_state_process()): not an answer to our SYN.
                self.ctx.stats["TcpExtPAWSActive"] += 1
                self._send_stateless_rst(seg)  # R seq=SEG.ACK
                return
            self._rtt_sample_ack(seg, now)
            self.snd_una = seg.ack
            self.bytes_acked += 1  # our SYN, as Linux's tcp_ack() counts it
            self.snd_wnd = seg.wnd << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
            self._handshake_done()
            self.rtt.reset_backoff()
            self.timers.clear(Timer.RTO)
            self._set_state(State.ESTABLISHED, Cause(Why.SEGMENT, seg))
            self.events.append(_CONNECTED)
            self._arm_keepalive(now)
            self._send_ack(now)
            if seg.payload or flags & FIN:
                self._process_text(seg, now)
            self.output_soon()
        else:
            # Simultaneous open (RFC 9293 3.10.7.3, Figure 8): SYN-SENT -> SYN-RECEIVED.
            self.snd_wnd = seg.wnd
            self.snd_wl1 = seg.seq
            self._set_state(State.SYN_RECEIVED, Cause(Why.SEGMENT, seg))
            self._send_synack(now)

    def _update_ts_recent(self, seg: Segment, now: float) -> None:
        """RFC 7323 4.3 / 5.3 R3 (Linux tcp_replace_ts_recent(), LS 91): record SEG.TSval
        only from a segment covering the left window edge (SEG.SEQ <= RCV.WUP, the last
        edge advertised) whose ACK is acceptable (the caller's part), when paws.py says
        the timestamp may replace TS.Recent."""
        ts = seg.ts
        if not self.ts_ok or ts is None or not sq.le(seg.seq, self.rcv_wup):
            return
        if ((ts[0] - self.ts_recent) & MASK < 0x80000000  # the common case, inline
                or paws.may_update_ts_recent(ts_recent=self.ts_recent, tsval=ts[0],
                                             idle=now - self.ts_recent_stamp)):
            self.ts_recent = ts[0]
            self.ts_recent_stamp = now

    def _predicted(self, seg: Segment) -> bool:
        """Linux's header prediction (tcp_rcv_established()): the next segment in order,
        only ACK (and PSH), the window unchanged and open, a timestamp not older than
        TS.Recent, no SACK blocks, nothing queued out of order, and an ACK between
        SND.UNA and SND.NXT. For such a segment every test of the general ladder before
        the ACK field passes (PAWS, acceptability, RST, SYN), so it skips them."""
        if (seg.flags | PSH) != _ACK_PSH or seg.seq != self.rcv_nxt or seg.sack or self.ofo:
            return False
        if self.ts_ok:
            ts = seg.ts
            if ts is None or (ts[0] - self.ts_recent) & MASK >= 0x80000000:
                return False
        wnd = self.snd_wnd
        if not wnd or seg.wnd << self.snd_wscale != wnd:
            return False
        ack = seg.ack
        una = self.snd_una
        return (ack - una) & MASK <= (self.snd_nxt - una) & MASK

    def _fast_input(self, seg: Segment, now: float) -> None:
        """A predicted segment (_predicted()). In-order data that acknowledges nothing
        new goes straight to the text; a pure ACK or data with new ACK through the
        ACK processing as in the ladder. The same outcome as _synchronized_input()
        (tests/test_fast_path.py compares them segment for segment)."""
        self.last_rcv = now
        self.probes_out = 0
        # Linux's names: TCPHPHits for predicted data, TCPHPAcks for pure ACKs.
        self.ctx.stats["TcpExtTCPHPHits" if seg.payload else "TcpExtTCPHPAcks"] += 1
        if seg.payload and seg.ack == self.snd_una:
            # What _process_ack() does for it: TS.Recent (RFC 7323 4.3) and SND.WL1/WL2
            # (the window itself is unchanged); no duplicate ACK, since it has data.
            self._update_ts_recent(seg, now)
            if sq.lt(self.snd_wl1, seg.seq) or (self.snd_wl1 == seg.seq
                                                and sq.le(self.snd_wl2, seg.ack)):
                self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
        elif not self._process_ack(seg, now):
            return
        if seg.payload:
            self._process_text(seg, now)
        self._input_done(now)

    def _input_done(self, now: float) -> None:
        """The end of a segment that got through: a duplicate ACK leaves now, anything
        else at the batch's end (output_soon())."""
        if self.ack_at_once:
            self.ack_at_once = False
            self.output(now)
        else:
            self.output_soon()
        self._arm_keepalive(now)

    def _acceptable(self, seg: Segment) -> bool:
        """Segment acceptability, Linux tcp_sequence() (LS 151), looser than RFC 9293's table."""
        end = (seg.seq + seg.seg_len) & MASK
        wnd = (self.rcv_adv - self.rcv_nxt) & MASK if sq.le(self.rcv_nxt, self.rcv_adv) else 0
        return sq.ge(end, self.rcv_wup) and sq.le(seg.seq, (self.rcv_nxt + wnd) & MASK)

    def _synchronized_input(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.4 "Otherwise" for SYN-RECEIVED and the synchronized states."""
        flags = seg.flags
        stats = self.ctx.stats
        st = self.state
        # PAWS first (RFC 7323 5.3 R1); a RST is exempt (LS 94).
        if (not flags & RST and self.ts_ok and seg.ts is not None
                # only a TSval older than TS.Recent by more than a tick can fail PAWS
                and 1 < (self.ts_recent - seg.ts[0]) & MASK < 0x80000000
                and paws.reject_established(self.ts_recent, seg.ts[0],
                                            now - self.ts_recent_stamp)):
            if flags & SYN:
                pass  # a SYN gets a challenge ACK below (LS 93)
            else:
                verdict = paws.disordered_ack(
                    seq=seg.seq, seg_len=seg.seg_len, is_ack=bool(flags & ACK), ack=seg.ack,
                    wnd=seg.wnd << self.snd_wscale, tsval=seg.ts[0], ts_recent=self.ts_recent,
                    rcv_nxt=self.rcv_nxt, snd_una=self.snd_una, snd_wl1=self.snd_wl1,
                    snd_wnd=self.snd_wnd, rto=self.rtt.current())
                if verdict == paws.PAWS_OLD_ACK:
                    stats["TcpExtPAWSOldAck"] += 1  # an old pure ACK: dropped silently
                    return
                if verdict == paws.PAWS_DROP:
                    # RFC 7323 5.3 R1: drop it and send an ACK (LS 93), rate-limited
                    # unless the segment occupies sequence space (Linux
                    # tcp_oow_rate_limited()).
                    stats["TcpExtPAWSEstab"] += 1
                    if seg.seg_len:
                        self._send_ack(now)
                    else:
                        self._oow_ack(now, "TcpExtTCPACKSkippedPAWS")
                    return
                # PAWS_OK: a reordered duplicate ACK, processed as usual.
        # first, check sequence number
        if not self._acceptable(seg):
            if flags & RST:
                if st in (State.CLOSE_WAIT, State.LAST_ACK, State.CLOSING) and \
                        seg.seq == (self.rcv_nxt - 1) & MASK:
                    # Linux tcp_reset_check() (LS 110): after the peer's FIN a RST at
                    # RCV.NXT-1, left of the window, is still taken as exact.
                    self._reset_by_peer(seg)
                return
            if st == State.SYN_RECEIVED and flags & SYN and seg.seq == self.irs:
                self._send_synack(now)  # the peer retransmitted its SYN
                return
            if flags & SYN:
                if st == State.SYN_RECEIVED and self.listener is not None:
                    # A passive embryo answers an out-of-window SYN (another ISN) with
                    # a rate-limited ACK, not a counted challenge (Linux tcp_check_req()).
                    self._oow_ack(now, "TcpExtTCPACKSkippedSynRecv")
                    return
                # challenge ACK below
            elif seg.payload or flags & FIN:
                if seg.payload and sq.lt(seg.seq, self.rcv_nxt):
                    # Linux tcp_send_dupack(): a duplicate is D-SACKed (RFC 2883 4.1.1).
                    end = (seg.seq + len(seg.payload)) & MASK
                    self._dsack(seg.seq, end if sq.le(end, self.rcv_nxt) else self.rcv_nxt,
                                "TcpExtTCPDSACKOldSent")
                self._send_ack(now)  # data-bearing: never rate-limited (LS 114)
                return
            else:
                self._oow_ack(now, "TcpExtTCPACKSkippedSeq")
                return
        # second, check the RST bit (RFC 5961 3.2)
        if flags & RST:
            if seg.seq != self.rcv_nxt:
                self._challenge_ack(now)
                return
            self._reset_by_peer(seg)
            return
        # fourth, check the SYN bit: any SYN in a synchronized state (RFC 5961 4.2).
        syn_ack_open = False
        if flags & SYN:
            if (st == State.SYN_RECEIVED and self.listener is None and flags & ACK
                    and seg.seq == self.irs and seg.seg_len == 1 and seg.ack == self.snd_nxt):
                # Simultaneous open (RFC 9293 3.5 Figure 8): the peer's SYN-ACK completes
                # it. Linux accepts it rather than challenging it (commit 23e89e8ee7be) and
                # sends no further ACK.
                syn_ack_open = True
            elif st == State.SYN_RECEIVED and seg.seq == self.irs:
                # The peer retransmitted its SYN: resend the SYN-ACK; a passive embryo
                # does so at most once per tcp_invalid_ratelimit (Linux tcp_check_req()).
                if self.listener is None or not self._oow_rate_limited(
                        now, "TcpExtTCPACKSkippedSynRecv"):
                    self._send_synack(now)
                return
            elif st == State.SYN_RECEIVED and self.listener is not None:
                # An in-window SYN with another ISN in a passive SYN_RECEIVED. RFC 9293
                # 3.10.7.4 fourth says "return this connection to the LISTEN state";
                # Linux (tcp_check_req() -> embryonic_reset) also answers it with a
                # no-socket RST (LS 19 form, R. 0 ack SEG.SEQ+1 for a bare SYN) and
                # drops the request: TcpAttemptFails, TcpExtEmbryonicRsts. ustack does
                # the same, rather than RFC 5961's challenge ACK, which applies to the
                # synchronized states proper (a simultaneous open below).
                stats["TcpAttemptFails"] += 1
                stats["TcpExtEmbryonicRsts"] += 1
                self._send_stateless_rst(seg)
                self._terminate(0, Cause(Why.SYN_OTHER_ISN, seg))
                return
            else:
                stats["TcpExtTCPSYNChallenge"] += 1
                if st == State.ESTABLISHED:
                    stats["TcpInErrs"] += 1  # Linux counts it on the established path only
                self._challenge_ack(now)
                return
        # fifth, check the ACK field: no ACK, drop (LS 13)
        if not flags & ACK:
            return
        self.last_rcv = now
        self.probes_out = 0
        if st == State.SYN_RECEIVED:
            if not sq.in_range(seg.ack, (self.snd_una + 1) & MASK, (self.snd_nxt + 1) & MASK):
                self._send_stateless_rst(seg)  # R seq=SEG.ACK
                return
            # RFC 7323 2.2: the window of a segment with SYN is never scaled.
            self.snd_wnd = seg.wnd if flags & SYN else seg.wnd << self.snd_wscale
            self.max_snd_wnd = self.snd_wnd
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
            if self.listener is not None:
                self.ctx.stats["TcpPassiveOpens"] += 1  # not for a simultaneous open
            # Before _process_ack(): an RTT sample it takes replaces the fallback RTO.
            self._handshake_done()
            self._set_state(State.ESTABLISHED, Cause(Why.SEGMENT, seg))
            self.events.append(_CONNECTED)
            self._arm_keepalive(now)
            st = State.ESTABLISHED
        if not self._process_ack(seg, now):
            return
        if syn_ack_open:
            return
        st = self.state
        if st == State.CLOSED:
            return
        # sixth/seventh/eighth: text and FIN
        if seg.payload or flags & FIN:
            if self.orphan and st in (State.FIN_WAIT_1, State.FIN_WAIT_2) and \
                    sq.gt((seg.seq + len(seg.payload)) & MASK, self.rcv_nxt):
                # Data for an application that closed: it can never be read (RFC 1122
                # 4.2.2.13, LS 32). Reset in the no-socket form and drop the TCB. Linux's
                # test (tcp_rcv_state_process() step 7: END_SEQ - FIN > RCV.NXT) also
                # catches a bare FIN beyond RCV.NXT, i.e. with a hole before it ("FIN
                # not at RCV.NXT", LS 44): it announces data we would have to receive.
                stats["TcpExtTCPAbortOnData"] += 1
                self._send_stateless_rst(seg)  # R seq=SEG.ACK
                self._terminate(0, Cause(Why.DATA_AFTER_CLOSE, seg))
                return
            if st in _RECEIVING:
                self._process_text(seg, now)
            elif (seg.payload and sq.lt(seg.seq, self.rcv_nxt)
                  and sq.gt((seg.seq + len(seg.payload)) & MASK, self.rcv_nxt)):
                # CLOSE_WAIT, CLOSING, LAST_ACK: data running past the peer's own FIN
                # (RFC 9293 3.10.7.4 eighth: the FIN closed the sequence space). Linux
                # tcp_rcv_state_process() step 7 resets, as RFC 1122 4.2.2.13 says.
                stats["TcpExtTCPAbortOnData"] += 1
                self._send_stateless_rst(seg)  # R seq=SEG.ACK
                self._reset_by_peer(seg)
                return
            elif flags & FIN or seg.payload:
                # CLOSE_WAIT, CLOSING, LAST_ACK: the peer already sent FIN; re-ACK.
                self.ack_now = True
        self._input_done(now)

    def _ecn_on(self) -> None:
        self.ecn = ecn.Ecn()
        self.ctx.stats["UstackTcpEcnOk"] += 1

    def _ecn_ack(self, seg: Segment, acked: int, newly_sacked: int, flight: int) -> None:
        """An acceptable ACK on an ECN connection with data outstanding (Linux tcp_ack()
        with FLAG_ECE)."""
        ece = seg.flags & (ECE | SYN) == ECE
        if ece and acked + newly_sacked > 0:
            self.ctx.stats["TcpExtTCPDeliveredCE"] += -(-(acked + newly_sacked) // self.mss)
        if self.ecn.on_ack(self.snd_una, ece, self.snd_max, self.recovery.in_recovery):
            # tcp_enter_cwr(): ssthresh from the controller, as for a loss (CUBIC's
            # beta, W_max), never undone. Linux then lowers cwnd to it by PRR over
            # the next round (tcp_cwnd_reduction() in the CWR state); PRR is
            # recovery.py's, but Linux also processes the ECE before the ACK's cwnd
            # growth (tcp_fastretrans_alert() before tcp_cong_control()), which ustack's
            # ACK path does the other way round: so cwnd drops at once, RFC 3168
            # 6.1.2's plain response (a documented deviation).
            c = self.cc
            c.ssthresh = c.ssthresh_after_loss(flight)
            c.cwnd = c.ssthresh
            self.ctx.stats["UstackTcpEcnCwr"] += 1

    def _handshake_done(self) -> None:
        """Data transfer begins (Linux tcp_init_transfer()). RFC 6298 5.7: without an RTT
        sample from the handshake the RTO is 3 s (RtoEstimator.handshake_done()). RFC
        5681 3.1: after a lost SYN or SYN-ACK the initial window is one segment; Linux,
        given RFC 6298's 1 s initial RTO, only applies this after more than one
        retransmission (and undoes it when timestamps prove them spurious; ustack does
        not)."""
        if self.retries > 1:
            self.cc.on_handshake_loss()
        self.retries = 0
        self.rtt.handshake_done()

    def _reset_by_peer(self, seg: Segment) -> None:
        """An acceptable RST (RFC 9293 3.10.7.4 second, LS 110-111)."""
        st = self.state
        cause = Cause(Why.SEGMENT, seg)
        if st == State.SYN_RECEIVED:
            self.ctx.stats["TcpExtEmbryonicRsts"] += 1
            self.ctx.stats["TcpAttemptFails"] += 1
            err = E.ECONNREFUSED if self.listener is None else 0
        elif st in (State.ESTABLISHED, State.CLOSE_WAIT):
            self.ctx.stats["TcpEstabResets"] += 1
            # Linux reports EPIPE after the peer's FIN, ECONNRESET before (LS 9).
            err = E.EPIPE if st == State.CLOSE_WAIT else E.ECONNRESET
        else:  # FIN_WAIT_1/2, CLOSING, LAST_ACK: Linux tcp_reset() says ECONNRESET
            err = E.ECONNRESET
        self._terminate(err, cause)

    def _rtt_sample_ack(self, seg: Segment, now: float) -> bool:
        """Take an RTT sample from an ACK of new data, if it yields a valid one."""
        if self.ts_ok and seg.ts is not None and seg.ts[1]:
            # RFC 7323 4.1 (RTTM): the echoed TSval times this segment, retransmitted or not.
            r = ((self._ts_now(now) - seg.ts[1]) & MASK) / 1000
            self.rtt_seq = None
            if r < 60:
                self.rtt.sample(r)
                return True
            return False
        if self.rtt_seq is not None and sq.gt(seg.ack, self.rtt_seq):
            # Karn (RFC 6298 3): rtt_seq is only set on a first transmission and cleared by
            # any retransmission, so this ACK is unambiguous.
            self.rtt.sample(now - self.rtt_time)
            self.rtt_seq = None
            return True
        return False

    def _process_ack(self, seg: Segment, now: float) -> bool:
        """RFC 9293 3.10.7.4 fifth (ESTABLISHED and the closing states). False: drop."""
        ack = seg.ack
        if sq.gt(ack, self.snd_max):
            # ACK of data never sent: challenge it (RFC 5961 5.2, LS 112).
            self._challenge_ack(now)
            return False
        if sq.lt(ack, (self.snd_una - max(self.max_snd_wnd, 1)) & MASK):
            self._challenge_ack(now)
            return False
        if sq.gt(ack, self.snd_nxt):
            self.snd_nxt = ack  # after go-back-N, an ACK for data sent before the timeout
        old_una = self.snd_una
        acked = sq.diff(ack, old_una)
        if acked >= 0:
            # TS.Recent from a segment whose ACK is acceptable, before the ACK can move
            # the state (CLOSING -> TIME_WAIT keeps this TSval); an old ACK left of
            # SND.UNA does not update it (Linux tcp_ack(), LS 91).
            self._update_ts_recent(seg, now)
        wnd = seg.wnd if seg.flags & SYN else seg.wnd << self.snd_wscale  # RFC 7323 2.2
        rec = self.recovery
        flight = sq.diff(self.snd_nxt, old_una) - rec.sb.sacked  # before this ACK, for CWV
        recovering = rec.in_recovery
        newly_sacked = dsack = 0
        if seg.sack and self.sack_ok and acked >= 0:
            # The scoreboard and the send record (RACK's input) learn what the peer holds.
            newly_sacked, dsack = rec.on_sack(seg.sack, old_una, ack, now)
        tsecr = seg.ts[1] if self.ts_ok and seg.ts is not None else None
        if acked > 0:
            if self._rtt_sample_ack(seg, now):
                # Karn: the backed-off RTO stays until a valid sample (RFC 6298 5, note
                # after 5.7); Linux resets icsk_backoff in tcp_ack_update_rtt().
                self.rtt.reset_backoff()
            self.snd_una = ack
            if self.cc.wants_rtt:
                self._ca_rtt_sample(ack, now)
            self.bytes_acked += acked
            q = self.sendq
            before = len(q)
            removed = q.on_ack(ack)
            if len(q) != before:
                self.events.append(_SEND_SPACE)
            self.retries = 0
            rec.on_ack(acked, ack, flight, dsack, now, removed, tsecr, newly_sacked)
            if self.snd_una == self.snd_max:
                self.timers.clear(Timer.RTO)
                self.timers.clear(Timer.LOSS)
                if self.busy_since:  # not for the handshake: _emit() sent the SYN
                    self.busy_time += now - self.busy_since
                    self.busy_since = 0.0
            else:
                self.timers.set(Timer.RTO, now + self.rtt.current())  # RFC 6298 5.3
                rec.arm_probe(now)
        elif acked == 0 and (self.snd_una != self.snd_max or dsack):
            if self.sack_ok:
                # Every ACK goes to recovery (Linux tcp_ack() -> tcp_fastretrans_alert()
                # for a dubious one): a duplicate reports new data held above the hole
                # (RFC 6675 2), which a data-bearing ACK also can; a D-SACK may undo.
                rec.on_ack(0, ack, flight, dsack, now, None, tsecr, newly_sacked)
                if self.snd_una != self.snd_max and not self.timers.is_set(Timer.RTO):
                    self.timers.set(Timer.RTO, now + self.rtt.current())
            elif not seg.payload and not seg.flags & FIN and wnd == self.snd_wnd:
                # A duplicate ACK: RFC 5681 2's definition.
                rec.on_duplicate_ack(now)
        if self.ecn is not None and acked >= 0 and old_una != self.snd_max:
            if rec.in_recovery and not recovering:
                self.ecn.on_reduction(self.snd_max)  # loss recovery cut cwnd: CWR too
            self._ecn_ack(seg, acked, newly_sacked, sq.diff(self.snd_max, old_una))
        # RFC 9293 3.10.7.4: update the send window if the segment is newer (SND.WL1/WL2).
        if sq.lt(self.snd_wl1, seg.seq) or (self.snd_wl1 == seg.seq and sq.le(self.snd_wl2, ack)):
            self.snd_wnd = wnd
            self.snd_wl1, self.snd_wl2 = seg.seq, ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd and self.timers.at[_PERSIST] is not None:
                # The window opened: probing is over, and so is its backoff (Linux
                # tcp_ack_probe()).
                self.timers.clear(Timer.PERSIST)
                self.rtt.reset_backoff()
        if self.recorder is not None:
            self.recorder.on_ack(self, seg, now)
        if not (self.fin_sent and self.snd_una == self.snd_max):
            return True  # our FIN is not (yet) acknowledged: no state change here
        st = self.state
        if st == State.FIN_WAIT_1:
            self._set_state(State.FIN_WAIT_2, Cause(Why.SEGMENT, seg))
            self.timers.clear(Timer.LINGER)
            if self.orphan:
                self._arm_fin_wait_2(now)
        elif st == State.CLOSING:
            self._enter_time_wait(now, Cause(Why.SEGMENT, seg))
            return False
        elif st == State.LAST_ACK:
            # LAST_ACK -> CLOSED, no TIME_WAIT for the passive closer (LS 11).
            self._terminate(0, Cause(Why.SEGMENT, seg))
            return False
        return True

    def _ca_rtt_sample(self, ack: int, now: float) -> None:
        """The controller's RTT sample (HyStart, CUBIC's delay_min): the age of the
        newest segment this ACK covers, none if it covers a retransmission (Linux's
        ca_rtt in tcp_clean_rtx_queue(): last_ackt, FLAG_RETRANS_DATA_ACKED)."""
        t = None
        for rec in self.sendq.sent:
            if not sq.lt(rec.start, ack):
                break
            if rec.flags & RETRANSMITTED:
                return
            if not rec.flags & SACKED:  # timed when it was SACKed, not now
                t = rec.time
            if sq.gt(rec.end, ack):
                break
        if t is not None:
            self.cc.on_rtt(now - t, now, ack, self.snd_nxt)

    def retransmit(self, seq: int, limit: int, now: float) -> int:
        """Resend up to `limit` octets (at most one MSS) from `seq`, with the FIN if it
        falls there. Returns the sequence space sent, 0 if there was nothing to send."""
        n = min(limit, self.send_mss())
        payload = self.sendq.data(seq, n) if n > 0 else b""
        flags = ACK
        if payload:
            flags |= PSH
        if self.fin_sent and (seq + len(payload)) & MASK == self.buf_end:
            flags |= FIN
        if not payload and not flags & FIN:
            return 0
        seg = self._make(flags, seq, now, payload)
        self._emit(seg)
        stats = self.ctx.stats
        stats["TcpRetransSegs"] += 1
        rec = self.recovery
        if rec.in_recovery:
            stats["TcpExtTCPFastRetrans"] += 1
        elif rec.ca_state == "Loss":
            stats["TcpExtTCPSlowStartRetrans"] += 1
        self.rtt_seq = None  # Karn (RFC 6298 3): no sample from a retransmitted segment
        self.last_send = now
        k = len(payload) + (1 if flags & FIN else 0)
        self.sendq.on_transmit(seq, (seq + k) & MASK, now)
        rec.on_sent(k, True, seg.ts[0] if seg.ts else None)
        self.retrans_segs += 1
        if payload:
            self.data_segs_out += 1
            self.bytes_sent += len(payload)
            self.bytes_retrans += len(payload)
        if self.recorder is not None:
            self.recorder.on_send(self, seq, k, True, now)
        return k

    def retransmit_head(self, now: float) -> int:
        """Resend the first unacknowledged segment (data and/or FIN) at SND.UNA, up to
        the data the peer SACKed, and restart the timer."""
        una = self.snd_una
        # Only what was sent before (Linux resends the skb as it was): new bytes here
        # would skip the window check and run past SND.MAX, so the peer's ACK for them
        # would look like an ACK of unsent data, be dropped, and the connection stall.
        limit = min(self.mss, sq.diff(self.snd_max, una))
        blk = self.recovery.next_sacked(una)
        if blk is not None and sq.gt(blk[0], una):
            limit = min(limit, sq.diff(blk[0], una))
        n = self.retransmit(una, limit, now)
        self.timers.set(Timer.RTO, now + self.rtt.current())
        return n

    def _process_text(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.4 seventh and eighth: segment text and FIN, in order only."""
        start = seg.seq
        data = seg.payload
        fin = bool(seg.flags & FIN)
        rcv_nxt = self.rcv_nxt
        if self.ecn is not None and data and self.ecn.on_data(seg.flags, seg.ecn):
            # CWR (tcp_ecn_accept_cwr(): ICSK_ACK_NOW) or a first CE (tcp_ecn_check_ce():
            # quick-ACK mode, "the sender can have a very low cwnd").
            self.ack_now = True
            self.quickacks = max(self.quickacks, 2)
        # The peer's full-sized segment (tcp_measure_rcv_mss()): of a super-segment,
        # the size it was cut from (gso_size), not its whole length.
        seen = seg.gso or len(data)
        if seen > self.rcv_mss:
            self.rcv_mss = seen
        if data:
            d = sq.diff(start, rcv_nxt)
            if d < 0:  # trim the part we already have
                # RFC 2883 4 (Linux tcp_dsack_set()): report the duplicate, once.
                self._dsack(start, (start + min(-d, len(data))) & MASK, "TcpExtTCPDSACKOldSent")
                data = data[-d:]
                start = rcv_nxt
                if not data:
                    if not fin:
                        self.ack_now = self.ack_at_once = True  # a duplicate: tell the sender where we are
                        return
        wnd_edge = self.rcv_adv if sq.gt(self.rcv_adv, rcv_nxt) else rcv_nxt
        if data:
            room = sq.diff(wnd_edge, start)
            if room <= 0:
                self.ctx.stats["TcpExtTCPZeroWindowDrop"] += 1
                self.ack_now = self.ack_at_once = True
                return
            if len(data) > room:
                data = data[:room]  # beyond the window: trimmed (RFC 9293 3.10.7.4)
                fin = False
        if data:
            mem = self.ctx.mem
            mem.recent += len(data)  # brings the next sample forward (mem.py)
            if mem.over and not self._mem_room(len(data), start != rcv_nxt):
                return
        if start != rcv_nxt:
            # Out of order: queue it (merged, so a duplicate costs nothing and the queue
            # stays within the window) and ACK at once, with SACK blocks, so the sender
            # sees the hole (RFC 5681 4.2, RFC 2018 4).
            if data and len(self.ofo) >= max(OFO_MIN_BLOCKS, self.rcv_cap >> 10) \
                    and not self._ofo_room(start):
                return
            if data:
                held = self.ofo.overlap(start, (start + len(data)) & MASK)
                if held is not None:
                    # Out-of-order data we already hold (Linux tcp_data_queue_ofo()).
                    self._dsack(held[0], held[1], "TcpExtTCPDSACKOfoSent")
                if self.ofo.add(start, data):
                    self.ctx.stats["TcpExtTCPOFOQueue"] += 1
            self.rcv_ooopack += 1
            if fin:
                self.ofo_fin = (start + len(data)) & MASK
            self.ack_now = self.ack_at_once = True
            return
        if data:
            hole = bool(self.ofo)
            self.rcvbuf.append(data)
            self.rcv_nxt = (rcv_nxt + len(data)) & MASK
            self.bytes_received += len(data)
            self.last_data_rcv = now
            if hole:
                self._drain_ofo()
            self.events.append(_DATA)
            self.unacked_segs += 1
            if self.quickacks > 0:
                self.quickacks -= 1
                self.ack_now = True
            elif hole:
                self.ack_now = self.ack_at_once = True  # RFC 5681 4.2: it fills all or part of a gap
            elif sq.diff(self.rcv_nxt, self.rcv_wup) > self.rcv_mss:
                # RFC 9293 3.8.6.3 / RFC 5681 4.2: an ACK for at least every second
                # full-sized segment (Linux: more than one rcv_mss unacknowledged).
                self.ack_now = True
            elif self.timers.at[_DELACK] is None:
                self.timers.set(Timer.DELACK, now + DELACK)
        if fin or (self.ofo_fin is not None and self.ofo_fin == self.rcv_nxt):
            if fin and (start + len(data)) & MASK != self.rcv_nxt:
                return
            self._fin_received(seg, now)

    def _dsack(self, start: int, end: int, counter: str) -> None:
        """Queue a D-SACK block for the next ACK (RFC 2883; Linux tcp_dsack_set(): the
        first duplicate reported wins until the block is sent)."""
        if self.sack_ok and self.ctx.config.tcp_dsack and self.dsack is None and start != end:
            self.dsack = (start, end)
            self.ctx.stats[counter] += 1

    def _drain_ofo(self) -> None:
        """Move the queued data that now continues RCV.NXT to the receive buffer."""
        chunk = self.ofo.pop(self.rcv_nxt)
        if chunk:
            self.bytes_received += len(chunk)
            self.rcvbuf.append(chunk)
            self.rcv_nxt = (self.rcv_nxt + len(chunk)) & MASK

    def _fin_received(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.4 eighth: the FIN consumes one sequence number."""
        if self.fin_received:
            return
        self.fin_received = True
        self.ofo_fin = None
        self.rcv_nxt = (self.rcv_nxt + 1) & MASK
        self.ack_now = True  # Linux ACKs a FIN at once in the closing states (LS 7, 8)
        self.events.append(_EOF)
        cause = Cause(Why.SEGMENT, seg)
        st = self.state
        if st == State.ESTABLISHED:
            self._set_state(State.CLOSE_WAIT, cause)
        elif st == State.FIN_WAIT_1:
            # Our FIN is not yet acknowledged (else we would be in FIN_WAIT_2): simultaneous
            # close, FIN_WAIT_1 -> CLOSING (RFC 9293 3.6 case 3, Figure 13).
            self._set_state(State.CLOSING, cause)
        elif st == State.FIN_WAIT_2:
            self._send_ack(now)
            self._enter_time_wait(now, cause)

    def _enter_time_wait(self, now: float, cause: Cause) -> None:
        """TIME_WAIT for 2*MSL (RFC 9293 3.10.7.4). The demultiplexer then swaps this TCB
        for a compact TIME_WAIT record (Linux tcp_time_wait())."""
        if self.ack_now:
            self._send_ack(now)
        self._set_state(State.TIME_WAIT, cause)
        self.timers.clear_all()  # the TIME_WAIT record keeps the 2MSL time
        self.sendq.clear()
        self.events.append(ConnectionClosed(0))

    # ------------------------------------------------------------------ output

    # What recovery.py's `Sender` interface asks of the connection.

    def unsent(self) -> int:
        """Queued bytes not yet sent."""
        return sq.diff(self.sendq.end, self.snd_nxt)

    def open_for_probe(self) -> bool:
        """A loss probe may go out while data or our FIN is unacknowledged."""
        return self.state in _PROBE

    def send_new(self, n: int, now: float) -> None:
        """Send `n` new bytes from SND.NXT (a loss probe's new data, RFC 8985 7.3)."""
        self._transmit(ACK | PSH if n == self.unsent() else ACK,
                       self.sendq.data(self.snd_nxt, n), now)

    def _on_loss_timer(self, now: float) -> None:
        # The reordering timer or the loss probe (recovery.py); what RACK marked lost
        # leaves now.
        probes = self.ctx.stats["TcpExtTCPLossProbes"]
        self.recovery.on_loss_timer(now)
        if self.recorder is not None and self.ctx.stats["TcpExtTCPLossProbes"] != probes:
            self.recorder.on_event(self, "tlp", now)
        self.output(now)

    def output_soon(self) -> None:
        """Ask for output() at the end of the batch: when every segment that arrived
        together and every call the application made in this turn is in (the shell's
        flush, TcpTable.transmit()). So a burst of segments gets one ACK (still one per
        two full-sized segments' worth: the rule is in _process_text), and data
        written just before close() leaves with the FIN. Time does not pass in between:
        a batch is one instant."""
        if not self.output_due:
            self.output_due = True
            self.ctx.output_due.append(self)

    def output(self, now: float, force: bool = False) -> None:
        """Send what the windows, Nagle and the state allow, then a pending ACK.

        `force`: the persist timer ran out while the usable window was too small for
        sender SWS avoidance; send what fits anyway (RFC 9293 3.8.6.2.1, the override)."""
        if self.state in _NO_OUTPUT:
            return
        sent = False
        # tcp_slow_start_after_idle (Linux tcp_cwnd_restart() from tcp_event_data_sent())
        if self.timers.at[_RTO] is None and self.snd_una == self.snd_max and \
                now - self.last_send > self.rtt.current() and \
                self.ctx.config.tcp_slow_start_after_idle:
            self.cc.on_idle_restart()  # RFC 5681 4.1 / RFC 7661
        rec = self.recovery
        if self.sack_ok and rec.any_lost and not rec.frto_new:
            # What RACK (or the DupThresh rule) marked lost goes first (Linux
            # tcp_xmit_recovery() -> tcp_xmit_retransmit_queue()), then new data.
            sent, flight = rec.retransmit_lost(now)
        else:
            flight = rec.flight()
        cwnd = self.cc.cwnd
        if rec.dupacks:
            cwnd += rec.limited_transmit()
        smss = self.send_mss()  # full-sized for Nagle and SWS: with this segment's options
        gso_max = self.ctx.gso_max
        while True:
            nxt = self.snd_nxt
            buf_end = self.buf_end
            unsent = sq.diff(buf_end, nxt)
            if unsent > 0:
                room = min(self.snd_wnd - self.in_flight, cwnd - flight)
                if gso_max and unsent > smss and room > smss:
                    # A super-segment for the device to cut (TSO). Linux's size goal
                    # (tcp_xmit_size_goal() with tcp_tso_autosize(): the whole 64 KB
                    # on a sub-512 us path) and tcp_cwnd_test(): at most half the
                    # cwnd per packet, so two are in flight.
                    segs = min(self._tso_segs(smss, gso_max), max(cwnd // smss >> 1, 1))
                    n = min(unsent, smss * segs, room)
                    tail = n % smss
                    if tail and (n < unsent or self._nagle_blocks()):
                        # tcp_mss_split_point(): a short last piece goes on its own,
                        # by the rules for small segments below.
                        n -= tail
                else:
                    n = min(unsent, smss, room)
                if sq.lt(nxt, self.snd_max):
                    # Go-back-N after an RTO (RFC 5681 3.1, RFC 6298 5.4), in slow start,
                    # skipping what the peer SACKed; no Nagle/SWS for data already sent.
                    blk = rec.next_sacked(nxt)
                    if blk is not None:
                        if sq.le(blk[0], nxt):
                            self.snd_nxt = blk[1]
                            continue
                        n = min(n, sq.diff(blk[0], nxt))
                    if n <= 0:
                        break
                elif n <= 0:
                    if self.snd_wnd == 0 or room <= 0 and self.snd_una == self.snd_max:
                        self._arm_persist(now)
                    break
                elif n < smss and not force:
                    if n < unsent:
                        # RFC 9293 3.8.6.2.1 sender SWS avoidance: a window-limited partial
                        # segment only if it is at least half the largest window the peer
                        # offered and nothing is outstanding; else wait for the window to
                        # open or for the persist timer's override.
                        if n < self.max_snd_wnd // 2 or self.snd_una != self.snd_max:
                            if self.snd_una == self.snd_max:
                                self._arm_persist(now)
                            break
                    elif self._nagle_blocks():
                        if (self.cork or self.more) and self.snd_una == self.snd_max:
                            # Linux holds corked data only until the probe timer
                            # (tcp_check_probe_timer(), max(RTO, TCP_RTO_MIN)), whose
                            # tcp_write_wakeup() sends it anyway: tcp(7)'s "200 ms
                            # ceiling" on TCP_CORK, MSG_MORE alike.
                            self._arm_persist(now)
                        break
                payload = self.sendq.data(nxt, n)
                flags = ACK
                if n == unsent:
                    flags |= PSH
                    if self.fin_queued:
                        flags |= FIN  # piggyback the FIN on the last data segment (LS 20)
                self._transmit(flags, payload, now, smss if n > smss else 0)
                flight += n
                sent = True
                continue
            if self.fin_queued and self.snd_nxt == buf_end:
                self._transmit(FIN | ACK, b"", now)
                sent = True
            break
        if sent and not rec.in_recovery:
            rec.arm_probe(now)
        if not sent and self.ack_now:
            self._send_ack(now)

    def _tso_segs(self, mss: int, gso_max: int) -> int:
        """Linux tcp_tso_autosize(): about 1 ms of data at the pacing rate
        (sk_pacing_shift 10) plus the GSO size halved for every 512 us of min RTT
        (tcp_tso_rtt_log 9), at most the GSO size, at least tcp_min_tso_segs (2). The
        pacing rate is tcp_update_pacing_rate()'s: mss * cwnd / SRTT, x2 while cwnd is
        below half ssthresh (tcp_pacing_ss_ratio 200), else x1.2 (tcp_pacing_ca_ratio)."""
        rtt = self.rtt
        srtt = rtt.srtt
        if not srtt:
            return gso_max // mss  # no RTT yet: sk_pacing_rate is still unlimited
        cc = self.cc
        ratio = 2.0 if cc.cwnd < cc.ssthresh // 2 else 1.2
        rate = mss * max(cc.cwnd // mss, 1) * ratio / srtt
        shift = int((rtt.min_rtt if rtt.min_rtt is not None else srtt) * 1e6) >> 9
        size = int(rate) >> 10
        if shift < 32:
            size += gso_max >> shift
        return max(min(size, gso_max) // mss, 2)

    def _nagle_blocks(self) -> bool:
        """Nagle (RFC 896, RFC 9293 3.7.4) in Minshall's form as Linux has it
        (tcp_nagle_check(), tcp_minshall_check()): no second small segment while one is
        unacknowledged. Full-sized means self.mss, options subtracted."""
        if self.fin_queued:
            return False  # the FIN pushes (tcp_send_fin() with TCP_NAGLE_OFF)
        if self.nagle_push and not (self.more and self.snd_una == self.more_una):
            return False  # TCP_NAGLE_PUSH overrides the cork (tcp_nagle_test())
        if self.cork or self.more and self.snd_una == self.more_una:
            # TCP_CORK / MSG_MORE: tcp_nagle_check() with TCP_NAGLE_CORK. MSG_MORE
            # corks only that send()'s push (tcp_push()); an ACK's push
            # (tcp_data_snd_check()) uses the socket's own Nagle setting.
            return True
        sml = self.snd_sml
        return not self.nodelay and sml is not None and \
            sq.gt(sml, self.snd_una) and sq.le(sml, self.snd_max)

    def _transmit(self, flags: int, payload: bytes, now: float, gso: int = 0) -> None:
        """Send `payload` from SND.NXT; `gso`: the segment size of a super-segment."""
        seq = self.snd_nxt
        seg = self._make(flags, seq, now, payload)
        n = len(payload) + (1 if flags & FIN else 0)
        if self.snd_una == self.snd_max:
            self.busy_since = now  # from idle: busy until all is acknowledged
        retrans = sq.lt(seq, self.snd_max)
        if retrans:
            self.ctx.stats["TcpRetransSegs"] += 1
            self.ctx.stats["TcpExtTCPSlowStartRetrans"] += 1
            self.retrans_segs += 1
            self.bytes_retrans += len(payload)
            self.recovery.on_sent(n, True, seg.ts[0] if seg.ts else None)
        else:
            if self.rtt_seq is None and n:
                self.rtt_seq = seq
                self.rtt_time = now
            if self.recovery.ca_state in _REDUCING:
                self.recovery.on_sent(n, False, None)  # PRR's prr_out
        if not retrans and payload and self.ecn is not None:
            # New data: ECT(0), and CWR once after a reduction (RFC 3168 6.1.2, Linux
            # tcp_ecn_send()); never on retransmissions, pure ACKs or SYNs (6.1.5).
            seg.ecn |= ecn.ECT0
            if self.ecn.queue_cwr:
                self.ecn.queue_cwr = False
                seg.flags |= CWR
        if gso:
            seg.gso = gso
            if len(payload) % gso:  # tcp_minshall_update(): len < pcount * mss
                self.snd_sml = (seq + len(payload)) & MASK
        elif 0 < len(payload) < self.send_mss():
            self.snd_sml = (seq + len(payload)) & MASK
        self.snd_nxt = (seq + n) & MASK
        self.sendq.on_transmit(seq, self.snd_nxt, now)
        if sq.gt(self.snd_nxt, self.snd_max):
            self.snd_max = self.snd_nxt
        at = self.timers.at
        if at[_RTO] is None:
            self.timers.set(_RTO, now + self.rtt.current())
        if at[_PERSIST] is not None:
            self.timers.clear(_PERSIST)
            self.probe_start = None  # the window opened: probing is over
        if self.snd_una == seq and n:
            # Nothing was in flight: Linux's CA_EVENT_TX_START (tcp_event_data_sent()).
            self.cc.on_tx_start(now, now - self.last_send)
        self.last_send = now
        if payload:
            self.data_segs_out += -(-len(payload) // gso) if gso else 1
            self.bytes_sent += len(payload)
        self._emit(seg)
        if self.recorder is not None:
            self.recorder.on_send(self, seq, n, retrans, now)

    def _arm_persist(self, now: float) -> None:
        if not self.timers.is_set(Timer.PERSIST) and not self.timers.is_set(Timer.RTO):
            self.timers.set(Timer.PERSIST, now + self.rtt.current())

    # ------------------------------------------------------------------ timers

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due (RFC 9293 3.8.1, RFC 6298 5), in `Timer` order."""
        for kind in self.timers.due(now):
            _ON_TIMER[kind](self, now)

    def _on_delack(self, now: float) -> None:
        if self.unacked_segs or self.ack_now:
            self.ctx.stats["TcpExtDelayedACKs"] += 1
            self._send_ack(now)

    def _on_linger(self, now: float) -> None:
        if self.state in (State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK,
                          State.ESTABLISHED, State.CLOSE_WAIT):
            # SO_LINGER N > 0 ran out with data or our FIN unacknowledged: reset.
            # A deliberate deviation from Linux, whose close() just stops waiting
            # and lets the orphan run on (LS 29, sk_stream_wait_close()): ustack's
            # SO_LINGER contract (issue 3, aio.py) is "everything acknowledged
            # within N s, or RST", so an application that waited N s knows the
            # connection is over either way. Counted as TCPAbortOnLinger, the MIB
            # Linux uses for its other linger-driven abort (TCP_LINGER2 < 0, LS 33).
            self.ctx.stats["TcpExtTCPAbortOnLinger"] += 1
            self._abort(now, Why.LINGER_TIMEOUT, rst=True)

    def _on_fin_wait_2(self, now: float) -> None:
        if self.state == State.FIN_WAIT_2:
            # Orphaned FIN_WAIT_2 ends silently after tcp_fin_timeout (LS 42).
            self._terminate(0, Cause(Why.FIN_TIMEOUT))

    def _on_rto(self, now: float) -> None:
        stats = self.ctx.stats
        cfg = self.ctx.config
        st = self.state
        if self.retries == 0 and self.user_timeout:
            # The user-timeout clock starts at the head's first transmission (Linux
            # retrans_stamp, retransmits_timed_out()).
            sent = self.sendq.sent
            self.ut_start = sent[0].time if sent else now - self.rtt.current()
        self.retries += 1
        stats["TcpExtTCPTimeouts"] += 1
        self.total_rto += 1
        if self.retries == 1:
            self.total_rto_recoveries += 1
        if self.user_timeout:
            # TCP_USER_TIMEOUT replaces the retry counts (tcp_write_timeout()).
            if self._user_timed_out(now):
                stats["TcpExtTCPAbortOnTimeout"] += 1
                if st in (State.ESTABLISHED, State.CLOSE_WAIT):
                    stats["TcpEstabResets"] += 1
                elif st == State.SYN_SENT or st == State.SYN_RECEIVED:
                    stats["TcpAttemptFails"] += 1  # tcp_done() counts a handshake's end
                self._terminate(E.ETIMEDOUT, Cause(Why.RTO_GIVE_UP))
                return
        if st == State.SYN_SENT or st == State.SYN_RECEIVED:
            # Resend the SYN or SYN-ACK with backoff (RFC 6298 5.5) until Linux's
            # tcp_syn_retries / tcp_synack_retries run out; TCP_USER_TIMEOUT may end it
            # sooner, never later (tcp_write_timeout() keeps the count in SYN states).
            syn_sent = st == State.SYN_SENT
            if self.retries > (cfg.tcp_syn_retries if syn_sent else cfg.tcp_synack_retries):
                stats["TcpAttemptFails"] += 1
                self._terminate(E.ETIMEDOUT, Cause(Why.SYN_RETRIES if syn_sent
                                                  else Why.SYNACK_RETRIES))
                return
            self.rtt.back_off()
            if syn_sent:
                self._send_syn(now)
            else:
                self._send_synack(now)
            self.rtt_seq = None
            stats["TcpRetransSegs"] += 1
            self.timers.set(Timer.RTO, self._clamp_to_user_timeout(now + self.rtt.current()))
            return
        if self.orphan and st in (State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK):
            # Linux tcp_out_of_resources(): an orphan whose RTO fires while there are
            # too many is reset (item 400b; the shift for a long-idle one: limit / 2).
            idle = now - self.last_send  # Linux: tcp_jiffies32 - tp->lsndtime
            if self.ctx.too_many_orphans(1 if idle > 240.0 else 0):
                self._abort_on_memory(now)
                return
            limit = cfg.tcp_orphan_retries or 8  # Linux tcp_orphan_retries(): 0 means 8
        else:
            limit = cfg.tcp_retries2
        if self.retries > limit and not self.user_timeout:
            # Give up (LS 124, 125): state CLOSED, TCPAbortOnTimeout, and no RST on the
            # wire; a live application sees ETIMEDOUT. The issue says an orphan "is
            # reset"; ustack deliberately keeps Linux's silent death, as RFC 9293 3.8.3
            # (R2: "close the connection") and RFC 1122 4.2.3.5 ask no RST either: the
            # peer has not answered for minutes, so a RST would most likely be lost too,
            # and a peer that does come back gets a no-socket RST for its next segment
            # (LS 100). Scenario files then agree with the kernel's trace.
            stats["TcpExtTCPAbortOnTimeout"] += 1
            if st in (State.ESTABLISHED, State.CLOSE_WAIT):
                stats["TcpEstabResets"] += 1
            self._terminate(E.ETIMEDOUT, Cause(Why.RTO_GIVE_UP))
            return
        # RFC 5681 3.1 equation 4 and RFC 6298 5.4-5.6: collapse cwnd, back off, go back N;
        # ssthresh once per loss episode (Linux tcp_enter_loss()).
        # The Loss state (Linux tcp_enter_loss()): cwnd, ssthresh once per window, undo
        # and F-RTO bookkeeping, in recovery.py.
        self.recovery.on_rto(now)
        if self.ecn is not None:
            self.ecn.on_reduction(self.snd_max)  # tcp_enter_loss() queues CWR too
        if self.recorder is not None:
            self.recorder.on_event(self, "rto", now)
        if self.retries >= 2:
            self.sendq.clear_flag(SACKED)  # as recovery forgets its SACKs (RFC 2018 8)
        self.rtt.back_off()
        self.snd_nxt = (self.snd_una + self.retransmit_head(now)) & MASK
        self.timers.set(Timer.RTO, self._clamp_to_user_timeout(now + self.rtt.current()))

    def _on_persist(self, now: float) -> None:
        """Zero-window probe (RFC 9293 3.8.6.1), Linux style: an ACK with seq SND.UNA-1."""
        if self.state not in (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1,
                              State.LAST_ACK, State.CLOSING):
            return
        if self.snd_wnd and self.cc.cwnd > self.in_flight:
            # A window too small for SWS avoidance to use: the override (RFC 9293 3.8.6.2.1).
            self.output(now, force=True)
            return
        self.probes_out += 1
        # TCP_USER_TIMEOUT, when set, bounds probing instead of the count, from the first
        # probe on even if the peer answers them (tcp_probe_timer(), icsk_probes_tstamp,
        # cleared only when the window opens: tcp_ack_probe()).
        if self.probe_start is None:
            self.probe_start = now
        if (now - self.probe_start >= self.user_timeout if self.user_timeout
                else self.probes_out > self.ctx.config.tcp_retries2):
            self.ctx.stats["TcpExtTCPAbortOnTimeout"] += 1
            self._terminate(E.ETIMEDOUT, Cause(Why.ZWP_GIVE_UP))
            return
        self.ctx.stats["TcpExtTCPWinProbe"] += 1
        self._emit(self._make(ACK, (self.snd_una - 1) & MASK, now))
        self.rtt.back_off()
        at = now + self.rtt.current()
        if self.user_timeout:
            at = min(at, self.probe_start + self.user_timeout)
        self.timers.set(Timer.PERSIST, at)

    def _on_keepalive(self, now: float) -> None:
        """Keepalive (RFC 9293 3.8.4, LS 130-133)."""
        if not self.keepalive or self.state not in (State.ESTABLISHED, State.CLOSE_WAIT,
                                                    State.FIN_WAIT_1, State.FIN_WAIT_2):
            return
        if self.snd_una != self.snd_max or self.sendq:
            self.timers.set(Timer.KEEPALIVE, now + self.keepidle)  # the RTO governs
            return
        idle = now - self.last_rcv
        if self.probes_out == 0 and idle < self.keepidle:
            self.timers.set(Timer.KEEPALIVE, self.last_rcv + self.keepidle)
            return
        # TCP_USER_TIMEOUT replaces the probe count once a probe is out (Linux
        # tcp_keepalive_timer(): user_timeout && elapsed >= it && probes_out > 0).
        ut = self.user_timeout
        if (idle >= ut and self.probes_out > 0) if ut else self.probes_out >= self.keepcnt:
            self.ctx.stats["TcpExtTCPAbortOnTimeout"] += 1
            if self.state in (State.ESTABLISHED, State.CLOSE_WAIT):
                self.ctx.stats["TcpEstabResets"] += 1
            self._send_rst(now)
            self._terminate(E.ETIMEDOUT, Cause(Why.KEEPALIVE_GIVE_UP))
            return
        self.probes_out += 1
        self.ctx.stats["TcpExtTCPKeepAlive"] += 1
        self._emit(self._make(ACK, (self.snd_una - 1) & MASK, now))
        self.timers.set(Timer.KEEPALIVE, now + self.keepintvl)

    # ------------------------------------------------------------------ views

    def timer_info(self, now: float) -> tuple[str, float, int] | None:
        """(name, seconds left, retransmissions) as `ss -o` shows it."""
        if self.timers.is_set(Timer.RTO):
            return ("on", max(self.timers.get(Timer.RTO) - now, 0.0), self.retries)
        if self.timers.is_set(Timer.PERSIST):
            return ("persist", max(self.timers.get(Timer.PERSIST) - now, 0.0), self.probes_out)
        if self.timers.is_set(Timer.FIN_WAIT_2):
            return ("timewait", max(self.timers.get(Timer.FIN_WAIT_2) - now, 0.0), 0)
        if self.timers.is_set(Timer.KEEPALIVE):
            return ("keepalive", max(self.timers.get(Timer.KEEPALIVE) - now, 0.0), self.probes_out)
        return None


_ON_TIMER = {
    Timer.DELACK: Tcb._on_delack, Timer.LOSS: Tcb._on_loss_timer, Timer.RTO: Tcb._on_rto,
    Timer.PERSIST: Tcb._on_persist, Timer.KEEPALIVE: Tcb._on_keepalive,
    Timer.LINGER: Tcb._on_linger, Timer.FIN_WAIT_2: Tcb._on_fin_wait_2,
}

__all__ = ["Tcb", "no_socket_rst", "OUR_MSS"]
