"""The dashboard's poll (`/ustack/status.json`) with a big table: time and frame size.

Run: python benchmarks/bench_dashboard.py [--records 200000] [--live 5000]   (or tools/bench)

A Stack (no device, nothing sent) holds LIVE connections in SYN-SENT (active opens that
never hear back) and a small (1 k) or a big (`--records`) TIME-WAIT table. Each row is
one poll's work, Web.status_json() (rows poll_big and poll_filter_big, with the ratio
to the 1 k table and the frame's bytes): the ring, the rates, the TIME-WAIT costs, the leaks
and one page of 50 rows, serialised; best of REPEAT, the two table sizes measured in
turn so both see the same machine load. Rows: no filter (the page is a slice: the cost
must not grow with the records), a host filter (TIME-WAIT records decoded up to
model.TW_SCAN), and the per-second sample (row sample); tw_record_bytes is the measured size of a
record (model.measure_tw_record()). The frame's bytes are the same at both sizes:
it never carries the whole table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ustack import Stack  # noqa: E402
from ustack.apps.dashboard import Dashboard, Web  # noqa: E402
from ustack.config import Config  # noqa: E402

REPEAT = 5


def _stack(loop, records: int, live: int) -> tuple[Stack, Dashboard, Web]:
    stack = Stack("10.77.0.2", config=Config(tcp_max_tw_buckets=records + 1), loop=loop)
    dash = Dashboard(stack)
    now = loop.time()
    for i in range(live):
        stack.table.connect("10.77.0.2", f"10.77.{1 + i // 60000 % 200}.1", 80, now,
                            lport=1024 + i % 60000)
    tw = stack.table.tw
    for _ in range(records):
        key = os.urandom(4) + bytes((10, 77, 0, 2)) + os.urandom(4)
        tw.insert(key, snd_nxt=1, rcv_nxt=1, ts_recent=0, ts_recent_stamp=0.0, ts_offset=0,
                  wnd=65535, wscale=7, has_ts=False, now=now)
    for _ in range(3):
        dash.sample()
    return stack, dash, Web(dash)


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def figures(records: int = 200_000, live: int = 5000, repeat: int = REPEAT) -> list[dict]:
    loop = asyncio.new_event_loop()
    try:
        small = _stack(loop, 1000, live)
        big = _stack(loop, records, live)
        cases = {"poll_big": "", "poll_filter_big": "filter=host+10.77.0.9"}
        rows = []
        for name, query in cases.items():
            times, sizes = {}, {}
            for label, (_, _, web) in (("1k", small), ("big", big)):
                sizes[label] = len(web.status_json(query))
            for _ in range(repeat):  # in turn, so both sizes see the same load
                for label, (_, _, web) in (("1k", small), ("big", big)):
                    t = _best(lambda web=web, query=query: web.status_json(query), 1)
                    times[label] = min(times.get(label, t), t)
            rows.append({"name": name, "value": times["big"] * 1e3, "unit": "ms",
                         "query": query, "records": records, "live": live,
                         "ratio_to_1k": round(times["big"] / times["1k"], 2),
                         "frame_bytes": sizes["big"], "frame_bytes_1k": sizes["1k"]})
        t = _best(big[1].sample, repeat)
        rows.append({"name": "sample", "value": t * 1e3, "unit": "ms", "live": live})
        rows.append({"name": "tw_record_bytes", "value": float(big[1].tw_record_bytes),
                     "unit": "B"})
        for stack, dash, _ in (small, big):
            dash.close()
            stack.close()
        return rows
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--live", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=REPEAT)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = figures(args.records, args.live, args.repeat)
    for r in rows:
        extra = "  ".join(f"{k}={v}" for k, v in r.items() if k not in ("name", "value", "unit"))
        print(f"{r['name']:<48} {r['value']:10,.2f} {r['unit']}  {extra}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
