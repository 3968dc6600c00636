"""Segment processing without TUN: prebuilt valid frames through the stack's whole input.

    python benchmarks/bench_segments.py                  # 200,000 segments per row, best of 3
    python benchmarks/bench_segments.py --segments 50000 --repeat 1 --json

Two Stacks over a MemoryLink set up a connection the ordinary way; then both are cut off
the link (their devices discard what they write) and the benchmark plays the peer itself,
feeding frames it built in advance straight into `StackShell.receive(frame)`: the IPv4
header and TCP checksums, the demux, the TCB's segment processing, the events, then the
shell's flush (the ACKs or data it sends, built and handed to the device) and the
application's reads or writes on the next loop turns.

- `data`: in-order full-size data segments (1448 bytes: MSS 1460 minus the timestamp
  option) to a connection whose application drains them (a discard reader), in batches
  of 16 between loop turns, so the window never closes. Every byte is counted at the
  reader (byte_exact).
- `ack`: pure ACKs, each acknowledging one more full segment, to a connection whose
  application keeps its send buffer full, so every ACK frees room and the stack sends
  more. Each ACK acknowledges only data the stack has really sent (the benchmark
  watches its output through `stack.taps`) and echoes its latest timestamp.

For each: segments/s and µs per segment over the whole path (receive() + the flush and
the app's turn on the loop), and µs per segment inside receive() alone. Only public-ish
calls are used (`Stack`, `MemoryLink`, `attach`, `receive`, `taps`, streams), and the
frames are patched copies of frames the stack's peer really sent, so the benchmark does
not depend on the core's internals. Informative, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ustack import Stack  # noqa: E402
from ustack.io.memory import MemoryLink  # noqa: E402

A, B = "10.77.0.1", "10.77.0.2"
DISCARD, SOURCE = 9, 19
BATCH = 16
CHUNK = 65536


class NullDevice:
    """Takes every frame and drops it: the stack's output costs what it costs to build."""

    def __init__(self) -> None:
        self.frames = 0

    def write(self, frame: bytes) -> None:
        self.frames += 1


# ---------------------------------------------------------------------- frames


def _csum_fix(total: int) -> int:
    """The 16-bit field that makes a one's-complement sum congruent to 0 mod 0xFFFF
    (the stack verifies `int(pseudo + segment) % 0xFFFF == 0`; so does RFC 1071's)."""
    return (0xFFFF - total % 0xFFFF) % 0xFFFF


class Frame:
    """A TCP/IPv4 frame one peer sent, taken apart enough to make valid variants."""

    def __init__(self, frame: bytes) -> None:
        self.ihl = (frame[0] & 15) * 4
        self.doff = (frame[self.ihl + 12] >> 4) * 4
        self.head = bytearray(frame[:self.ihl + self.doff])
        total = (frame[2] << 8) | frame[3]
        self.payload_len = total - self.ihl - self.doff
        self.seq, self.ack = struct.unpack_from("!II", frame, self.ihl + 4)
        self.flags = frame[self.ihl + 13]
        self.ts_at = self._find_ts()
        self.tsval = self.tsecr = None
        if self.ts_at is not None:
            self.tsval, self.tsecr = struct.unpack_from("!II", frame, self.ts_at)

    def _find_ts(self) -> int | None:
        i, end = self.ihl + 20, self.ihl + self.doff
        h = self.head
        while i < end:
            kind = h[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= end or h[i + 1] < 2:
                break
            if kind == 8 and h[i + 1] == 10:
                return i + 2
            i += h[i + 1]
        return None

    def build(self, seq: int, ack: int, payload: bytes = b"", ident: int = 0,
              tsecr: int | None = None, window: int | None = None) -> bytes:
        h = bytearray(self.head)
        ihl = self.ihl
        total = len(h) + len(payload)
        struct.pack_into("!HH", h, 2, total, ident & 0xFFFF)
        h[10:12] = b"\0\0"
        struct.pack_into("!H", h, 10, _csum_fix(int.from_bytes(h[:ihl], "big")))
        struct.pack_into("!II", h, ihl + 4, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF)
        if window is not None:
            struct.pack_into("!H", h, ihl + 14, window)
        if tsecr is not None and self.ts_at is not None:
            struct.pack_into("!I", h, self.ts_at + 4, tsecr)
        h[ihl + 16:ihl + 18] = b"\0\0"
        seg = bytes(h[ihl:]) + payload
        seg_int = int.from_bytes(seg, "big") << (8 if len(seg) & 1 else 0)
        pseudo = int.from_bytes(h[12:20], "big") + 6 + len(seg)
        struct.pack_into("!H", h, ihl + 16, _csum_fix(pseudo + seg_int))
        return bytes(h) + payload


def _sent_to(frames: list[bytes], dport: int) -> list[Frame]:
    out = []
    for f in frames:
        ihl = (f[0] & 15) * 4
        if f[9] == 6 and struct.unpack_from("!H", f, ihl + 2)[0] == dport:
            out.append(Frame(f))
    return out


def _sent_from(frames: list[bytes], sport: int) -> list[Frame]:
    out = []
    for f in frames:
        ihl = (f[0] & 15) * 4
        if f[9] == 6 and struct.unpack_from("!H", f, ihl)[0] == sport:
            out.append(Frame(f))
    return out


# ---------------------------------------------------------------------- the runs


async def _turns(n: int = 2) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _pair(loop: asyncio.AbstractEventLoop):
    a, b = Stack(A, loop=loop), Stack(B, loop=loop)
    MemoryLink(loop).connect(a, b)
    out_a: list[bytes] = []
    out_b: list[bytes] = []
    a.taps.append(lambda d, f: out_a.append(f) if d == "out" else None)
    b.taps.append(lambda d, f: out_b.append(f) if d == "out" else None)
    return a, b, out_a, out_b


async def data_run(segments: int) -> dict:
    """Full-size in-order data segments into B, whose discard reader drains them."""
    loop = asyncio.get_running_loop()
    a, b, out_a, _ = await _pair(loop)
    received = 0

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        try:
            while chunk := await reader.read(CHUNK):
                received += len(chunk)
        except asyncio.CancelledError:
            pass  # the loop ends under us: finish quietly, not as a cancelled handler

    await b.start_server(sink, B, DISCARD)
    _, writer = await a.open_connection(B, DISCARD)
    writer.write(bytes(8 * 1460))  # a few full segments: the template, and the MSS
    await writer.drain()
    for _ in range(200):
        await asyncio.sleep(0.001)
        if received >= 8 * 1460:
            break
    await asyncio.sleep(0.05)  # the last ACKs
    sent = _sent_to(out_a, DISCARD)
    mss = max(f.payload_len for f in sent)
    template = next(f for f in reversed(sent) if f.payload_len == mss)
    last = sent[-1]
    seq = last.seq + last.payload_len
    ack = last.ack
    base = received
    null_a, null_b = NullDevice(), NullDevice()
    a.attach(null_a)
    b.attach(null_b)
    payload = bytes(range(256)) * (mss // 256) + bytes(mss % 256)
    frames = [template.build(seq + i * mss, ack, payload, i) for i in range(segments)]
    inside = 0.0
    receive = b.receive
    perf = time.perf_counter
    t0 = perf()
    for i in range(0, segments, BATCH):
        t1 = perf()
        for f in frames[i:i + BATCH]:
            receive(f)
        inside += perf() - t1
        await _turns()
    while received - base < segments * mss and perf() - t0 < 60:
        await asyncio.sleep(0)
    dt = perf() - t0
    got = received - base
    result = {"segments": segments, "payload": mss, "seconds": dt,
              "per_second": segments / dt, "us_per_segment": dt / segments * 1e6,
              "us_receive_only": inside / segments * 1e6,
              "acks_sent": null_b.frames, "byte_exact": got == segments * mss}
    writer.close()
    a.close()
    b.close()
    return result


async def ack_run(segments: int) -> dict:
    """Pure ACKs into B, each acknowledging one more segment B really sent."""
    loop = asyncio.get_running_loop()
    a, b, out_a, out_b = await _pair(loop)
    block = bytes(CHUNK)

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(block)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the loop ends under us: finish quietly, not as a cancelled handler

    await b.start_server(source, B, SOURCE)
    reader, writer = await a.open_connection(B, SOURCE)
    await reader.readexactly(8 * 1460)  # a's ACKs of real data: the template
    null_a, null_b = NullDevice(), NullDevice()
    a.attach(null_a)  # from here on a is silent; we are its voice
    b.attach(null_b)
    await asyncio.sleep(0.01)  # frames already on the link arrive; taps still see all
    acks = [f for f in _sent_to(out_a, SOURCE) if f.payload_len == 0 and f.flags & 0x10]
    template = acks[-1]
    seq = template.seq
    acked = template.ack
    mss = 0
    hi = acked
    tsval = template.tsecr
    seen = 0  # out_b frames looked at
    done = 0
    inside = 0.0
    receive = b.receive
    perf = time.perf_counter
    ident = 0
    idle = 0
    t0 = perf()
    build_time = 0.0
    while done < segments:
        tb = perf()
        for f in _sent_from(out_b[seen:], SOURCE):
            mss = max(mss, f.payload_len)
            end = f.seq + f.payload_len
            if (end - hi) & 0x80000000 == 0:
                hi = end
            if f.tsval is not None:
                tsval = f.tsval
        seen = len(out_b)
        frames = []
        while len(frames) < BATCH and done + len(frames) < segments and mss:
            nxt = acked + mss
            if (hi - nxt) & 0x80000000:
                break  # not sent yet
            acked = nxt
            ident += 1
            frames.append(template.build(seq, acked, b"", ident, tsval, window=0xFFFF))
        build_time += perf() - tb
        if not frames:
            idle += 1
            if idle > 10_000:
                break
            await asyncio.sleep(0)
            continue
        t1 = perf()
        for f in frames:
            receive(f)
        inside += perf() - t1
        done += len(frames)
        await _turns()
    dt = perf() - t0 - build_time  # the benchmark's own frame building is not the stack's
    result = {"segments": done, "payload": mss, "seconds": dt,
              "per_second": done / dt if dt > 0 else 0.0,
              "us_per_segment": dt / done * 1e6 if done else 0.0,
              "us_receive_only": inside / done * 1e6 if done else 0.0,
              "data_sent": null_b.frames, "byte_exact": done == segments}
    writer.close()
    a.close()
    b.close()
    return result


def runs(segments: int, repeat: int, use_uvloop: bool = True) -> dict[str, dict]:
    """Best (fastest whole-path) of `repeat` runs of each kind."""
    run = asyncio.run
    if use_uvloop:
        import uvloop
        run = uvloop.run
    best: dict[str, dict] = {}
    for _ in range(max(1, repeat)):
        for kind, fn in (("data", data_run), ("ack", ack_run)):
            r = run(fn(segments))
            if kind not in best or r["us_per_segment"] < best[kind]["us_per_segment"] \
                    or not r["byte_exact"]:
                if best.get(kind, {}).get("byte_exact", True):
                    best[kind] = r
    return best


def figures(segments: int = 200_000, repeat: int = 3, use_uvloop: bool = True) -> list[dict]:
    """Rows {"name", "value", "unit", ...} for tools/bench."""
    rows = []
    names = {"data": "data_1448", "ack": "pure_ack"}
    for kind, r in runs(segments, repeat, use_uvloop).items():
        extra = {k: v for k, v in r.items() if k not in ("per_second",)}
        rows.append({"name": f"{names[kind]} segments/s", "value": r["per_second"],
                     "unit": "seg/s", **extra})
        rows.append({"name": f"{names[kind]} per segment", "value": r["us_per_segment"],
                     "unit": "µs", "byte_exact": r["byte_exact"]})
        rows.append({"name": f"{names[kind]} per segment, receive() only",
                     "value": r["us_receive_only"], "unit": "µs",
                     "byte_exact": r["byte_exact"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", type=int, default=200_000, help="per run (default 200000)")
    p.add_argument("--repeat", type=int, default=3, help="runs, best taken (default 3)")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = figures(args.segments, args.repeat, not args.no_uvloop)
    for r in rows:
        print(f"{r['name']:<40} {r['value']:12,.2f} {r['unit']}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0 if all(r.get("byte_exact", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
