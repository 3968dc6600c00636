"""Live ladder diagrams for the connections the dashboard's visitors clicked.

A click asks for `/ustack/ladder/ID.svg`: from then on that connection is *watched*. Its
segments (a tap on the stack, installed only while something is watched, since a tap
costs every frame a copy) and its state changes (the stack's observers, and the
TIME_WAIT table's gone-hook for TIME_WAIT -> CLOSED) are recorded, the same events
`ustack trace` streams, and each request draws them with ustack/tools/ladder.py. The
page asks again every second while the ladder is open, so the picture grows as the
connection closes. A watch ends WATCH_IDLE seconds after the last request; at most
WATCHES connections are watched and SEGMENTS segments kept per watch (the first ones:
a ladder is about the handshake and the close, and a bulk transfer between them
would only be thousands of arrows).

A connection clicked mid-way starts from that moment: ladder.py then assumes both ends
established before the first arrow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from ...control import relative_cause
from ...tcp.state import State
from ...tools import ladder as lad
from ...tools.client import ToolError
from ...wire.ip import ip_to_str
from ...wire.tcp import ParseError, flag_string, parse_tcp

if TYPE_CHECKING:
    from ...aio import Stack
    from ...tcp.events import Cause, StateChanged
    from ...tcp.tcb import Tcb

WATCHES = 8
WATCH_IDLE = 60.0  # seconds
SEGMENTS = 400
EVENTS = 64


@dataclass
class Watch:
    local: str
    peer: str
    since: float
    last_asked: float
    segs: list[lad.Seg] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    dropped: int = 0


class Ladders:
    def __init__(self, stack: Stack, clock=time.time) -> None:
        self.stack = stack
        self.clock = clock
        self.watches: dict[frozenset[str], Watch] = {}
        self._tapping = False

    def close(self) -> None:
        self.watches.clear()
        self._untap()

    # ------------------------------------------------------------------ requests

    def svg(self, local: str, peer: str) -> bytes:
        """The ladder of (local, peer) so far, watching it from now if it was not."""
        key = frozenset((local, peer))
        now = self.clock()
        w = self.watches.get(key)
        if w is None:
            if len(self.watches) >= WATCHES:  # the one asked for least recently goes
                oldest = min(self.watches, key=lambda k: self.watches[k].last_asked)
                del self.watches[oldest]
            w = self.watches[key] = Watch(local, peer, now, now)
            self._tap()
        w.last_asked = now
        return self._render(w).encode()

    def watched(self) -> list[str]:
        return sorted(f"{w.local}-{w.peer}" for w in self.watches.values())

    def expire(self) -> None:
        now = self.clock()
        for key in [k for k, w in self.watches.items() if now - w.last_asked > WATCH_IDLE]:
            del self.watches[key]
        if not self.watches:
            self._untap()

    def _render(self, w: Watch) -> str:
        started = time.strftime("%H:%M:%S", time.localtime(w.since))
        if not w.segs:
            return _note_svg(f"{w.local} - {w.peer}: watching since {started}; "
                             "no segment yet (this picture grows as segments pass)")
        try:
            ladder = lad.build(list(w.segs), stack=w.local, real=list(w.events),
                               source=f"live, watched since {started}")
        except ToolError as exc:
            return _note_svg(str(exc))
        svg = lad.render_svg(ladder)
        if w.dropped:
            svg = svg.replace("</svg>", f"<!-- {w.dropped} later segments not kept -->"
                              "</svg>", 1)
        return svg

    # ------------------------------------------------------------------ recording

    def _tap(self) -> None:
        if not self._tapping:
            self.stack.taps.append(self._frame)
            self._tapping = True

    def _untap(self) -> None:
        if self._tapping:
            if self._frame in self.stack.taps:
                self.stack.taps.remove(self._frame)
            self._tapping = False

    def _frame(self, direction: str, frame: bytes) -> None:
        if len(frame) < 20 or frame[0] >> 4 != 4 or frame[9] != 6:
            return
        ihl = (frame[0] & 15) * 4
        total = min((frame[2] << 8) | frame[3], len(frame))
        try:
            seg = parse_tcp(frame, ihl, total)
        except ParseError:
            return
        src = f"{ip_to_str(frame[12:16])}:{seg.sport}"
        dst = f"{ip_to_str(frame[16:20])}:{seg.dport}"
        w = self.watches.get(frozenset((src, dst)))
        if w is None:
            return
        if len(w.segs) >= SEGMENTS:
            w.dropped += 1
            return
        w.segs.append(lad.Seg(self.clock(), src, dst, flag_string(seg.flags), seg.seq,
                              seg.ack, len(seg.payload), seg.wnd))

    def state(self, tcb: Tcb, ev: StateChanged) -> None:
        if not self.watches:
            return
        local = f"{tcb.local[0]}:{tcb.local[1]}"
        peer = f"{tcb.remote[0]}:{tcb.remote[1]}"
        w = self.watches.get(frozenset((local, peer)))
        if w is not None and len(w.events) < EVENTS:
            w.events.append({"t": self.clock(), "local": local, "peer": peer,
                             "old": ev.old.name, "new": ev.new.name,
                             "cause": relative_cause(tcb, ev.cause),
                             "errno": tcb.error if ev.new == State.CLOSED else 0})

    def tw_gone(self, key: bytes, cause: Cause) -> None:
        if not self.watches:
            return
        local = f"{ip_to_str(key[4:8])}:{(key[10] << 8) | key[11]}"
        peer = f"{ip_to_str(key[0:4])}:{(key[8] << 8) | key[9]}"
        w = self.watches.get(frozenset((local, peer)))
        if w is not None and len(w.events) < EVENTS:
            w.events.append({"t": self.clock(), "local": local, "peer": peer,
                             "old": "TIME_WAIT", "new": "CLOSED",
                             "cause": cause.format(brief=True), "errno": 0})


def _note_svg(text: str) -> str:
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="980" height="40" '
            'class="ladder-note"><text x="8" y="24" font-family="monospace" '
            f'font-size="13">{escape(text)}</text></svg>')
