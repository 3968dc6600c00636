"""`ustack ss`: the connection table, like `ss -tan [-o]`.

Columns as ss prints them (State, Recv-Q, Send-Q, Local Address:Port, Peer Address:Port),
then, with -o, ss's `timer:(NAME,TIME,RETRANS)` (on = retransmission, persist,
keepalive, timewait), then the connection's age, an ustack extra. States and --state
filters are spelled as ss spells them. As with ss, the default shows connected sockets
without LISTEN, SYN-RECV and TIME-WAIT (ss's SS_CONN); -a shows everything, -l only
listeners.

A connection in CLOSE-WAIT longer than --close-wait-threshold (60 s) is flagged: the
peer has closed and we acknowledged, but the application never called close(). That
is almost always a bug in the application (a leaked socket), and such connections
pile up until the process runs out of descriptors.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import ssfilter as flt
from ..ctlproto import SS_FILTERS, SS_STATES
from .client import Control, ToolError, add_control_args, fail

# States are the ss spellings of the "ss" op's rows (ctlproto.SS_STATES): "ESTAB" ...
# ss's default (ss.c SS_CONN): every state but LISTEN, CLOSE, TIME-WAIT and SYN-RECV.
DEFAULT_STATES = frozenset(SS_STATES) - {"LISTEN", "UNCONN", "TIME-WAIT", "SYN-RECV"}
# Other spellings ss accepts (ss.c scan_state()), and the obvious ones it prints.
ALIASES = {"listen": "listening", "estab": "established", "syn-received": "syn-recv",
           "syn-rcv": "syn-recv", "close": "closed", "unconnected": "closed",
           "unconn": "closed"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ss", help="show connections, like ss -tan",
                       description="The daemon's connection table, like `ss -tan`.")
    add_control_args(p)
    p.add_argument("-a", "--all", action="store_true",
                   help="all states, including LISTEN, SYN-RECV and TIME-WAIT")
    p.add_argument("-l", "--listening", action="store_true", help="only listening sockets")
    p.add_argument("-o", "--options", action="store_true", help="show timer information")
    p.add_argument("--state", action="append", default=[], metavar="STATE",
                   help="only this state (repeatable), spelled as ss does: established, "
                        "syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, close-wait, "
                        "last-ack, closing, listening, closed, or all, connected, "
                        "synchronized, bucket, big")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--close-wait-threshold", type=float, default=60.0, metavar="SECONDS",
                   help="flag CLOSE-WAIT connections older than this (default: 60)")
    p.add_argument("filter", nargs="*", metavar="FILTER",
                   help="host ADDR, port N, ADDR:PORT (all must match)")
    p.set_defaults(func=run)


def ms_timer(seconds: float) -> str:
    """ss's print_ms_timer(): 200ms, 1.200ms, 59sec, 2min5sec, 12min."""
    timeout = int(round(seconds * 1000))
    secs, msecs = divmod(timeout, 1000)
    minutes, secs = divmod(secs, 60)
    out = ""
    if minutes:
        msecs = 0
        out += f"{minutes}min"
        if minutes > 9:
            secs = 0
    if secs:
        if secs > 9:
            msecs = 0
        out += f"{secs}{'.' if msecs else 'sec'}"
    if msecs:
        out += f"{msecs:03d}ms"
    return out or "0ms"


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def states_wanted(args: argparse.Namespace) -> frozenset[str]:
    """The ss state names (ESTAB, TIME-WAIT ...) to show."""
    if args.state:
        wanted: set[str] = set()
        for name in args.state:
            key = ALIASES.get(name.lower(), name.lower())
            if key not in SS_FILTERS:
                raise ToolError(f"unknown state {name!r}; use one of: "
                                f"{', '.join(SS_FILTERS)}")
            wanted.update(SS_FILTERS[key])
        return frozenset(wanted)
    if args.listening:
        return frozenset({"LISTEN"})
    if args.all:
        return frozenset(SS_STATES)
    return DEFAULT_STATES


def select(rows: list[dict], states: frozenset[str], f: flt.Filter,
           threshold: float) -> list[dict]:
    out = []
    for row in rows:
        state = row["state"]
        if state not in states:
            continue
        if f and not f.matches(flt.split_endpoint(row["local"]), _peer(row["peer"])):
            continue
        row = dict(row)
        age = row.get("state_age")
        row["stale_close_wait"] = bool(state == "CLOSE-WAIT" and age is not None
                                       and age > threshold)
        out.append(row)
    return out


def _peer(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port) if port.isdigit() else -1


def render(rows: list[dict], options: bool, threshold: float) -> str:
    header = ["State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port"]
    workers = any("worker" in r for r in rows)  # serve --workers N: which one owns it
    if workers:
        header.append("Worker")
    if options:
        header.append("Timer")
    header.append("Age")
    table = [header]
    notes = []
    for r in rows:
        line = [r["state"], str(r["recv_q"]), str(r["send_q"]), r["local"], r["peer"]]
        if workers:
            line.append(str(r.get("worker", "-")))
        if options:
            if r.get("timer_name"):
                line.append(f"timer:({r['timer_name']},{ms_timer(r['timer_left'])},"
                            f"{r['timer_retrans']})")
            else:
                line.append("")
        line.append(age_text(r.get("age")))
        if r.get("stale_close_wait"):
            line.append(f"<- CLOSE-WAIT for {age_text(r['state_age'])}")
            notes.append(r)
        table.append(line)
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [c.ljust(widths[i]) if i < len(widths) else c for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    if notes:
        lines.append("")
        lines.append(
            f"{len(notes)} connection{'s' if len(notes) > 1 else ''} in CLOSE-WAIT for more "
            f"than {threshold:g} s: the peer closed and the application never called "
            "close() on its socket (a leak, almost always).")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        f = flt.parse(args.filter)
        states = states_wanted(args)
        with Control.from_args(args) as ctl:
            rep = ctl.request({"op": "ss"})
    except (ToolError, ValueError) as exc:
        return fail("ss", str(exc))
    listed_tw = sum(1 for r in rep["connections"] if r["state"] == "TIME-WAIT")
    rows = select(rep["connections"], states, f, args.close_wait_threshold)
    missing = rep.get("time_wait", listed_tw) - listed_tw
    if missing > 0 and any(r["state"] == "TIME-WAIT" for r in rows):
        print(f"ustack ss: {missing} more TIME-WAIT entries not listed (the daemon lists "
              f"the {listed_tw} oldest)", file=sys.stderr)
    if args.json:
        json.dump({"address": rep.get("address"), "connections": rows}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(render(rows, args.options, args.close_wait_threshold))
    return 0
