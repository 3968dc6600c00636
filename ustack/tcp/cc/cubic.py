"""CUBIC (RFC 9438) as Linux's `cubic` has it (net/ipv4/tcp_cubic.c), with HyStart.

Linux keeps cwnd in segments and does CUBIC's arithmetic in integers: time in units
of 1/1024 s (BICTCP_HZ), C = bic_scale * 10 / 1024 = 0.4 (a reference RTT of 100 ms
folded in), beta = 717/1024. ustack's window is in bytes; this module works in
segments (cwnd // mss) as Linux does and moves the byte window by whole segments, so
the window follows Linux's curve segment for segment:

  - W_cubic(t) = C (t - K)^3 + W_max, K = cbrt((W_max - cwnd_epoch) / C)
    (RFC 9438 4.2; Linux bictcp_update()); t is one minimum RTT ahead (RFC 9438 4.2's
    "t + RTT", Linux's `+ delay_min`);
  - the Reno-friendly estimate W_est grows by one segment per (cwnd * 15) >> 3 acked
    segments (RFC 9438 4.3's alpha_cubic = 3(1 - beta)/(1 + beta), Linux's beta_scale);
  - the per-ACK step: cwnd grows by one segment per `cnt` acked segments
    (tcp_cong_avoid_ai()), cnt = cwnd / (target - cwnd), at least 2 (1.5x per RTT,
    RFC 9438 4.2's upper bound on the target), at most 20 before the first loss;
  - on a congestion event: W_max = cwnd, or cwnd (1 + beta) / 2 with fast convergence
    when cwnd fell short of the last W_max (RFC 9438 4.7), ssthresh = cwnd * beta
    (RFC 9438 4.6), never below 2 segments (Linux cubictcp_recalc_ssthresh());
  - on an RTO all state is forgotten, W_max too (Linux cubictcp_state(TCP_CA_Loss));
  - after idle, the epoch moves forward by the idle time (cubictcp_cwnd_event()).

HyStart (Ha and Rhee, Linux's `hystart`, not RFC 9406's HyStart++) leaves slow start
early, setting ssthresh = cwnd, when the ACKs of one round form a train longer than
half the minimum RTT or when the round's minimum RTT rose by delay_min/8 (clamped to
4..16 ms) over the connection's minimum (Linux hystart_update()).

Linux's module parameters (/sys/module/tcp_cubic/parameters) are knobs here:
`ustack serve --set cubic_hystart=0` (or `--set tcp_cubic.hystart=0`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from .base import INFINITE_SSTHRESH, CongestionControl

BICTCP_BETA_SCALE = 1024
BICTCP_HZ = 10  # CUBIC's clock: 2^10 ticks per second
HZ = 250  # Debian's jiffy rate: Linux recomputes cnt at most once per jiffy
HYSTART_ACK_TRAIN = 0x1
HYSTART_DELAY = 0x2
HYSTART_MIN_SAMPLES = 8
HYSTART_DELAY_MIN = 4000  # us
HYSTART_DELAY_MAX = 16000  # us
GSO_MAX_SIZE = 65536  # hystart_ack_delay()'s sk_gso_max_size (GSO_LEGACY_MAX_SIZE)
_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class CubicParams:
    """Linux's tcp_cubic module parameters, with their defaults (LINUX-SPEC-2 0.1)."""

    beta: int = 717
    bic_scale: int = 41
    fast_convergence: int = 1
    tcp_friendliness: int = 1
    hystart: int = 1
    hystart_detect: int = HYSTART_ACK_TRAIN | HYSTART_DELAY
    hystart_low_window: int = 16
    hystart_ack_delta_us: int = 2000
    initial_ssthresh: int = 0

    @classmethod
    def from_config(cls, config: Any) -> CubicParams:
        """The `cubic_*` knobs of a Config (config.py), defaults where it has none."""
        if config is None:
            return cls()
        return cls(**{name: getattr(config, "cubic_" + name, default)
                      for name, default in _DEFAULTS.items()})


_DEFAULTS = {name: getattr(CubicParams(), name) for name in CubicParams.__slots__}


def cubic_root(a: int) -> int:
    """floor(cbrt(a)) for an integer (Linux's cubic_root() is a table plus one Newton
    step, within 0.2 %; the exact root is as cheap here)."""
    if a <= 0:
        return 0
    x = round(a ** (1 / 3))
    while x * x * x > a:
        x -= 1
    while (x + 1) ** 3 <= a:
        x += 1
    return x


class Cubic(CongestionControl):
    name = "cubic"
    wants_rtt = True
    __slots__ = (
        "p", "beta_scale", "cube_rtt_scale", "cube_factor", "cwnd_cnt",
        # struct bictcp
        "cnt", "last_max_cwnd", "last_cwnd", "last_time", "origin_point", "K",
        "delay_min", "epoch_start", "ack_cnt", "tcp_cwnd",
        # HyStart
        "found", "round_start", "end_seq", "last_ack", "curr_rtt", "sample_cnt", "srtt",
    )

    def __init__(self, mss: int, params: CubicParams | None = None) -> None:
        super().__init__(mss)
        self.cwnd_cnt = 0  # Linux snd_cwnd_cnt: acked segments toward the next +1
        self._set_params(params or CubicParams())
        self._reset()
        self._hystart_reset()

    def configure(self, config: Any, stats: MutableMapping[str, int] | None) -> None:
        super().configure(config, stats)
        self._set_params(CubicParams.from_config(config))

    def _set_params(self, p: CubicParams) -> None:
        # cubictcp_register(): the scale factors, fixed for a reference RTT of 100 ms.
        self.p = p
        self.beta_scale = 8 * (BICTCP_BETA_SCALE + p.beta) // 3 // (BICTCP_BETA_SCALE - p.beta)
        self.cube_rtt_scale = p.bic_scale * 10  # 1024 * C
        self.cube_factor = (1 << (10 + 3 * BICTCP_HZ)) // (p.bic_scale * 10)
        if not p.hystart and p.initial_ssthresh:
            self.ssthresh = p.initial_ssthresh * self.mss  # cubictcp_init()

    def _reset(self) -> None:
        """bictcp_reset(): a new connection, or an RTO."""
        self.cnt = 0
        self.last_max_cwnd = 0  # W_max, segments; 0 = no loss seen yet
        self.last_cwnd = 0
        self.last_time = 0.0
        self.origin_point = 0
        self.K = 0  # 1/1024 s
        self.delay_min = 0  # us; the connection's minimum RTT
        self.epoch_start: float | None = None
        self.ack_cnt = 0
        self.tcp_cwnd = 0  # W_est, segments
        self.found = False
        self.srtt = 0.0

    def _hystart_reset(self) -> None:
        """bictcp_hystart_reset() happens at the next RTT sample, when this module
        learns SND.NXT: a new round then starts there."""
        self.end_seq: int | None = None
        self.round_start = self.last_ack = 0.0
        self.curr_rtt = 1 << 32
        self.sample_cnt = 0

    # --- the connection's life

    def set_mss(self, mss: int) -> None:
        ss_segs = self.ssthresh // self.mss if self.ssthresh < INFINITE_SSTHRESH else 0
        super().set_mss(mss)
        if ss_segs:
            self.ssthresh = ss_segs * mss  # an initial_ssthresh in segments

    def on_tx_start(self, now: float, idle: float) -> None:
        """cubictcp_cwnd_event(CA_EVENT_TX_START): sending again after an idle spell
        moves the epoch forward, so idle time does not advance the curve."""
        if self.epoch_start is not None and idle > 0:
            self.epoch_start = min(self.epoch_start + idle, now)

    # --- RTT samples: delay_min and HyStart

    def on_rtt(self, rtt: float, now: float, snd_una: int, snd_nxt: int) -> None:
        """cubictcp_acked(): an ACK of new data timed the newest segment it covers."""
        # Samples right after a reduction are discarded (queues still draining).
        if self.epoch_start is not None and now - self.epoch_start < 1.0:
            return
        delay = int(rtt * 1e6) or 1
        if self.delay_min == 0 or self.delay_min > delay:
            self.delay_min = delay
        # An estimate of Linux's srtt, for the pacing rate hystart_ack_delay() reads.
        self.srtt = rtt if not self.srtt else self.srtt + (rtt - self.srtt) / 8
        if self.p.hystart and not self.found and self.cwnd < self.ssthresh:
            self._hystart_update(delay, now, snd_una, snd_nxt)

    def _hystart_ack_delay(self) -> int:
        """hystart_ack_delay(): a cushion for TSO/GRO aggregation, at most 1 ms, from
        Linux's pacing rate (2 * cwnd / srtt in slow start, tcp_update_pacing_rate())."""
        if not self.srtt:
            return 0
        rate = 2 * self.cwnd / self.srtt  # bytes per second
        return min(1000, int(GSO_MAX_SIZE * 4 * 1e6 / rate))

    def _hystart_update(self, delay: int, now: float, una: int, nxt: int) -> None:
        if self.end_seq is None or 0 < (una - self.end_seq) & _MASK < 0x80000000:
            # after(snd_una, end_seq): a new round (bictcp_hystart_reset()).
            self.round_start = self.last_ack = now
            self.end_seq = nxt
            self.curr_rtt = 1 << 32
            self.sample_cnt = 0
        cwnd = self.cwnd // self.mss
        p = self.p
        if cwnd < p.hystart_low_window:
            return
        stats = self.stats
        if p.hystart_detect & HYSTART_ACK_TRAIN:
            if (now - self.last_ack) * 1e6 <= p.hystart_ack_delta_us:
                self.last_ack = now
                # Half of delay_min: ustack does not pace (SK_PACING_NONE).
                threshold = (self.delay_min + self._hystart_ack_delay()) >> 1
                if (now - self.round_start) * 1e6 > threshold:
                    self.found = True
                    self.ssthresh = self.cwnd
                    if stats is not None:
                        stats["TcpExtTCPHystartTrainDetect"] += 1
                        stats["TcpExtTCPHystartTrainCwnd"] += cwnd
        if p.hystart_detect & HYSTART_DELAY:
            if self.curr_rtt > delay:
                self.curr_rtt = delay
            if self.sample_cnt < HYSTART_MIN_SAMPLES:
                self.sample_cnt += 1
            elif self.curr_rtt > self.delay_min + min(max(self.delay_min >> 3,
                                                          HYSTART_DELAY_MIN),
                                                      HYSTART_DELAY_MAX):
                self.found = True
                self.ssthresh = self.cwnd
                if stats is not None:
                    stats["TcpExtTCPHystartDelayDetect"] += 1
                    stats["TcpExtTCPHystartDelayCwnd"] += cwnd

    # --- growth

    def on_ack(self, acked: int, flight: int, now: float) -> None:
        """cubictcp_cong_avoid(): slow start, then the CUBIC update with what is left."""
        mss = self.mss
        if self.cwnd < self.ssthresh:
            if self.cwnd >= 2 * flight:
                return  # tcp_is_cwnd_limited() in slow start
            grown = min(self.cwnd + acked, self.ssthresh)  # tcp_slow_start()
            acked -= grown - self.cwnd
            self.cwnd = grown
            if acked <= 0:
                return
        elif flight + mss < self.cwnd:
            return  # not cwnd-limited (the same test as Reno's)
        segs = -(-acked // mss)  # Linux counts packets; a partial one is one
        cwnd = self.cwnd // mss
        self._update(cwnd, segs, now)
        # tcp_cong_avoid_ai(tp, cnt, acked)
        w = self.cnt
        if self.cwnd_cnt >= w:
            self.cwnd_cnt = 0
            self.cwnd += mss
        self.cwnd_cnt += segs
        if self.cwnd_cnt >= w:
            delta = self.cwnd_cnt // w
            self.cwnd_cnt -= delta * w
            self.cwnd += delta * mss

    def target(self, now: float) -> int:
        """W_cubic(t + delay_min) in segments (the target of bictcp_update())."""
        t = int((now - self.epoch_start) * (1 << BICTCP_HZ)) + \
            (self.delay_min << BICTCP_HZ) // 1_000_000
        offs = self.K - t if t < self.K else t - self.K
        delta = (self.cube_rtt_scale * offs * offs * offs) >> (10 + 3 * BICTCP_HZ)
        return self.origin_point - delta if t < self.K else self.origin_point + delta

    def _update(self, cwnd: int, acked: int, now: float) -> None:
        """bictcp_update(): `cnt`, the acked segments per one-segment increase."""
        self.ack_cnt += acked
        if self.last_cwnd == cwnd and now - self.last_time <= 1 / 32:
            return
        # cnt is recomputed at most once per jiffy; a reduction (epoch end) forces it.
        if self.epoch_start is None or now - self.last_time >= 1 / HZ:
            self.last_cwnd = cwnd
            self.last_time = now
            if self.epoch_start is None:
                self.epoch_start = now
                self.ack_cnt = acked
                self.tcp_cwnd = cwnd
                if self.last_max_cwnd <= cwnd:
                    self.K = 0
                    self.origin_point = cwnd
                else:
                    # RFC 9438 eq. 2: K = cbrt((W_max - cwnd_epoch) / C), in 1/1024 s.
                    self.K = cubic_root(self.cube_factor * (self.last_max_cwnd - cwnd))
                    self.origin_point = self.last_max_cwnd
            target = self.target(now)
            self.cnt = cwnd // (target - cwnd) if target > cwnd else 100 * cwnd
            if self.last_max_cwnd == 0 and self.cnt > 20:
                self.cnt = 20  # no loss seen yet: at least 5 % growth per RTT
        if self.p.tcp_friendliness:
            # RFC 9438 4.3: W_est, one segment per (cwnd * beta_scale) >> 3 acked.
            delta = (cwnd * self.beta_scale) >> 3
            if delta and self.ack_cnt > delta:
                n = (self.ack_cnt - 1) // delta
                self.ack_cnt -= n * delta
                self.tcp_cwnd += n
            if self.tcp_cwnd > cwnd:
                max_cnt = cwnd // (self.tcp_cwnd - cwnd)
                if self.cnt > max_cnt:
                    self.cnt = max_cnt
        if self.cnt < 2:
            self.cnt = 2  # at most 1.5x per RTT

    # --- loss

    def ssthresh_after_loss(self, flight: int) -> int:
        """cubictcp_recalc_ssthresh(): W_max with fast convergence, then cwnd * beta.
        From cwnd, not flight, as Linux does (RFC 9438 4.6 allows either)."""
        cwnd = self.cwnd // self.mss
        beta = self.p.beta
        self.epoch_start = None  # the epoch ends
        if cwnd < self.last_max_cwnd and self.p.fast_convergence:
            self.last_max_cwnd = cwnd * (BICTCP_BETA_SCALE + beta) // (2 * BICTCP_BETA_SCALE)
        else:
            self.last_max_cwnd = cwnd
        return max(cwnd * beta // BICTCP_BETA_SCALE, 2) * self.mss

    def on_rto(self, flight: int, first: bool) -> None:
        """tcp_enter_loss() takes ssthresh, then cubictcp_state(TCP_CA_Loss) forgets
        everything, W_max and delay_min included, and HyStart starts over."""
        super().on_rto(flight, first)
        self._reset()
        self._hystart_reset()
        self.cwnd_cnt = 0

    def __repr__(self) -> str:
        return (f"<cubic cwnd={self.cwnd} ssthresh={self.ssthresh} "
                f"wmax={self.last_max_cwnd} K={self.K / 1024:.3f}s>")
