"""`ustack plot`: one connection's sender, drawn from a recording (ustack/record.py).

On top, the tcptrace-style time-sequence graph: every segment sent as a vertical
stroke from its first to its last sequence number (retransmissions in red, with a
mark), the cumulative ACK as a step line, the receive window's right edge (ACK + the
window the peer offered) above it, and the SACK blocks each ACK reported. Below it, on
the same time axis, what only the sender knows: cwnd, ssthresh and pipe (the bytes it
believes are in flight), then SRTT and RTO. Loss recovery episodes (Linux's
ca_state Recovery, Loss after an RTO, CWR) are shaded across all panels and named;
RTOs, tail loss probes and undos are marked with their names. Every line is labelled
where it ends, in its colour, so no legend is needed.

  ustack plot FILE [--conn ID|FILTER] -o OUT.svg     from `serve --record FILE`
  ustack plot --live FILTER [--duration S] -o OUT.svg  record through the control
                                                       socket for S seconds, then draw
  ustack plot --recording ID -o OUT.svg               what an in-memory recording
                                                       (`ustack record start`) holds so far

The SVG is plain (no script), written by this module.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from .. import ssfilter as flt
from .client import Control, ToolError, add_control_args, fail

WRAP = 1 << 32
VERSION = 1  # of the recording format this reader knows (ustack/record.py VERSION)
# Colours: the data black/blue as tcptrace has them, retransmissions red, ACK green,
# window olive, SACK purple.
C_DATA, C_RTX, C_ACK, C_WIN, C_SACK = "#1f3b99", "#d62728", "#2ca02c", "#a08a00", "#9467bd"
C_CWND, C_SSTH, C_PIPE, C_SRTT, C_RTO = "#1f77b4", "#ff7f0e", "#7f7f7f", "#17becf", "#8c564b"
SHADE = {"Recovery": "#ffd9a8", "Loss": "#f7b6b6", "CWR": "#fff2a8", "Disorder": "#eeeeee"}
EPISODE_NAME = {"Recovery": "fast recovery", "Loss": "RTO recovery", "CWR": "CWR",
                "Disorder": "disorder"}
MARK_COLOUR = {"rto": "#b00000", "tlp": "#6a3d9a", "undo": "#008000"}
MARK_NAME = {"rto": "RTO", "tlp": "TLP", "undo": "undo"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a connection's sender state as SVG",
                       description="A time-sequence graph (tcptrace style) with cwnd, "
                                   "ssthresh, pipe, SRTT and RTO beneath it, from a "
                                   "recording (serve --record FILE) or live.")
    add_control_args(p)
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="a recording written by `ustack serve --record FILE`")
    p.add_argument("--conn", metavar="ID|FILTER", default=None,
                   help="which connection: its id in the recording, or an ss filter "
                        "('port 80', '10.77.0.1:4000'); default: the one with most samples")
    p.add_argument("--live", metavar="FILTER", default=None,
                   help="record connections matching FILTER (ss syntax; '' for all) "
                        "through the control socket, then draw")
    p.add_argument("--recording", metavar="ID", type=int, default=None,
                   help="draw what the daemon's in-memory recording ID (`ustack record "
                        "start`) holds so far")
    p.add_argument("--duration", type=float, default=2.0, metavar="SECONDS",
                   help="with --live: how long to record (default: 2)")
    p.add_argument("-o", "--output", metavar="OUT.svg", required=True,
                   help="the SVG file to write ('-' for stdout)")
    p.add_argument("--width", type=int, default=1100, help="SVG width in px (default 1100)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------- the data


def read_records(lines) -> list[dict]:
    """Parse a recording (an iterable of lines); a torn last line (the daemon is still
    writing) is skipped, any other bad line raises ValueError with its number."""
    out = []
    pending = None
    for n, line in enumerate(lines, 1):
        if pending is not None:
            raise ValueError(f"line {pending[0]}: not JSON: {pending[1][:60]!r}")
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            pending = (n, line)
            continue
        if not isinstance(obj, dict) or "ev" not in obj:
            raise ValueError(f"line {n}: not a recording record")
        out.append(obj)
    if out and out[0].get("ev") == "recording" and out[0].get("version", VERSION) > VERSION:
        raise ValueError(f"recording version {out[0]['version']} is newer than this "
                         f"reader ({VERSION})")
    return out



@dataclass
class Conn:
    """One connection's records, sequence numbers unwrapped, relative to its ISS + 1
    (so the first data byte is 0)."""

    cid: int
    head: dict
    tx: list[tuple[float, int, int, bool]] = field(default_factory=list)  # t, seq, end, rtx
    acks: list[tuple[float, int, int]] = field(default_factory=list)  # t, ack, window edge
    sacks: list[tuple[float, int, int]] = field(default_factory=list)  # t, left, right
    state: list[dict] = field(default_factory=list)  # samples with sender state
    marks: list[tuple[float, str]] = field(default_factory=list)  # t, rto|tlp|undo
    end: float | None = None
    dropped: int = 0

    @property
    def name(self) -> str:
        return f"{self.head.get('local', '?')} -> {self.head.get('peer', '?')}"

    @property
    def samples(self) -> int:
        return len(self.state)

    def episodes(self) -> list[tuple[float, float, str]]:
        """(start, end, ca_state) for every stretch outside Open (Disorder left out:
        it is not a reduction, only a doubt)."""
        out = []
        cur, since = "Open", 0.0
        for s in self.state:
            ca = s.get("ca", "Open")
            if ca != cur:
                if cur not in ("Open", "Disorder"):
                    out.append((since, s["t"], cur))
                cur, since = ca, s["t"]
        if cur not in ("Open", "Disorder") and self.state:
            out.append((since, self.state[-1]["t"], cur))
        return out


class _Unwrap:
    """Sequence numbers mod 2^32 -> a line: each value lands nearest the last one."""

    def __init__(self) -> None:
        self.ref = 0

    def __call__(self, v: int) -> int:
        base = self.ref - (self.ref % WRAP)
        best = min((base - WRAP + v, base + v, base + WRAP + v), key=lambda x: abs(x - self.ref))
        self.ref = best
        return best


def load(records: list[dict]) -> dict[int, Conn]:
    """The connections of a recording; a record without the fields its kind needs
    raises ValueError naming it."""
    conns: dict[int, Conn] = {}
    unwraps: dict[int, _Unwrap] = {}
    for n, r in enumerate(records, 1):
        try:
            _load_one(r, conns, unwraps)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"record {n} ({str(r)[:60]}): bad or missing field "
                             f"{exc}") from None
    return conns


def _load_one(r: dict, conns: dict[int, Conn], unwraps: dict[int, _Unwrap]) -> None:
    ev = r.get("ev")
    cid = r.get("c")
    if ev == "recording" or cid is None:
        return
    if ev == "conn":
        conns[cid] = Conn(cid, r)
        unwraps[cid] = _Unwrap()
        return
    c = conns.get(cid)
    if c is None:
        return  # samples of a connection whose header we never saw
    u = unwraps[cid]
    if ev == "dropped":
        c.dropped += int(r.get("count", 0))
        return
    if ev == "end":
        c.end = float(r["t"])
        return
    if ev == "est":
        c.head.update({k: r[k] for k in ("mss", "sack", "ts", "wscale") if k in r})
        return
    if ev == "ca":
        return
    t = float(r["t"])
    if "una" in r:
        for k in ("cwnd", "pipe", "ssthresh", "srtt", "rto"):
            v = r.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(repr(k))
        s = dict(r)
        s["una"] = u(r["una"]) - 1
        s["nxt"] = u(r["nxt"]) - 1
        c.state.append(s)
    if ev == "tx":
        seq = u(r["seq"]) - 1
        c.tx.append((t, seq, seq + int(r["len"]), bool(r.get("rtx"))))
    elif ev == "ack":
        ack = u(r["ack"]) - 1
        c.acks.append((t, ack, ack + int(r.get("win", 0))))
        for left, right in r.get("sack", ()):
            lo = u(left) - 1
            c.sacks.append((t, lo, lo + ((right - left) % WRAP)))
        u.ref = ack + 1
    elif ev in MARK_NAME:
        c.marks.append((t, ev))


def choose(conns: dict[int, Conn], which: str | None) -> Conn:
    if not conns:
        raise ToolError("the recording holds no connection")
    if which is None:
        return max(conns.values(), key=lambda c: (c.samples, -c.cid))
    if which.isdigit():
        c = conns.get(int(which))
        if c is None:
            raise ToolError(f"no connection {which} in the recording "
                            f"(ids: {', '.join(map(str, sorted(conns)))})")
        return c
    f = flt.parse(which)
    found = [c for c in conns.values()
             if f.matches(flt.split_endpoint(str(c.head.get("local", ":"))),
                          flt.split_endpoint(str(c.head.get("peer", ":"))))]
    if not found:
        raise ToolError(f"no connection matches {which!r}")
    return max(found, key=lambda c: (c.samples, -c.cid))


# ---------------------------------------------------------------------- drawing helpers


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def fmt_bytes(v: float) -> str:
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def fmt_time(v: float) -> str:
    return f"{v:g}s" if v >= 1 or v == 0 else f"{v * 1000:g}ms"


class Panel:
    """A plotting area: data coordinates -> pixels (`log`: a logarithmic y axis)."""

    def __init__(self, x0: float, y0: float, w: float, h: float, t0: float, t1: float,
                 v0: float, v1: float, log: bool = False) -> None:
        self.x0, self.y0, self.w, self.h = x0, y0, w, h
        self.t0, self.t1 = t0, t1 if t1 > t0 else t0 + 1e-3
        self.log = log
        if log:
            v0, v1 = math.log10(v0), math.log10(v1)
        self.v0, self.v1 = v0, v1 if v1 > v0 else v0 + 1

    def x(self, t: float) -> float:
        return self.x0 + (t - self.t0) / (self.t1 - self.t0) * self.w

    def y(self, v: float) -> float:
        if self.log:
            v = math.log10(max(v, 10 ** self.v0))
        return self.y0 + self.h - (v - self.v0) / (self.v1 - self.v0) * self.h

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0 ** e for e in range(math.ceil(self.v0), math.floor(self.v1) + 1)]
        return nice_ticks(self.v0, self.v1, 5)


def _f(v: float) -> str:
    return f"{v:.1f}"


def step_path(p: Panel, pts: list[tuple[float, float | None]]) -> str:
    """A step line (value holds until the next sample); None breaks it. Points that
    change nothing at this resolution are left out."""
    d: list[str] = []
    last_x = last_y = None
    pen = False
    for t, v in pts:
        if v is None:
            pen = False
            continue
        x, y = p.x(t), p.y(v)
        if not pen:
            d.append(f"M{_f(x)} {_f(y)}")
            pen = True
        elif last_y is not None and abs(y - last_y) >= 0.4:
            d.append(f"H{_f(x)}V{_f(y)}")
        elif last_x is not None and x - last_x >= 1:
            d.append(f"H{_f(x)}")
        else:
            continue
        last_x, last_y = x, y
    return "".join(d)


class Svg:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.parts: list[str] = []
        self.labels: list[tuple[float, str, str, str]] = []  # y, text, colour, cls

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(self, x: float, y: float, s: str, *, colour: str = "#222", size: int = 12,
             anchor: str = "start", cls: str = "", weight: str = "normal") -> None:
        c = f' class="{cls}"' if cls else ""
        self.add(f'<text x="{_f(x)}" y="{_f(y)}" fill="{colour}" font-size="{size}" '
                 f'text-anchor="{anchor}" font-weight="{weight}"{c}>{escape(s)}</text>')

    def end_labels(self, x: float, top: float, bottom: float) -> None:
        """The direct labels at the right end of the lines, pushed apart so none
        overlap, within [top, bottom]."""
        labels = sorted(self.labels)
        ys: list[float] = []
        for y, *_ in labels:
            y = min(max(y, top + 10), bottom)
            if ys and y < ys[-1] + 13:
                y = ys[-1] + 13
            ys.append(y)
        over = (ys[-1] - bottom) if ys else 0
        if over > 0:  # pushed past the bottom: shift the lot up
            ys = [max(y - over, top + 10) for y in ys]
        for y, (_, s, colour, cls) in zip(ys, labels, strict=True):
            self.text(x, y + 4, s, colour=colour, cls=cls, weight="bold")
        self.labels.clear()

    def render(self) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
                f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" '
                'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">\n'
                f'<rect width="{self.width}" height="{self.height}" fill="white"/>\n'
                + "\n".join(self.parts) + "\n</svg>\n")


def _axes(svg: Svg, p: Panel, title: str, yfmt, tick_x: bool) -> None:
    svg.add(f'<rect x="{_f(p.x0)}" y="{_f(p.y0)}" width="{_f(p.w)}" height="{_f(p.h)}" '
            'fill="none" stroke="#888" stroke-width="1"/>')
    for v in p.ticks():
        y = p.y(v)
        svg.add(f'<line x1="{_f(p.x0)}" y1="{_f(y)}" x2="{_f(p.x0 + p.w)}" y2="{_f(y)}" '
                'stroke="#eee" stroke-width="1"/>')
        svg.text(p.x0 - 6, y + 4, yfmt(v), size=11, anchor="end", colour="#555")
    for t in nice_ticks(p.t0, p.t1, 8):
        x = p.x(t)
        svg.add(f'<line x1="{_f(x)}" y1="{_f(p.y0 + p.h)}" x2="{_f(x)}" '
                f'y2="{_f(p.y0 + p.h + 4)}" stroke="#888"/>')
        if tick_x:
            svg.text(x, p.y0 + p.h + 17, fmt_time(t), size=11, anchor="middle",
                     colour="#555")
    svg.text(p.x0 + 4, p.y0 - 6, title, size=12, colour="#333", weight="bold")


# ---------------------------------------------------------------------- the graph


def render_svg(c: Conn, width: int = 1100) -> str:
    left, right = 78, 150
    seq_h, cwnd_h, rtt_h, gap, top = 430, 190, 150, 46, 66
    height = top + seq_h + gap + cwnd_h + gap + rtt_h + 40
    svg = Svg(width, height)
    w = width - left - right
    times = [s["t"] for s in c.state] or [0.0]
    t0, t1 = 0.0, max(max(times), c.end or 0.0, 1e-3)
    t0 = min(times)
    head = c.head
    n_tx = len(c.tx)
    n_rtx = sum(1 for x in c.tx if x[3])
    counts = {k: sum(1 for _, m in c.marks if m == k) for k in MARK_NAME}
    title = (f"{c.name}   {head.get('cc', '?')}, mss {head.get('mss', '?')}"
             f"{', SACK' if head.get('sack') else ''}{', timestamps' if head.get('ts') else ''}")
    svg.text(left, 22, title, size=15, weight="bold", cls="title")
    svg.text(left, 40, f"{n_tx} segments sent, {n_rtx} retransmitted; "
             f"{counts['rto']} RTO, {counts['tlp']} TLP, {counts['undo']} undo"
             + (f"; {c.dropped} samples dropped" if c.dropped else ""),
             size=12, colour="#444", cls="summary")

    # --- the time-sequence panel
    lo = [x[1] for x in c.tx] + [a[1] for a in c.acks]
    hi = [x[2] for x in c.tx] + [a[2] for a in c.acks]
    v0, v1 = (min(lo), max(hi)) if lo else (0, 1)
    pad = (v1 - v0) * 0.03 or 1
    ps = Panel(left, top, w, seq_h, t0, t1, v0 - pad, v1 + pad)
    cw_max = max([s.get("cwnd") or 0 for s in c.state]
                 + [s.get("pipe") or 0 for s in c.state]
                 + [s.get("ssthresh") or 0 for s in c.state if s.get("ssthresh")] + [1])
    cw_cap = max([s.get("cwnd") or 0 for s in c.state] + [s.get("pipe") or 0 for s in c.state]
                 + [1]) * 1.6  # an ssthresh far above cwnd would flatten everything
    pc = Panel(left, top + seq_h + gap, w, cwnd_h, t0, t1, 0, min(cw_max, cw_cap) * 1.08)
    # Log scale: on a LAN the SRTT is a fraction of a millisecond and the RTO 200 ms.
    rtt_vals = [v * 1000 for s in c.state for v in (s.get("srtt"), s.get("rto")) if v]
    lo_ms = 10 ** math.floor(math.log10(max(min(rtt_vals, default=1.0), 0.01)))
    pr = Panel(left, top + seq_h + gap + cwnd_h + gap, w, rtt_h, t0, t1, lo_ms,
               max(max(rtt_vals, default=1.0) * 1.5, lo_ms * 10), log=True)

    # Recovery episodes, shaded through all three panels, named on top where there is
    # room for the name (the count in the corner says how many there were).
    episodes = c.episodes()
    named_until = -1e9
    for a, b, ca in episodes:
        xa, xb = ps.x(a), max(ps.x(b), ps.x(a) + 2)
        for p in (ps, pc, pr):
            svg.add(f'<rect class="episode episode-{ca}" x="{_f(xa)}" y="{_f(p.y0)}" '
                    f'width="{_f(xb - xa)}" height="{_f(p.h)}" fill="{SHADE.get(ca, "#eee")}" '
                    'opacity="0.8"/>')
        name = EPISODE_NAME.get(ca, ca)
        if xa > named_until:
            svg.text(xa + 2, ps.y0 + 13, name, size=11, colour="#8a4b00",
                     cls="episode-label")
            named_until = xa + 7 * len(name) + 8
    kinds = sorted({ca for _, _, ca in episodes})
    if episodes:
        svg.text(left + w, 40, ", ".join(
            f"{sum(1 for e in episodes if e[2] == k)} {EPISODE_NAME.get(k, k)}"
            for k in kinds) + " (shaded)", size=12, anchor="end", colour="#8a4b00",
            cls="episode-count")

    _axes(svg, ps, "sequence number (bytes sent, relative)", fmt_bytes, False)
    _axes(svg, pc, "cwnd, ssthresh, pipe (bytes)", fmt_bytes, False)
    _axes(svg, pr, "SRTT and RTO (ms, log scale)", lambda v: f"{v:g}", True)
    svg.text(left + w / 2, height - 8, "time since the connection began", size=12,
             anchor="middle", colour="#444")

    # Window edge and ACK line (steps), SACK blocks, then the segments.
    if c.acks:
        svg.add(f'<path class="rwnd-line" d="{step_path(ps, [(t, e) for t, _, e in c.acks])}" '
                f'fill="none" stroke="{C_WIN}" stroke-width="1.3"/>')
        svg.add(f'<path class="ack-line" d="{step_path(ps, [(t, a) for t, a, _ in c.acks])}" '
                f'fill="none" stroke="{C_ACK}" stroke-width="1.5"/>')
        t_last, a_last, e_last = c.acks[-1]
        svg.labels.append((ps.y(e_last), "receive window", C_WIN, "label-rwnd"))
        svg.labels.append((ps.y(a_last), "ACK", C_ACK, "label-ack"))
    if c.sacks:
        d = "".join(f"M{_f(ps.x(t))} {_f(ps.y(a))}V{_f(min(ps.y(b), ps.y(a) - 1.5))}"
                    for t, a, b in c.sacks)
        svg.add(f'<path class="sack" d="{d}" stroke="{C_SACK}" stroke-width="2.5" '
                'fill="none"/>')
        t, a, b = c.sacks[-1]
        svg.labels.append((ps.y(b), "SACK blocks", C_SACK, "label-sack"))
    new = [x for x in c.tx if not x[3]]
    rtx = [x for x in c.tx if x[3]]
    if new:
        d = "".join(f"M{_f(ps.x(t))} {_f(ps.y(s))}V{_f(min(ps.y(e), ps.y(s) - 1))}"
                    for t, s, e, _ in new)
        svg.add(f'<path class="seq-new" d="{d}" stroke="{C_DATA}" stroke-width="1.2" '
                'fill="none"/>')
        svg.labels.append((ps.y(new[-1][2]), "data sent", C_DATA, "label-data"))
    if rtx:
        d = "".join(f"M{_f(ps.x(t))} {_f(ps.y(s))}V{_f(min(ps.y(e), ps.y(s) - 1))}"
                    for t, s, e, _ in rtx)
        svg.add(f'<path class="seq-rtx" d="{d}" stroke="{C_RTX}" stroke-width="2" fill="none"/>')
        for t, s, e, _ in rtx:
            svg.add(f'<circle class="rtx" cx="{_f(ps.x(t))}" cy="{_f(ps.y((s + e) / 2))}" '
                    f'r="3.2" fill="none" stroke="{C_RTX}" stroke-width="1.3"/>')
        t, s, e, _ = rtx[0]
        svg.text(ps.x(t) + 6, ps.y(e) - 4, "retransmission", colour=C_RTX, size=11,
                 cls="label-rtx-first", weight="bold")
        svg.labels.append((ps.y(rtx[-1][2]), f"retransmitted ({len(rtx)})", C_RTX,
                           "label-rtx"))
    svg.end_labels(left + w + 8, ps.y0, ps.y0 + ps.h)

    # Sender state: cwnd, ssthresh, pipe; SRTT and RTO.
    st = c.state
    # pipe first and faint: it swings with every ACK and segment and would hide the
    # window it moves under.
    series = (
        (pc, "pipe", C_PIPE, "pipe", 1.0, "1", ' stroke-opacity="0.55"'),
        (pc, "ssthresh", C_SSTH, "ssthresh", 1.0, "1.6", ' stroke-dasharray="6 3"'),
        (pc, "cwnd", C_CWND, "cwnd", 1.0, "1.8", ""),
    )
    for p, key, colour, label, scale, sw, extra in series:
        pts = [(s["t"], None if s.get(key) is None else min(s[key] * scale, p.v1))
               for s in st]
        d = step_path(p, pts)
        if d:
            svg.add(f'<path class="line-{key}" d="{d}" fill="none" stroke="{colour}" '
                    f'stroke-width="{sw}"{extra}/>')
            last = next((v for _, v in reversed(pts) if v is not None), None)
            if last is not None:
                svg.labels.append((p.y(last), label, colour, f"label-{key}"))
    svg.end_labels(left + w + 8, pc.y0, pc.y0 + pc.h)
    for key, colour, label, extra in (("srtt", C_SRTT, "SRTT", ""),
                                      ("rto", C_RTO, "RTO", ' stroke-dasharray="4 2"')):
        pts = [(s["t"], None if not s.get(key) else s[key] * 1000) for s in st]
        d = step_path(pr, pts)
        if d:
            svg.add(f'<path class="line-{key}" d="{d}" fill="none" stroke="{colour}" '
                    f'stroke-width="1.6"{extra}/>')
            last = next((v for _, v in reversed(pts) if v is not None), None)
            if last is not None:
                svg.labels.append((pr.y(last), label, colour, f"label-{key}"))
    svg.end_labels(left + w + 8, pr.y0, pr.y0 + pr.h)

    # RTO, TLP and undo: a line through all panels, named at the top (staggered so
    # neighbours stay readable).
    last_x = {k: -1e9 for k in MARK_NAME}
    for t, kind in c.marks:
        x = ps.x(t)
        colour = MARK_COLOUR[kind]
        dash = "2 3" if kind == "undo" else "5 3"
        svg.add(f'<line class="mark mark-{kind}" x1="{_f(x)}" y1="{_f(ps.y0)}" x2="{_f(x)}" '
                f'y2="{_f(pr.y0 + pr.h)}" stroke="{colour}" stroke-width="1.2" '
                f'stroke-dasharray="{dash}"/>')
        if x - last_x[kind] > 30:
            row = {"rto": 0, "tlp": 1, "undo": 2}[kind]
            svg.text(x + 2, ps.y0 + 27 + 12 * row, MARK_NAME[kind], colour=colour, size=11,
                     cls=f"mark-label mark-label-{kind}", weight="bold")
            last_x[kind] = x
    return svg.render()


# ---------------------------------------------------------------------- command


def _live_records(args: argparse.Namespace) -> list[dict]:
    flt.parse(args.live)  # a bad filter is the user's error, said before connecting
    with Control.from_args(args) as ctl:
        rep = ctl.request({"op": "record", "action": "start", "filter": args.live})
        sid = rep["id"]
        try:
            time.sleep(max(args.duration, 0.0))
            snap = ctl.request({"op": "record", "action": "snapshot", "id": sid})
        finally:
            ctl.request({"op": "record", "action": "stop", "id": sid})
    return snap["records"]


def _snapshot(args: argparse.Namespace) -> list[dict]:
    with Control.from_args(args) as ctl:
        return ctl.request({"op": "record", "action": "snapshot",
                            "id": args.recording})["records"]


def run(args: argparse.Namespace) -> int:
    try:
        sources = [args.file is not None, args.live is not None, args.recording is not None]
        if sum(sources) != 1:
            raise ToolError("give a recording FILE, --live FILTER or --recording ID "
                            "(one of them)")
        if args.width < 400:
            raise ToolError("--width must be at least 400")
        if args.live is not None:
            records = _live_records(args)
        elif args.recording is not None:
            records = _snapshot(args)
        else:
            try:
                with open(args.file, encoding="utf-8") as f:
                    records = read_records(f)
            except OSError as exc:
                raise ToolError(f"{args.file}: {exc.strerror}") from None
        conns = load(records)
        c = choose(conns, args.conn)
        if not c.state:
            raise ToolError(f"connection {c.cid} ({c.name}) has no samples yet")
        out = render_svg(c, args.width)
        if args.output == "-":
            sys.stdout.write(out)
        else:
            Path(args.output).write_text(out, encoding="utf-8")
            print(f"{args.output}: connection {c.cid} ({c.name}), {c.samples} samples, "
                  f"{len(c.tx)} segments", file=sys.stderr)
    except (ToolError, ValueError) as exc:
        return fail("plot", str(exc))
    except OSError as exc:
        return fail("plot", f"{exc.filename or args.output}: {exc.strerror or exc}")
    return 0


__all__ = ["Conn", "choose", "load", "render_svg"]
