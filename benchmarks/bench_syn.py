"""The SYN path: bytes per request record, SYNs answered per second, with and without cookies.

Run: python benchmarks/bench_syn.py [--records 100000] [--syns 100000]   (~15 s; or tools/bench)

In process, on the sans-IO table (no TUN, no event loop): what one core can answer when
every SYN costs a trip through Python, as during a SYN flood (issue 13, section 1).

1. Memory: tracemalloc over `--records` SYNs to a listener whose backlog takes them all
   (tcp_syncookies=1, the queue never full): everything a request record costs is
   counted, the 12-byte key, the packed record, the dict slot and the reference in the
   SYN-ACK timer's bucket. Goal: at most 250 bytes.
2. SYNs answered per second, each from another spoofed source address, as a flood
   sends them, best of REPEAT runs:
   - `table`: `TcpTable.input()` plus `transmit()`, the core alone;
   - `wire`: the frame parsed (`parse_tcp`) and the SYN-ACK frame built
     (`build_tcp_ipv4`), as the shell does for every frame, around the same.
   for cookies (tcp_syncookies=2: nothing kept) and for request records.
3. What cookie SYNs leave behind: tracemalloc's peak of extra memory while `--syns`
   cookie SYNs run (the replies in flight), and the bytes retained per SYN after them
   (`retained_per_syn`, 0: no per-SYN state; each SYN-ACK goes and is freed).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ustack.config import Config, apply_settings  # noqa: E402
from ustack.table import TcpTable  # noqa: E402
from ustack.tcp.context import Context  # noqa: E402
from ustack.wire.tcp import SYN, Segment, build_tcp, build_tcp_ipv4, parse_tcp  # noqa: E402

LOCAL = bytes([10, 77, 0, 2])
REPEAT = 5
GOAL_BYTES = 250
T0 = 1000.0


def make_table(*settings: str) -> TcpTable:
    cfg = apply_settings(Config(), ["somaxconn=1048576", *settings])
    table = TcpTable(Context(cfg, seed=1))
    table.listen("10.77.0.2", 80, backlog=1 << 20)
    return table


def syn_frames(n: int, base: int = 0) -> list[bytes]:
    """n SYN frames (IPv4 + TCP with Linux's SYN options) from 10.77.x.y sources."""
    out = []
    for i in range(base, base + n):
        src = bytes([10, 77, (i >> 8) & 0xFF, i & 0xFF])
        sport = 1024 + (i >> 16)
        seg = Segment(sport, 80, (i * 2654435761) & 0xFFFFFFFF, 0, SYN, 64240)
        seg.mss, seg.sack_perm, seg.ts, seg.wscale = 1460, True, (i, 0), 7
        tcp = build_tcp(seg, src, LOCAL)
        ip = bytes([0x45, 0, 0, 20 + len(tcp), 0, 0, 0x40, 0, 64, 6, 0, 0]) + src + LOCAL
        out.append(ip + tcp)
    return out


def bytes_per_record(n: int) -> float:
    table = make_table()
    frames = syn_frames(n)
    segs = [parse_tcp(f, 20, len(f)) for f in frames]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    now = T0
    for i, (f, seg) in enumerate(zip(frames, segs, strict=True)):
        table.input(f[12:24], seg, now + i * 1e-5)
        if i & 1023 == 1023:
            table.transmit(now)
    table.transmit(now)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(table.reqs) == n, len(table.reqs)
    return (after - before) / n


def rate(settings: tuple[str, ...], n: int, wire: bool) -> float:
    """SYNs answered per second (best of REPEAT), each run on a fresh table."""
    frames = syn_frames(n)
    segs = [parse_tcp(f, 20, len(f)) for f in frames]
    best = 0.0
    for _ in range(REPEAT):
        table = make_table(*settings)
        now = T0
        gc.collect()
        t = time.perf_counter()
        if wire:
            for f in frames:
                table.input(f[12:24], parse_tcp(f, 20, len(f)), now)
                for src, dst, seg in table.transmit(now):
                    build_tcp_ipv4(seg, src, dst, 0)
        else:
            for f, seg in zip(frames, segs, strict=True):
                table.input(f[12:24], seg, now)
                table.transmit(now)
        dt = time.perf_counter() - t
        assert table.ctx.stats["TcpOutSegs"] == n
        best = max(best, n / dt)
    return best


def cookie_residue(n: int) -> tuple[float, int]:
    """Bytes still allocated per cookie SYN after n of them (warmed up first), and the
    peak of the extra memory while they ran (a reply or a batch of them in flight)."""
    table = make_table("tcp_syncookies=2")
    frames = syn_frames(n)
    segs = [parse_tcp(f, 20, len(f)) for f in frames]
    for f, seg in zip(frames[:1000], segs[:1000], strict=True):
        table.input(f[12:24], seg, T0)
        table.transmit(T0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for f, seg in zip(frames, segs, strict=True):
        table.input(f[12:24], seg, T0)
        table.transmit(T0)
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(table.reqs) == 0 and len(table.est) == 0
    return max(after - before, 0) / n, peak - before


def figures(records: int = 100_000, syns: int = 100_000, repeat: int = REPEAT) -> list[dict]:
    """Rows {"name", "value", "unit"} for tools/bench."""
    global REPEAT
    REPEAT = repeat
    bpr = bytes_per_record(records)
    rows = [{"name": "bytes_per_request_record", "value": bpr, "unit": "B",
             "records": records, "goal": GOAL_BYTES}]
    for label, settings in (("cookie", ("tcp_syncookies=2",)), ("record", ())):
        for wire in (False, True):
            rows.append({"name": f"{label}_syns_{'wire' if wire else 'table'}",
                         "value": rate(settings, syns, wire) / 1e3, "unit": "k SYN/s",
                         "syns": syns})
    retained, peak = cookie_residue(syns)
    rows.append({"name": "cookie_peak_bytes", "value": float(peak), "unit": "B",
                 "syns": syns, "retained_per_syn": retained})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--syns", type=int, default=100_000)
    a = ap.parse_args()
    print(f"Python {sys.version.split()[0]}; one core, in process (the machine may be loaded)")
    for r in figures(a.records, a.syns):
        extra = f" (goal <= {r['goal']}: {'ok' if r['value'] <= r['goal'] else 'MISSED'})" \
            if "goal" in r else ""
        if "retained_per_syn" in r:
            extra = f" (retained after them: {r['retained_per_syn']:.2f} B per SYN)"
        print(f"  {r['name']:32} {r['value']:10.1f} {r['unit']}{extra}")


if __name__ == "__main__":
    main()
