"""The established-table demux lookup at 1 k and at 1 M connections.

Run: python benchmarks/bench_demux.py [--keys 1000000]   (or through tools/bench)

Per arriving frame the shell slices the 12-byte four-tuple key (stack.py _tcp_input)
and `TcpTable.input()` does one `est.get(key)`. This times exactly that, a hit each
time, over frames whose keys are drawn at random among the table's keys (the same
number of frames at both sizes). The values are stand-ins (one small object per key):
a million real TCBs would cost gigabytes and the lookup never looks inside them.
Best of REPEAT runs; also the same 1 M lookups in insertion order, which shows how
much of the difference is the CPU caches and TLB (random access into a ~150 MB
working set) rather than the dict.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ustack.config import Config  # noqa: E402
from ustack.table import TcpTable  # noqa: E402
from ustack.tcp.context import Context  # noqa: E402

LOCAL = bytes([10, 77, 0, 2])
FRAMES = 200_000
REPEAT = 5


class Stand:
    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def key_of(i: int) -> bytes:
    rip = bytes([10, 77, (i >> 8) & 255, i & 255])
    return struct.pack("!4s4sHH", rip, LOCAL, 40000 + (i >> 16), 80)


def frame_of(key: bytes) -> bytes:
    return b"\x45\x00\x00\x28\x00\x01\x40\x00\x40\x06\x00\x00" + key + b"\0" * 16


def lookup_rate(n: int, rng: random.Random, in_order: bool = False, frames: int = FRAMES,
                repeat: int = REPEAT) -> float:
    table = TcpTable(Context(Config(), secret=b"bench-secret-key"))
    est = table.est
    for i in range(n):
        est[key_of(i)] = Stand(i)  # type: ignore[assignment]
    picks = [rng.randrange(n) for _ in range(frames)]
    if in_order:
        picks.sort()
    batch = [frame_of(key_of(i)) for i in picks]
    get = est.get

    def run() -> float:
        hits = 0
        t = time.perf_counter()
        for f in batch:
            if get(f[12:24]) is not None:
                hits += 1
        dt = time.perf_counter() - t
        assert hits == frames
        return frames / dt

    run()
    return max(run() for _ in range(repeat))


def figures(keys: int = 1_000_000, frames: int = FRAMES, repeat: int = REPEAT) -> list[dict]:
    """The figures as rows {"name", "value", "unit"} (tools/bench collects these)."""
    rng = random.Random(2)
    rates = {}
    rows = []
    for name, size, in_order in (("random_1k", 1000, False), ("random_big", keys, False),
                                 ("in_order_big", keys, True)):
        r = rates[name] = lookup_rate(size, rng, in_order, frames, repeat)
        rows.append({"name": name, "value": r / 1e6, "unit": "M lookups/s", "keys": size,
                     "ns": 1e9 / r})
    rows.append({"name": "ratio_random", "value": rates["random_1k"] / rates["random_big"],
                 "unit": "x", "keys": keys})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    n = ap.parse_args().keys
    print(f"Python {sys.version.split()[0]}; established-table lookups (slice + est.get hit),"
          f" best of {REPEAT} x {FRAMES:,}")
    rows = figures(n)
    for row, label in zip(rows, ("random", "random", "in insertion order"), strict=False):
        print(f"  {row['keys']:>9,} keys, {label:<18}: {row['value']:6.2f} M lookups/s "
              f"({row['ns']:5.0f} ns)")
    print(f"  1 k / {n // 1000:,} k rate ratio (random): {rows[3]['value']:.2f}x")


if __name__ == "__main__":
    main()
