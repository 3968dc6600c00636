"""Crafted packets from the kernel side of a TUN device, for the attack tests.

    python attacker.py blind --iface ustack0 --cport 45000 [--seconds 4] [--syns 5000]
    python attacker.py malformed --iface ustack0 --count 20000 [--seed 1]

Frames are written with an AF_PACKET socket on the TUN interface, so they reach the
stack byte for byte as written (bad IP checksums and lengths included, which a raw IP
socket would repair). Addresses are the namespace's: 10.77.0.1 (the kernel) to
10.77.0.2 (ustack). Prints one JSON line of what was sent, by kind.

blind: against the running connection 10.77.0.1:CPORT <-> 10.77.0.2:80, whose numbers
it learns by watching the interface (the position an on-path observer would have; a
blind attacker has to sweep instead, and the sweeps are there too):
  rst-sweep  RSTs over the whole sequence space, a step of 128 KiB (some in the window,
             never the exact RCV.NXT: RFC 5961 3.2 answers those with a challenge ACK)
  syn        SYNs with in-window sequence numbers (RFC 5961 4: challenge ACK)
  data-old   data at in-window sequence numbers with an ACK older than the window
             (RFC 5961 5.2: dropped, challenge ACK)
  data-new   the same with an ACK of data never sent (RFC 9293: dropped, an ACK)
  ack-new    pure ACKs for data never sent
  data-out   data just beyond the right edge of the window and just before RCV.NXT
malformed: tens of thousands of broken frames of every kind, at random.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import threading
import time

ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003
KERNEL, USTACK = bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2])
MASK = 0xFFFFFFFF


def csum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(payload: bytes, proto: int = 6, src: bytes = KERNEL, dst: bytes = USTACK,
         options: bytes = b"", frag: int = 0x4000, total: int | None = None,
         bad_csum: bool = False, version: int = 4) -> bytes:
    ihl = 5 + len(options) // 4
    length = ihl * 4 + len(payload) if total is None else total
    head = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, length & 0xFFFF,
                       random.getrandbits(16), frag, 64, proto, 0, src, dst) + options
    c = csum(head) ^ (0x1234 if bad_csum else 0)
    return head[:10] + struct.pack("!H", c) + head[12:] + payload


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
        wnd: int = 502, options: bytes = b"", offset: int | None = None,
        bad_csum: bool = False, src: bytes = KERNEL, dst: bytes = USTACK) -> bytes:
    off = (5 + len(options) // 4) if offset is None else offset
    head = struct.pack("!HHIIBBHHH", sport, dport, seq & MASK, ack & MASK, off << 4, flags,
                       wnd, 0, 0) + options
    seg = head + payload
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(seg))
    c = csum(pseudo + seg) ^ (0x0F0F if bad_csum else 0)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16


class Watcher(threading.Thread):
    """Learns the connection's numbers from the interface: the server's highest
    sequence sent and acknowledged, the client's next sequence and its window."""

    def __init__(self, iface: str, cport: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.bind((iface, 0))
        self.sock.settimeout(0.2)
        self.cport = cport
        self.srv_nxt = self.srv_una = self.cli_nxt = None
        self.cli_wnd = 65535
        self.stop = False
        self.seen = threading.Event()

    def run(self) -> None:
        while not self.stop:
            try:
                pkt = self.sock.recv(65536)
            except TimeoutError:
                continue
            if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6:
                continue
            ihl = (pkt[0] & 15) * 4
            total = (pkt[2] << 8) | pkt[3]
            sport, dport, seq, ack, off, flags, wnd = struct.unpack(
                "!HHIIBBH", pkt[ihl:ihl + 16])
            plen = total - ihl - (off >> 4) * 4
            if sport == 80 and dport == self.cport and pkt[12:16] == USTACK:
                end = (seq + plen + (1 if flags & (SYN | FIN) else 0)) & MASK
                if self.srv_nxt is None or (end - self.srv_nxt) & MASK < 1 << 31:
                    self.srv_nxt = end
            elif sport == self.cport and dport == 80 and pkt[12:16] == KERNEL:
                self.cli_nxt = (seq + plen) & MASK
                self.srv_una = ack
                self.cli_wnd = wnd
                if self.srv_nxt is not None:
                    self.seen.set()


def blind(args: argparse.Namespace) -> dict:
    w = Watcher(args.iface, args.cport)
    w.start()
    if not w.seen.wait(20):
        raise SystemExit("no traffic of the connection seen")
    out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    dest = (args.iface, ETH_P_IP)
    sent: dict[str, int] = {}

    def send(kind: str, seg: bytes) -> None:
        out.sendto(ipv4(seg), dest)
        sent[kind] = sent.get(kind, 0) + 1

    cp = args.cport
    deadline = time.monotonic() + args.seconds
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        rcv_nxt = w.cli_nxt  # the server's RCV.NXT: the client sends only ACKs now
        una, nxt = w.srv_una, w.srv_nxt
        # The server advertises up to 256 KiB: in its window, never exactly RCV.NXT.
        start = random.getrandbits(17)
        for k in range(0, 1 << 32, 1 << 17):
            s = (start + k) & MASK
            if s != rcv_nxt:
                send("rst-sweep", tcp(cp, 80, s, 0, RST))
        for _ in range(args.syns // 4):
            send("syn", tcp(cp, 80, rcv_nxt + random.randrange(1, 60000), 0, SYN))
        for _ in range(200):
            s = rcv_nxt + random.randrange(0, 60000)
            old = una - (64 << 20) - random.randrange(1, 1 << 16)  # older than any window
            send("data-old", tcp(cp, 80, s, old, ACK | PSH, b"EVIL" * 8))
            new = nxt + (16 << 20) + random.randrange(1, 1 << 16)  # never sent
            send("data-new", tcp(cp, 80, s, new, ACK | PSH, b"EVIL" * 8))
            send("ack-new", tcp(cp, 80, rcv_nxt, new, ACK))
            edge = rcv_nxt + (1 << 20) + random.randrange(0, 1000)  # beyond the window
            send("data-out", tcp(cp, 80, edge, una, ACK | PSH, b"EVIL" * 8))
            send("data-out", tcp(cp, 80, rcv_nxt - 2000 - random.randrange(1 << 16), una,
                                 ACK | PSH, b"EVIL" * 8))
        time.sleep(0.05)
    w.stop = True
    return {"rounds": rounds, "sent": sent}


# Each malformed kind and the frame it makes (the counter it must land in is the test's).
def _malformed(kind: str, rnd: random.Random) -> bytes:
    port = rnd.choice((80, 7, 9, 81))
    sp = rnd.randrange(1024, 65536)
    good = tcp(sp, port, rnd.getrandbits(32), rnd.getrandbits(32), ACK, b"x" * rnd.randrange(40))
    if kind == "ip-csum":
        return ipv4(good, bad_csum=True)
    if kind == "ip-short":
        return ipv4(good)[:rnd.randrange(0, 20)]
    if kind == "ip-version":
        return ipv4(good, version=rnd.choice((0, 5, 7, 15)))
    if kind == "ip-total-long":
        return ipv4(good, total=20 + len(good) + rnd.randrange(1, 500))
    if kind == "ip-ihl":
        f = bytearray(ipv4(good))
        f[0] = 0x40 | rnd.randrange(0, 5)  # IHL below 5
        return bytes(f)
    if kind == "fragment":
        return ipv4(good, frag=rnd.choice((0x2000, 0x2000 | rnd.randrange(1, 0x1FFF),
                                           rnd.randrange(1, 0x1FFF))))
    if kind == "ip-options":
        return ipv4(good, options=bytes([7, 7, 4, 0, 0, 0, 0, 1]))  # record route + EOL
    if kind == "proto":
        return ipv4(good, proto=rnd.choice((17, 47, 132, 250)))
    if kind == "tcp-csum":
        return ipv4(tcp(sp, port, 1, 1, ACK, b"y" * 10, bad_csum=True))
    if kind == "tcp-short":
        return ipv4(good[:rnd.randrange(0, 20)])
    if kind == "tcp-offset":
        return ipv4(tcp(sp, port, 1, 1, ACK, b"z" * 8, offset=rnd.choice((0, 1, 4, 15))))
    if kind == "tcp-options":
        bad = rnd.choice((bytes([2, 0, 0, 0]), bytes([2, 9, 5, 0]), bytes([8, 30, 0, 0]),
                          bytes([3, 2, 0, 0]), bytes([5, 3, 0, 0]), bytes([99, 1, 0, 0])))
        return ipv4(tcp(sp, port, 1, 1, SYN, options=bad))
    if kind == "random":
        return bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 120)))
    raise ValueError(kind)


KINDS = ("ip-csum", "ip-short", "ip-version", "ip-total-long", "ip-ihl", "fragment",
         "ip-options", "proto", "tcp-csum", "tcp-short", "tcp-offset", "tcp-options",
         "random")


def malformed(args: argparse.Namespace) -> dict:
    rnd = random.Random(args.seed)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    dest = (args.iface, ETH_P_IP)
    sent: dict[str, int] = {}
    for i in range(args.count):
        kind = KINDS[i % len(KINDS)]
        frame = _malformed(kind, rnd)
        if not frame:
            frame = b"\x45"
        try:
            out.sendto(frame, dest)
        except OSError:
            continue  # the device's queue is full: the kernel drops, not us
        sent[kind] = sent.get(kind, 0) + 1
        if i % 500 == 499:
            time.sleep(0.01)  # a steady stream, not one burst the TUN queue drops
    return {"sent": sent}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("blind")
    b.add_argument("--iface", required=True)
    b.add_argument("--cport", type=int, required=True)
    b.add_argument("--seconds", type=float, default=4.0)
    b.add_argument("--syns", type=int, default=5000)
    m = sub.add_parser("malformed")
    m.add_argument("--iface", required=True)
    m.add_argument("--count", type=int, default=20000)
    m.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    result = blind(args) if args.mode == "blind" else malformed(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
