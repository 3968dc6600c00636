"""A small packetdrill-like driver for the sans-IO core, on a virtual clock.

The core under test is a `TcpTable` at 10.77.0.2; the test plays the remote host
10.77.0.1:40000. Segments are written in packetdrill notation with relative sequence
numbers, and a script carries the time of every line:

    d = Drill()
    d.script('''
        +0    listen(80)
        +0    < S 0:0(0) win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>
        +0    > S. 0:0(0) ack 1 <mss 1460,sackOK,TS val * ecr 100,nop,wscale 7>
        +0.01 < . 1:1(0) ack 1 win 257
        +0    accept()
        +0.1  < F. 1:1(0) ack 1 win 257
        +0    > . 1:1(0) ack 2
    ''')

Time: `+0.2` is relative to the previous line (to the time the previous segment really
left, as packetdrill does), `0.300` is absolute since the drill started, `*` is any time.
An inbound line (`<`) and a call line (`close()`, `send(1000)`, ...) first run the clock
to their time, running every timer that falls due on the way; an outbound line (`>`)
runs the clock until a segment leaves (at most to its time plus `tolerance`, 4 ms by
default) and fails if it left outside [time - tolerance, time + tolerance]. A line
`+1.0 wait` only runs the clock. Comments start with `//` or `#`.

Segments: `flags start:end(len) [ack N] [win N] [<options>]`. Inbound `start` is
relative to the peer's ISN and `ack` to our ISS; outbound the other way round.
An outbound line is checked strictly: the flags exactly (`P.` is PSH|ACK, `FP.` is
FIN|PSH|ACK), start, end (= start + len) and len, `ack` when given, `win` when given,
and the options when a list is given, exactly and in order as they are on the wire
(`nop` included; `TS val * ecr *` leaves a value unchecked; `<...>` means any options).
Without a list the options are not checked. Inbound segments without a list get the
drill's defaults: TS (when `ts=True`) and, on a SYN, MSS, SACK-permitted and wscale.

"Nothing else": every segment the stack sends must be expected. A step that acts
(inject, advance, a call, a script line that injects or calls) and the end of a script
fail if a segment is left unexpected, and so does the end of the test (the
`drill_leftovers` fixture, which a test module imports). `d.take()` takes what is
pending without checking it, so a test that means to ignore or inspect output says so.

The Python verbs (`inject`, `expect`, `advance`, `send`, `close`...) do what script lines
do; `expect(text, at=..., after=...)` checks the time too. `d.peer(port=40001)` is a
second connection (its own ports, ISNs and TS clock) on the same table and clock.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from ustack.config import Config, apply_settings
from ustack.packetdrill.run import wire_options  # noqa: F401  (the drills' option words)
from ustack.table import Listener, TcpTable, make_key
from ustack.tcp.context import Context
from ustack.tcp.state import State
from ustack.tcp.tcb import Tcb
from ustack.wire.ip import ip_to_bytes
from ustack.wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Segment,
    format_segment,
)

LOCAL = "10.77.0.2"
REMOTE = "10.77.0.1"
PEER_ISN = 1_000_000
PEER_PORT = 40000
MASK = 0xFFFFFFFF
START = 100.0  # the virtual clock when a drill starts
TOLERANCE = 0.004  # packetdrill's default --tolerance_usecs

_FLAGS = {"S": SYN, "F": FIN, "R": RST, "P": PSH, ".": ACK, "U": URG, "E": ECE, "W": CWR}
_SEG_RE = re.compile(
    r"^\s*(?P<flags>[SFRPUEW.]+|none)\s+(?P<start>\d+):(?P<end>\d+)\((?P<len>\d+)\)"
    r"(?:\s+ack\s+(?P<ack>\d+))?(?:\s+win\s+(?P<win>\d+))?\s*(?:<(?P<opts>[^>]*)>)?\s*$")
_LINE_RE = re.compile(r"^(?P<time>\*|[+]?\d*\.?\d+)\s+(?P<rest>.*)$")
_CALL_RE = re.compile(r"^(?P<name>[a-z_]+)\((?P<args>.*)\)$")
# The calls a script line may make, all methods of Conn.
_CALLS = ("listen", "accept", "connect", "send", "read", "shutdown", "close", "abort")


def parse_flags(text: str) -> int:
    if text == "none":
        return 0
    f = 0
    for ch in text:
        f |= _FLAGS[ch]
    return f


def _option_matches(want: str, got: str) -> bool:
    w, g = want.split(), got.split()
    return len(w) == len(g) and all(a in ("*", b) for a, b in zip(w, g, strict=True))


@dataclass(frozen=True, slots=True)
class Sent:
    """One segment the stack sent, with the virtual time it left."""
    at: float
    seg: Segment


class World:
    """What every connection of a drill shares: the table, the clock and the output."""

    def __init__(self, settings: tuple[str, ...], tolerance: float) -> None:
        cfg = apply_settings(Config(), list(settings))
        self.ctx = Context(cfg, secret=b"drill-secret-key", seed=1)
        self.table = TcpTable(self.ctx, self._collect)
        self.now = START
        self.last = START  # the time of the last event (a script's "+0" base)
        self.tolerance = tolerance
        self.events: list = []
        self.out: list[Sent] = []
        self.conns: list[Conn] = []

    def _collect(self, tcb: Tcb) -> None:
        self.events.extend(tcb.events)

    def take_sent(self) -> list[Sent]:
        """Like take(), with the time each segment left."""
        mine = [s for s in self.w.out if self.owns(s.seg)]
        self.w.out[:] = [s for s in self.w.out if not self.owns(s.seg)]
        return mine

    def drain(self) -> None:
        # The end of a batch, as the shell's flush ends one (TcpTable.transmit()).
        for _src, _dst, seg in self.table.transmit(self.now):
            for c in self.conns:
                if (seg.sport, seg.dport) == (c.local_port, c.peer_port):
                    if seg.flags & SYN and c.iss is None:
                        c.iss = seg.seq
                    if seg.ts is not None:
                        c.last_tsval = seg.ts[0]
            self.out.append(Sent(self.now, seg))

    def step_to(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run the clock to `end`, each timer at its own deadline; with `stop`, halt as
        soon as stop() is true (then the clock stays at that timer's deadline)."""
        while True:
            if stop is not None and stop():
                return True
            d = self.table.next_deadline()
            if d is None or d > end:
                break
            self.now = max(self.now, d)
            self.table.handle_timers(self.now)
            self.drain()
        self.now = max(self.now, end)
        self.table.handle_timers(self.now)
        self.drain()
        return stop is not None and stop()

    def describe(self, sent: Sent) -> str:
        for c in reversed(self.conns):
            if c.owns(sent.seg):
                return c.describe_sent(sent)
        return f"{sent.at - START:.3f} {format_segment(sent.seg)}"

    def nothing_pending(self, why: str) -> None:
        assert not self.out, (f"{why}, but unexpected segments were sent: "
                              f"{[self.describe(s) for s in self.out]}")


class Conn:
    """One connection the test plays the peer of: its ports, ISNs and TS clock."""

    def __init__(self, world: World, *, ts: bool, peer_port: int, local_port: int,
                 wscale: int | None, mss: int, isn: int, ts_base: int) -> None:
        self.w = world
        self.ts = ts
        self.peer_wscale = wscale
        self.peer_mss = mss
        self.peer_port = peer_port
        self.local_port = local_port
        self.iss: int | None = None  # our ISS, learned from our SYN / SYN-ACK
        self.peer_isn = isn
        self.peer_ts_base = ts_base
        self.last_tsval = 0  # the last TSval we sent, echoed by the peer automatically
        self.tcb: Tcb | None = None
        world.conns.append(self)

    # ------------------------------------------------------------------ shared world

    @property
    def table(self) -> TcpTable:
        return self.w.table

    @property
    def ctx(self) -> Context:
        return self.w.ctx

    @property
    def stats(self):
        return self.w.ctx.stats

    @property
    def now(self) -> float:
        return self.w.now

    @property
    def elapsed(self) -> float:
        """Seconds since the drill started (the clock of absolute script times)."""
        return self.w.now - START

    @property
    def events(self) -> list:
        return self.w.events

    @events.setter
    def events(self, value: list) -> None:
        self.w.events = value

    @property
    def out(self) -> list[Sent]:
        """Every segment sent and not yet expected or taken, any connection's."""
        return self.w.out

    def peer(self, port: int, *, isn: int | None = None, ts_base: int | None = None,
             ts: bool | None = None, wscale: int | None | str = "same",
             mss: int | None = None, local_port: int | None = None) -> Conn:
        """Another connection on the same table and clock: the peer at `port` (a new
        incarnation of this one if `port` is the same), with its own ISN and TS clock."""
        return Conn(self.w, ts=self.ts if ts is None else ts, peer_port=port,
                    local_port=self.local_port if local_port is None else local_port,
                    wscale=self.peer_wscale if wscale == "same" else wscale,  # type: ignore[arg-type]
                    mss=self.peer_mss if mss is None else mss,
                    isn=PEER_ISN if isn is None else isn,
                    ts_base=self.peer_ts_base if ts_base is None else ts_base)

    # ------------------------------------------------------------------ plumbing

    @property
    def key(self) -> bytes:
        return make_key(ip_to_bytes(REMOTE), ip_to_bytes(LOCAL), self.peer_port, self.local_port)

    def peer_tsval(self) -> int:
        return (self.peer_ts_base + int((self.w.now - START) * 1000)) & MASK

    def owns(self, seg: Segment) -> bool:
        return (seg.sport, seg.dport) == (self.local_port, self.peer_port)

    def describe(self, seg: Segment) -> str:
        return format_segment(seg, self.iss or 0, self.peer_isn)

    def describe_sent(self, sent: Sent) -> str:
        return f"{sent.at - START:.3f} > {self.describe(sent.seg)}"

    def take(self) -> list[Segment]:
        """Take every pending segment of this connection without checking it (the test
        means to ignore or inspect them)."""
        return [s.seg for s in self.take_sent()]

    def take_sent(self) -> list[Sent]:
        """Like take(), with the time each segment left."""
        mine = [s for s in self.w.out if self.owns(s.seg)]
        self.w.out[:] = [s for s in self.w.out if not self.owns(s.seg)]
        return mine

    def drain(self) -> None:
        """Collect what the table sent after a test called into it directly."""
        self.w.drain()

    def _act(self, what: str) -> None:
        self.w.nothing_pending(f"before {what}")

    # ------------------------------------------------------------------ the test's verbs

    def listen(self, port: int = 80, backlog: int = 128) -> Listener:
        self.local_port = port
        return self.table.listen(LOCAL, port, backlog)

    def accept(self) -> Tcb:
        lst = self.table.listeners[self.local_port]
        assert lst.accept_queue, "nothing to accept"
        self.tcb = lst.accept_queue.pop(0)
        self.tcb.owner = self
        return self.tcb

    def connect(self, port: int | None = None) -> Tcb:
        """Our connect() to the peer (at `port`, by default this connection's peer port)."""
        self._act("connect()")
        if port is not None:
            self.peer_port = port
        n = len(self.table.tx)
        tcb = self.table.connect(LOCAL, REMOTE, self.peer_port, self.w.now, owner=self)
        self.local_port = tcb.local[1]
        assert len(self.table.tx) >= n
        self.w.drain()
        self.w.last = self.w.now
        self.tcb = tcb
        return tcb

    def segment(self, text: str, **kw: Any) -> Segment:
        """Build an inbound segment from packetdrill notation (relative numbers)."""
        m = _SEG_RE.match(text)
        if not m:
            raise ValueError(f"cannot parse segment {text!r}")
        flags = parse_flags(m["flags"])
        start, length = int(m["start"]), int(m["len"])
        if int(m["end"]) != start + length:
            raise ValueError(f"{text!r}: end is not start + len")
        seq = (self.peer_isn + start) & MASK
        ack = 0
        if m["ack"] is not None:
            ack = ((self.iss or 0) + int(m["ack"])) & MASK
        win = int(m["win"]) if m["win"] is not None else 1000
        seg = Segment(self.peer_port, self.local_port, seq, ack, flags, win,
                      kw.pop("payload", b"x" * length))
        opts = m["opts"]
        if opts is not None:
            for opt in (o.strip() for o in opts.split(",")):
                if opt.startswith("mss"):
                    seg.mss = int(opt.split()[1])
                elif opt == "sackOK":
                    seg.sack_perm = True
                elif opt.startswith("wscale"):
                    seg.wscale = int(opt.split()[1])
                elif opt.startswith("TS"):
                    parts = opt.split()
                    seg.ts = (int(parts[2]), int(parts[4]))
                elif opt.startswith("sack "):
                    base = self.iss or 0
                    seg.sack = tuple(((base + int(a)) & MASK, (base + int(b)) & MASK)
                                     for a, b in (blk.split(":") for blk in opt.split()[1:]))
                elif opt in ("nop", "eol", ""):
                    pass
                else:
                    raise ValueError(f"unknown option {opt!r} in {text!r}")
        elif self.ts and not flags & SYN:
            seg.ts = (self.peer_tsval(), self.last_tsval)
        elif self.ts and flags & SYN:
            seg.ts = (self.peer_tsval(), self.last_tsval if flags & ACK else 0)
            seg.mss = self.peer_mss
            seg.sack_perm = True
            seg.wscale = self.peer_wscale
        elif flags & SYN:
            seg.mss = self.peer_mss
            seg.wscale = self.peer_wscale
        return replace(seg, **kw) if kw else seg

    def inject(self, text: str | Segment, **kw: Any) -> None:
        """The peer sends one segment now (nothing else may be pending)."""
        self._act(f"injecting {text!r}")
        seg = text if isinstance(text, Segment) else self.segment(text, **kw)
        self.table.input(self.key, seg, self.w.now)
        self.w.drain()
        self.w.last = self.w.now

    def expect(self, text: str, *, at: float | None = None,
               after: float | None = None) -> Segment:
        """Check the next segment this connection sent against the pattern. With `at`
        (seconds since the drill started) or `after` (seconds from now) the clock runs
        until it leaves and its time is checked, within the drill's tolerance."""
        if after is not None:
            at = self.w.now - START + after
        return self._expect(text, None if at is None else START + at)

    def _expect(self, text: str, when: float | None) -> Segment:
        m = _SEG_RE.match(text)
        if not m:
            raise ValueError(f"bad pattern {text!r}")
        tol = self.w.tolerance

        def mine() -> Sent | None:
            return next((s for s in self.w.out if self.owns(s.seg)), None)

        if when is not None and mine() is None:
            self.w.step_to(when + tol, stop=lambda: mine() is not None)
        sent = mine()
        where = "" if when is None else f" at {when - START:.3f}"
        if sent is None:
            if when is not None:  # say when it would have left, if it does at all
                self.w.step_to(self.w.now + 600, stop=lambda: mine() is not None)
                late = mine()
                if late is not None:
                    raise AssertionError(f"expected {text!r}{where}, got "
                                         f"{self.describe_sent(late)} (late)")
            raise AssertionError(f"expected {text!r}{where}, but nothing was sent")
        self.w.out.remove(sent)
        seg = sent.seg
        got = f"expected {text!r}{where}, got {self.describe_sent(sent)}"
        if when is not None:
            assert abs(sent.at - when) <= tol + 1e-9, f"{got} (off by {sent.at - when:+.4f} s)"
        assert seg.flags == parse_flags(m["flags"]), f"{got} (flags)"
        start, end, length = int(m["start"]), int(m["end"]), int(m["len"])
        if end != start + length:
            raise ValueError(f"{text!r}: end is not start + len")
        base = self.iss if self.iss is not None else 0
        rel = (seg.seq - base) & MASK
        assert (rel, (rel + len(seg.payload)) & MASK, len(seg.payload)) == (start, end, length), \
            f"{got} (sequence range)"
        if m["ack"] is not None:
            assert (seg.ack - self.peer_isn) & MASK == int(m["ack"]), f"{got} (ack)"
        if m["win"] is not None:
            assert seg.wnd == int(m["win"]), f"{got} (window)"
        if m["opts"] is not None and m["opts"].strip() != "...":
            want = [o.strip() for o in m["opts"].split(",") if o.strip()]
            have = wire_options(seg, self.peer_isn)
            ok = len(want) == len(have) and all(map(_option_matches, want, have))
            assert ok, f"{got} (options: want <{','.join(want)}>, have <{','.join(have)}>)"
        self.w.last = sent.at
        return seg

    def expect_nothing(self) -> None:
        """Nothing is pending now (for any connection)."""
        self.w.nothing_pending("expected nothing")

    def advance(self, dt: float) -> None:
        """Move the clock forward by dt, running each timer at its own deadline."""
        self._act(f"advance({dt})")
        self.w.step_to(self.w.now + dt)
        self.w.last = self.w.now

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A user call on this connection's TCB (send, recv, shutdown, close, abort)."""
        self._act(f"calling {getattr(fn, '__name__', fn)}()")
        assert self.tcb is not None, "no connection to call"
        r = self.table.call(self.tcb, self.w.now, fn, *args)
        self.w.drain()
        self.w.last = self.w.now
        return r

    def send(self, data: bytes | int) -> None:
        """send() on our socket: bytes, or an int for that many bytes of b"x"."""
        assert self.tcb is not None
        self.call(self.tcb.send, b"x" * data if isinstance(data, int) else data, self.w.now)

    def read(self, n: int = -1) -> bytes:
        assert self.tcb is not None
        return self.call(self.tcb.recv, n, self.w.now)

    def shutdown(self) -> None:
        assert self.tcb is not None
        self.call(self.tcb.shutdown, self.w.now)

    def close(self, unread: int = 0) -> None:
        assert self.tcb is not None
        self.call(self.tcb.close, self.w.now, unread)

    def abort(self) -> None:
        assert self.tcb is not None
        self.call(self.tcb.abort, self.w.now)

    @property
    def state(self) -> State:
        """The state of this connection, request and TIME_WAIT records included."""
        if self.key in self.table.est:
            return self.table.est[self.key].state
        if self.key in self.table.reqs:
            return State.SYN_RECEIVED
        if self.key in self.table.tw:
            return State.TIME_WAIT
        return State.CLOSED

    # ------------------------------------------------------------------ scripts

    def script(self, text: str, *, more: bool = False) -> list[Segment]:
        """Run a packetdrill-style script (see the module docstring) on this connection;
        the outbound segments it matched, in order. Unless `more`, nothing may be left
        pending at its end."""
        matched: list[Segment] = []
        for raw in text.splitlines():
            line = re.split(r"\s(?://|#)|^(?://|#)", raw, maxsplit=1)[0].strip()
            if not line:
                continue
            m = _LINE_RE.match(line)
            if not m:
                raise ValueError(f"script line without a time: {raw.strip()!r}")
            t, rest = m["time"], m["rest"].strip()
            when = None if t == "*" else (
                self.w.last + float(t[1:]) if t.startswith("+") else START + float(t))
            if rest.startswith(">"):
                matched.append(self._expect(rest[1:].strip(), when))
                continue
            if when is not None:
                if when < self.w.now - 1e-9:
                    raise ValueError(f"{raw.strip()!r}: time {when - START:.3f} is before "
                                     f"the clock ({self.elapsed:.3f})")
                self.w.step_to(when)
                self.w.last = when
            if rest.startswith("<"):
                self.inject(rest[1:].strip())
            elif rest == "wait":
                self.w.nothing_pending(f"at {raw.strip()!r}")
            else:
                c = _CALL_RE.match(rest)
                if not c or c["name"] not in _CALLS:
                    raise ValueError(f"unknown script line {raw.strip()!r}")
                args = ast.literal_eval(f"({c['args']},)") if c["args"].strip() else ()
                getattr(self, c["name"])(*args)
        if not more:
            self.w.nothing_pending("at the end of the script")
        return matched

    # ------------------------------------------------------------------ fixtures

    def established_passive(self, port: int = 80) -> Tcb:
        """LISTEN, the peer's handshake, accepted: ESTABLISHED with relative seq 1/1."""
        self.listen(port)
        self.inject("S 0:0(0) win 65535")
        self.expect("S. 0:0(0) ack 1")
        self.inject(". 1:1(0) ack 1")
        tcb = self.accept()
        assert tcb.state == State.ESTABLISHED
        self.events.clear()
        return tcb

    def established_active(self) -> Tcb:
        """Our connect(), the peer's SYN-ACK, our ACK: ESTABLISHED."""
        self.connect()
        self.expect("S 0:0(0)")
        self.inject("S. 0:0(0) ack 1 win 65535")
        self.expect(". 1:1(0) ack 1")
        assert self.tcb is not None and self.tcb.state == State.ESTABLISHED
        self.events.clear()
        return self.tcb


_LIVE: list[World] = []


class Drill(Conn):
    """A table on a virtual clock plus the first connection the test plays the peer of."""

    def __init__(self, *settings: str, ts: bool = True, peer_port: int = PEER_PORT,
                 wscale: int | None = 7, mss: int = 1460,
                 tolerance: float = TOLERANCE) -> None:
        world = World(settings, tolerance)
        _LIVE.append(world)
        super().__init__(world, ts=ts, peer_port=peer_port, local_port=80, wscale=wscale,
                         mss=mss, isn=PEER_ISN, ts_base=5000)


@pytest.fixture(autouse=True)
def drill_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that ends with segments sent and never expected (import this into a
    test module to make it apply there). A test that failed already is not blamed twice."""
    _LIVE.clear()
    failed = request.session.testsfailed
    yield
    worlds = list(_LIVE)
    _LIVE.clear()
    if request.session.testsfailed != failed:
        return
    for w in worlds:
        w.nothing_pending("at the end of the test")
