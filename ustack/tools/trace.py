"""`ustack trace [FILTER]`: the life of connections as it happens.

One line per state change of the stack's connections, with what caused it, streamed
from the daemon's control socket until Ctrl-C:

    21:40:01.123  10.77.0.1:43120 -> 10.77.0.2:80  ESTABLISHED -> CLOSE_WAIT  on F. seq 812 ack 1

The endpoints are written client -> server (who sent the first SYN); the states are
always ustack's side. Sequence numbers in the cause are relative to each side's initial
sequence number, as tcpdump prints them. With --segments every TCP segment of the
matching connections is shown as well (`>` sent by ustack, `<` received).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator

from .. import ssfilter as flt
from .client import Control, ToolError, add_control_args, fail
from .segments import SeqTracker, label


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="stream connection state changes as they happen",
                       description="One line per state change, with the segment or call "
                                   "that caused it. Ctrl-C ends it.")
    add_control_args(p)
    p.add_argument("--segments", action="store_true", help="show every segment too")
    p.add_argument("--json", action="store_true", help="the daemon's JSON lines, as they come")
    p.add_argument("-c", "--count", type=int, default=0, metavar="N",
                   help="exit after N state changes")
    p.add_argument("filter", nargs="*", metavar="FILTER",
                   help="host ADDR, port N, ADDR:PORT (all must match)")
    p.set_defaults(func=run)


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def format_state(ev: dict) -> str:
    a, b = (ev["peer"], ev["local"]) if ev.get("passive") else (ev["local"], ev["peer"])
    return f"{clock(ev['t'])}  {a} -> {b}  {ev['old']} -> {ev['new']}  {ev['cause']}"


def format_segment(ev: dict, tracker: SeqTracker) -> str:
    seq, ack = tracker.relative(ev["src"], ev["dst"], ev["flags"], ev["seq"], ev["ack"])
    arrow = ">" if ev["dir"] == "out" else "<"
    return (f"{clock(ev['t'])}    {arrow} {ev['src']} > {ev['dst']}  "
            f"{label(ev['flags'], seq, ack, ev['len'])} win {ev['win']}")


def subscribe(ctl: Control, filter_text: str, segments: bool) -> dict:
    """Turn the control connection into a trace stream; the daemon's reply."""
    return ctl.request({"op": "trace", "filter": filter_text, "segments": segments})


def events(ctl: Control) -> Iterator[dict]:
    """The daemon's events (dicts) until it closes the stream."""
    for line in ctl.file:
        try:
            yield json.loads(line)
        except ValueError:
            continue


def run(args: argparse.Namespace) -> int:
    try:
        flt.parse(args.filter)  # a typo is reported here, before connecting
        ctl = Control.from_args(args, timeout=None)
    except (ToolError, ValueError) as exc:
        return fail("trace", str(exc))
    tracker = SeqTracker()
    seen = 0
    out = sys.stdout
    try:
        rep = subscribe(ctl, " ".join(args.filter), args.segments)
        # Like tcpdump's "listening on ...": on stderr, and only once we really are.
        print(f"ustack trace: tracing {rep.get('filter', '')}, Ctrl-C to stop",
              file=sys.stderr, flush=True)
        for ev in events(ctl):
            if args.json:
                out.write(json.dumps(ev) + "\n")
            elif ev["type"] == "state":
                out.write(format_state(ev) + "\n")
            elif ev["type"] == "segment":
                out.write(format_segment(ev, tracker) + "\n")
            elif ev["type"] == "dropped":
                out.write(f"... {ev['count']} events dropped (reading too slowly)\n")
            out.flush()
            if ev["type"] == "state":
                seen += 1
                if args.count and seen >= args.count:
                    break
    except ToolError as exc:
        return fail("trace", str(exc))
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        pass
    finally:
        ctl.close()
    return 0
