"""argparse helpers shared by the tools, `ustack serve` (ustack/cli.py) and the scripts
in the top-level tools/ directory. Plain argparse: no core imports."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_arg(what: str, lo: int, hi: int | None = None, note: str = "") -> Callable[[str], int]:
    """An argparse type for an integer in [lo, hi] (no upper bound if hi is None); the
    error names `what` and the range."""
    span = f"{lo}..{hi}" if hi is not None else f">= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}: not a number") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"bad {what} {value}: must be {span}{note}")
        return value

    return parse
