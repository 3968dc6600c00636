"""`ustack ladder`: the ladder (sequence) diagram of one connection.

The two hosts are columns, time runs downward, and each segment is an arrow labelled
with its flags, relative seq and ack, and length, like the textbook pictures of the
handshake and the four-way close (RFC 9293 Figures 7 and 12-14). Next to each column is
the state that host entered and where: the sender's state changes where an arrow
leaves, the receiver's where it arrives. Retransmissions are dashed and marked, and the
TIME_WAIT interval is a bar along the column of the host that holds it.

Sources:
  --pcap FILE   a capture (ustack capture, serve --pcap, tcpdump -w). Both hosts'
                states are inferred from the segments, as an observer on the wire
                would (the capture point is the stack's TUN, so send and arrival times
                are the same instant; the arrows are drawn sloped for legibility).
  --live        subscribe to the daemon's trace (segments and state changes) and draw
                the first connection matching FILTER that starts from now on, once
                ustack's side of it is CLOSED (after TIME_WAIT, if it holds one) or on
                Ctrl-C / --timeout. ustack's side shows its real states; the peer's
                are inferred.

Output: --svg FILE (hand-written SVG, text XML-escaped; arrows are <g class="segment">
with data-flags/data-seq/data-ack/data-len/data-retrans attributes, states are <text
class="state">), or --text for a terminal.

The vertical gap between arrows grows with the logarithm of the time between them, so
a 200 ms retransmission timeout and a 60 s TIME_WAIT are both visible on one page; the
time since the first segment is written at the left.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import time
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from .. import ssfilter as flt
from ..wire.tcp import flag_string
from .client import Control, ToolError, add_control_args, fail
from .segments import label as seg_label

MASK = 0xFFFFFFFF


# ---------------------------------------------------------------------- model


@dataclass(slots=True)
class Seg:
    t: float
    src: str
    dst: str
    flags: str
    seq: int  # absolute
    ack: int
    length: int
    win: int
    rseq: int = 0  # relative, filled in by build()
    rack: int | None = None
    retrans: bool = False
    lost: bool = False  # retransmitted before anything acknowledged it: never arrived

    @property
    def space(self) -> int:
        """Sequence space used: data plus SYN and FIN."""
        return self.length + ("S" in self.flags) + ("F" in self.flags)

    def text(self) -> str:
        return seg_label(self.flags, self.rseq, self.rack, self.length)


@dataclass(slots=True)
class Mark:
    """A host entered `state`: at row `row`, at the arrow's start or its arrival."""

    host: str
    state: str
    t: float
    row: int  # index into Ladder.rows
    at: str  # "start" | "arrival" | "row" (a row of its own)
    cause: str = ""


@dataclass(slots=True)
class Row:
    t: float
    seg: Seg | None = None  # None: a row for a state change that no segment caused
    note: str = ""


@dataclass
class Ladder:
    client: str  # the host that sent the first SYN (left column)
    server: str
    rows: list[Row] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    initial: dict[str, str] = field(default_factory=dict)
    stack: str | None = None  # which host is ustack, if known
    source: str = ""

    @property
    def t0(self) -> float:
        return self.rows[0].t if self.rows else 0.0


@dataclass(slots=True)
class _Side:
    state: str = "CLOSED"
    isn: int | None = None
    snd_max: int = 0  # relative
    fin_end: int | None = None  # relative sequence number just after our FIN
    peer_fin: bool = False


# ---------------------------------------------------------------------- inference


def build(segs: list[Seg], *, stack: str | None = None,
          real: list[dict] | None = None, source: str = "") -> Ladder:
    """Lay out one connection's segments and states.

    `real`: trace state events for `stack`'s side (live mode); they replace the inferred
    states of that side."""
    if not segs:
        raise ToolError("no segments to draw")
    first_syn = next((s for s in segs if "S" in s.flags and "." not in s.flags), None)
    client = first_syn.src if first_syn else segs[0].src
    server = first_syn.dst if first_syn else segs[0].dst
    lad = Ladder(client, server, stack=stack, source=source)
    sides = {client: _Side(), server: _Side("LISTEN" if first_syn else "CLOSED")}
    if not first_syn:
        # Joined mid-connection: assume both established.
        sides[client].state = sides[server].state = "ESTABLISHED"
    lad.initial = {h: s.state for h, s in sides.items()}

    def enter(host: str, state: str, row: int, at: str, t: float, cause: str = "") -> None:
        side = sides[host]
        if side.state != state:
            side.state = state
            lad.marks.append(Mark(host, state, t, row, at, cause))

    segs = [s for s in sorted(segs, key=lambda s: s.t) if s.src in sides and s.dst in sides]
    for seg in segs:  # relative numbers, retransmissions
        tx, rx = sides[seg.src], sides[seg.dst]
        if "S" in seg.flags and tx.isn is not None and seg.seq != tx.isn:
            # A new incarnation of the four-tuple (a SYN into TIME_WAIT, RFC 6191, or
            # a reused port): numbering and the close starts over for both sides.
            tx.snd_max = 0
            if "." not in seg.flags:
                rx.snd_max, rx.isn = 0, None
        if "S" in seg.flags or tx.isn is None:
            tx.isn = seg.seq
        seg.rseq = (seg.seq - tx.isn) & MASK
        seg.rack = (seg.ack - rx.isn) & MASK if rx.isn is not None and "." in seg.flags else None
        seg.retrans = seg.space > 0 and seg.rseq < tx.snd_max
        tx.snd_max = max(tx.snd_max, seg.rseq + seg.space)
    _mark_lost(segs)
    for seg in segs:  # states
        tx, rx = sides[seg.src], sides[seg.dst]
        end = seg.rseq + seg.space
        row = len(lad.rows)
        lad.rows.append(Row(seg.t, seg))
        f = seg.flags
        if seg.lost:
            # Never arrived: only what sending it says about the sender counts.
            if "S" in f and "." not in f and tx.state in ("CLOSED", "LISTEN", "TIME_WAIT"):
                enter(seg.src, "SYN_SENT", row, "start", seg.t, "sent " + seg.text())
            if "F" in f and tx.fin_end is None:
                tx.fin_end = end
                nxt = {"ESTABLISHED": "FIN_WAIT_1", "SYN_RECEIVED": "FIN_WAIT_1",
                       "CLOSE_WAIT": "LAST_ACK"}.get(tx.state)
                if nxt:
                    enter(seg.src, nxt, row, "start", seg.t, "sent " + seg.text())
            continue
        if "R" in f:
            if tx.state not in ("CLOSED", "LISTEN"):
                enter(seg.src, "CLOSED", row, "start", seg.t, "sent " + seg.text())
            if rx.state not in ("CLOSED", "LISTEN"):
                enter(seg.dst, "CLOSED", row, "arrival", seg.t, "on " + seg.text())
            continue
        if "S" in f:  # a (new) incarnation: its close has not begun
            tx.fin_end, tx.peer_fin = None, False
            if "." not in f:
                rx.fin_end, rx.peer_fin = None, False
        # The sender: what sending this segment says about it.
        why = "sent " + seg.text()
        if "S" in f and "." not in f and tx.state in ("CLOSED", "LISTEN", "TIME_WAIT"):
            enter(seg.src, "SYN_SENT", row, "start", seg.t, why)
        elif "S" in f and "." in f and tx.state in ("CLOSED", "LISTEN", "SYN_SENT",
                                                      "TIME_WAIT"):
            enter(seg.src, "SYN_RECEIVED", row, "start", seg.t, why)
        if "F" in f and tx.fin_end is None:
            tx.fin_end = end
            if tx.state in ("ESTABLISHED", "SYN_RECEIVED"):
                enter(seg.src, "FIN_WAIT_1", row, "start", seg.t, why)
            elif tx.state == "CLOSE_WAIT":
                enter(seg.src, "LAST_ACK", row, "start", seg.t, why)
        # The receiver (RFC 9293 3.10.7.4 order: the ACK first, then the FIN).
        why = "on " + seg.text()
        if "." in f and seg.rack is not None:
            if rx.state == "SYN_SENT" and "S" in f:
                enter(seg.dst, "ESTABLISHED", row, "arrival", seg.t, why)
            elif rx.state == "SYN_RECEIVED" and seg.rack >= 1:
                enter(seg.dst, "ESTABLISHED", row, "arrival", seg.t, why)
            if rx.fin_end is not None and seg.rack >= rx.fin_end:
                nxt = {"FIN_WAIT_1": "FIN_WAIT_2", "CLOSING": "TIME_WAIT",
                       "LAST_ACK": "CLOSED"}.get(rx.state)
                if nxt:
                    enter(seg.dst, nxt, row, "arrival", seg.t, why)
        if "F" in f and not rx.peer_fin:
            rx.peer_fin = True
            nxt = {"ESTABLISHED": "CLOSE_WAIT", "FIN_WAIT_1": "CLOSING",
                   "FIN_WAIT_2": "TIME_WAIT", "SYN_RECEIVED": "CLOSE_WAIT"}.get(rx.state)
            if nxt:
                enter(seg.dst, nxt, row, "arrival", seg.t, why)
    if real is not None and stack is not None:
        _use_real_states(lad, stack, real)
    return lad


def _mark_lost(segs: list[Seg]) -> None:
    """A segment that was sent again, with nothing from the other side acknowledging it
    in between, most likely never arrived: that is why the sender's timer fired. (True
    for a capture taken at the sender, as ustack's is; a capture at the receiver would
    not contain the lost segment at all.)"""
    for i, seg in enumerate(segs):
        if seg.space == 0 or "R" in seg.flags:
            continue
        for later in segs[i + 1:]:
            if later.src == seg.dst and later.rack is not None and later.rack > seg.rseq:
                break  # acknowledged: it arrived
            if later.src == seg.src and later.retrans and later.rseq == seg.rseq \
                    and later.flags == seg.flags:
                seg.lost = True
                break


def _use_real_states(lad: Ladder, stack: str, events: list[dict]) -> None:
    """Replace the inferred marks of `stack` by the daemon's state events, each anchored
    to the segment that caused it (the last one received before it) or to the next
    segment it sent, or on a row of its own (a timer: 2MSL, retransmission timeout)."""
    lad.marks = [m for m in lad.marks if m.host != stack]
    if events:
        lad.initial[stack] = "LISTEN" if events[0]["old"] == "CLOSED" and \
            events[0]["new"] == "SYN_RECEIVED" else events[0]["old"]
    rows = lad.rows
    for ev in events:
        t = ev["t"]
        cause = ev.get("cause", "")
        before = [i for i, r in enumerate(rows) if r.t <= t and r.seg is not None]
        after = [i for i, r in enumerate(rows) if r.t >= t and r.seg is not None]
        anchor: tuple[int, str] | None = None
        if cause.startswith("on ") and before and rows[before[-1]].seg.dst == stack:
            anchor = (before[-1], "arrival")
        elif after and rows[after[0]].seg.src == stack and rows[after[0]].t - t < 0.05 \
                and not cause.startswith(("2MSL", "tcp_fin_timeout")):
            anchor = (after[0], "start")
        if anchor is None:  # a row of its own, in time order
            idx = next((i for i, r in enumerate(rows) if r.t > t), len(rows))
            rows.insert(idx, Row(t, None, cause))
            for m in lad.marks:
                if m.row >= idx:
                    m.row += 1
            anchor = (idx, "row")
        lad.marks.append(Mark(stack, ev["new"], t, anchor[0], anchor[1], cause))


# ---------------------------------------------------------------------- sources


def connections_from_pcap(path: str) -> list[list[Seg]]:
    """Every TCP connection in a pcap file, in order of first appearance. A SYN on a
    four-tuple whose previous incarnation is over starts a new connection."""
    import dpkt

    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ToolError(f"{path}: {exc.strerror}") from None
    with f:
        try:
            reader = dpkt.pcap.Reader(f)
        except (ValueError, dpkt.dpkt.NeedData) as exc:
            raise ToolError(f"{path}: not a pcap file ({exc})") from None
        link = reader.datalink()
        conns: list[list[Seg]] = []
        current: dict[frozenset, tuple[list[Seg], int | None]] = {}
        try:
            for ts, buf in reader:
                ip = _ip_of(link, buf)
                if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
                    continue
                tcp = ip.data
                src = f"{socket.inet_ntoa(ip.src)}:{tcp.sport}"
                dst = f"{socket.inet_ntoa(ip.dst)}:{tcp.dport}"
                seg = Seg(ts, src, dst, flag_string(tcp.flags), tcp.seq, tcp.ack,
                          len(tcp.data), tcp.win)
                key = frozenset((src, dst))
                entry = current.get(key)
                syn = "S" in seg.flags and "." not in seg.flags
                if entry is None or (syn and entry[1] is not None and entry[1] != seg.seq):
                    lst: list[Seg] = []
                    conns.append(lst)
                    entry = (lst, seg.seq if syn else None)
                    current[key] = entry
                elif syn and entry[1] is None:
                    current[key] = entry = (entry[0], seg.seq)
                entry[0].append(seg)
        except (ValueError, dpkt.dpkt.NeedData):
            pass  # a truncated last record (capture still running): use what we have
    return conns


def _ip_of(link: int, buf: bytes):
    import dpkt

    try:
        if link in (101, 12, 14, 228):  # LINKTYPE_RAW, DLT_RAW (12/14), LINKTYPE_IPV4
            if not buf or buf[0] >> 4 != 4:
                return None
            return dpkt.ip.IP(buf)
        if link == 1:
            eth = dpkt.ethernet.Ethernet(buf)
            return eth.data if isinstance(eth.data, dpkt.ip.IP) else None
        if link == 113:
            sll = dpkt.sll.SLL(buf)
            return sll.data if isinstance(sll.data, dpkt.ip.IP) else None
    except (dpkt.dpkt.UnpackError, ValueError):
        return None
    return None


def matching(conns: list[list[Seg]], f: flt.Filter) -> list[list[Seg]]:
    """The connections whose first segment matches `f`; ToolError if there is none."""
    found = [c for c in conns if c and f.matches(flt.split_endpoint(c[0].src),
                                                 flt.split_endpoint(c[0].dst))]
    if not found:
        raise ToolError(f"no TCP connection matches {f}" if f else "no TCP connection")
    return found


def pick(conns: list[list[Seg]], f: flt.Filter, index: int, who: str = "ustack ladder"
         ) -> list[Seg]:
    found = matching(conns, f)
    if index >= len(found):
        raise ToolError(f"only {len(found)} connections match {f}")
    if len(found) > 1:
        print(f"{who}: {len(found)} connections match; drawing number {index} "
              "(pick another with --index N)", file=sys.stderr)
    return found[index]


def ladder_of(segs: list[Seg], stack_spec: str | None, source: str) -> Ladder:
    """build() for segments from a capture; `stack_spec` (ADDR or ADDR:PORT) names the
    host that is ustack, for the labels only."""
    stack = None
    if stack_spec:
        hosts = {segs[0].src, segs[0].dst}
        stack = next((h for h in hosts if h == stack_spec
                      or h.rpartition(":")[0] == stack_spec), None)
    return build(segs, stack=stack, source=source)


def from_pcap(path: str, f: flt.Filter, index: int = 0, stack_spec: str | None = None,
              who: str = "ustack ladder") -> Ladder:
    """The ladder of the `index`th connection in the pcap file matching `f`."""
    return ladder_of(pick(connections_from_pcap(path), f, index, who), stack_spec,
                     f"from {path}")


def write(lad: Ladder, text: bool, svg: str | None) -> None:
    """Text to stdout, or SVG to the file `svg` ('-': stdout)."""
    if text:
        sys.stdout.write(render_text(lad))
    elif svg == "-":
        sys.stdout.write(render_svg(lad))
    elif svg:
        with open(svg, "w", encoding="utf-8") as fh:
            fh.write(render_svg(lad))


def from_live(ctl: Control, f: flt.Filter, timeout: float | None
              ) -> tuple[list[Seg], list[dict], str | None]:
    """Collect the first matching connection from the trace stream (see module doc)."""
    from . import trace

    segs: list[Seg] = []
    events: list[dict] = []
    conn: frozenset | None = None
    stack: str | None = None
    deadline = None if timeout is None else time.monotonic() + timeout
    ctl.sock.settimeout(timeout)
    try:
        trace.subscribe(ctl, str(f) if f else "", True)
        print("ustack ladder: waiting for a connection"
              f"{' matching ' + str(f) if f else ''} (Ctrl-C draws what was seen)",
              file=sys.stderr, flush=True)
        for ev in trace.events(ctl):
            if ev["type"] == "segment":
                key = frozenset((ev["src"], ev["dst"]))
                if conn is None:
                    if "S" in ev["flags"] and "." not in ev["flags"]:
                        conn = key
                    else:
                        continue
                if key != conn:
                    continue
                segs.append(Seg(ev["t"], ev["src"], ev["dst"], ev["flags"], ev["seq"],
                                ev["ack"], ev["len"], ev["win"]))
                if stack is None:
                    stack = ev["src"] if ev["dir"] == "out" else ev["dst"]
            elif ev["type"] == "state":
                key = frozenset((ev["local"], ev["peer"]))
                if conn is None and ev["old"] == "CLOSED":
                    conn = key
                if key != conn:
                    continue
                stack = ev["local"]
                events.append(ev)
                if ev["new"] == "CLOSED":
                    break
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ctl.sock.settimeout(left)
    except TimeoutError:
        pass
    except KeyboardInterrupt:
        pass
    return segs, events, stack


# ---------------------------------------------------------------------- layout


SLOPE = 16  # px an arrow drops between the two columns
ROW = 36  # px between arrows at least


def _gap(dt: float) -> float:
    return ROW + min(70.0, 16.0 * math.log10(1.0 + max(dt, 0.0) * 1000.0))


def _positions(lad: Ladder, top: float) -> list[float]:
    ys = []
    y = top
    prev = None
    for r in lad.rows:
        if prev is not None:
            y += _gap(r.t - prev)
        ys.append(y)
        prev = r.t
    return ys


def _mark_y(m: Mark, ys: list[float]) -> float:
    y = ys[m.row]
    return y + SLOPE if m.at == "arrival" else y


def _time_wait_spans(lad: Ladder, ys: list[float], bottom: float
                     ) -> list[tuple[str, float, float, float | None]]:
    """(host, y start, y end, seconds or None if still running at the end)."""
    spans = []
    for host in (lad.client, lad.server):
        marks = sorted((m for m in lad.marks if m.host == host), key=lambda m: (m.row, m.t))
        for i, m in enumerate(marks):
            if m.state != "TIME_WAIT":
                continue
            end = next((n for n in marks[i + 1:] if n.state != "TIME_WAIT"), None)
            if end is None:
                spans.append((host, _mark_y(m, ys), bottom, None))
            else:
                spans.append((host, _mark_y(m, ys), _mark_y(end, ys), end.t - m.t))
    return spans


def _title(lad: Ladder, host: str) -> str:
    role = "client" if host == lad.client else "server"
    extra = ", ustack" if host == lad.stack else ""
    return f"{host} ({role}{extra})"


def render_svg(lad: Ladder) -> str:
    width = 980
    xl, xr = 330, 770
    top = 110
    ys = _positions(lad, top)
    bottom = (ys[-1] if ys else top) + SLOPE + 70
    height = int(bottom + 40)
    t0 = lad.t0
    out: list[str] = []
    w = out.append
    w('<?xml version="1.0" encoding="UTF-8"?>')
    w(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
      f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans Mono, monospace" '
      f'font-size="12">')
    w(f"<title>{escape(f'{lad.client} - {lad.server}')}</title>")
    w('<defs>'
      '<marker id="head" markerWidth="10" markerHeight="8" refX="9" refY="4" '
      'orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="#1f4e9a"/></marker>'
      '<marker id="head-rtx" markerWidth="10" markerHeight="8" refX="9" refY="4" '
      'orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="#c0392b"/></marker>'
      '<marker id="head-rst" markerWidth="10" markerHeight="8" refX="9" refY="4" '
      'orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="#8e44ad"/></marker>'
      '</defs>')
    w(f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>')
    if lad.source:
        w(f'<text x="10" y="20" fill="#666">{escape(lad.source)}</text>')
    for host, x in ((lad.client, xl), (lad.server, xr)):
        w(f'<g class="host" data-host={quoteattr(host)}>'
          f'<text x="{x}" y="50" text-anchor="middle" font-weight="bold">'
          f'{escape(_title(lad, host))}</text>'
          f'<line x1="{x}" y1="{top - 30}" x2="{x}" y2="{bottom}" stroke="#333" '
          f'stroke-width="2"/></g>')
        anchor, dx = ("end", -10) if x == xl else ("start", 10)
        init = lad.initial.get(host, "")
        if init:
            w(f'<text class="state initial" data-host={quoteattr(host)} x="{x + dx}" '
              f'y="{top - 36}" text-anchor="{anchor}" fill="#555">{escape(init)}</text>')
    w(f'<text x="10" y="{top - 36}" fill="#666">time</text>')
    for host, y1, y2, secs in _time_wait_spans(lad, ys, bottom - 10):
        x = xl if host == lad.client else xr
        bx = x - 7 if x == xl else x + 1
        note = f"2MSL: {secs:.1f} s" if secs is not None else "2MSL: not over"
        tx = x - 12 if x == xl else x + 12
        anchor = "end" if x == xl else "start"
        ym = max((y1 + y2) / 2, y1 + 22)
        seconds = "" if secs is None else f' data-seconds="{secs:.3f}"'
        w(f'<g class="time-wait" data-host={quoteattr(host)}{seconds}>'
          f'<rect x="{bx}" y="{y1:.1f}" width="6" height="{max(y2 - y1, 2):.1f}" '
          f'fill="#e67e22" opacity="0.7"/>'
          f'<text x="{tx}" y="{ym:.1f}" text-anchor="{anchor}" fill="#b35900" '
          f'font-style="italic">TIME_WAIT</text>'
          f'<text x="{tx}" y="{ym + 14:.1f}" text-anchor="{anchor}" fill="#b35900" '
          f'font-style="italic">{escape(note)}</text></g>')
    for i, r in enumerate(lad.rows):
        y = ys[i]
        w(f'<text class="time" x="10" y="{y + 4:.1f}" fill="#666">'
          f'+{r.t - t0:.3f}s</text>')
        s = r.seg
        if s is None:
            w(f'<text class="note" x="{(xl + xr) / 2}" y="{y + 4:.1f}" text-anchor="middle" '
              f'fill="#777" font-style="italic">{escape(r.note)}</text>')
            continue
        x1, x2 = (xl, xr) if s.src == lad.client else (xr, xl)
        color, head = "#1f4e9a", "head"
        if "R" in s.flags:
            color, head = "#8e44ad", "head-rst"
        if s.retrans:
            color, head = "#c0392b", "head-rtx"
        dash = ' stroke-dasharray="6,4"' if s.retrans else ""
        text = ("retransmission: " if s.retrans else "") + s.text() + \
            (" (lost)" if s.lost else "")
        mid = (x1 + x2) / 2
        # A lost segment's arrow stops two thirds of the way, at a cross.
        x2e = x1 + (x2 - x1) * 2 / 3 if s.lost else x2
        y2e = y + SLOPE * 2 / 3 if s.lost else y + SLOPE
        marker = "" if s.lost else f' marker-end="url(#{head})"'
        cross = (f'<path class="lost" d="M{x2e - 5:.1f},{y2e - 5:.1f} l10,10 m0,-10 l-10,10" '
                 f'stroke="#c0392b" stroke-width="2"/>') if s.lost else ""
        w(f'<g class="segment" data-src={quoteattr(s.src)} data-dst={quoteattr(s.dst)} '
          f'data-flags={quoteattr(s.flags)} data-seq="{s.rseq}" '
          f'data-ack="{"" if s.rack is None else s.rack}" data-len="{s.length}" '
          f'data-retrans="{int(s.retrans)}" data-lost="{int(s.lost)}" '
          f'data-t="{r.t - t0:.6f}">'
          f'<line x1="{x1}" y1="{y:.1f}" x2="{x2e:.1f}" y2="{y2e:.1f}" stroke="{color}" '
          f'stroke-width="1.5"{dash}{marker}/>{cross}'
          f'<text class="label" x="{mid}" y="{y + SLOPE / 2 - 5:.1f}" text-anchor="middle" '
          f'fill="{color}" stroke="white" stroke-width="3" paint-order="stroke">'
          f'{escape(text)}</text></g>')
    grouped: dict[tuple[str, int, str], list[Mark]] = {}
    for m in lad.marks:
        grouped.setdefault((m.host, m.row, m.at), []).append(m)
    for (host, _row, _at), ms in grouped.items():
        x = xl if host == lad.client else xr
        anchor, dx = ("end", -10) if x == xl else ("start", 10)
        y = _mark_y(ms[0], ys)
        text = " \u2192 ".join(m.state for m in ms)
        cause = "; ".join(m.cause for m in ms if m.cause)
        w(f'<text class="state" data-host={quoteattr(host)} data-state={quoteattr(ms[-1].state)} '
          f'data-states={quoteattr(" ".join(m.state for m in ms))} '
          f'x="{x + dx}" y="{y + 4:.1f}" text-anchor="{anchor}" font-weight="bold" '
          f'fill="#1e7d32">{escape(text)}<title>{escape(cause)}</title></text>')
    w("</svg>")
    return "\n".join(out) + "\n"


def render_text(lad: Ladder) -> str:
    mid = 50
    left_w = 14
    t0 = lad.t0
    lines = [f"{'':9}  {lad.client:>{left_w}} {'':{mid}} {lad.server}",
             f"{'':9}  {('(client' + (', ustack' if lad.client == lad.stack else '') + ')'):>{left_w}}"
             f" {'':{mid}} (server{', ustack' if lad.server == lad.stack else ''})",
             f"{'':9}  {lad.initial.get(lad.client, ''):>{left_w}} |{'':{mid}}| "
             f"{lad.initial.get(lad.server, '')}"]
    by_row: dict[tuple[int, str], list[Mark]] = {}
    for m in lad.marks:
        by_row.setdefault((m.row, m.host), []).append(m)
    in_tw = {lad.client: False, lad.server: False}
    for i, r in enumerate(lad.rows):
        lm = by_row.get((i, lad.client), [])
        rm = by_row.get((i, lad.server), [])
        lstate = " -> ".join(m.state for m in lm)
        rstate = " -> ".join(m.state for m in rm)
        s = r.seg
        if s is None:
            body = f" {r.note} ".center(mid, " ")
        else:
            text = ("rtx " if s.retrans else "") + s.text()
            fill = "~" if s.retrans else "-"
            if s.src == lad.client:
                body = f"{fill}{fill} {text} ".ljust(mid - 1, fill)[:mid - 1] + ">"
                if s.lost:
                    body = body[:mid * 2 // 3] + " X" + " " * (mid - mid * 2 // 3 - 2)
            else:
                body = "<" + f" {text} {fill}{fill}".rjust(mid - 1, fill)[-(mid - 1):]
                if s.lost:
                    body = " " * (mid - mid * 2 // 3 - 2) + "X " + body[-(mid * 2 // 3):]
        lbar = ":" if in_tw[lad.client] and not lm else "|"
        rbar = ":" if in_tw[lad.server] and not rm else "|"
        lines.append(f"{'+' + format(r.t - t0, '.3f') + 's':>9}  {lstate:>{left_w}} "
                     f"{lbar}{body}{rbar} {rstate}".rstrip())
        for host, ms in ((lad.client, lm), (lad.server, rm)):
            if ms:
                in_tw[host] = ms[-1].state == "TIME_WAIT"
    for host, tw in in_tw.items():
        if tw:
            lines.append(f"{'':9}  ({host} still in TIME_WAIT at the end: 2MSL not over)")
    lines.append("")
    lines.append("':' marks a column in TIME_WAIT; '~~' and 'rtx' a retransmission; "
                 "'X' a segment lost on the way.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ladder", help="draw the ladder diagram of one connection",
                       description="The ladder (sequence) diagram of one connection, from "
                                   "a pcap file or the live trace, as SVG or text.")
    add_control_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pcap", metavar="FILE", help="read the segments from a pcap file")
    src.add_argument("--live", action="store_true",
                     help="wait for the next matching connection on the running daemon")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--svg", metavar="FILE", help="write an SVG picture to FILE ('-': stdout)")
    out.add_argument("--text", action="store_true", help="print a text diagram")
    p.add_argument("--index", type=int, default=0, metavar="N",
                   help="with --pcap: draw the Nth matching connection (default 0)")
    p.add_argument("--stack", metavar="ADDR[:PORT]", default=None,
                   help="with --pcap: which host is ustack (only for the labels)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="with --live: draw what was seen after this long")
    p.add_argument("filter", nargs="*", metavar="FILTER",
                   help="host ADDR, port N, ADDR:PORT (all must match)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        f = flt.parse(args.filter)
        if args.pcap:
            lad = from_pcap(args.pcap, f, args.index, args.stack)
        else:
            with Control.from_args(args, timeout=None) as ctl:
                segs, events, stack = from_live(ctl, f, args.timeout)
            if not segs:
                raise ToolError("no connection was seen")
            lad = build(segs, stack=stack, real=events, source="live trace")
        write(lad, args.text, args.svg)
    except (ToolError, ValueError) as exc:
        return fail("ladder", str(exc))
    except OSError as exc:
        return fail("ladder", f"{exc.filename or ''}: {exc.strerror or exc}")
    return 0
