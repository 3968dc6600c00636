"""PAWS: Protection Against Wrapped Sequences (RFC 7323 5), defined once for the TCB
and the TIME_WAIT records, with Linux's constants and its two flavours.

Pure functions of timestamps and seconds of idleness; the caller says which flavour
applies: a full socket allows Linux's one-tick window and exempts RSTs (LS 92, 94),
a minisocket is strict and checks a RST only within TCP_PAWS_MSL (LS 95).
"""

from __future__ import annotations

from .. import seq as sq

TCP_PAWS_24DAYS = 24 * 86400  # s: RFC 7323 5.5, TS.Recent is invalid after this idle time
TCP_PAWS_MSL = 60  # s: a RST is PAWS-checked only this long after TS.Recent (LS 95)
TCP_PAWS_WINDOW = 1  # ticks a full socket forgives (Linux TCP_PAWS_WINDOW, LS 92)
# disordered_ack() verdicts
PAWS_OK, PAWS_DROP, PAWS_OLD_ACK = 0, 1, 2


def passes(ts_recent: int, tsval: int, idle: float, window: int) -> bool:
    """Linux tcp_paws_check(): TSval not older than TS.Recent by more than `window`
    ticks, or TS.Recent unset (LS 98), or idle for 24 days (RFC 7323 5.5)."""
    return (sq.diff(ts_recent, tsval) <= window or not ts_recent
            or idle >= TCP_PAWS_24DAYS)


def reject_established(ts_recent: int, tsval: int, idle: float) -> bool:
    """RFC 7323 5.3 R1 on a full socket (Linux tcp_paws_discard(), LS 92). The caller
    exempts RSTs (LS 94)."""
    # passes() inlined: this runs for every segment with timestamps.
    d = (ts_recent - tsval) & 0xFFFFFFFF
    if d <= TCP_PAWS_WINDOW or d >= 0x80000000 or not ts_recent:
        return False
    return idle < TCP_PAWS_24DAYS


def reject_minisock(ts_recent: int, tsval: int, idle: float, rst: bool) -> bool:
    """Linux tcp_paws_reject() for TIME_WAIT (LS 95): strict, no one-tick window; a RST
    is only rejected within TCP_PAWS_MSL of TS.Recent."""
    if passes(ts_recent, tsval, idle, 0):
        return False
    return not (rst and idle >= TCP_PAWS_MSL)


def disordered_ack(*, seq: int, seg_len: int, is_ack: bool, ack: int, wnd: int,
                   tsval: int, ts_recent: int, rcv_nxt: int, snd_una: int, snd_wl1: int,
                   snd_wnd: int, rto: float) -> int:
    """What to do with a segment that failed PAWS (Linux tcp_disordered_ack_check(),
    LS 92-93): a pure duplicate ACK at RCV.NXT that changes nothing and is within
    one RTO of replay (at a 1200 Hz TS clock, the fastest Linux expects) is just
    reordered and is processed (PAWS_OK); an old pure ACK left of RCV.NXT is
    dropped silently (PAWS_OLD_ACK, Linux >= 6.14); anything else is dropped with
    a duplicate ACK (PAWS_DROP). `wnd` is the segment's window, already scaled."""
    if not is_ack or seg_len:
        return PAWS_DROP
    if seq != rcv_nxt:
        return PAWS_OLD_ACK if sq.lt(seq, rcv_nxt) else PAWS_DROP
    if ack != snd_una:
        return PAWS_DROP
    if sq.gt(seq, snd_wl1) or (seq == snd_wl1 and (wnd > snd_wnd or not wnd)):
        return PAWS_DROP  # it would update the window (tcp_may_update_window())
    if sq.diff(ts_recent, tsval) > rto * 1200:
        return PAWS_DROP
    return PAWS_OK


def may_update_ts_recent(*, ts_recent: int, tsval: int, idle: float) -> bool:
    """RFC 7323 4.3 / 5.3 R3 (Linux tcp_replace_ts_recent(), LS 91), the timestamp half:
    record TSval unless it is older than TS.Recent, except when TS.Recent is 0 or 24
    days stale (RFC 7323 5.5). The caller checks that the segment covers the left
    window edge and that its ACK is acceptable."""
    return sq.ge(tsval, ts_recent) or not ts_recent or idle >= TCP_PAWS_24DAYS
