"""The `ustack lab` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lab", help="replay a close-path scenario on a real connection (needs root)",
        description="Play one scenario of the TCP close path between ustack and the kernel "
                    "in a throwaway network namespace, explain it, and draw its ladder "
                    "with both sides' own states.")
    p.add_argument("name", nargs="?", metavar="NAME", help="the lab (see --list)")
    p.add_argument("--list", action="store_true", help="list the labs and exit")
    p.add_argument("--svg", metavar="FILE", help="also write the ladder as SVG to FILE")
    p.add_argument("--no-ladder", action="store_true",
                   help="print the explanation and the states only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tools import ladder as lad
    from .runner import run_lab
    from .scenarios import LABS
    from .world import LabError

    if args.list:
        width = max(map(len, LABS))
        for lab in LABS.values():
            print(f"{lab.name:<{width}}  {lab.title}")
        return 0
    if not args.name:
        print("ustack lab: name a lab (ustack lab --list shows them)", file=sys.stderr)
        return 2
    if args.name not in LABS:
        print(f"ustack lab: no lab {args.name!r}; labs: {', '.join(LABS)}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_lab(args.name))
    except LabError as exc:
        print(f"ustack lab: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ustack lab: {args.name}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"ustack lab: {args.name} did not finish within 30 s", file=sys.stderr)
        return 1
    print(report.text())
    if not args.no_ladder:
        print(lad.render_text(report.ladder))
    if args.svg:
        try:
            with open(args.svg, "w") as f:
                f.write(lad.render_svg(report.ladder))
        except OSError as exc:
            print(f"ustack lab: {args.svg}: {exc.strerror}", file=sys.stderr)
            return 1
    if report.missing:
        for m in report.missing:
            print(f"ustack lab: this run did not show the lesson: {m}", file=sys.stderr)
        return 1
    return 0
