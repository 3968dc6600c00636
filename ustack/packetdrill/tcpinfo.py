"""Linux's `struct tcp_info` (include/uapi/linux/tcp.h) read from a kernel socket, as the
tcpi_* names a packetdrill `%{ }%` block sees (packetdrill's code.c write_tcp_info()).

The kernel copies min(its size, the buffer's) bytes (tcp_get_info() via
do_tcp_getsockopt()), so an older kernel returns a prefix: only the fields that fit in
what it returned get a name.
"""

from __future__ import annotations

import socket
import struct

TCP_INFO = 11

# (name, struct format) in the order of the uapi header; bit fields are split below.
_FIELDS: list[tuple[str, str]] = [
    ("tcpi_state", "B"), ("tcpi_ca_state", "B"), ("tcpi_retransmits", "B"),
    ("tcpi_probes", "B"), ("tcpi_backoff", "B"), ("tcpi_options", "B"),
    ("_wscale", "B"), ("_app_limited", "B"),
    *[(f"tcpi_{n}", "I") for n in (
        "rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "lost", "retrans",
        "fackets", "last_data_sent", "last_ack_sent", "last_data_recv", "last_ack_recv",
        "pmtu", "rcv_ssthresh", "rtt", "rttvar", "snd_ssthresh", "snd_cwnd", "advmss",
        "reordering", "rcv_rtt", "rcv_space", "total_retrans")],
    ("tcpi_pacing_rate", "Q"), ("tcpi_max_pacing_rate", "Q"), ("tcpi_bytes_acked", "Q"),
    ("tcpi_bytes_received", "Q"), ("tcpi_segs_out", "I"), ("tcpi_segs_in", "I"),
    ("tcpi_notsent_bytes", "I"), ("tcpi_min_rtt", "I"), ("tcpi_data_segs_in", "I"),
    ("tcpi_data_segs_out", "I"), ("tcpi_delivery_rate", "Q"), ("tcpi_busy_time", "Q"),
    ("tcpi_rwnd_limited", "Q"), ("tcpi_sndbuf_limited", "Q"), ("tcpi_delivered", "I"),
    ("tcpi_delivered_ce", "I"), ("tcpi_bytes_sent", "Q"), ("tcpi_bytes_retrans", "Q"),
    ("tcpi_dsack_dups", "I"), ("tcpi_reord_seen", "I"), ("tcpi_rcv_ooopack", "I"),
    ("tcpi_snd_wnd", "I"), ("tcpi_rcv_wnd", "I"), ("tcpi_rehash", "I"),
    ("tcpi_total_rto", "H"), ("tcpi_total_rto_recoveries", "H"),
    ("tcpi_total_rto_time", "I"),
]

# The symbolic names packetdrill's code.c write_symbols() defines for a block.
SYMBOLS = {
    "TCP_ESTABLISHED": 1, "TCP_SYN_SENT": 2, "TCP_SYN_RECV": 3, "TCP_FIN_WAIT1": 4,
    "TCP_FIN_WAIT2": 5, "TCP_TIME_WAIT": 6, "TCP_CLOSE": 7, "TCP_CLOSE_WAIT": 8,
    "TCP_LAST_ACK": 9, "TCP_LISTEN": 10, "TCP_CLOSING": 11,
    "TCP_CA_Open": 0, "TCP_CA_Disorder": 1, "TCP_CA_CWR": 2, "TCP_CA_Recovery": 3,
    "TCP_CA_Loss": 4,
    "TCPI_OPT_TIMESTAMPS": 1, "TCPI_OPT_SACK": 2, "TCPI_OPT_WSCALE": 4, "TCPI_OPT_ECN": 8,
    "TCPI_OPT_ECN_SEEN": 16, "TCPI_OPT_SYN_DATA": 32, "TCPI_OPT_USEC_TS": 64,
    "TCPI_OPT_TFO_CHILD": 128,
}


def unpack(raw: bytes) -> dict[str, int]:
    """The tcpi_* values in `raw` (what getsockopt(TCP_INFO) returned)."""
    out: dict[str, int] = {}
    off = 0
    for name, fmt in _FIELDS:
        size = struct.calcsize(fmt)
        # Natural alignment, as the C struct has it (the header's fields need none).
        off = -(-off // size) * size
        if off + size > len(raw):
            break
        (value,) = struct.unpack_from("=" + fmt, raw, off)
        off += size
        if name == "_wscale":
            out["tcpi_snd_wscale"], out["tcpi_rcv_wscale"] = value & 15, value >> 4
        elif name == "_app_limited":
            out["tcpi_delivery_rate_app_limited"] = value & 1
            out["tcpi_fastopen_client_fail"] = (value >> 1) & 3
        else:
            out[name] = value
    return out


def read(sock: socket.socket) -> dict[str, int]:
    return unpack(sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 512))
