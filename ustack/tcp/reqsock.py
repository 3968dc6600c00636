"""Half-open connections as small records (Linux's request sock, tcp_minisocks.c).

A SYN to a listener makes no TCB: the few fields a handshake needs (the ISN pair,
the options the SYN negotiated, the timestamp echo, the SYN's window, the
retransmission count, the timer) are packed into one short `bytes` record, keyed by
the 12-byte demux key, as timewait.py keeps TIME_WAIT. The full TCB is made only when
the handshake-completing ACK arrives (Linux tcp_check_req() -> tcp_v4_syn_recv_sock(),
Tcb.open_from_request()). benchmarks/bench_syn.py measures the memory per record.

SYN-ACK retransmission (Linux reqsk_timer_handler(), LINUX-SPEC-2 item 251): the n-th
timeout of a request comes 1 s << n after the previous one (TCP_TIMEOUT_INIT, capped at
TCP_RTO_MAX), so all records in the same round have the same timeout and enter that
round in expiry order. One deque of (ms, keys) buckets per round is therefore sorted
by itself: a record moves to the next round's deque when its timer fires, a restarted
timer appends a new reference and the stale one is skipped (the record's own expiry
says so). One deadline for the whole table, never a timer per record.

Times inside a record are 32-bit wrapping millisecond counters, as in timewait.py.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import NamedTuple

from .. import seq as sq
from ..wire.tcp import ACK, ECE, SYN, Segment
from .context import Context
from .timewait import ms32

MASK = 0xFFFFFFFF
TIMEOUT_INIT_MS = 1000  # Linux TCP_TIMEOUT_INIT
RTO_MAX_MS = 120_000  # Linux TCP_RTO_MAX
# irs, iss, ts_recent, expires (ms), sent (ms, the first SYN-ACK), last out-of-window
# ACK (ms, 0 = never), the SYN's window, the peer's MSS, its wscale (NO_WSCALE = none),
# flags, retransmissions, timeouts.
_REC = struct.Struct("<IIIIIIHHBBBB")
_EXPIRES = 3
NO_WSCALE = 0xFF
F_SACK, F_TS, F_ACKED, F_ECN = 1, 2, 4, 8


class ReqRecord(NamedTuple):
    irs: int
    iss: int
    ts_recent: int
    expires: int  # ms32()
    sent: int  # ms32() of the first SYN-ACK
    last_oow: int  # ms32(), 0 = never
    snd_wnd: int  # the SYN's window field (never scaled)
    peer_mss: int
    snd_wscale: int  # NO_WSCALE when the SYN had no window scale option
    flags: int
    num_retrans: int
    num_timeout: int

    @property
    def sack_ok(self) -> bool:
        return bool(self.flags & F_SACK)

    @property
    def ts_ok(self) -> bool:
        return bool(self.flags & F_TS)

    @property
    def ecn_ok(self) -> bool:
        return bool(self.flags & F_ECN)

    def remaining(self, now: float) -> float:
        """Seconds until the SYN-ACK timer fires (ss -o's timer:(on,...))."""
        return max(sq.diff(self.expires, ms32(now)), 0) / 1000

    def age(self, now: float) -> float:
        return ((ms32(now) - self.sent) & MASK) / 1000


def timeout_ms(num_timeout: int) -> int:
    """reqsk_timeout(): TCP_TIMEOUT_INIT << num_timeout, at most TCP_RTO_MAX."""
    return min(TIMEOUT_INIT_MS << min(num_timeout, 16), RTO_MAX_MS)


def rcv_wscale(ctx: Context, rmem: int = 0) -> int:
    """The shift we offer (Tcb._choose_wscale() too, so a cookie's child recomputes what
    was offered): Linux tcp_select_initial_window(), ilog2 of the largest buffer the
    socket could grow to, max(tcp_rmem[2], rmem_max), less 15, at most 14 (RFC 7323
    2.3); 7 with the defaults, as Linux's. `rmem`: a socket's SO_RCVBUF (it clamps the
    window, tp->window_clamp), 0 for none."""
    cfg = ctx.config
    space = max(cfg.tcp_rmem[2], cfg.rmem_max)
    if rmem:
        space = min(space, rmem)
    return min(max(space.bit_length() - 1 - 15, 0), 14)


def synack_window(ctx: Context, rmem: int = 0) -> int:
    return min(rmem or ctx.config.tcp_rmem[1], 65535)


def synack(ctx: Context, key: bytes, iss: int, irs: int, *, mss: bool, wscale: bool,
           sack: bool, ts: tuple[int, int] | None, ecn: bool = False, user_mss: int = 0,
           rmem: int = 0) -> Segment:
    """The SYN-ACK of a request or a cookie (Linux tcp_make_synack()): our MSS, and the
    options the SYN offered and the knobs allow; `ts` is (TSval, TSecr) or None; ECE
    when the SYN's ECN setup was accepted (RFC 3168 6.1.1, tcp_ecn_make_synack())."""
    seg = Segment((key[10] << 8) | key[11], (key[8] << 8) | key[9], iss, (irs + 1) & MASK,
                  SYN | ACK | ECE if ecn else SYN | ACK, synack_window(ctx, rmem))
    if mss:
        # The listener's TCP_MAXSEG clamps it (tcp_make_synack(): tcp_mss_clamp()).
        seg.mss = user_mss if user_mss and user_mss < ctx.adv_mss else ctx.adv_mss
    seg.sack_perm = sack
    seg.ts = ts
    if wscale:
        seg.wscale = rcv_wscale(ctx, rmem)
    return seg


def ack_for(ctx: Context, key: bytes, r: ReqRecord, now: float, rmem: int = 0) -> Segment:
    """The ACK a request sends for an out-of-window segment (tcp_v4_reqsk_send_ack()):
    . ISS+1 ack RCV.NXT, the SYN-ACK's window, TS val now+offset ecr TS.Recent.
    `rmem`: the listener's SO_RCVBUF, as for synack()."""
    seg = Segment((key[10] << 8) | key[11], (key[8] << 8) | key[9], (r.iss + 1) & MASK,
                  (r.irs + 1) & MASK, ACK, synack_window(ctx, rmem) >> (
                      rcv_wscale(ctx, rmem) if r.snd_wscale != NO_WSCALE else 0))
    if r.ts_ok:
        seg.ts = ((ms32(now) + ctx.ts_offset(key)) & MASK, r.ts_recent)
    return seg


class RequestTable:
    """Every listener's request records (Linux: TCP_NEW_SYN_RECV sockets in the ehash)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.records: dict[bytes, bytes] = {}
        # rounds[n]: (expiry ms, keys) of records whose n-th timeout is due, oldest first.
        self.rounds: list[deque[tuple[int, list[bytes]]]] = []

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: bytes) -> bool:
        return key in self.records

    def get(self, key: bytes) -> ReqRecord | None:
        raw = self.records.get(key)
        return None if raw is None else ReqRecord._make(_REC.unpack(raw))

    def put(self, key: bytes, r: ReqRecord) -> None:
        self.records[key] = _REC.pack(*r)

    def _enqueue(self, key: bytes, round_: int, expires_ms: int) -> None:
        rounds = self.rounds
        while len(rounds) <= round_:
            rounds.append(deque())
        q = rounds[round_]
        if q and q[-1][0] >= expires_ms:
            q[-1][1].append(key)
        else:
            q.append((expires_ms, [key]))

    def insert(self, key: bytes, *, irs: int, iss: int, ts_recent: int, snd_wnd: int,
               peer_mss: int, snd_wscale: int | None, sack: bool, ts: bool,
               now: float, ecn: bool = False) -> ReqRecord:
        """A request for a SYN just answered; its timer armed at TCP_TIMEOUT_INIT
        (inet_csk_reqsk_queue_hash_add())."""
        now_ms = int(now * 1000)
        expires = now_ms + TIMEOUT_INIT_MS
        r = ReqRecord(irs, iss, ts_recent, expires & MASK, now_ms & MASK, 0, snd_wnd,
                      peer_mss, NO_WSCALE if snd_wscale is None else snd_wscale,
                      (F_SACK if sack else 0) | (F_TS if ts else 0) | (F_ECN if ecn else 0),
                      0, 0)
        self.put(key, r)
        self._enqueue(key, 0, expires)
        return r

    def remove(self, key: bytes) -> bool:
        return self.records.pop(key, None) is not None

    def restart(self, key: bytes, r: ReqRecord, now: float) -> ReqRecord:
        """mod_timer_pending() after a SYN-ACK resent for a retransmitted SYN: the
        current round's timeout from now."""
        now_ms = int(now * 1000)
        expires = now_ms + timeout_ms(r.num_timeout)
        r = r._replace(expires=expires & MASK)
        self._enqueue(key, r.num_timeout, expires)
        return r

    def next_expiry(self) -> float | None:
        heads = [q[0][0] for q in self.rounds if q]
        return min(heads) / 1000 if heads else None

    def due(self, now: float) -> list[bytes]:
        """Keys whose timer fired by `now`, taken off their round (the caller fires
        them with `fired()` or removes them). Stale references are skipped."""
        # ms / 1000 * 1000 may come out a hair below ms: never round the deadline down.
        now_ms = int(now * 1000 + 1e-6)
        t = now_ms & MASK
        records = self.records
        unpack = _REC.unpack
        out: list[bytes] = []
        for n, q in enumerate(self.rounds):
            while q and q[0][0] <= now_ms:
                for key in q.popleft()[1]:
                    raw = records.get(key)
                    if raw is None:
                        continue
                    fields = unpack(raw)
                    # Another round, or a later expiry: a newer reference holds it.
                    if fields[11] == n and sq.diff(fields[_EXPIRES], t) <= 0:
                        out.append(key)
        return out

    def fired(self, key: bytes, r: ReqRecord, now: float, resent: bool) -> ReqRecord:
        """After a timeout that did not drop the request: the next round (reqsk_timer_handler():
        num_timeout++, re-armed at timeout << num_timeout)."""
        n = r.num_timeout + 1
        now_ms = int(now * 1000)
        expires = now_ms + timeout_ms(n)
        r = r._replace(num_timeout=min(n, 255), expires=expires & MASK,
                       num_retrans=min(r.num_retrans + resent, 255))
        self.put(key, r)
        self._enqueue(key, r.num_timeout, expires)
        return r
