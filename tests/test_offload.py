"""TUN offloads (issue 11, LINUX-SPEC-2 section 1): super-segments out (TSO) and in
(GRO), partial checksums, and the virtio-net header, without root.

The core is driven by the drill with a link that takes 64 KB segments; the shell and
the device by a software "kernel" that checks each written super-segment as
`virtio_net_hdr_to_skb()` would and cuts it as `tcp_gso_segment()` does (item 209)
before handing the pieces to a second stack.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct

import pytest
from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)

from ustack import Stack
from ustack.io.memory import MemoryLink
from ustack.io.tun import FdDevice
from ustack.wire import vnet
from ustack.wire.checksum import ones_sum
from ustack.wire.tcp import FIN, PSH, SYN, Segment, build_tcp_ipv4, parse_tcp

MSS = 1448  # 1460 less the timestamp option
GSO_MAX = 65535 - 20 - 60


def tso_drill() -> Drill:
    d = Drill()
    d.ctx.set_link(1500, GSO_MAX)
    d.established_passive()
    return d


# ---------------------------------------------------------------------- the core (TSO)


def test_first_flight_is_two_super_segments_of_five():
    """tcp_cwnd_test(): at most half the cwnd per packet, so IW10 leaves as two packets
    of five segments (item 206); each says its segment size and counts as five."""
    d = tso_drill()
    out0 = d.stats["TcpOutSegs"]
    d.send(30 * MSS)
    a = d.expect(f". 1:{1 + 5 * MSS}({5 * MSS}) ack 1")
    b = d.expect(f". {1 + 5 * MSS}:{1 + 10 * MSS}({5 * MSS}) ack 1")
    assert a.gso == b.gso == MSS
    assert d.stats["TcpOutSegs"] - out0 == 10  # wire segments, as tcp_skb_pcount()


def test_a_stretch_ack_grows_the_window_by_all_it_covers():
    d = tso_drill()
    d.send(60 * MSS)
    d.take()
    d.inject(f". 1:1(0) ack {1 + 10 * MSS}")  # one ACK for ten segments: cwnd 20
    segs = d.take()
    assert [len(s.payload) for s in segs] == [10 * MSS, 10 * MSS]
    assert all(s.gso == MSS for s in segs)


def test_a_partial_last_piece_rides_along_unless_nagle_holds_it():
    """tcp_mss_split_point(): the short tail of the queue goes in the super-segment when
    Nagle allows it; while a small segment is unacknowledged it waits (Minshall)."""
    d = tso_drill()
    d.send(3 * MSS + 100)
    seg = d.expect(f"P. 1:{1 + 3 * MSS + 100}({3 * MSS + 100}) ack 1")
    assert seg.gso == MSS
    d.send(3 * MSS + 200)  # the 100-byte tail above is unacknowledged: Nagle
    start = 1 + 3 * MSS + 100
    seg = d.expect(f". {start}:{start + 3 * MSS}({3 * MSS}) ack 1")
    assert seg.gso == MSS
    d.expect_nothing()
    d.inject(f". 1:1(0) ack {start + 3 * MSS}")
    d.expect(f"P. {start + 3 * MSS}:{start + 3 * MSS + 200}(200) ack 1")


def test_without_tso_every_segment_fits_the_mss():
    d = Drill()
    d.established_passive()
    d.send(5 * MSS)
    for i in range(5):
        seg = d.expect(f"{'P.' if i == 4 else '.'} {1 + i * MSS}:{1 + (i + 1) * MSS}({MSS}) ack 1")
        assert seg.gso == 0


def test_retransmissions_are_wire_sized():
    d = tso_drill()
    d.send(10 * MSS)
    d.take()  # two super-segments of five
    # The loss probe (RFC 8985 7.3) resends the last segment, not the last packet.
    seg = d.expect(f"P. {1 + 9 * MSS}:{1 + 10 * MSS}({MSS}) ack 1", after=0.002)
    assert seg.gso == 0
    seg = d.expect(f"P. 1:{1 + MSS}({MSS}) ack 1", after=0.2)  # the RTO: one segment
    assert seg.gso == 0


# ---------------------------------------------------------------------- the core (GRO)


def test_a_super_segment_in_is_one_segment_and_one_ack():
    """A 64 KB GRO super-segment: one trip through the input path, one ACK (more than
    one rcv_mss is unacknowledged), and rcv_mss is its gso_size, not its length
    (tcp_measure_rcv_mss())."""
    d = Drill()
    tcb = d.established_passive()
    seg = d.segment(f". 1:{1 + 40 * MSS}({40 * MSS}) ack 1")
    seg.gso = MSS
    d.inject(seg)
    d.expect(f". 1:1(0) ack {1 + 40 * MSS}")
    assert tcb.rcv_mss == MSS
    assert len(d.read()) == 40 * MSS


# ---------------------------------------------------------------------- the shell


class SoftwareGso:
    """What the kernel does with what ustack writes to a TUN with offloads: refuse a bad
    header, complete the checksum, cut a super-segment into MSS-sized frames (item
    209) and deliver those to `peer`."""

    mtu = 1500
    tso = True

    def __init__(self, peer: Stack, loop: asyncio.AbstractEventLoop) -> None:
        self.peer = peer
        self.loop = loop
        self.headers: list[tuple[int, int, int, int, int, int]] = []
        self.wire: list[bytes] = []

    def write(self, frame: bytes) -> None:  # complete checksums (ICMP): as it is
        self.wire.append(frame)
        self.loop.call_soon(self.peer.receive, frame)

    def write_parts(self, hdr: bytes, head: bytes, payload: bytes) -> None:
        frame = head + payload
        h = vnet.HDR.unpack(hdr)
        self.headers.append(h)
        flags, gso_type, hdr_len, gso_size, start, offset = h
        assert flags == vnet.F_NEEDS_CSUM and start == 20 and offset == 16
        assert hdr_len == 20 + (frame[32] >> 4) * 4
        assert len(frame) == struct.unpack_from("!H", frame, 2)[0] <= 65535
        assert ones_sum(frame[:20]) == 0xFFFF  # the IP checksum is always complete
        # The TCP checksum field holds the pseudo-header sum (item 210).
        tcp_len = len(frame) - 20
        pseudo = ones_sum(frame[12:20] + bytes((0, 6)) + tcp_len.to_bytes(2, "big"))
        assert frame[36:38] == pseudo.to_bytes(2, "big")
        seg = parse_tcp(frame, 20, len(frame))
        pieces = [seg.payload]
        if gso_type:
            assert gso_type == vnet.GSO_TCPV4 and len(seg.payload) > gso_size > 0
            p = seg.payload
            pieces = [p[i:i + gso_size] for i in range(0, len(p), gso_size)]
        ident = struct.unpack_from("!H", frame, 4)[0]
        seq = seg.seq
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            flags = seg.flags if last else seg.flags & ~(FIN | PSH)
            out = Segment(seg.sport, seg.dport, seq, seg.ack, flags, seg.wnd, piece,
                          ts=seg.ts, sack=seg.sack, mss=seg.mss, wscale=seg.wscale,
                          sack_perm=seg.sack_perm)
            wire = build_tcp_ipv4(out, frame[12:16], frame[16:20], ident + k)
            assert len(wire) <= self.mtu
            self.wire.append(wire)
            self.loop.call_soon(self.peer.receive, wire)
            seq = (seq + len(piece)) & 0xFFFFFFFF


async def test_super_segments_cut_by_the_kernel_arrive_byte_exact():
    loop = asyncio.get_running_loop()
    server, client = Stack("10.77.0.2"), Stack("10.77.0.1")
    link = MemoryLink(loop)
    link.connect(server, client)
    kernel = SoftwareGso(client, loop)
    server.attach(kernel)  # the server writes through the "kernel", the client plainly
    taps: list[bytes] = []
    server.taps.append(lambda d, f: taps.append(f) if d == "out" else None)
    data = os.urandom(3 * 1024 * 1024)

    async def handle(reader, writer):
        writer.write(data)
        await writer.drain()
        writer.close()

    srv = await server.start_server(handle, "10.77.0.2", 80)
    reader, writer = await client.open_connection("10.77.0.2", 80)
    got = await asyncio.wait_for(reader.read(-1), 30)
    writer.close()
    srv.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    big = [h for h in kernel.headers if h[1] == vnet.GSO_TCPV4]
    assert big and all(h[3] == MSS for h in big)
    assert len(kernel.headers) < len(kernel.wire) / 4  # far fewer writes than packets
    assert server.stats["TcpOutSegs"] >= len(kernel.wire) - 1  # counted as on the wire
    # The tap sees each packet as the kernel gets it: the checksum completed.
    assert len(taps) == len(kernel.headers)
    for f in taps:
        tcp_len = len(f) - 20
        assert (ones_sum(f[12:20] + bytes((0, 6)) + tcp_len.to_bytes(2, "big"))
                + ones_sum(f[20:])) % 0xFFFF == 0


def test_a_trusted_checksum_is_not_summed_and_a_plain_one_is():
    """NEEDS_CSUM / DATA_VALID frames skip the sum; the others are verified."""
    stack = Stack("10.77.0.2", loop=asyncio.new_event_loop())
    try:
        syn = Segment(40000, 80, 1, 0, SYN, 65535, mss=1460)
        frame = bytearray(build_tcp_ipv4(syn, bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2]), 1))
        frame[36] ^= 0xFF  # a wrong TCP checksum
        stack.receive(bytes(frame))
        assert stack.stats["TcpInCsumErrors"] == 1 and stack.stats["TcpInSegs"] == 0
        stack.receive(bytes(frame), csum_ok=True)
        assert stack.stats["TcpInCsumErrors"] == 1 and stack.stats["TcpInSegs"] == 1
    finally:
        stack.close()
        stack.loop.close()


# ---------------------------------------------------------------------- the device


async def test_vnet_device_reads_strip_the_header_and_writes_prepend_it():
    """FdDevice with a virtio-net header, over a datagram socketpair standing in for
    the TUN fd: the header is parsed on read (csum_ok, gso) and written on write."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev = FdDevice(ours.fileno(), vnet=True, tso=True)
    got: list[tuple[bytes, bool, int]] = []
    dev.start(loop, lambda f, csum_ok=False, gso=0: got.append((f, csum_ok, gso)))
    pkt = bytes(range(40))
    theirs.send(vnet.partial_tcp(20, 40, 1448) + pkt)
    theirs.send(vnet.PLAIN + pkt)
    theirs.send(vnet.HDR.pack(vnet.F_DATA_VALID, 0, 0, 0, 0, 0) + pkt)
    theirs.send(vnet.HDR.pack(0, 3, 0, 1400, 0, 0) + pkt)  # UDP GSO: never ours
    theirs.send(b"short")
    for _ in range(50):
        await asyncio.sleep(0.01)
        if dev.rx_bad_vnet == 2:
            break
    assert got == [(pkt, True, 1448), (pkt, False, 0), (pkt, True, 0)]
    assert dev.rx_gso == 1 and dev.rx_bad_vnet == 2
    dev.write(pkt)
    dev.write_parts(vnet.partial_tcp(20, 40, 1448), pkt)
    assert theirs.recv(100) == vnet.PLAIN + pkt
    assert theirs.recv(100) == vnet.partial_tcp(20, 40, 1448) + pkt
    dev.write_parts(vnet.PLAIN, pkt[:20], pkt[20:])  # one packet from two pieces
    assert theirs.recv(100) == vnet.PLAIN + pkt
    assert dev.tx_frames == 3 and dev.tx_gso == 1
    dev.close()
    ours.close()
    theirs.close()


def test_tso_is_off_under_impairment():
    """The impairment layer works on wire packets, so a stack with one builds no
    super-segments and no partial checksums even on a device that takes them."""
    from ustack.impair import Impairment, parse_spec

    loop = asyncio.new_event_loop()
    try:
        stack = Stack("10.77.0.2", loop=loop)
        dev = SoftwareGso(stack, loop)
        stack.attach(dev)
        assert stack.ctx.gso_max == GSO_MAX
        stack.set_impairment(Impairment(parse_spec("loss=0.1"), stack.stats))
        assert stack.ctx.gso_max == 0
        stack.set_impairment(None)
        assert stack.ctx.gso_max == GSO_MAX
        stack.close()
    finally:
        loop.close()


@pytest.mark.parametrize("mtu", [9000, 65535])
def test_the_advertised_mss_follows_the_mtu(mtu):
    d = Drill()
    d.ctx.set_link(mtu, 0)
    d.listen(80)
    d.inject("S 0:0(0) win 65535")
    syn_ack = d.expect("S. 0:0(0) ack 1")
    assert syn_ack.mss == mtu - 40


@pytest.mark.parametrize("argv, message", [
    (["--impair", "loss=0.01", "--offload", "on"], "--impair needs wire-sized packets"),
    (["--mtu", "100"], "bad MTU 100: must be 576..65535"),
    (["--mtu", "65536"], "bad MTU 65536"),
    (["--offload", "maybe"], "invalid choice"),
])
def test_bad_offload_arguments_are_refused(argv, message, capsys):
    """Exit status 2 and one line saying why, before any device exists."""
    from ustack.cli import main

    try:
        status = main(["serve", *argv])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    assert message in capsys.readouterr().err


async def test_frames_read_as_views_are_taken_like_bytes():
    """The vnet reader hands frames over as memoryviews past the header: a SYN, with
    and without IP options, and a ping are answered as if they were bytes, and the
    table's keys are bytes, never views pinning a read buffer."""
    from ustack.wire.ip import PROTO_ICMP, build_ipv4

    stack = Stack("10.77.0.2")
    out: list[bytes] = []

    class Dev:
        def write(self, frame: bytes) -> None:
            out.append(frame)

    stack.attach(Dev())
    await stack.start_server(lambda r, w: None, "10.77.0.2", 80)
    peer, me = bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2])
    syn = build_tcp_ipv4(Segment(40000, 80, 1, 0, SYN, 65535, mss=1460), peer, me, 1)
    stack.receive(memoryview(b"\0" * 10 + syn)[10:])
    # The same SYN from another port, its IP header carrying a 4-byte NOP option.
    syn2 = build_tcp_ipv4(Segment(40001, 80, 1, 0, SYN, 65535, mss=1460), peer, me, 2)
    hdr = bytearray(syn2[:20] + b"\x01\x01\x01\x00")
    hdr[0] = 0x46
    hdr[2:4] = (len(syn2) + 4).to_bytes(2, "big")
    hdr[10:12] = b"\0\0"
    hdr[10:12] = (~ones_sum(bytes(hdr)) & 0xFFFF).to_bytes(2, "big")
    stack.receive(memoryview(bytes(hdr) + syn2[20:]))
    echo = bytearray(b"\x08\x00\x00\x00\x12\x34\x00\x01hello!")
    echo[2:4] = (~ones_sum(bytes(echo)) & 0xFFFF).to_bytes(2, "big")
    stack.receive(memoryview(build_ipv4(peer, me, PROTO_ICMP, bytes(echo), 3)))
    await asyncio.sleep(0.01)
    synacks = [parse_tcp(f, 20, len(f)) for f in out if f[9] == 6]
    assert sorted(s.dport for s in synacks if s.flags == SYN | 0x10) == [40000, 40001]
    assert [f[20] for f in out if f[9] == PROTO_ICMP] == [0]  # an echo reply
    assert all(type(k) is bytes for k in stack.table.est)
    stack.close()
