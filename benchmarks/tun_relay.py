"""A bare Python TUN relay: two TUN devices, every packet read from one written to the
other. The ceiling of "one Python syscall per 1500-byte frame", for benchmarks/bench_e2e.py.

    python benchmarks/tun_relay.py NS1 TUN1 NS2 TUN2 [--drop P] [--seed N]

The relay creates TUN1 in network namespace NS1 and TUN2 in NS2 (it enters each with
setns(2) before TUNSETIFF, so each device is born in its namespace; the fds keep working
from wherever the process is), prints "ready" and copies frames both ways until SIGTERM
or SIGINT, then prints its counters as one JSON line on stdout. It does not configure the
devices: the caller gives them addresses (`ip -n NS1 addr add 10.77.2.1 peer 10.77.2.2
dev TUN1`, and the mirror image in NS2) and brings them up.

Each frame costs one os.read() and one os.write() from a uvloop add_reader() callback:
IFF_TUN | IFF_NO_PI (bare IPv4, no packet-information header), no IFF_VNET_HDR, so no
offloads: the kernel segments to the MTU (1500) before a frame reaches us. A frame the
other device cannot take right now (EAGAIN, ENOBUFS) is dropped and counted, as a NIC
would; TCP recovers.

`--drop P` drops each frame, either way, with probability P (a seeded RNG, `--seed`),
counted as `lost_1to2` / `lost_2to1`: the kernel's side of the loss benchmark
(benchmarks/bench_loss.py), the same random loss as `ustack serve --impair loss=P`.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import json
import os
import random
import signal
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
READ_SIZE = 65535
BATCH = 256  # frames per readiness callback before the loop gets a turn


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_tun(netns: str, name: str) -> int:
    """A new non-persistent TUN device `name` inside namespace `netns`; its fd."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as ns:
        _setns(ns.fileno())
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        finally:
            _setns(home.fileno())
    os.set_blocking(fd, False)
    return fd


class Relay:
    def __init__(self, fd1: int, fd2: int, drop: float = 0.0, seed: int = 1) -> None:
        self.fds = (fd1, fd2)
        self.frames = [0, 0]  # copied 1->2, 2->1
        self.bytes = [0, 0]
        self.dropped = [0, 0]
        self.lost = [0, 0]  # dropped on purpose (--drop)
        self.largest = 0
        self.drop = drop
        self.rng = random.Random(seed)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.fds[0], self._copy, 0)
        loop.add_reader(self.fds[1], self._copy, 1)

    def _copy(self, side: int) -> None:
        src, dst = self.fds[side], self.fds[1 - side]
        read, write = os.read, os.write
        n = nbytes = dropped = lost = 0
        drop = self.drop
        rnd = self.rng.random
        try:
            for _ in range(BATCH):
                frame = read(src, READ_SIZE)
                n += 1
                nbytes += len(frame)
                if len(frame) > self.largest:
                    self.largest = len(frame)
                if drop and rnd() < drop:
                    lost += 1
                    continue
                try:
                    write(dst, frame)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EIO):
                        raise
                    dropped += 1
        except BlockingIOError:
            pass
        self.frames[side] += n
        self.bytes[side] += nbytes
        self.dropped[side] += dropped
        self.lost[side] += lost

    def counters(self) -> dict:
        return {"frames_1to2": self.frames[0], "frames_2to1": self.frames[1],
                "bytes_1to2": self.bytes[0], "bytes_2to1": self.bytes[1],
                "dropped_1to2": self.dropped[0], "dropped_2to1": self.dropped[1],
                "lost_1to2": self.lost[0], "lost_2to1": self.lost[1],
                "largest_frame": self.largest}


async def serve(fd1: int, fd2: int, drop: float = 0.0, seed: int = 1) -> Relay:
    loop = asyncio.get_running_loop()
    relay = Relay(fd1, fd2, drop, seed)
    relay.start(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    return relay


def main(argv: list[str]) -> int:
    opts = {"--drop": 0.0, "--seed": 1}
    args = []
    it = iter(argv)
    for a in it:
        if a in opts:
            try:
                opts[a] = type(opts[a])(next(it))
            except (StopIteration, ValueError):
                args = []
                break
        else:
            args.append(a)
    if len(args) != 4 or not 0.0 <= opts["--drop"] < 1.0:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    ns1, name1, ns2, name2 = args
    fd1 = open_tun(ns1, name1)
    fd2 = open_tun(ns2, name2)
    import uvloop

    relay = uvloop.run(serve(fd1, fd2, opts["--drop"], opts["--seed"]))
    os.close(fd1)
    os.close(fd2)
    print(json.dumps(relay.counters()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
