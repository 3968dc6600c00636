"""An impairment layer at the device boundary: loss, reordering, duplication, corruption,
ECN congestion marks and delay, per direction, from a seeded RNG (smoltcp's
FaultInjector, netem's knobs).

    ustack serve --impair loss=0.05,reorder=0.1,dup=0.02,corrupt=0.01,delay=5ms,seed=1
    ustack serve --impair ce=0.05    # mark CE on 5 % of the ECT packets

A key without a prefix sets both directions; `in.KEY` / `out.KEY` set one ("in" is what
the device hands the stack, "out" what the stack writes). Later items win.

Two layers, as everywhere in ustack:
  - `Channel`: sans-IO, one direction. `push(frame, now)` decides the frame's fate and
    queues what survives with its delivery time; `pop_due(now)` and `next_deadline()`
    drain it. Order is FIFO except where reordering asks otherwise.
  - `Impairment`: both channels plus the asyncio glue (one `call_at` per direction),
    bound to a Stack by `Stack.set_impairment()`.

Corruption XORs one byte of the IPv4 frame (never byte 0, the version, which would turn
it into "not IPv4" instead of a checksum error) with a non-zero mask. A one-byte change
always alters the Internet checksum (RFC 1071), so the receiver must catch every
corrupted frame: in the IP header (IpInHdrErrors) or the TCP segment (TcpInCsumErrors).

The CE mark (`ce=P`) is what an ECN-capable router's queue does instead of a drop
(RFC 3168 5, netem's and fq_codel's `ecn`): an IPv4 frame whose ECN field says ECT(0)
or ECT(1) gets CE, with probability P, its header checksum updated; Not-ECT frames are
left alone (a router would drop them instead; combine with loss= for that) and draw
no random number. Counted as UstackImpairCeMarked.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .stats import Stats
from .wire.ip import set_ce

# A reordered frame waits for the next frame to overtake it, at most this long (or the
# delay, if longer), so a held lone segment (a SYN, the last ACK) is only late, not lost.
REORDER_HOLD = 0.005

PROBABILITIES = ("loss", "reorder", "dup", "corrupt", "ce")
KEYS = (*PROBABILITIES, "delay", "seed")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True, slots=True)
class DirectionSpec:
    loss: float = 0.0
    reorder: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    ce: float = 0.0  # CE on ECT frames (RFC 3168)
    delay: float = 0.0  # seconds

    @property
    def active(self) -> bool:
        return any((self.loss, self.reorder, self.dup, self.corrupt, self.ce, self.delay))

    def __str__(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in PROBABILITIES if getattr(self, k)]
        if self.delay:
            parts.append(f"delay={self.delay * 1000:g}ms")
        return ",".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class ImpairSpec:
    inbound: DirectionSpec = field(default_factory=DirectionSpec)
    outbound: DirectionSpec = field(default_factory=DirectionSpec)
    seed: int | None = None

    @property
    def active(self) -> bool:
        return self.inbound.active or self.outbound.active

    def __str__(self) -> str:
        return f"in[{self.inbound}] out[{self.outbound}] seed={self.seed}"


def _probability(key: str, text: str) -> float:
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"{key}={text!r}: not a number (e.g. {key}=0.05 or {key}=5%)") \
            from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{key}={text!r}: a probability must be between 0 and 1")
    return value


def _delay(key: str, text: str) -> float:
    t = text.strip()
    for unit in ("us", "ms", "s"):  # "ms" and "us" before their suffix "s"
        if t.endswith(unit):
            number = t[: -len(unit)]
            break
    else:
        if t in ("0", "0.0"):
            return 0.0
        raise ValueError(f"{key}={text!r}: needs a unit: us, ms or s (e.g. {key}=5ms)")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{key}={text!r}: bad delay (e.g. {key}=5ms)") from None
    if not 0.0 <= value <= 10.0:
        raise ValueError(f"{key}={text!r}: delay must be between 0 and 10 s")
    return value


def parse_spec(text: str) -> ImpairSpec:
    """`"loss=0.05,in.dup=1%,delay=5ms,seed=1"` -> ImpairSpec. Raises ValueError with one
    line that says what is wrong and what is allowed."""
    inbound, outbound = DirectionSpec(), DirectionSpec()
    seed: int | None = None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("empty impairment spec; keys: " + ", ".join(KEYS))
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep:
            raise ValueError(f"{item!r}: expected KEY=VALUE; keys: {', '.join(KEYS)} "
                             "(prefix in. or out. for one direction)")
        direction, dot, key = name.rpartition(".")
        if not dot:
            direction = "both"
        if direction not in ("both", "in", "out") or key not in KEYS:
            raise ValueError(f"unknown impairment key {name!r}; keys: {', '.join(KEYS)} "
                             "(prefix in. or out. for one direction)")
        if key == "seed":
            if direction != "both":
                raise ValueError(f"{name!r}: the seed is shared by both directions; use seed=")
            try:
                seed = int(value.strip(), 0)
            except ValueError:
                raise ValueError(f"seed={value!r}: not an integer") from None
            continue
        parsed = _delay(name, value) if key == "delay" else _probability(name, value)
        if direction in ("both", "in"):
            inbound = replace(inbound, **{key: parsed})
        if direction in ("both", "out"):
            outbound = replace(outbound, **{key: parsed})
    return ImpairSpec(inbound, outbound, seed)


class Channel:
    """One direction's impairments, sans-IO: frames and times in, frames and times out."""

    __slots__ = ("spec", "rng", "stats", "queue", "held", "held_until", "_last_at")

    def __init__(self, spec: DirectionSpec, rng: random.Random, stats: Stats | None = None
                 ) -> None:
        self.spec = spec
        self.rng = rng
        self.stats = stats if stats is not None else Stats()
        self.queue: deque[tuple[float, bytes]] = deque()  # (deliver at, frame), FIFO
        self.held: bytes | None = None  # a frame waiting to be overtaken
        self.held_until = 0.0
        self._last_at = float("-inf")

    def _enqueue(self, at: float, frame: bytes) -> None:
        # Delivery times never go backwards, so the queue stays sorted and FIFO.
        if at < self._last_at:
            at = self._last_at
        self._last_at = at
        self.queue.append((at, frame))

    def corrupt(self, frame: bytes) -> bytes:
        """Flip bits in one byte other than the version byte (see the module docstring)."""
        if len(frame) < 2:
            return frame
        i = self.rng.randrange(1, len(frame))
        b = bytearray(frame)
        b[i] ^= self.rng.randrange(1, 256)
        return bytes(b)

    def push(self, frame: bytes, now: float) -> None:
        spec, rng, stats = self.spec, self.rng, self.stats
        if spec.loss and rng.random() < spec.loss:
            stats["UstackImpairDropped"] += 1
            return
        if spec.corrupt and frame and frame[0] >> 4 == 4 and rng.random() < spec.corrupt:
            frame = self.corrupt(frame)
            stats["UstackImpairCorrupted"] += 1
        if spec.ce and len(frame) >= 20 and frame[0] >> 4 == 4 and frame[1] & 3 in (1, 2) \
                and rng.random() < spec.ce:
            frame = set_ce(frame)
            stats["UstackImpairCeMarked"] += 1
        copies = 1
        if spec.dup and rng.random() < spec.dup:
            copies = 2
            stats["UstackImpairDuplicated"] += 1
        at = now + spec.delay
        if spec.reorder and self.held is None and rng.random() < spec.reorder:
            # Hold this one back; the next frame passes it (netem's reorder, gap 1).
            stats["UstackImpairReordered"] += 1
            self.held = frame
            self.held_until = now + max(spec.delay, REORDER_HOLD)
            if copies == 2:
                self._enqueue(at, frame)
            return
        for _ in range(copies):
            self._enqueue(at, frame)
        if self.held is not None:
            held, self.held = self.held, None
            self._enqueue(at, held)

    def release_held(self, now: float) -> None:
        """The hold ran out without a frame to overtake it: send it on."""
        if self.held is not None and now >= self.held_until:
            held, self.held = self.held, None
            self._enqueue(self.held_until, held)

    def pop_due(self, now: float) -> list[bytes]:
        self.release_held(now)
        q = self.queue
        out = []
        while q and q[0][0] <= now:
            out.append(q.popleft()[1])
        return out

    def next_deadline(self) -> float | None:
        d = self.queue[0][0] if self.queue else None
        if self.held is not None and (d is None or self.held_until < d):
            d = self.held_until
        return d


class _Path:
    """asyncio glue for one Channel: deliver what is due, keep one timer for the rest."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.loop: asyncio.AbstractEventLoop | None = None
        self.deliver: Callable[[bytes], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def send(self, frame: bytes) -> None:
        now = self.loop.time()
        self.channel.push(frame, now)
        self._run(now)

    def _run(self, now: float) -> None:
        for frame in self.channel.pop_due(now):
            self.deliver(frame)
        at = self.channel.next_deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer) if at is not None else None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._run(self.loop.time())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.channel.queue.clear()
        self.channel.held = None


class Impairment:
    """Both directions of one device. `Stack.set_impairment(Impairment(spec, stats))`."""

    def __init__(self, spec: ImpairSpec | str, stats: Stats | None = None,
                 rng: random.Random | None = None) -> None:
        if isinstance(spec, str):
            spec = parse_spec(spec)
        self.spec = spec
        self.stats = stats if stats is not None else Stats()
        if rng is not None:
            rng_in = rng_out = rng
        else:
            # One stream per direction: the fate of inbound frames does not depend on how
            # many frames went out in between.
            rng_in = random.Random(f"{spec.seed}-in") if spec.seed is not None else random.Random()
            rng_out = random.Random(f"{spec.seed}-out") if spec.seed is not None \
                else random.Random()
        self.inbound = _Path(Channel(spec.inbound, rng_in, self.stats))
        self.outbound = _Path(Channel(spec.outbound, rng_out, self.stats))

    def bind(self, loop: asyncio.AbstractEventLoop, deliver_in: Callable[[bytes], None],
             deliver_out: Callable[[bytes], None]) -> None:
        self.inbound.loop = self.outbound.loop = loop
        self.inbound.deliver = deliver_in
        self.outbound.deliver = deliver_out

    def close(self) -> None:
        self.inbound.close()
        self.outbound.close()
