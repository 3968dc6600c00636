"""Wire-format costs: demux key slicing, TCP parsing, checksums and building.

Run: python benchmarks/bench_wire.py   (or through tools/bench)

Each figure is the best of three runs of about 0.5 s each, timed with time.perf_counter_ns.
Statements are compiled into the timing loop (as timeit does), so no call to a lambda is
added; the "net" column subtracts the cost of an empty loop iteration.
"""

from __future__ import annotations

import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dpkt  # noqa: E402

from ustack.wire.checksum import checksum, mod_ffff  # noqa: E402
from ustack.wire.ip import PROTO_TCP, build_ipv4, ip_to_bytes  # noqa: E402
from ustack.wire.tcp import ACK, PSH, Segment, build_tcp, build_tcp_ipv4, parse_tcp  # noqa: E402

TARGET_NS = 500_000_000
REPEAT = 3


def word_loop_checksum(data: bytes) -> int:
    """RFC 1071 the plain way: one Python iteration per 16-bit word."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def array_checksum(data: bytes) -> int:
    """Sum native-order words with array('H'); the one's-complement sum is byte-order
    independent (RFC 1071 1.2.B), so swap the folded result on little-endian hosts."""
    if len(data) & 1:
        data += b"\0"
    s = sum(array("H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    if sys.byteorder == "little":
        s = ((s & 0xFF) << 8) | (s >> 8)
    return ~s & 0xFFFF


def run(stmt: str, ns: dict, n: int) -> int:
    """Time `n` executions of `stmt` inside one compiled loop; returns elapsed ns."""
    src = (f"def _bench(_n, _clock):\n    _t0 = _clock()\n    for _ in range(_n):\n"
           f"        {stmt}\n    return _clock() - _t0\n")
    code: dict = {}
    exec(compile(src, "<bench>", "exec"), ns, code)
    return code["_bench"](n, time.perf_counter_ns)


def per_op(stmt: str, ns: dict, target_ns: int = TARGET_NS, repeat: int = REPEAT) -> float:
    """Best-of-`repeat` ns per execution, with n calibrated so each run takes ~target_ns."""
    n = 1
    while True:
        t = run(stmt, ns, n)
        if t >= target_ns // 20:
            break
        n *= 10 if t < target_ns // 200 else 2
    n = max(1, n * target_ns // max(t, 1))
    return min(run(stmt, ns, n) for _ in range(repeat)) / n


RATIOS = [("dpkt", "slice", "dpkt parse / key slice"),
          ("dpkt", "parse", "dpkt parse / ustack parse_tcp"),
          ("words", "cksum", "word loop / ustack checksum"),
          ("array", "cksum", "array('H') / ustack checksum")]


def figures(target_ns: int = TARGET_NS, repeat: int = REPEAT, show: bool = False
            ) -> list[dict]:
    """The figures as rows {"name", "value", "unit"} (tools/bench collects these): each
    case's ns/op and net ns/op, then the ratios of the net figures. `show` prints the
    table as the script always has, row by row."""
    src, dst = ip_to_bytes("10.0.0.1"), ip_to_bytes("10.0.0.2")
    seg = Segment(sport=43210, dport=80, seq=0x12345678, ack=0x9ABCDEF0, flags=ACK | PSH,
                  wnd=502, payload=bytes(range(256)) * 5 + bytes(168), ts=(123456789, 987654))
    assert len(seg.payload) == 1448
    frame = build_ipv4(src, dst, PROTO_TCP, build_tcp(seg, src, dst))
    assert len(frame) == 1500
    assert parse_tcp(frame, 20, len(frame)) == seg
    data1460 = bytes((i * 7 + 3) & 0xFF for i in range(1460))
    assert checksum(data1460) == word_loop_checksum(data1460) == array_checksum(data1460)

    ns = {
        "frame": frame, "seg": seg, "src": src, "dst": dst, "data": data1460,
        "parse_tcp": parse_tcp, "dpkt": dpkt, "checksum": checksum,
        "word_loop_checksum": word_loop_checksum, "array_checksum": array_checksum,
        "build_tcp": build_tcp, "build_ipv4": build_ipv4, "PROTO_TCP": PROTO_TCP,
        "build_tcp_ipv4": build_tcp_ipv4, "mod_ffff": mod_ffff,
        "n_frame": len(frame),
    }
    cases = [
        ("loop", "empty loop iteration", "pass"),
        ("slice", "(a) four-tuple key frame[12:24]", "frame[12:24]"),
        ("parse", "(b) ustack parse_tcp, 1448 B + TS", "parse_tcp(frame, 20, n_frame)"),
        ("dpkt", "(c) dpkt.ip.IP(frame), full parse", "dpkt.ip.IP(frame)"),
        ("cksum", "(d) ustack checksum, 1460 B", "checksum(data)"),
        ("words", "(d) word-loop checksum, 1460 B", "word_loop_checksum(data)"),
        ("array", "(d) array('H') checksum, 1460 B", "array_checksum(data)"),
        ("mod", "(d) from_bytes % 0xFFFF, 1460 B", "int.from_bytes(data, 'big') % 0xFFFF"),
        ("fold", "(d) from_bytes, folded (mod_ffff), 1460 B",
         "mod_ffff(int.from_bytes(data, 'big'), 1460)"),
        ("build", "(e) build_tcp + build_ipv4, 1448 B",
         "build_ipv4(src, dst, PROTO_TCP, build_tcp(seg, src, dst))"),
        ("build_frame", "(f) build_tcp_ipv4 (the output path)",
         "build_tcp_ipv4(seg, src, dst, 1)"),
    ]
    if show:
        print(f"Python {sys.version.split()[0]}, dpkt {dpkt.__version__}; "
              f"best of {repeat} x ~{target_ns / 1e9:.1f} s per row")
        print(f"{'operation':<38} {'ns/op':>10} {'net ns/op':>10}")
        print("-" * 60)
    net: dict[str, float] = {}
    base = 0.0
    rows = []
    for key, label, stmt in cases:
        t = per_op(stmt, ns, target_ns, repeat)
        if key == "loop":
            base = t
        net[key] = t - base
        rows.append({"name": key, "value": t, "unit": "ns/op", "net": t - base,
                     "label": label})
        if show:
            print(f"{label:<38} {t:>10.1f} {t - base:>10.1f}")
    if show:
        print("-" * 60)
    for a, b, label in RATIOS:
        rows.append({"name": f"{a}/{b}", "value": net[a] / net[b], "unit": "x (net)",
                     "label": label})
        if show:
            print(f"{label + ' (net)':<38} {net[a] / net[b]:>9.1f}x")
    return rows


def main() -> None:
    figures(show=True)


if __name__ == "__main__":
    main()
