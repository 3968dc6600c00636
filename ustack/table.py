"""The demultiplexer: every arriving TCP segment finds its TCB here (sans-IO).

Lookup order is lwIP's and Linux's: established table, then TIME_WAIT records, then
listeners by local port. The key is the 12 bytes at offset 12 of an IPv4 frame with a
20-byte header (source address, destination address, source port, destination port),
sliced once by the shell and used as-is: one dict lookup, flat from one connection to
a million (benchmarks/bench_demux.py).

The table also owns ephemeral port allocation (with TIME_WAIT reuse), the move of a TCB
into a TIME_WAIT record, the shared timer heap, and RSTs for segments nobody owns.
"""

from __future__ import annotations

import errno as E
import hashlib
import itertools
from collections.abc import Callable
from typing import TypeVar

from . import seq as sq
from .tcp import ecn, paws, syncookie
from .tcp.context import Context
from .tcp.events import ListenOverflow, StateChanged, SynFlood
from .tcp.reqsock import F_ACKED, NO_WSCALE, ReqRecord, RequestTable, ack_for, synack, synack_window
from .tcp.reqsock import timeout_ms as req_timeout_ms
from .tcp.state import State
from .tcp.tcb import DEFAULT_MSS, MIN_SND_MSS, Tcb, no_socket_rst
from .tcp.timers import Timer
from .tcp.timewait import TW_ACK, TW_SYN, TimeWaitTable, TwRecord, ms32, sec32
from .timerq import TimerQueue
from .wire.ip import ip_to_bytes, ip_to_str
from .wire.tcp import ACK, RST, SYN, Segment

T = TypeVar("T")
Tx = tuple[bytes, bytes, Segment]  # (source address, destination address, segment)
PERTURB_SIZE = 1 << 16  # Linux INET_TABLE_PERTURB_SIZE

# TIME_WAIT rows listed by rows(); beyond it ss and the status page say how many more.
TW_ROWS = 10000
REQ_ROWS = 10000  # the same for SYN-RECV request records
MASK = 0xFFFFFFFF
# TCBs the timer heap never holds: gone, or handed over to a TIME_WAIT record. A set,
# not two State comparisons: _after() runs for every segment.
_UNTIMED = frozenset((State.CLOSED, State.TIME_WAIT))


def _in_window(seq: int, end: int, s_win: int, e_win: int) -> bool:
    """Linux tcp_in_window() (tcp_minisocks.c), for request records."""
    if seq == s_win:
        return True
    if sq.gt(end, s_win) and sq.lt(seq, e_win):
        return True
    return seq == e_win and seq == end


def make_key(remote_ip: bytes, local_ip: bytes, rport: int, lport: int) -> bytes:
    """The demux key in the orientation of an *incoming* frame."""
    return remote_ip + local_ip + rport.to_bytes(2, "big") + lport.to_bytes(2, "big")


class Listener:
    """A passive open (RFC 9293 3.10.1 with passive OPEN) with a bounded backlog."""

    def __init__(self, ip: bytes, port: int, backlog: int, owner: object = None) -> None:
        self.ip = ip  # b"\0\0\0\0" for any local address
        self.port = port
        self.backlog = backlog
        self.owner = owner
        # The SYN queue's length (Linux inet_csk_reqsk_queue_len()): request records,
        # plus children of them that an ACK did not get out of SYN_RECEIVED.
        self.half_open = 0
        self.young = 0  # requests whose timer never fired (Linux queue->young)
        self.accept_queue: list[Tcb] = []
        self.closed = False
        # Linux queue->synflood_warned: the flood line is logged once per listener.
        self.synflood_warned = False
        # When a cookie was last sent (Linux tcp_synq_overflow()); cookie ACKs are
        # examined only within SYNCOOKIE_VALID of it. None: never.
        self.last_overflow: float | None = None
        # The listener's socket options for each child before its SYN-ACK (Linux clones
        # the listening socket, sk_clone_lock()); set by the asyncio layer.
        self.inherit: Callable[[Tcb], None] | None = None
        # What of them a SYN-ACK says before there is a child: TCP_MAXSEG and
        # SO_RCVBUF (0: the defaults).
        self.user_mss = 0
        self.rcvbuf = 0


class TcpTable:
    def __init__(self, ctx: Context, on_tcb_event: Callable[[Tcb], None] | None = None) -> None:
        self.ctx = ctx
        self.est: dict[bytes, Tcb] = {}
        self.tw = TimeWaitTable(ctx)
        self.reqs = RequestTable(ctx)
        self._cookie_keys: syncookie.CookieKeys | None = None
        self.listeners: dict[int, Listener] = {}
        self.tx: list[Tx] = []
        self.timers = TimerQueue()
        # Called for each TCB that has events after a call into the table (the shell's
        # hook into the application layer). Events stay on tcb.events for it to take.
        self.on_tcb_event = on_tcb_event
        self._perturb: dict[int, int] = {}  # Linux table_perturb[], filled lazily

    # ------------------------------------------------------------------ input

    def input(self, key: bytes, seg: Segment, now: float) -> None:
        """Route one segment whose key was sliced from the frame (RFC 9293 3.10.7)."""
        tcb = self.est.get(key)
        if tcb is not None:
            tcb.handle_segment(seg, now)
            self._after(tcb, now)
            return
        if key in self.reqs.records:
            self._request_input(key, seg, now)
            return
        if key in self.tw.records:
            verdict, arg = self.tw.process(key, seg, now)
            if verdict == TW_ACK:
                self._send_stateless(key, arg)
                return
            if verdict == TW_SYN:
                listener = self._listener_for(key)
                if listener is not None:
                    # The SYN opens a new incarnation (RFC 6191); TIME_WAIT goes away.
                    # Not counted as TcpExtTWRecycled: Linux counts that only when
                    # connect() takes over a TIME_WAIT tuple (__inet_check_established()),
                    # never for a SYN accepted from TIME_WAIT (tcp_v4_rcv() TCP_TW_SYN).
                    self.tw.remove(key)
                    self._conn_request(listener, key, seg, now, iss=arg)
                else:
                    # Client-side TIME_WAIT has no listener: answer as TIME_WAIT (LS 60).
                    rec = self.tw.get(key)
                    self._send_stateless(key, self.tw.ack_segment(key, rec, now))
            return
        listener = self._listener_for(key)
        if listener is not None:
            self._listener_input(listener, key, seg, now)
            return
        self._reset_unknown(key, seg)

    def _listener_for(self, key: bytes) -> Listener | None:
        lst = self.listeners.get((key[10] << 8) | key[11])
        if lst is not None and (lst.ip == b"\0\0\0\0" or lst.ip == key[4:8]):
            return lst
        return None

    def _listener_input(self, lst: Listener, key: bytes, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.2, LISTEN STATE (LS 3, 101)."""
        flags = seg.flags
        if flags & RST:
            return
        if flags & ACK:
            # An ACK may return a SYN cookie (Linux tcp_v4_do_rcv() ->
            # tcp_v4_cookie_check()); if not, the listener resets it (LINUX-SPEC-2 250).
            if (not flags & SYN and self.ctx.config.tcp_syncookies
                    and self._cookie_ack(lst, key, seg, now)):
                return
            self._reset_unknown(key, seg)
            return
        if not flags & SYN:
            return
        self._conn_request(lst, key, seg, now)

    # ------------------------------------------------------------------ SYN queue

    def _conn_request(self, lst: Listener, key: bytes, seg: Segment, now: float,
                      iss: int | None = None) -> None:
        """A SYN to a listener (Linux tcp_conn_request(), LINUX-SPEC-2 items 240-242,
        248): a request record and a SYN-ACK, or a SYN cookie, or a counted drop. A SYN
        from TIME_WAIT (`iss` given) bypasses the queue limit and the cookie decision."""
        stats = self.ctx.stats
        cfg = self.ctx.config
        if lst.closed:
            return
        want_cookie = False
        # inet_csk_reqsk_queue_is_full(): qlen > backlog, so backlog+1 requests fit.
        if iss is None and (cfg.tcp_syncookies == 2 or lst.half_open > lst.backlog):
            want_cookie = self._syn_flood_action(lst)
            if not want_cookie:
                stats["TcpExtListenDrops"] += 1
                return
        if len(lst.accept_queue) > lst.backlog:  # sk_acceptq_is_full(), even with cookies
            stats["TcpExtListenOverflows"] += 1
            stats["TcpExtListenDrops"] += 1
            self.ctx.notices.append(ListenOverflow(lst.port, lst.backlog))
            return
        # The options the SYN offers and the knobs allow (tcp_parse_options(), estab=0).
        ts = seg.ts if cfg.tcp_timestamps else None
        sack = bool(cfg.tcp_sack and seg.sack_perm)
        ws = min(seg.wscale, 14) if cfg.tcp_window_scaling and seg.wscale is not None else None
        ecn_ok = ecn.accept_syn(cfg.tcp_ecn, seg.flags, seg.ecn)  # tcp_ecn_create_request()
        if want_cookie:
            self._send_cookie(lst, key, seg, now, ts, sack, ws, ecn_ok)
            return
        max_syn = cfg.tcp_max_syn_backlog
        if not cfg.tcp_syncookies and max_syn - lst.half_open < max_syn >> 2:
            # tcp_conn_request(): without cookies, the last quarter of
            # tcp_max_syn_backlog is kept for proven peers; ustack has no metrics
            # cache (tcp_peer_is_proven()), so no peer is proven.
            stats["TcpExtListenDrops"] += 1
            return
        if iss is None:
            iss = self.ctx.isn(key, now)
        rec = self.reqs.insert(key, irs=seg.seq, iss=iss, ts_recent=ts[0] if ts else 0,
                               snd_wnd=seg.wnd, peer_mss=max(seg.mss, MIN_SND_MSS)
                               if seg.mss else DEFAULT_MSS,
                               snd_wscale=ws, sack=sack, ts=ts is not None, now=now,
                               ecn=ecn_ok)
        lst.half_open += 1
        lst.young += 1
        self._send_synack(key, rec, now)

    def _syn_flood_action(self, lst: Listener) -> bool:
        """Linux tcp_syn_flood_action(): cookies or a drop, counted; the first time per
        listener (unless tcp_syncookies=2) one line for the log."""
        cfg = self.ctx.config
        cookies = bool(cfg.tcp_syncookies)
        self.ctx.stats["TcpExtTCPReqQFullDoCookies" if cookies else "TcpExtTCPReqQFullDrop"] += 1
        if not lst.synflood_warned and cfg.tcp_syncookies != 2:
            lst.synflood_warned = True
            self.ctx.notices.append(SynFlood(ip_to_str(lst.ip), lst.port, cookies))
        return cookies

    def cookie_keys(self) -> syncookie.CookieKeys:
        """The cookie hash keys of ctx.secret (derived again if the secret changes)."""
        keys = self._cookie_keys
        if keys is None or keys.secret is not self.ctx.secret:
            keys = self._cookie_keys = syncookie.CookieKeys(self.ctx.secret)
        return keys

    def _send_cookie(self, lst: Listener, key: bytes, seg: Segment, now: float,
                     ts: tuple[int, int] | None, sack: bool, ws: int | None,
                     ecn_ok: bool) -> None:
        """The SYN-ACK of a cookie; nothing is kept (cookie_v4_init_sequence(),
        tcp_conn_request() with want_cookie). Without timestamps the SYN's options are
        cleared (tcp_clear_options()): the SYN-ACK offers only the MSS (item 248)."""
        stats = self.ctx.stats
        if ts is None:
            sack, ws, ecn_ok = False, None, False  # nowhere to keep them
        # tcp_synq_overflow(): the stamp moves at most once a second.
        last = lst.last_overflow
        if last is None or not last <= now < last + 1.0:
            lst.last_overflow = now
        stats["TcpExtSyncookiesSent"] += 1
        mss = seg.mss if seg.mss else DEFAULT_MSS
        iss = syncookie.init_sequence(self.cookie_keys(), key, seg.seq,
                                      syncookie.mss_index(mss), now)
        tsopt = None
        if ts is not None:
            tsval = syncookie.init_timestamp(int(now * 1000) & MASK, ws, sack, ecn_ok)
            tsopt = ((tsval + self.ctx.ts_offset(key)) & MASK, ts[0])
        self._send_stateless(key, synack(self.ctx, key, iss, seg.seq, mss=True,
                                         wscale=ws is not None, sack=sack, ts=tsopt,
                                         ecn=ecn_ok, user_mss=lst.user_mss, rmem=lst.rcvbuf))

    def _cookie_ack(self, lst: Listener, key: bytes, seg: Segment, now: float) -> bool:
        """An ACK to a listener that may return a cookie (Linux cookie_v4_check(),
        cookie_tcp_check(), items 246-249). True when it was taken (a child made, or
        dropped for a full accept queue); False: the listener resets it."""
        stats = self.ctx.stats
        cfg = self.ctx.config
        last = lst.last_overflow
        # tcp_synq_no_recent_overflow(): no cookie sent lately, not examined as one.
        if last is None or not last - 1.0 <= now <= last + syncookie.SYNCOOKIE_VALID:
            return False
        mss = syncookie.check(self.cookie_keys(), key, seg.seq, seg.ack, now)
        if not mss:
            stats["TcpExtSyncookiesFailed"] += 1
            return False
        stats["TcpExtSyncookiesRecv"] += 1
        ts = seg.ts if cfg.tcp_timestamps else None
        ws: int | None = None
        sack = ecn_ok = False
        if ts is not None:
            tsecr = ts[1]
            if tsecr:
                tsecr = (tsecr - self.ctx.ts_offset(key)) & MASK
            ok, ws, sack, ecn_bit = syncookie.timestamp_decode(
                tsecr, timestamps=bool(cfg.tcp_timestamps), sack_on=bool(cfg.tcp_sack),
                ws_on=bool(cfg.tcp_window_scaling))
            if not ok:
                return False
            ecn_ok = ecn_bit and bool(cfg.tcp_ecn)  # cookie_ecn_ok()
        if len(lst.accept_queue) > lst.backlog:
            # tcp_v4_syn_recv_sock() fails: dropped, no RST, nothing remembered (249).
            stats["TcpExtListenOverflows"] += 1
            stats["TcpExtListenDrops"] += 1
            self.ctx.notices.append(ListenOverflow(lst.port, lst.backlog, "ACK"))
            return True
        lst.half_open += 1
        self._child(lst, key, seg, now, iss=(seg.ack - 1) & MASK, irs=(seg.seq - 1) & MASK,
                    peer_mss=mss, snd_wscale=ws, sack=sack, ts_recent=ts[0] if ts else None,
                    snd_wnd=seg.wnd, retrans=0, synack_at=None, ecn_ok=ecn_ok)
        return True

    def _child(self, lst: Listener, key: bytes, seg: Segment, now: float, **req) -> Tcb:
        """The full TCB for a completed handshake (tcp_v4_syn_recv_sock()), in
        SYN_RECEIVED; the completing ACK then takes it to ESTABLISHED through the
        ordinary input path (tcp_child_process()), data and FIN included."""
        tcb = self._new_tcb(key)
        tcb.listener = lst
        self.est[key] = tcb
        if lst.inherit is not None:
            lst.inherit(tcb)  # the listener's socket options (Linux clones the listener)
        tcb.open_from_request(now, **req)
        tcb.handle_segment(seg, now)
        if tcb.state == State.SYN_RECEIVED:
            # The checks above mirror the TCB's, so this should not happen; if the ACK
            # did not take, the TCB's own SYN-ACK timer makes sure it ends.
            tcb.timers.set(Timer.RTO, now + tcb.rtt.current())
        self._after(tcb, now)
        return tcb

    # ------------------------------------------------------------------ request records

    def _send_synack(self, key: bytes, r: ReqRecord, now: float) -> None:
        lst = self._listener_for(key)
        ts = ((ms32(now) + self.ctx.ts_offset(key)) & MASK, r.ts_recent) if r.ts_ok else None
        self._send_stateless(key, synack(self.ctx, key, r.iss, r.irs, mss=True,
                                         wscale=r.snd_wscale != NO_WSCALE,
                                         sack=r.sack_ok, ts=ts, ecn=r.ecn_ok,
                                         user_mss=lst.user_mss if lst else 0,
                                         rmem=lst.rcvbuf if lst else 0))

    def _req_oow_limited(self, key: bytes, r: ReqRecord, now: float) -> tuple[bool, ReqRecord]:
        """tcp_oow_rate_limited() on the request's last_oow_ack_time."""
        t = ms32(now)
        if r.last_oow and 0 <= sq.diff(t, r.last_oow) < self.ctx.config.tcp_invalid_ratelimit:
            self.ctx.stats["TcpExtTCPACKSkippedSynRecv"] += 1
            return True, r
        return False, r._replace(last_oow=t or 1)

    def _drop_request(self, key: bytes, lst: Listener | None) -> None:
        r = self.reqs.get(key)
        if r is not None:
            self.reqs.remove(key)
            if lst is not None:
                lst.half_open = max(lst.half_open - 1, 0)
                if r.num_timeout == 0:
                    lst.young = max(lst.young - 1, 0)

    def _request_input(self, key: bytes, seg: Segment, now: float) -> None:
        """A segment for a request record (Linux tcp_check_req(), item 251)."""
        r = self.reqs.get(key)
        assert r is not None
        lst = self._listener_for(key)
        stats = self.ctx.stats
        if lst is None:
            self._drop_request(key, None)
            self._reset_unknown(key, seg)
            return
        flags = seg.flags
        flg = flags & (RST | SYN | ACK)
        paws_reject = r.ts_ok and seg.ts is not None and paws.reject_minisock(
            r.ts_recent, seg.ts[0], req_timeout_ms(r.num_timeout) / 1000, bool(flags & RST))
        if seg.seq == r.irs and flg == SYN and not paws_reject:
            # A retransmitted SYN: the SYN-ACK again, the timer restarted.
            limited, r = self._req_oow_limited(key, r, now)
            if not limited:
                r = self.reqs.restart(key, r._replace(num_retrans=min(r.num_retrans + 1, 255)),
                                      now)
                stats["TcpRetransSegs"] += 1
                self._send_synack(key, r, now)
            self.reqs.put(key, r)
            return
        if flags & ACK and seg.ack != (r.iss + 1) & MASK:
            self._reset_unknown(key, seg)  # back to the listener: R seq=SEG.ACK (250)
            return
        rcv_nxt = (r.irs + 1) & MASK
        end = (seg.seq + seg.seg_len) & MASK
        if paws_reject or not _in_window(seg.seq, end, rcv_nxt,
                                         (rcv_nxt + synack_window(self.ctx, lst.rcvbuf)) & MASK):
            if not flags & RST:
                limited, r = self._req_oow_limited(key, r, now)
                if not limited:
                    self._send_stateless(key, ack_for(self.ctx, key, r, now, lst.rcvbuf))
                self.reqs.put(key, r)
            if paws_reject:
                stats["TcpExtPAWSEstab"] += 1
            return
        if seg.seq == r.irs:
            flg &= ~SYN  # the SYN is left of the window; only the rest counts
        if flg & RST:
            if seg.seq != rcv_nxt:
                # RFC 5961 3.2 for an in-window, inexact RST: a challenge ACK.
                limited, r = self._req_oow_limited(key, r, now)
                self.reqs.put(key, r)
                if not limited and self.ctx.challenge_ack_allowed(now):
                    stats["TcpExtTCPChallengeACK"] += 1
                    self._send_stateless(key, ack_for(self.ctx, key, r, now, lst.rcvbuf))
                return
            stats["TcpAttemptFails"] += 1
            stats["TcpExtEmbryonicRsts"] += 1
            self._drop_request(key, lst)
            return
        if flg & SYN:
            # Another ISN in the window: embryonic reset, the request goes.
            stats["TcpAttemptFails"] += 1
            stats["TcpExtEmbryonicRsts"] += 1
            self._reset_unknown(key, seg)
            self._drop_request(key, lst)
            return
        if not flg & ACK:
            return
        if len(lst.accept_queue) > lst.backlog:
            # tcp_check_req() listen_overflow (item 242).
            stats["TcpExtListenOverflows"] += 1
            stats["TcpExtListenDrops"] += 1
            self.ctx.notices.append(ListenOverflow(lst.port, lst.backlog, "ACK"))
            if self.ctx.config.tcp_abort_on_overflow:
                stats["TcpExtEmbryonicRsts"] += 1
                self._reset_unknown(key, seg)
                self._drop_request(key, lst)
            else:
                # The ACK is dropped and the request marked acked and kept, so the
                # client's retransmission (or our next SYN-ACK's ACK) may succeed.
                self.reqs.put(key, r._replace(flags=r.flags | F_ACKED))
            return
        # The request becomes the child; half_open keeps counting it until the ACK takes
        # it out of SYN_RECEIVED (_on_state()).
        self.reqs.remove(key)
        if r.num_timeout == 0:
            lst.young = max(lst.young - 1, 0)
        self._child(lst, key, seg, now, iss=r.iss, irs=r.irs, peer_mss=r.peer_mss,
                    snd_wscale=None if r.snd_wscale == NO_WSCALE else r.snd_wscale,
                    sack=r.sack_ok, ts_recent=r.ts_recent if r.ts_ok else None,
                    snd_wnd=r.snd_wnd, retrans=r.num_retrans,
                    synack_at=None if r.num_retrans else now - r.age(now),
                    ecn_ok=r.ecn_ok)

    def _request_timers(self, now: float) -> None:
        """SYN-ACK retransmission (Linux reqsk_timer_handler(), item 251): every expiry
        counts TCPTimeouts; after tcp_synack_retries timeouts the request is dropped
        silently."""
        stats = self.ctx.stats
        retries = self.ctx.config.tcp_synack_retries
        reqs = self.reqs
        for key in reqs.due(now):
            r = reqs.get(key)
            if r is None:
                continue
            lst = self._listener_for(key)
            stats["TcpExtTCPTimeouts"] += 1
            if lst is None or r.num_timeout >= self._synack_retries(lst, retries):
                stats["TcpAttemptFails"] += 1
                self._drop_request(key, lst)
                continue
            stats["TcpRetransSegs"] += 1
            self._send_synack(key, r, now)
            if r.num_timeout == 0:
                lst.young = max(lst.young - 1, 0)
            reqs.fired(key, r, now, resent=True)

    @staticmethod
    def _synack_retries(lst: Listener, retries: int) -> int:
        """reqsk_timer_handler()'s pruning: with the SYN queue more than half full
        (2 qlen > max(8, backlog)), the retry limit drops (down to 2) while the requests
        that timed out already outweigh the young ones, so old ones leave room for new."""
        qlen = lst.half_open
        if (qlen << 1) > max(8, lst.backlog):
            young = lst.young << 1
            while retries > 2:
                if qlen < young:
                    break
                retries -= 1
                young <<= 1
        return retries

    # ------------------------------------------------------------------ helpers

    def _new_tcb(self, key: bytes) -> Tcb:
        local = (ip_to_str(key[4:8]), (key[10] << 8) | key[11])
        remote = (ip_to_str(key[0:4]), (key[8] << 8) | key[9])
        return Tcb(self.ctx, key, local, remote, self.tx)

    def _reset_unknown(self, key: bytes, seg: Segment) -> None:
        """RST for a segment no connection owns (RFC 9293 3.10.7.1, LS 19, 100)."""
        if seg.flags & RST:
            return  # never answer a RST with a RST
        self._send_stateless(key, no_socket_rst(seg, seg.dport, seg.sport))

    def _send_stateless(self, key: bytes, seg: Segment) -> None:
        stats = self.ctx.stats
        stats["TcpOutSegs"] += 1
        if seg.flags & RST:
            stats["TcpOutRsts"] += 1
        self.tx.append((key[4:8], key[0:4], seg))

    # ------------------------------------------------------------------ after any call

    def _after(self, tcb: Tcb, now: float) -> None:
        """Bookkeeping after the core touched a TCB: listener queues, TIME_WAIT, timers."""
        if tcb.events:
            for ev in tcb.events:
                if type(ev) is StateChanged:
                    self._on_state(tcb, ev, now)
            if self.on_tcb_event is not None:
                self.on_tcb_event(tcb)
            tcb.events.clear()
        if tcb.state not in _UNTIMED:
            self.timers.schedule(tcb)

    def _on_state(self, tcb: Tcb, ev: StateChanged, now: float) -> None:
        lst = tcb.listener
        if lst is not None and ev.old == State.SYN_RECEIVED:
            lst.half_open -= 1
            if ev.new != State.CLOSED and tcb.owner is None:
                lst.accept_queue.append(tcb)
        if ev.new == State.TIME_WAIT:
            self._to_time_wait(tcb, now)
        elif ev.new == State.CLOSED:
            if self.est.get(tcb.key) is tcb:
                del self.est[tcb.key]
            if lst is not None and tcb in lst.accept_queue:
                lst.accept_queue.remove(tcb)

    def _to_time_wait(self, tcb: Tcb, now: float) -> None:
        """Swap the full TCB for a compact record (Linux tcp_time_wait(), LS 51)."""
        if self.est.get(tcb.key) is tcb:
            del self.est[tcb.key]
        wnd_field = min(tcb.rcv_window() >> tcb.rcv_wscale, 65535)
        # On overflow the TCB just goes: the last ACK was already sent (LS 64). snd_max
        # is Linux's snd_nxt (ours rewinds on an RTO); in TIME_WAIT they are equal.
        self.tw.insert(tcb.key, snd_nxt=tcb.snd_max, rcv_nxt=tcb.rcv_nxt,
                       ts_recent=tcb.ts_recent, ts_recent_stamp=tcb.ts_recent_stamp,
                       ts_offset=tcb.ts_offset, wnd=wnd_field, wscale=tcb.rcv_wscale,
                       has_ts=tcb.ts_ok, now=now)

    # ------------------------------------------------------------------ user calls

    def listen(self, ip: str, port: int, backlog: int = 128, owner: object = None) -> Listener:
        if port == 0:
            port = self._free_port()
        if port in self.listeners:
            raise OSError(E.EADDRINUSE, "Address already in use")
        # __sys_listen(): min(backlog, somaxconn), a negative one meaning somaxconn. It
        # bounds the SYN queue and the accept queue, each at backlog+1 (LINUX-SPEC-2
        # 241, 242, 398); tcp_max_syn_backlog only matters without cookies.
        somaxconn = self.ctx.config.somaxconn
        backlog = somaxconn if backlog < 0 else min(backlog, somaxconn)
        lst = Listener(ip_to_bytes(ip or "0.0.0.0"), port, backlog, owner)
        self.listeners[port] = lst
        return lst

    @staticmethod
    def accept(lst: Listener) -> Tcb | None:
        """accept(2): the oldest established child of `lst`, taken off its queue."""
        return lst.accept_queue.pop(0) if lst.accept_queue else None

    def connections(self) -> list[Tcb]:
        """Every live TCB (TIME_WAIT records are not TCBs), as a list to iterate safely."""
        return list(self.est.values())

    def _free_port(self) -> int:
        """bind() to port 0: a port of ip_local_port_range that no listener, connection
        or TIME_WAIT record uses, from a random start (Linux inet_csk_find_open_port())."""
        lo, hi = self.ctx.config.ip_local_port_range
        used = set(self.listeners)
        used.update((key[10] << 8) | key[11] for key in self.est)
        used.update((key[10] << 8) | key[11] for key in self.tw.records)
        n = hi - lo + 1
        start = self.ctx.rng.randrange(n)
        for i in range(n):
            port = lo + (start + i) % n
            if port not in used:
                return port
        raise OSError(E.EADDRINUSE, "Address already in use")

    def unlisten(self, lst: Listener, now: float) -> None:
        """close() on a listener (LS 34): children not yet accepted are reset; half-open
        ones are dropped silently, so the peer's next segment gets a no-socket RST
        instead of completing a connection that nobody would accept."""
        lst.closed = True
        if self.listeners.get(lst.port) is lst:
            del self.listeners[lst.port]
        for tcb in list(lst.accept_queue):
            self.call(tcb, now, tcb.abort, now)
        lst.accept_queue.clear()
        # Request records go silently, as half-open TCBs do.
        for key in [k for k in self.reqs.records if self._owned_by(k, lst)]:
            self._drop_request(key, lst)
        lst.young = 0
        if lst.half_open:
            for tcb in [t for t in self.est.values()
                        if t.listener is lst and t.state == State.SYN_RECEIVED]:
                self.call(tcb, now, tcb.drop, "listener closed")

    @staticmethod
    def _owned_by(key: bytes, lst: Listener) -> bool:
        return ((key[10] << 8) | key[11]) == lst.port and (
            lst.ip == b"\0\0\0\0" or lst.ip == key[4:8])

    def connect(self, local_ip: str, remote_ip: str, rport: int, now: float,
                owner: object = None, lport: int | None = None,
                prepare: Callable[[Tcb], None] | None = None) -> Tcb:
        """An active open, from an ephemeral port unless `lport` is given (LS 70-83)."""
        lip, rip = ip_to_bytes(local_ip), ip_to_bytes(remote_ip)
        if lport is None:
            lport, rec = self._pick_port(lip, rip, rport, now)
            key = make_key(rip, lip, rport, lport)
        else:
            # bind(port) + connect(): the four-tuple must be unique; a TIME_WAIT on it is
            # taken over whenever it used timestamps (LS 73). Linux
            # __inet_check_established() fails with EADDRNOTAVAIL otherwise.
            key = make_key(rip, lip, rport, lport)
            rec = self.tw.get(key)
            if key in self.est or (rec is not None and not self.tw.reusable(
                    rec, self._loopback(lip, rip), now, bound=True)):
                raise OSError(E.EADDRNOTAVAIL, "Cannot assign requested address")
        tcb = self._new_tcb(key)
        tcb.owner = owner
        iss = None
        if rec is not None:
            # Take over the TIME_WAIT tuple (LS 72, Linux tcp_twsk_unique()): ISN beyond
            # its SND.NXT, TS.Recent inherited so our SYN echoes it; counted as
            # TcpExtTWRecycled as in __inet_check_established().
            self.tw.remove(key)
            self.ctx.stats["TcpExtTWRecycled"] += 1
            iss = ((rec.snd_nxt + 65535 + 2) & 0xFFFFFFFF) or 1
            tcb.ts_recent = rec.ts_recent
            tcb.ts_recent_stamp = now - ((sec32(now) - rec.ts_recent_stamp) & 0xFFFFFFFF)
        self.est[key] = tcb
        if prepare is not None:
            prepare(tcb)  # socket options set before connect(2): the SYN carries them
        tcb.open_active(now, iss=iss)
        self._after(tcb, now)
        return tcb

    @staticmethod
    def _loopback(lip: bytes, rip: bytes) -> bool:
        """tcp_tw_reuse=2 counts a TIME_WAIT as loopback when either address is 127/8."""
        return lip[0] == 127 or rip[0] == 127

    def _pick_port(self, lip: bytes, rip: bytes, rport: int, now: float
                   ) -> tuple[int, TwRecord | None]:
        """Choose an ephemeral port like Linux __inet_hash_connect() (RFC 6056 3.3.4 with
        Linux's perturbation table, LS 81): a keyed hash of (addresses, remote port, time
        in 10 s steps) picks a slot of the perturbation table and a start offset; ports
        of the range's low parity are probed first, then the other parity. A port is
        skipped when a listener holds it (explicit bind, LS 82), when the four-tuple is
        established, or when it is in TIME_WAIT and tcp_tw_reuse does not allow taking it
        over (LS 70-71). Nothing free: EADDRNOTAVAIL, and no SYN is sent (LS 83)."""
        lo, hi = self.ctx.config.ip_local_port_range
        high = hi + 1
        remaining = high - lo
        if remaining > 1:
            remaining &= ~1
        seed = lip + rip + rport.to_bytes(2, "big") + int(now // 10).to_bytes(8, "big")
        h = int.from_bytes(hashlib.blake2b(seed, key=self.ctx.secret, digest_size=8,
                                           person=b"ephemeral").digest(), "big")
        index = h & (PERTURB_SIZE - 1)
        perturb = self._perturb
        offset = ((perturb.get(index, 0) + (h >> 32)) % remaining) & ~1
        loopback = self._loopback(lip, rip)
        listeners = self.listeners
        est = self.est
        tw = self.tw
        while True:
            port = lo + offset
            for i in range(0, remaining, 2):
                if port >= high:
                    port -= remaining
                if port not in listeners:
                    key = make_key(rip, lip, rport, port)
                    if key not in est:
                        rec = tw.get(key)
                        if rec is None or tw.reusable(rec, loopback, now):
                            # Move this slot's start so the next connect to the same
                            # destination probes elsewhere (Linux: max(i, rand(8)*2) + 2).
                            step = max(i, self.ctx.rng.randrange(8) * 2) + 2
                            perturb[index] = (perturb.get(index, 0) + step) & 0xFFFFFFFF
                            return port, rec
                port += 2
            offset += 1
            if not (offset & 1 and remaining > 1):
                break
        raise OSError(E.EADDRNOTAVAIL, "Cannot assign requested address")

    def transmit(self, now: float) -> list[Tx]:
        """End a batch: run the output that TCBs deferred (Tcb.output_soon()), then
        take every segment queued since the last call, in order."""
        due = self.ctx.output_due
        while due:
            batch = due[:]
            due.clear()
            for tcb in batch:
                tcb.output_due = False
                tcb.output(now)
                self._after(tcb, now)
        out = self.tx[:]
        self.tx.clear()
        return out

    def call(self, tcb: Tcb, now: float, fn: Callable[..., T], *args: object) -> T:
        """Run a user call on a TCB (send, recv, close ...) and do the bookkeeping."""
        try:
            return fn(*args)
        finally:
            self._after(tcb, now)

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        times = [t for t in (self.timers.next_deadline(), self.tw.next_expiry(),
                             self.reqs.next_expiry()) if t is not None]
        return min(times) if times else None

    def handle_timers(self, now: float) -> None:
        for tcb in self.timers.pop_due(now):
            if tcb.state == State.CLOSED:
                continue
            tcb.handle_timer(now)
            self._after(tcb, now)
        self.tw.expire(now)
        if self.reqs.rounds:
            self._request_timers(now)

    # ------------------------------------------------------------------ views

    def rows(self, now: float, tw_limit: int | None = None) -> list[dict]:
        """One dict per connection for ss, the status page and the control socket; at
        most `tw_limit` TIME_WAIT records (the oldest), since a million rows would stall
        the loop. `len(self.tw)` is the true count, to say what was left out."""
        out = []
        for lst in self.listeners.values():
            out.append({"state": "LISTEN", "local": f"{ip_to_str(lst.ip)}:{lst.port}",
                        "peer": "0.0.0.0:*", "recv_q": len(lst.accept_queue),
                        "send_q": lst.backlog, "timer": "", "age": None})
        for tcb in self.est.values():
            t = tcb.timer_info(now)
            out.append({
                "state": tcb.state.ss_name,
                "local": f"{tcb.local[0]}:{tcb.local[1]}",
                "peer": f"{tcb.remote[0]}:{tcb.remote[1]}",
                "recv_q": tcb.recv_queue, "send_q": tcb.send_queue,
                "timer": f"{t[0]},{t[1]:.3f}s,{t[2]}" if t else "",
                "age": round(now - tcb.created, 3),
            })
        reqs = self.reqs
        for key in itertools.islice(reqs.records, REQ_ROWS):
            r = reqs.get(key)
            # As Linux's ss shows a request sock: SYN-RECV, timer:(on,left,retrans).
            out.append({
                "state": "SYN-RECV",
                "local": f"{ip_to_str(key[4:8])}:{(key[10] << 8) | key[11]}",
                "peer": f"{ip_to_str(key[0:4])}:{(key[8] << 8) | key[9]}",
                "recv_q": 0, "send_q": 0,
                "timer": f"on,{r.remaining(now):.3f}s,{r.num_retrans}",
                "age": round(r.age(now), 3),
            })
        for key in itertools.islice(self.tw.records, TW_ROWS if tw_limit is None else tw_limit):
            r = self.tw.get(key)
            out.append({
                "state": "TIME-WAIT",
                "local": f"{ip_to_str(key[4:8])}:{(key[10] << 8) | key[11]}",
                "peer": f"{ip_to_str(key[0:4])}:{(key[8] << 8) | key[9]}",
                "recv_q": 0, "send_q": 0,
                "timer": f"timewait,{r.remaining(now):.3f}s,0",
                "age": round(r.age(now), 3),
            })
        return out
