"""Knobs named like Linux's sysctls (without the `net.ipv4.` prefix).

`ustack serve --set KEY=VALUE` sets them; the last value given for a key wins.
Where ustack differs from Linux the difference is written next to the knob.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


class ConfigError(ValueError):
    pass


def _int_range(lo: int, hi: int):
    def parse(text: str) -> int:
        value = int(text.strip(), 0)
        if not lo <= value <= hi:
            raise ValueError(f"must be in [{lo}, {hi}]")
        return value

    return parse


def _choice(*names: str):
    def parse(text: str) -> str:
        value = text.strip()
        if value not in names:
            raise ValueError(f"must be one of {', '.join(names)}")
        return value

    return parse


# The names of ustack/tcp/cc's registry (a test checks they agree; config.py sits
# below the core and cannot import it).
CONGESTION_CONTROLS = ("reno", "cubic")


def _mem_triple(text: str) -> tuple[int, int, int]:
    parts = text.replace(",", " ").split()
    if len(parts) == 1:  # backward compatible: the default only
        default = int(parts[0], 0)
        if not 4096 <= default <= 1 << 30:
            raise ValueError("must be in [4096, 1073741824]")
        return (4096, default, max(default, 4194304))
    if len(parts) != 3:
        raise ValueError('must be "min default max" (or one integer: the default)')
    lo, default, hi = (int(p, 0) for p in parts)
    if not 4096 <= lo <= default <= hi <= 1 << 30:
        raise ValueError("need 4096 <= min <= default <= max <= 1073741824")
    return (lo, default, hi)


def _port_range(text: str) -> tuple[int, int]:
    parts = text.replace(",", " ").split()
    if len(parts) != 2:
        raise ValueError('must be two ports, e.g. "32768 60999"')
    lo, hi = int(parts[0]), int(parts[1])
    if not 1 <= lo <= hi <= 65535:
        raise ValueError("need 1 <= low <= high <= 65535")
    return lo, hi


def _triple(text: str) -> tuple[int, int, int]:
    parts = text.replace(",", " ").split()
    if len(parts) != 3:
        raise ValueError('must be three page counts, e.g. "1000 2000 3000"')
    lo, mid, hi = (int(x) for x in parts)
    if not 1 <= lo <= mid <= hi:
        raise ValueError("need 1 <= min <= pressure <= max")
    return lo, mid, hi


@dataclass(slots=True)
class Config:
    # Maximum segment lifetime in seconds. TIME_WAIT lasts 2 * tcp_msl. Linux has no
    # such knob (TIME_WAIT is a fixed 60 s); ours defaults to 30 so 2*MSL matches it.
    tcp_msl: int = 30
    # RTO floor in ms (Linux: tcp_rto_min_us = 200000, RFC 6298 2.4 would say 1 s).
    tcp_rto_min_ms: int = 200
    # 1 = timestamps with a random per-connection offset, 2 = without offset, 0 = off.
    tcp_timestamps: int = 1
    tcp_sack: int = 1
    tcp_window_scaling: int = 1
    # Orphaned FIN_WAIT_2 lifetime in seconds.
    tcp_fin_timeout: int = 60
    # 0 means 8, as in Linux's tcp_orphan_retries().
    tcp_orphan_retries: int = 0
    tcp_retries2: int = 15
    tcp_syn_retries: int = 6
    tcp_synack_retries: int = 5
    tcp_keepalive_time: int = 7200
    tcp_keepalive_intvl: int = 75
    tcp_keepalive_probes: int = 9
    # Per-stack challenge ACKs per second (RFC 5961 section 7). Linux >= 6.0 defaults to
    # INT_MAX (disabled); ustack keeps the pre-6.0 value 1000 so the limit is observable.
    tcp_challenge_ack_limit: int = 1000
    # Per-connection rate limit (ms) of dup ACKs answering invalid segments.
    tcp_invalid_ratelimit: int = 500
    # RFC 1337: 0 = a RST in TIME_WAIT kills it (Linux default), 1 = ignore it.
    tcp_rfc1337: int = 0
    tcp_max_tw_buckets: int = 262144
    # Orphans (closed by the application, not yet gone) beyond which one is reset and
    # counted as TcpExtTCPAbortOnMemory. Linux: half its established hash's buckets,
    # which follow memory (131072 on a 24 GB host); an orphan TCB costs ustack ~10 KB
    # of Python heap, so a fixed 8192 (~80 MB) here.
    tcp_max_orphans: int = 8192
    # Pages (4 KiB) all connections' queues may hold: min, pressure, max (LINUX-SPEC-2
    # 394-397; ustack/tcp/mem.py). None: Linux's formula from the machine's memory,
    # filled in by the shell (stack.py default_tcp_mem()).
    tcp_mem: tuple[int, int, int] | None = None
    # 0 never, 1 always (with timestamps, after tcp_tw_reuse_delay), 2 loopback peers only.
    tcp_tw_reuse: int = 2
    tcp_tw_reuse_delay: int = 1000
    ip_local_port_range: tuple[int, int] = (32768, 60999)
    # Without cookies only: the last quarter of it is kept for proven peers (none here).
    tcp_max_syn_backlog: int = 256
    # SYN cookies when the SYN queue is full: 0 never (drop), 1 when full, 2 always.
    tcp_syncookies: int = 1
    # 1: a handshake ACK finding the accept queue full gets a RST; 0: dropped, retried.
    tcp_abort_on_overflow: int = 0
    somaxconn: int = 4096
    # Socket buffers per connection in bytes as Linux's triples "min default max"; the
    # advertised window follows what the application has not read yet. A connection
    # starts with the default; ustack does not autotune, so max only bounds what the
    # triple may say (SO_RCVBUF/SO_SNDBUF are bounded by rmem_max/wmem_max, as in
    # Linux sock_setsockopt()). A single integer (`--set tcp_rmem=N`, as before the
    # triples) sets the default. Linux's defaults are 4096 131072 6291456 and
    # 4096 16384 4194304; ustack keeps its 256 KiB defaults.
    tcp_rmem: tuple[int, int, int] = (4096, 262144, 6291456)
    tcp_wmem: tuple[int, int, int] = (4096, 262144, 4194304)
    # net.core.rmem_max / wmem_max: the bound of SO_RCVBUF / SO_SNDBUF (before doubling).
    rmem_max: int = 212992
    wmem_max: int = 212992
    # 1: cwnd restarts from the initial window after an idle RTO (RFC 5681 4.1,
    # Linux tcp_cwnd_restart()); 0: keep it, as Linux does with the knob at 0.
    tcp_slow_start_after_idle: int = 1
    # cubic (RFC 9438 with HyStart, Linux's default) or reno (RFC 5681).
    tcp_congestion_control: str = "cubic"
    # ECN (RFC 3168, tcp/ecn.py): 0 off, 1 ask in our SYNs and accept, 2 accept when
    # the peer asks (Linux's default). fallback: a retransmitted SYN asks no more.
    tcp_ecn: int = 2
    tcp_ecn_fallback: int = 1
    # Linux's tcp_cubic module parameters (/sys/module/tcp_cubic/parameters/NAME; also
    # settable as `tcp_cubic.NAME`), with Linux's defaults; ustack/tcp/cc/cubic.py.
    cubic_beta: int = 717  # beta * 1024
    cubic_bic_scale: int = 41  # C = bic_scale * 10 / 1024
    cubic_fast_convergence: int = 1
    cubic_tcp_friendliness: int = 1
    cubic_hystart: int = 1
    cubic_hystart_detect: int = 3  # 1 ACK train, 2 delay
    cubic_hystart_low_window: int = 16  # segments
    cubic_hystart_ack_delta_us: int = 2000
    cubic_initial_ssthresh: int = 0  # segments, 0 = infinite; only with hystart=0
    # Loss recovery (Linux's bits): 0x1 RACK loss detection, 0x2 a static reordering
    # window, 0x4 no DUPTHRESH fallback; 0 = RFC 6675 dupthresh marking.
    tcp_recovery: int = 1
    # 3 (Linux's default) and 4 arm the tail loss probe (RFC 8985 7); 0-2 do not.
    tcp_early_retrans: int = 3
    # F-RTO (RFC 5682), Linux's SACK-enhanced variant for any nonzero value.
    tcp_frto: int = 2
    # Send D-SACK blocks for duplicate data (RFC 2883).
    tcp_dsack: int = 1
    # The initial reordering degree in segments, and its ceiling.
    tcp_reordering: int = 3
    tcp_max_reordering: int = 300


_PARSERS = {
    "tcp_msl": _int_range(1, 3600),
    "tcp_rto_min_ms": _int_range(1, 120000),
    "tcp_timestamps": _int_range(0, 2),
    "tcp_sack": _int_range(0, 1),
    "tcp_window_scaling": _int_range(0, 1),
    "tcp_fin_timeout": _int_range(1, 86400),
    "tcp_orphan_retries": _int_range(0, 255),
    "tcp_retries2": _int_range(1, 255),
    "tcp_syn_retries": _int_range(1, 127),
    "tcp_synack_retries": _int_range(1, 255),
    "tcp_keepalive_time": _int_range(1, 32767),
    "tcp_keepalive_intvl": _int_range(1, 32767),
    "tcp_keepalive_probes": _int_range(1, 127),
    "tcp_challenge_ack_limit": _int_range(1, 2**31 - 1),
    "tcp_invalid_ratelimit": _int_range(0, 60000),
    "tcp_rfc1337": _int_range(0, 1),
    "tcp_max_tw_buckets": _int_range(0, 2**31 - 1),
    "tcp_max_orphans": _int_range(0, 2**31 - 1),
    "tcp_mem": _triple,
    "tcp_tw_reuse": _int_range(0, 2),
    "tcp_tw_reuse_delay": _int_range(1, 60000),
    "ip_local_port_range": _port_range,
    "tcp_max_syn_backlog": _int_range(1, 1 << 20),
    "somaxconn": _int_range(1, 1 << 20),
    "tcp_syncookies": _int_range(0, 2),
    "tcp_abort_on_overflow": _int_range(0, 1),
    "tcp_rmem": _mem_triple,
    "tcp_wmem": _mem_triple,
    "rmem_max": _int_range(2304, 1 << 30),
    "wmem_max": _int_range(4608, 1 << 30),
    "tcp_slow_start_after_idle": _int_range(0, 1),
    "tcp_congestion_control": _choice(*CONGESTION_CONTROLS),
    "tcp_ecn": _int_range(0, 2),
    "tcp_ecn_fallback": _int_range(0, 1),
    "cubic_beta": _int_range(1, 1023),
    "cubic_bic_scale": _int_range(1, 1 << 16),
    "cubic_fast_convergence": _int_range(0, 1),
    "cubic_tcp_friendliness": _int_range(0, 1),
    "cubic_hystart": _int_range(0, 1),
    "cubic_hystart_detect": _int_range(0, 3),
    "cubic_hystart_low_window": _int_range(0, 1 << 20),
    "cubic_hystart_ack_delta_us": _int_range(0, 1_000_000),
    "cubic_initial_ssthresh": _int_range(0, 1 << 30),
    "tcp_recovery": _int_range(0, 7),
    "tcp_early_retrans": _int_range(0, 4),
    "tcp_frto": _int_range(0, 2),
    "tcp_dsack": _int_range(0, 1),
    "tcp_reordering": _int_range(1, 300),
    "tcp_max_reordering": _int_range(1, 1024),
}

KNOBS: tuple[str, ...] = tuple(f.name for f in fields(Config))
assert set(KNOBS) == set(_PARSERS)


def apply_settings(config: Config, settings: list[str]) -> Config:
    """Apply `KEY=VALUE` strings in order (the last one for a key wins)."""
    for item in settings:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("net.ipv4.").removeprefix("net.core.")
        if key.startswith("tcp_cubic."):
            key = "cubic_" + key[len("tcp_cubic."):]  # the module's parameters
        if not sep or key not in _PARSERS:
            raise ConfigError(
                f"unknown knob {key!r}; valid knobs: {', '.join(KNOBS)}"
            )
        try:
            setattr(config, key, _PARSERS[key](value))
        except ValueError as exc:
            raise ConfigError(
                f"bad value {value!r} for {key}: {exc}; valid knobs: {', '.join(KNOBS)}"
            ) from None
    return config
