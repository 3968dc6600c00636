"""A snapshot of one connection as Linux's `struct tcp_info` describes it (TCP_INFO,
`ss -ti`): sans-IO, read-only, computed from the TCB on demand.

`tcp_info(tcb, now)` fills a `TcpInfo` with the fields of Linux 6.12's struct tcp_info
(include/uapi/linux/tcp.h), in Linux's units: microseconds for rto, ato, rtt, rttvar,
min_rtt and rcv_rtt, milliseconds for the last_* ages, segments (not bytes) for
snd_cwnd, snd_ssthresh, unacked, sacked, lost, retrans, reordering, bytes per second
for pacing_rate and delivery_rate. `pack_tcp_info(info)` turns it into the exact
248-byte binary layout getsockopt(TCP_INFO) returns on x86-64 (and any little-endian
LP64 machine); `unpack_tcp_info()` reads one back (Linux's own getsockopt output too).

Fields ustack has no notion of are 0, as Linux reports them when a feature is off:
fackets, last_ack_sent ("not remembered, sorry"), rcv_rtt, rwnd_limited,
sndbuf_limited, delivered_ce, rehash, total_rto_time. busy_time is the time with
data outstanding (Linux's TCP_CHRONO_BUSY also counts data queued and unsent). ustack does not pace;
pacing_rate is the rate Linux's tcp_update_pacing_rate() would set from cwnd and SRTT
(so `ss -ti` shows the same kind of figure), max_pacing_rate is ~0 (unlimited).
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Any

from .. import seq as sq
from .state import State

MASK = 0xFFFFFFFF

# include/net/tcp_states.h: TCP_ESTABLISHED = 1 ... TCP_CLOSING = 11.
LINUX_STATE = {
    State.ESTABLISHED: 1, State.SYN_SENT: 2, State.SYN_RECEIVED: 3, State.FIN_WAIT_1: 4,
    State.FIN_WAIT_2: 5, State.TIME_WAIT: 6, State.CLOSED: 7, State.CLOSE_WAIT: 8,
    State.LAST_ACK: 9, State.LISTEN: 10, State.CLOSING: 11,
}
# include/uapi/linux/tcp.h enum tcp_ca_state.
CA_STATES = ("Open", "Disorder", "CWR", "Recovery", "Loss")
CA_STATE_NUM = {name: i for i, name in enumerate(CA_STATES)}
# TCPI_OPT_* (include/uapi/linux/tcp.h).
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE, TCPI_OPT_ECN = 1, 2, 4, 8
TCPI_OPT_ECN_SEEN, TCPI_OPT_SYN_DATA, TCPI_OPT_USEC_TS = 16, 32, 64

INFINITE_SSTHRESH_SEGS = 0x7FFFFFFF  # Linux TCP_INFINITE_SSTHRESH
DEFAULT_REORDERING = 3  # net.ipv4.tcp_reordering
ATO_USEC = 40_000  # TCP_ATO_MIN: ustack's delayed-ACK timeout (tcb.DELACK)
INIT_CWND = 10  # TCP_INIT_CWND, for rcv_space (tcp_init_buffer_space())


@dataclass
class TcpInfo:
    """Linux 6.12's struct tcp_info, field for field, in its order (tcpi_ dropped)."""

    state: int = 0
    ca_state: int = 0
    retransmits: int = 0
    probes: int = 0
    backoff: int = 0
    options: int = 0
    snd_wscale: int = 0
    rcv_wscale: int = 0
    delivery_rate_app_limited: int = 0
    fastopen_client_fail: int = 0
    rto: int = 0
    ato: int = 0
    snd_mss: int = 0
    rcv_mss: int = 0
    unacked: int = 0
    sacked: int = 0
    lost: int = 0
    retrans: int = 0
    fackets: int = 0
    last_data_sent: int = 0
    last_ack_sent: int = 0
    last_data_recv: int = 0
    last_ack_recv: int = 0
    pmtu: int = 0
    rcv_ssthresh: int = 0
    rtt: int = 0
    rttvar: int = 0
    snd_ssthresh: int = 0
    snd_cwnd: int = 0
    advmss: int = 0
    reordering: int = 0
    rcv_rtt: int = 0
    rcv_space: int = 0
    total_retrans: int = 0
    pacing_rate: int = 0
    max_pacing_rate: int = 0
    bytes_acked: int = 0
    bytes_received: int = 0
    segs_out: int = 0
    segs_in: int = 0
    notsent_bytes: int = 0
    min_rtt: int = 0
    data_segs_in: int = 0
    data_segs_out: int = 0
    delivery_rate: int = 0
    busy_time: int = 0
    rwnd_limited: int = 0
    sndbuf_limited: int = 0
    delivered: int = 0
    delivered_ce: int = 0
    bytes_sent: int = 0
    bytes_retrans: int = 0
    dsack_dups: int = 0
    reord_seen: int = 0
    rcv_ooopack: int = 0
    snd_wnd: int = 0
    rcv_wnd: int = 0
    rehash: int = 0
    total_rto: int = 0
    total_rto_recoveries: int = 0
    total_rto_time: int = 0
    # Not in the struct: what ss gets from other netlink attributes (INET_DIAG_CONG).
    cong: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The binary layout: natural alignment, little-endian, no padding needed anywhere (the
# first u64, pacing_rate, falls on offset 104). Each group is (format, fields).
_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("6B", ("state", "ca_state", "retransmits", "probes", "backoff", "options")),
    ("B", ("_wscale",)),  # snd_wscale:4 (low nibble), rcv_wscale:4
    ("B", ("_flags",)),  # delivery_rate_app_limited:1, fastopen_client_fail:2
    ("24I", ("rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "lost", "retrans",
             "fackets", "last_data_sent", "last_ack_sent", "last_data_recv",
             "last_ack_recv", "pmtu", "rcv_ssthresh", "rtt", "rttvar", "snd_ssthresh",
             "snd_cwnd", "advmss", "reordering", "rcv_rtt", "rcv_space", "total_retrans")),
    ("4Q", ("pacing_rate", "max_pacing_rate", "bytes_acked", "bytes_received")),
    ("6I", ("segs_out", "segs_in", "notsent_bytes", "min_rtt", "data_segs_in",
            "data_segs_out")),
    ("4Q", ("delivery_rate", "busy_time", "rwnd_limited", "sndbuf_limited")),
    ("2I", ("delivered", "delivered_ce")),
    ("2Q", ("bytes_sent", "bytes_retrans")),
    ("6I", ("dsack_dups", "reord_seen", "rcv_ooopack", "snd_wnd", "rcv_wnd", "rehash")),
    ("2H", ("total_rto", "total_rto_recoveries")),
    ("I", ("total_rto_time",)),
)
TCP_INFO_STRUCT = struct.Struct("<" + "".join(fmt for fmt, _ in _LAYOUT))
TCP_INFO_SIZE = TCP_INFO_STRUCT.size  # 248, sizeof(struct tcp_info) in Linux 6.12
_FIELDS = tuple(name for _, names in _LAYOUT for name in names)
_LIMITS = {"B": 0xFF, "H": 0xFFFF, "I": MASK, "Q": (1 << 64) - 1}
_FIELD_MAX = {}
for _fmt, _names in _LAYOUT:
    for _name in _names:
        _FIELD_MAX[_name] = _LIMITS[_fmt[-1]]


def pack_tcp_info(info: TcpInfo) -> bytes:
    """The 248 bytes of Linux's struct tcp_info; values clamp to their field's width
    (Linux stores them truncated to the type too, but a clamp never wraps to small)."""
    values = []
    for name in _FIELDS:
        if name == "_wscale":
            v = (info.snd_wscale & 0xF) | (info.rcv_wscale & 0xF) << 4
        elif name == "_flags":
            v = (info.delivery_rate_app_limited & 1) | (info.fastopen_client_fail & 3) << 1
        else:
            v = getattr(info, name)
            v = 0 if v < 0 else min(int(v), _FIELD_MAX[name])
        values.append(v)
    return TCP_INFO_STRUCT.pack(*values)


def unpack_tcp_info(data: bytes) -> TcpInfo:
    """A TcpInfo from getsockopt(TCP_INFO) bytes; a shorter struct (an older kernel) is
    padded with zeros, a longer one (a newer kernel's extra fields) cut."""
    data = bytes(data[:TCP_INFO_SIZE]).ljust(TCP_INFO_SIZE, b"\0")
    info = TcpInfo()
    for name, v in zip(_FIELDS, TCP_INFO_STRUCT.unpack(data), strict=True):
        if name == "_wscale":
            info.snd_wscale, info.rcv_wscale = v & 0xF, v >> 4
        elif name == "_flags":
            info.delivery_rate_app_limited, info.fastopen_client_fail = v & 1, (v >> 1) & 3
        else:
            setattr(info, name, v)
    return info


# ---------------------------------------------------------------------- recovery view


@dataclass
class RecoveryView:
    """What loss recovery knows, in Linux's terms (segments, not bytes)."""

    ca_state: str = "Open"
    sacked_out: int = 0
    lost_out: int = 0
    retrans_out: int = 0
    reordering: int = DEFAULT_REORDERING
    total_retrans: int = 0
    delivery_rate: int = 0  # bytes per second, 0 if unknown
    app_limited: bool = False


def ca_state(tcb) -> str:
    """Linux's congestion state name: Open, Disorder, CWR, Recovery or Loss."""
    return tcb.recovery.ca_state


def recovery_view(tcb) -> RecoveryView:
    """Loss recovery's state (recovery.py) in Linux's terms."""
    rec = tcb.recovery
    view = RecoveryView()
    view.ca_state = rec.ca_state
    view.sacked_out = rec.sacked_out
    view.lost_out = rec.lost_out
    view.retrans_out = rec.retrans_out
    view.reordering = rec.reordering
    view.total_retrans = rec.total_retrans
    view.delivery_rate = int(rec.delivery_rate or 0)
    view.app_limited = bool(rec.app_limited)
    return view


def pipe_bytes(tcb) -> int:
    """Bytes the sender believes are in the network (RFC 6675 pipe; Linux
    tcp_packets_in_flight() in bytes)."""
    rec = tcb.recovery
    sacked = getattr(rec, "sacked_out", None)
    lost = getattr(rec, "lost_out", None)
    retrans = getattr(rec, "retrans_out", None)
    if sacked is not None and lost is not None and retrans is not None:
        # tcp_packets_in_flight(): packets_out - (sacked_out + lost_out) + retrans_out.
        out = sq.diff(tcb.snd_max, tcb.snd_una)
        return max(out - (sacked + lost - retrans) * (tcb.mss or 1), 0)
    # until the recovery rewrite lands: today's recovery.py has pipe() during SACK
    # recovery and flight() outside it.
    if rec.in_recovery and tcb.sack_ok:
        return rec.pipe()
    return rec.flight()


# ---------------------------------------------------------------------- the snapshot


def _usec(seconds: float | None) -> int:
    return 0 if seconds is None else int(round(seconds * 1e6))


def _msec_since(now: float, then: float) -> int:
    return max(int((now - then) * 1000), 0) if then else 0


def tcp_info(tcb, now: float) -> TcpInfo:
    """The TCP_INFO of one connection at `now` (Linux tcp_get_info())."""
    info = TcpInfo()
    info.state = LINUX_STATE[tcb.state]
    info.cong = tcb.cc.name
    mss = tcb.mss or 1
    rec = recovery_view(tcb)
    info.ca_state = CA_STATE_NUM.get(rec.ca_state, 0)
    info.retransmits = tcb.retries
    info.probes = tcb.probes_out
    rtt = tcb.rtt
    info.backoff = rtt.backoff
    opts = 0
    if tcb.ts_ok:
        opts |= TCPI_OPT_TIMESTAMPS
    if tcb.sack_ok:
        opts |= TCPI_OPT_SACK
    if tcb.ws_ok:
        opts |= TCPI_OPT_WSCALE
        info.snd_wscale, info.rcv_wscale = tcb.snd_wscale, tcb.rcv_wscale
    if tcb.ecn is not None:  # TCP_ECN_OK; TCP_ECN_SEEN once ECT or CE arrived
        opts |= TCPI_OPT_ECN | (TCPI_OPT_ECN_SEEN if tcb.ecn.seen else 0)
    info.options = opts
    info.delivery_rate_app_limited = int(rec.app_limited)
    info.rto = _usec(rtt.current())  # icsk_rto, backed off as Linux doubles it
    info.ato = ATO_USEC if tcb.bytes_received else 0
    info.snd_mss = tcb.mss
    info.rcv_mss = tcb.rcv_mss
    outstanding = sq.diff(tcb.snd_max, tcb.snd_una)
    info.unacked = -(-max(outstanding, 0) // mss)  # packets_out
    info.sacked = rec.sacked_out
    info.lost = rec.lost_out
    info.retrans = rec.retrans_out
    info.last_data_sent = _msec_since(now, tcb.last_send)
    info.last_data_recv = _msec_since(now, tcb.last_data_rcv)
    info.last_ack_recv = _msec_since(now, tcb.last_rcv)
    adv_mss = tcb.ctx.adv_mss
    info.pmtu = adv_mss + 40  # icsk_pmtu_cookie: the link MTU
    info.rcv_ssthresh = tcb.rcv_window()
    info.rtt = _usec(rtt.srtt)
    info.rttvar = _usec(rtt.rttvar) if rtt.srtt is not None else 0
    cc = tcb.cc
    ssthresh = cc.ssthresh
    # Linux keeps both in segments; "infinite" is TCP_INFINITE_SSTHRESH.
    info.snd_ssthresh = INFINITE_SSTHRESH_SEGS if ssthresh >= 1 << 30 else ssthresh // mss
    cwnd_segs = max(cc.cwnd // mss, 1)
    info.snd_cwnd = cwnd_segs
    # tp->advmss: the MSS we advertised, less the timestamps when they are on
    # (tcp_rcv_synsent_state_process(): advmss -= TCPOLEN_TSTAMP_ALIGNED).
    info.advmss = adv_mss - (12 if tcb.ts_ok else 0)
    info.reordering = rec.reordering
    info.rcv_space = min(tcb.rcv_cap, INIT_CWND * info.advmss)
    info.total_retrans = rec.total_retrans
    if rtt.srtt:
        # tcp_update_pacing_rate(): mss * cwnd / srtt, x2 in slow start (cwnd below
        # half ssthresh, tcp_pacing_ss_ratio 200), x1.2 after (tcp_pacing_ca_ratio 120).
        ratio = 2.0 if cwnd_segs < info.snd_ssthresh // 2 else 1.2
        info.pacing_rate = int(mss * max(cwnd_segs, info.unacked) * ratio / rtt.srtt)
    info.max_pacing_rate = (1 << 64) - 1
    info.bytes_acked = tcb.bytes_acked
    info.bytes_received = tcb.bytes_received
    info.segs_out = tcb.segs_out
    info.segs_in = tcb.segs_in
    info.notsent_bytes = max(tcb.unsent(), 0) if tcb.state.synchronized else 0
    min_rtt = rtt.min_rtt
    info.min_rtt = _usec(min_rtt) if min_rtt is not None else MASK  # ~0U: none yet
    info.data_segs_in = tcb.data_segs_in
    info.data_segs_out = tcb.data_segs_out
    info.delivery_rate = rec.delivery_rate
    # tp->delivered: segments acknowledged or SACKed (the SYN counts, as in Linux).
    info.delivered = -(-tcb.bytes_acked // mss) + rec.sacked_out
    busy = tcb.busy_time + (now - tcb.busy_since if outstanding > 0 and tcb.busy_since else 0)
    info.busy_time = _usec(busy)  # ustack: time with data outstanding (TCP_CHRONO_BUSY)
    info.bytes_sent = tcb.bytes_sent
    info.bytes_retrans = tcb.bytes_retrans
    info.dsack_dups = tcb.recovery.dsack_dups
    info.reord_seen = tcb.recovery.reord_seen
    info.rcv_ooopack = tcb.rcv_ooopack
    info.snd_wnd = tcb.snd_wnd
    info.rcv_wnd = (tcb.rcv_adv - tcb.rcv_wup) & MASK if sq.le(tcb.rcv_wup, tcb.rcv_adv) else 0
    info.total_rto = tcb.total_rto
    info.total_rto_recoveries = tcb.total_rto_recoveries
    return info


__all__ = ["CA_STATES", "RecoveryView", "ca_state", "TCP_INFO_SIZE", "TcpInfo", "pack_tcp_info",
           "pipe_bytes", "recovery_view", "tcp_info", "unpack_tcp_info"]
