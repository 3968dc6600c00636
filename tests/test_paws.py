"""paws.py on its own: the two flavours of RFC 7323 5.3 R1 that Linux has (LS 92-98)."""

from __future__ import annotations

import pytest

from ustack.tcp import paws
from ustack.tcp.paws import PAWS_DROP, PAWS_OK, PAWS_OLD_ACK, TCP_PAWS_24DAYS, TCP_PAWS_MSL

MASK = 0xFFFFFFFF


@pytest.mark.parametrize(("ts_recent", "tsval", "idle", "rejected"), [
    (1000, 1000, 0, False),  # equal
    (1000, 1001, 0, False),  # newer
    (1000, 999, 0, False),  # one tick older: TCP_PAWS_WINDOW forgives it
    (1000, 998, 0, True),  # two ticks older
    (0, 5, 0, False),  # TS.Recent unset never rejects (LS 98)
    (1000, 998, TCP_PAWS_24DAYS, False),  # 24 days idle: TS.Recent is stale (RFC 7323 5.5)
    (1000, 998, TCP_PAWS_24DAYS - 1, True),
    (5, MASK - 5, 0, True),  # older across the wrap
    (MASK - 5, 5, 0, False),  # newer across the wrap
])
def test_established_flavour(ts_recent, tsval, idle, rejected):
    assert paws.reject_established(ts_recent, tsval, idle) is rejected


@pytest.mark.parametrize(("tsval", "idle", "rst", "rejected"), [
    (999, 0, False, True),  # strict: no one-tick window on a minisocket
    (1000, 0, False, False),
    (999, TCP_PAWS_MSL - 1, True, True),  # a RST is checked within TCP_PAWS_MSL ...
    (999, TCP_PAWS_MSL, True, False),  # ... and not after it
    (999, TCP_PAWS_MSL, False, True),  # other segments still are
    (999, TCP_PAWS_24DAYS, False, False),
])
def test_minisock_flavour(tsval, idle, rst, rejected):
    assert paws.reject_minisock(1000, tsval, idle, rst) is rejected


def _dis(**kw):
    base = dict(seq=500, seg_len=0, is_ack=True, ack=900, wnd=1000, tsval=990,
                ts_recent=1000, rcv_nxt=500, snd_una=900, snd_wl1=500, snd_wnd=1000, rto=0.2)
    base.update(kw)
    return paws.disordered_ack(**base)


def test_disordered_ack_verdicts():
    assert _dis() == PAWS_OK  # a reordered duplicate ACK that changes nothing
    assert _dis(seg_len=10) == PAWS_DROP  # data
    assert _dis(is_ack=False) == PAWS_DROP
    assert _dis(seq=400) == PAWS_OLD_ACK  # left of RCV.NXT (Linux >= 6.14)
    assert _dis(seq=600, snd_wl1=600) == PAWS_DROP  # right of RCV.NXT
    assert _dis(ack=901) == PAWS_DROP  # moves SND.UNA
    assert _dis(wnd=2000) == PAWS_DROP  # would update the window
    assert _dis(wnd=0) == PAWS_DROP
    assert _dis(tsval=1000 - 241) == PAWS_DROP  # older than one RTO at 1200 Hz
    assert _dis(tsval=1000 - 240) == PAWS_OK


def test_ts_recent_update_rule():
    assert paws.may_update_ts_recent(ts_recent=1000, tsval=1000, idle=0)
    assert not paws.may_update_ts_recent(ts_recent=1000, tsval=999, idle=0)
    assert paws.may_update_ts_recent(ts_recent=0, tsval=1, idle=0)
    assert paws.may_update_ts_recent(ts_recent=1000, tsval=999, idle=TCP_PAWS_24DAYS)
