"""What every TCB of one stack shares: knobs, counters, secrets, stack-wide rate limits."""

from __future__ import annotations

import hashlib
import os
import random
from collections import deque

from ..config import Config
from ..stats import Stats
from .events import TooManyOrphans
from .mem import TcpMem


class Context:
    __slots__ = ("config", "stats", "secret", "rng", "notices", "_challenge_second",
                 "_challenge_left", "adv_mss", "gso_max", "output_due", "orphans",
                 "mem")

    def __init__(self, config: Config | None = None, stats: Stats | None = None,
                 secret: bytes | None = None, seed: int | None = None) -> None:
        self.config = config or Config()
        self.stats = stats if stats is not None else Stats()
        self.secret = secret or os.urandom(16)
        self.rng = random.Random(seed)
        # Notices for the operator (events.Notice), taken by the shell; bounded, so a
        # table without a shell (tests, benchmarks) never grows it without end.
        self.notices: deque = deque(maxlen=1024)
        self._challenge_second = -1
        self._challenge_left = 0
        self.set_link(1500, 0)
        # TCBs whose output waits for the end of the batch (Tcb.output_soon(),
        # TcpTable.transmit()), in the order they asked.
        self.output_due: list = []
        self.orphans = 0  # TCBs the application closed that are not gone yet
        self.mem = TcpMem()  # tcp_mem pressure, sampled by the shell (mem.py)

    def too_many_orphans(self, shift: int) -> bool:
        """Linux tcp_too_many_orphans(): (orphans << shift) > tcp_max_orphans; says so
        in the log (rate-limited) as tcp_check_oom() does."""
        if (self.orphans << shift) <= self.config.tcp_max_orphans:
            return False
        self.notices.append(TooManyOrphans())
        return True

    def set_link(self, mtu: int, gso_max: int) -> None:
        """What the device below allows: `mtu` gives the MSS we advertise (Linux advmss,
        MTU - 40); `gso_max` is the largest TCP payload one segment may carry when the
        device segments for us (TSO), 0 when every segment must fit the MTU."""
        self.adv_mss = mtu - 40
        self.gso_max = gso_max

    def isn(self, key: bytes, now: float) -> int:
        """RFC 6528 section 3: ISN = M + F(4-tuple, secret), M a 4-microsecond clock."""
        f = int.from_bytes(hashlib.blake2b(key, key=self.secret, digest_size=4).digest(), "big")
        return (int(now * 250_000) + f) & 0xFFFFFFFF

    def ts_offset(self, key: bytes) -> int:
        """Per-connection TSval offset (Linux secure_tcp_ts_off), 0 for tcp_timestamps=2.

        Derived from the four-tuple, so a new incarnation on the same tuple continues
        the old TSval clock and the peer's PAWS keeps working (LINUX-SPEC item 61).
        """
        if self.config.tcp_timestamps != 1:
            return 0
        h = hashlib.blake2b(key, key=self.secret, digest_size=8, person=b"ts-off").digest()
        return int.from_bytes(h[:4], "big")

    def challenge_ack_allowed(self, now: float) -> bool:
        """Stack-wide challenge ACK budget per second (RFC 5961 section 7).

        Like Linux 4.7+, the budget is randomised in [half, limit + half - 1] with
        half = (limit + 1) // 2 each second so an off-path attacker cannot count it exactly
        (CVE-2016-5696; tcp_send_challenge_ack()).
        """
        if self.config.tcp_challenge_ack_limit >= 2**31 - 1:
            return True  # INT_MAX disables the stack-wide limit (Linux >= 6.0 default)
        second = int(now)
        if second != self._challenge_second:
            self._challenge_second = second
            limit = self.config.tcp_challenge_ack_limit
            half = (limit + 1) >> 1
            self._challenge_left = half + self.rng.randrange(max(limit, 1))
        if self._challenge_left > 0:
            self._challenge_left -= 1
            return True
        return False
