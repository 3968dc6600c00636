"""`ustack capture start|stop|list [FILE]`: packet capture in a running daemon.

Every frame in and out of the TUN device goes to FILE (pcap, link type raw IPv4), the
same as `ustack serve --pcap FILE` from the start. Read it with `tcpdump -nr FILE`,
Wireshark, dpkt, or `ustack ladder --pcap FILE`. FILE is written by the daemon, so a
relative name is made absolute here, against this command's working directory.
"""

from __future__ import annotations

import argparse
import os

from .client import Control, ToolError, add_control_args, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="start or stop a packet capture (pcap)",
                       description="Start or stop writing every frame to a pcap file.")
    add_control_args(p)
    p.add_argument("action", choices=["start", "stop", "list"])
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="pcap file (required for start; stop without FILE stops all)")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    if args.action == "start" and not args.file:
        args.parser.error("capture start needs a FILE")  # a usage error: exit status 2
    req: dict = {"op": "capture", "action": args.action}
    if args.file:
        req["file"] = os.path.abspath(args.file)
    try:
        with Control.from_args(args) as ctl:
            rep = ctl.request(req)
    except ToolError as exc:
        return fail("capture", str(exc))
    if args.action == "start":
        print(f"capturing to {req['file']}")
    elif args.action == "stop":
        for t in rep.get("stopped", []):
            print(f"stopped {t['file']} ({t['frames']} frames)")
    else:
        for t in rep.get("captures", []):
            print(f"{t['file']} ({t['frames']} frames)")
    return 0
