"""`ustack record start|stop|list`: sender-state recordings in a running daemon.

`start [FILTER...] [--file FILE]` records the connections matching the ss filter (all
if none; those open now and those opened later) to FILE, in the JSON-lines format of
ustack/record.py, the same as `ustack serve --record FILE`; without --file the daemon
keeps the samples in memory, for `ustack plot --recording ID`. `stop [ID]` ends one
recording (all without ID); `list` shows them. FILE is written by the daemon, so a
relative name is made absolute here.
"""

from __future__ import annotations

import argparse
import os

from .. import ssfilter as flt
from .client import Control, ToolError, add_control_args, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="start or stop recording sender state (for plot)",
                       description="Record the sender state of connections (cwnd, "
                                   "ssthresh, pipe, SRTT, RTO, segments and ACKs) for "
                                   "`ustack plot`.")
    add_control_args(p)
    p.add_argument("action", choices=["start", "stop", "list"])
    p.add_argument("args", nargs="*", metavar="FILTER|ID",
                   help="start: an ss filter (host ADDR, port N, ADDR:PORT); stop: an id")
    p.add_argument("--file", metavar="FILE", default=None,
                   help="start: write to FILE instead of keeping the samples in memory")
    p.set_defaults(func=run, parser=p)


def _describe(r: dict) -> str:
    where = r["file"] or "in memory"
    what = r["filter"] or "all connections"
    return f"{r['id']}: {what} -> {where} ({r['connections']} connections, " \
           f"{r['samples']} samples)"


def run(args: argparse.Namespace) -> int:
    req: dict = {"op": "record", "action": args.action}
    try:
        if args.action == "start":
            req["filter"] = str(flt.parse(args.args))
            if args.file:
                req["file"] = os.path.abspath(args.file)
        elif args.action == "stop" and args.args:
            if len(args.args) != 1 or not args.args[0].isdigit():
                args.parser.error("record stop takes one recording id")
            req["id"] = int(args.args[0])
        elif args.args:
            args.parser.error(f"record {args.action} takes no arguments")
        with Control.from_args(args) as ctl:
            rep = ctl.request(req)
    except (ToolError, ValueError) as exc:
        return fail("record", str(exc))
    if args.action == "start":
        print(f"recording {rep['id']} started")
    elif args.action == "stop":
        for r in rep.get("stopped", []):
            print(f"stopped {_describe(r)}")
    else:
        for r in rep.get("recordings", []):
            print(_describe(r))
    return 0
