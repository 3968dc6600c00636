"""Slowloris from the kernel side: many connections each trickling a request head.

    python slowloris.py --host 10.77.0.2 --count 2000 [--port 80] [--interval 1.0]
                        [--duration 30] [--hold]

Opens --count connections (at most CONNECTS at a time, so the listener's accept queue is
not what is measured), then each sends the next byte of a head that never ends, one byte
every --interval seconds, until the server closes it or --duration passes. Prints one
JSON line: opened, connect_failures, closed (by the server), status_408, still_open,
and the seconds from the last open to the last close.

--hold sends one partial head per connection and then nothing: once all are open it
prints `ready` and waits for stdin to close (the benchmark's idle connections); then the
JSON line. Belongs inside a network namespace (the test's or the benchmark's own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

CONNECTS = 200
HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "


class Result:
    def __init__(self) -> None:
        self.opened = self.connect_failures = self.closed = self.status_408 = 0
        self.last_close = 0.0


async def trickle(host: str, port: int, args: argparse.Namespace, res: Result,
                  gate: asyncio.Semaphore, all_open: asyncio.Event,
                  holders: list[asyncio.StreamWriter]) -> None:
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        except (OSError, TimeoutError):
            res.connect_failures += 1
            return
    res.opened += 1
    if args.hold:
        writer.write(HEAD)
        holders.append(writer)
        return
    await all_open.wait()
    deadline = time.monotonic() + args.duration
    i = 0
    try:
        while time.monotonic() < deadline:
            writer.write(HEAD[i:i + 1] if i < len(HEAD) else b"s")
            i += 1
            try:
                got = await asyncio.wait_for(reader.read(64), args.interval)
            except TimeoutError:
                continue
            res.closed += 1
            res.last_close = time.monotonic()
            if got.startswith(b"HTTP/1.1 408"):
                res.status_408 += 1
            return
    except OSError:  # reset by the server: closed all the same
        res.closed += 1
        res.last_close = time.monotonic()
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    res = Result()
    gate = asyncio.Semaphore(CONNECTS)
    all_open = asyncio.Event()
    holders: list[asyncio.StreamWriter] = []
    tasks = [asyncio.create_task(trickle(args.host, args.port, args, res, gate, all_open,
                                         holders)) for _ in range(args.count)]
    while res.opened + res.connect_failures < args.count:
        await asyncio.sleep(0.05)
    opened_at = time.monotonic()
    all_open.set()
    if args.hold:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for w in holders:
            w.close()
    await asyncio.gather(*tasks)
    print(json.dumps({
        "opened": res.opened, "connect_failures": res.connect_failures,
        "closed": res.closed, "status_408": res.status_408,
        "still_open": res.opened - res.closed if not args.hold else len(holders),
        "close_span": round(max(0.0, res.last_close - opened_at), 2),
    }), flush=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--hold", action="store_true")
    sys.exit(asyncio.run(main(p.parse_args())))
