"""`ustack nstat`: the stack's counters under Linux's MIB names, as `nstat` prints them.

Semantics follow nstat: by default it prints the increments since this client's last
call (the first call, or one with --reset, prints everything since the daemon began),
and hides counters that are zero. The daemon keeps the history per client name (nstat
keeps it in a per-user file), so two users or scripts can pass different --client
names and not disturb each other. TcpCurrEstab is a gauge and is always shown as its
current value.

    -a  absolute values instead of increments    -z  show zero counters too
    -r  reset the history first                  -s  do not update the history
    -n  print nothing (with -r: just reset)      -j  JSON ({"kernel": {...}}, as nstat -j)

The third column is the rate per second over the interval since the last call (nstat
shows its own daemon's running average there, 0.0 without one).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys

from .client import Control, ToolError, add_control_args, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nstat", help="counters under Linux MIB names, like nstat",
                       description="Counters under Linux MIB names (TcpExtTW, TcpOutRsts, "
                                   "...). Shows increments since the last call, like nstat.")
    add_control_args(p)
    p.add_argument("-a", "--ignore", "--absolute", dest="absolute", action="store_true",
                   help="absolute values, not increments")
    p.add_argument("-z", "--zeros", action="store_true", help="show zero counters too")
    p.add_argument("-r", "--reset", action="store_true", help="reset the history")
    p.add_argument("-s", "--noupdate", action="store_true", help="do not update the history")
    p.add_argument("-n", "--nooutput", action="store_true", help="print nothing")
    p.add_argument("-j", "--json", action="store_true", help="JSON output")
    p.add_argument("--client", metavar="NAME", default=None,
                   help="history name (default: one per user, like nstat)")
    p.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="only counters matching these shell patterns (e.g. 'TcpExt*')")
    p.set_defaults(func=run)


def select(values: dict[str, int], patterns: list[str], zeros: bool) -> dict[str, int]:
    out = {}
    for name, value in values.items():
        if patterns and not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            continue
        if not value and not zeros:
            continue
        out[name] = value
    return out


def render(values: dict[str, int], interval: float | None, title: str) -> str:
    lines = [f"#{title}"]
    for name, value in values.items():
        rate = value / interval if interval else 0.0
        # nstat.c: "%-32s%-16llu%6.1f" (name, value, rate).
        lines.append(f"{name:<32}{value:<16d}{rate:6.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    client = args.client or f"nstat.u{os.getuid()}"
    try:
        with Control.from_args(args) as ctl:
            rep = ctl.request({"op": "nstat", "client": client, "reset": args.reset,
                               "update": not args.noupdate})
    except ToolError as exc:
        return fail("nstat", str(exc))
    if args.nooutput:
        return 0
    values = rep["counters"] if args.absolute else rep["delta"]
    shown = select(values, args.patterns, args.zeros)
    if args.json:
        json.dump({"kernel": shown}, sys.stdout)
        sys.stdout.write("\n")
    else:
        interval = None if args.absolute else rep.get("interval")
        print(render(shown, interval, "kernel"))
    return 0
