"""A small packetdrill-like driver for the sans-IO core, on a fake clock.

The core under test is a `TcpTable` at 10.77.0.2; the test plays the remote host
10.77.0.1:40000 (or whatever port it connects to). Segments are written in packetdrill
notation with relative sequence numbers:

    d = Drill()
    d.listen(80)
    d.inject("S 0:0(0) win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>")
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1")
    tcb = d.accept()
    d.inject("F. 1:1(0) ack 1")
    d.expect(". 1:1(0) ack 2")

Inbound `seq` is relative to the peer's ISN (PEER_ISN), inbound `ack` to our ISS;
outbound it is the other way round. `expect` checks only what the pattern states
(flags, seq range, ack, win if given, TS presence). Time only moves with `d.advance()`,
which runs every timer that falls due, in order.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ustack.config import Config, apply_settings
from ustack.table import TcpTable, make_key
from ustack.tcp.context import Context
from ustack.tcp.state import State
from ustack.tcp.tcb import Tcb
from ustack.wire.ip import ip_to_bytes
from ustack.wire.tcp import ACK, FIN, PSH, RST, SYN, Segment, format_segment

LOCAL = "10.77.0.2"
REMOTE = "10.77.0.1"
PEER_ISN = 1_000_000
PEER_PORT = 40000
MASK = 0xFFFFFFFF

_FLAGS = {"S": SYN, "F": FIN, "R": RST, "P": PSH, ".": ACK}
_SEG_RE = re.compile(
    r"^\s*(?P<flags>[SFRP.]+|none)\s+(?P<start>\d+):(?P<end>\d+)\((?P<len>\d+)\)"
    r"(?:\s+ack\s+(?P<ack>\d+))?(?:\s+win\s+(?P<win>\d+))?\s*(?:<(?P<opts>[^>]*)>)?\s*$")


def parse_flags(text: str) -> int:
    if text == "none":
        return 0
    f = 0
    for ch in text:
        f |= _FLAGS[ch]
    return f


class Drill:
    def __init__(self, *settings: str, ts: bool = True, peer_port: int = PEER_PORT,
                 wscale: int | None = 7, mss: int = 1460) -> None:
        cfg = apply_settings(Config(), list(settings))
        self.ctx = Context(cfg, secret=b"drill-secret-key", seed=1)
        self.table = TcpTable(self.ctx, self._collect)
        self.now = 100.0
        self.events: list = []
        self.out: list[Segment] = []
        self.ts = ts
        self.peer_wscale = wscale
        self.peer_mss = mss
        self.peer_port = peer_port
        self.local_port = 80
        self.iss: int | None = None  # our ISS, learned from our SYN / SYN-ACK
        self.peer_isn = PEER_ISN
        self.peer_ts_base = 5000
        self.last_tsval = 0  # the last TSval we sent, echoed by the peer automatically
        self.tcb: Tcb | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def stats(self):
        return self.ctx.stats

    def _collect(self, tcb: Tcb) -> None:
        self.events.extend(tcb.events)

    def _drain_tx(self) -> None:
        for _src, _dst, seg in self.table.tx:
            if seg.flags & SYN and self.iss is None:
                self.iss = seg.seq
            if seg.ts is not None:
                self.last_tsval = seg.ts[0]
            self.out.append(seg)
        self.table.tx.clear()

    @property
    def key(self) -> bytes:
        return make_key(ip_to_bytes(REMOTE), ip_to_bytes(LOCAL), self.peer_port, self.local_port)

    def peer_tsval(self) -> int:
        return (self.peer_ts_base + int((self.now - 100.0) * 1000)) & MASK

    # ------------------------------------------------------------------ the test's verbs

    def listen(self, port: int = 80, backlog: int = 128):
        self.local_port = port
        return self.table.listen(LOCAL, port, backlog)

    def accept(self) -> Tcb:
        lst = self.table.listeners[self.local_port]
        assert lst.accept_queue, "nothing to accept"
        self.tcb = lst.accept_queue.pop(0)
        self.tcb.owner = self
        return self.tcb

    def connect(self, port: int = 80) -> Tcb:
        self.local_port = port  # "local" in the key sense: the port on the peer
        tcb = self.table.connect(LOCAL, REMOTE, self.peer_port, self.now, owner=self)
        self.local_port = tcb.local[1]
        self._drain_tx()
        self.tcb = tcb
        return tcb

    def segment(self, text: str, **kw) -> Segment:
        """Build an inbound segment from packetdrill notation (relative numbers)."""
        m = _SEG_RE.match(text)
        if not m:
            raise ValueError(f"cannot parse segment {text!r}")
        flags = parse_flags(m["flags"])
        start, length = int(m["start"]), int(m["len"])
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
                elif opt == "noTS":
                    seg.ts = None
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

    def inject(self, text: str | Segment, **kw) -> None:
        seg = text if isinstance(text, Segment) else self.segment(text, **kw)
        self.table.input(self.key, seg, self.now)
        self._drain_tx()

    def expect(self, text: str) -> Segment:
        """Pop the next segment we sent and check it against the pattern."""
        assert self.out, f"expected {text!r}, but nothing was sent"
        seg = self.out.pop(0)
        m = _SEG_RE.match(text)
        assert m, f"bad pattern {text!r}"
        desc = self.describe(seg)
        assert seg.flags & ~PSH == parse_flags(m["flags"]) & ~PSH, f"expected {text!r}, got {desc}"
        if seg.flags & RST and not seg.flags & ACK and self.iss is None:
            pass
        base = self.iss if self.iss is not None else 0
        assert (seg.seq - base) & MASK == int(m["start"]), f"expected {text!r}, got {desc}"
        assert len(seg.payload) == int(m["len"]), f"expected {text!r}, got {desc}"
        if m["ack"] is not None:
            assert seg.flags & ACK and (seg.ack - self.peer_isn) & MASK == int(m["ack"]), \
                f"expected {text!r}, got {desc}"
        if m["win"] is not None:
            assert seg.wnd == int(m["win"]), f"expected {text!r}, got {desc}"
        if m["opts"] is not None and "noTS" in m["opts"]:
            assert seg.ts is None, f"expected no TS option, got {desc}"
        return seg

    def expect_nothing(self) -> None:
        assert not self.out, f"expected nothing, got {[self.describe(s) for s in self.out]}"

    def describe(self, seg: Segment) -> str:
        return format_segment(seg, self.iss or 0, self.peer_isn)

    def advance(self, dt: float) -> None:
        """Move the clock forward by dt, running each timer at its own deadline."""
        end = self.now + dt
        while True:
            d = self.table.next_deadline()
            if d is None or d > end:
                break
            self.now = max(self.now, d)
            self.table.handle_timers(self.now)
            self._drain_tx()
        self.now = end
        self.table.handle_timers(self.now)
        self._drain_tx()

    def call(self, fn, *args):
        """A user call on the current TCB (send, recv, shutdown, close, abort)."""
        r = self.table.call(self.tcb, self.now, fn, *args)
        self._drain_tx()
        return r

    def send(self, data: bytes) -> None:
        self.call(self.tcb.send, data, self.now)

    def read(self, n: int = -1) -> bytes:
        return self.call(self.tcb.recv, n, self.now)

    def shutdown(self) -> None:
        self.call(self.tcb.shutdown, self.now)

    def close(self, unread: int = 0) -> None:
        self.call(self.tcb.close, self.now, unread)

    def abort(self) -> None:
        self.call(self.tcb.abort, self.now)

    @property
    def state(self) -> State:
        """The state of the connection under test, TIME_WAIT records included."""
        if self.key in self.table.est:
            return self.table.est[self.key].state
        if self.key in self.table.tw:
            return State.TIME_WAIT
        return State.CLOSED

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
        assert self.tcb.state == State.ESTABLISHED
        self.events.clear()
        return self.tcb
