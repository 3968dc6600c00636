"""Spoofed SYNs at full speed from a raw socket: the kernel side of a SYN-flood test.

    python benchmarks/syn_flood.py --dst 10.77.0.2 --port 80 --count 100000

Run it inside the namespace of the daemon under test (`ip netns exec NS ...`), never
elsewhere: the SYNs go to --dst through that namespace's TUN device, from source
addresses 10.77.1.0 - 10.77.255.255 (never 10.77.0.x, the TUN's own subnet, so the
kernel owns none of them), a different address and port for each SYN, with Linux's SYN
options (MSS, SACK-permitted, timestamps, window scale). The daemon's SYN-ACKs to those
addresses reach the namespace's kernel, which does not forward and drops them.

The frames are built first (--repeat sends them again, for a longer flood); then "ready" is printed and the flood starts when a line
arrives on stdin (so the caller can start its client at the same moment). At the end
one JSON line: {"sent", "errors", "seconds"}. The count bounds it; nothing loops.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ustack.wire.ip import ip_to_bytes  # noqa: E402
from ustack.wire.tcp import SYN, Segment, build_tcp_ipv4  # noqa: E402


def frames(dst: bytes, port: int, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        n = 256 + i % (255 * 256 - 1)  # 10.77.1.0 .. 10.77.255.255
        src = bytes([10, 77, n >> 8, n & 0xFF])
        seg = Segment(1024 + rng.randrange(64000), port, rng.getrandbits(32), 0, SYN, 64240)
        seg.mss, seg.sack_perm, seg.wscale = 1460, True, 7
        seg.ts = (rng.getrandbits(32), 0)
        out.append(build_tcp_ipv4(seg, src, dst, i & 0xFFFF))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dst", default="10.77.0.2")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1,
                    help="send the COUNT frames this many times (a longer flood)")
    ap.add_argument("--now", action="store_true", help="start at once, not on a stdin line")
    a = ap.parse_args()
    if not a.dst.startswith("10.77."):
        print("syn_flood: --dst must be in 10.77.0.0/16", file=sys.stderr)
        return 2
    built = frames(ip_to_bytes(a.dst), a.port, a.count, a.seed)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    print("ready", flush=True)
    if not a.now:
        sys.stdin.readline()
    addr = (a.dst, 0)
    send = s.sendto
    errors = 0
    t = time.perf_counter()
    for _ in range(max(a.repeat, 1)):
        for f in built:
            try:
                send(f, addr)
            except OSError:  # ENOBUFS when the device queue is full: counted, not retried
                errors += 1
    dt = time.perf_counter() - t
    s.close()
    total = len(built) * max(a.repeat, 1)
    print(json.dumps({"sent": total - errors, "errors": errors, "seconds": dt}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
