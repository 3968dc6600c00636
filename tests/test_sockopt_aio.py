"""Socket options through the asyncio API: the socket-like object of
get_extra_info('socket'), a listening socket's options inherited by its connections,
`sockopts=` before connect(), TCP_NODELAY on by default, write(..., more=True), and
TCP_NOTSENT_LOWAT on flow control. Two Stacks over a MemoryLink, the frames watched."""

from __future__ import annotations

import asyncio
import gc
import socket as S

import pytest

from ustack import Stack
from ustack.config import Config
from ustack.io.memory import MemoryLink
from ustack.wire.tcp import SYN, parse_tcp

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"


class Wire:
    """Every TCP segment on the link: (side, Segment); side 0 is the client's."""

    def __init__(self) -> None:
        self.segs: list = []

    def __call__(self, side: int, frame: bytes) -> bool:
        ihl = (frame[0] & 15) * 4
        self.segs.append((side, parse_tcp(frame, ihl, len(frame))))
        return False  # drop nothing

    def data(self, side: int) -> list[int]:
        return [len(s.payload) for d, s in self.segs if d == side and len(s.payload)]


@pytest.fixture
async def net():
    loop = asyncio.get_running_loop()
    c, s = Stack(CLIENT, config=Config(), loop=loop), Stack(SERVER, config=Config(), loop=loop)
    link = MemoryLink(loop)
    link.connect(c, s)
    wire = Wire()
    link.drop = wire
    yield c, s, wire
    c.close()
    s.close()
    gc.collect()


async def accept_one(server_stack: Stack, **kw):
    q: asyncio.Queue = asyncio.Queue()

    async def cb(r, w):
        await q.put((r, w))

    server = await server_stack.start_server(cb, SERVER, 0, **kw)
    return server, server.sockets[0].getsockname()[1], q


async def test_maxseg_before_connect_shows_in_the_syn(net):
    c, s, wire = net
    server, port, q = await accept_one(s)
    r, w = await c.open_connection(SERVER, port,
                                   sockopts=[(S.IPPROTO_TCP, S.TCP_MAXSEG, 700)])
    syn = next(seg for side, seg in wire.segs if side == 0 and seg.flags & SYN)
    assert syn.mss == 700
    sr, sw = await asyncio.wait_for(q.get(), 5)
    sw.write(b"x" * 5000)
    await sw.drain()
    await asyncio.wait_for(r.readexactly(5000), 5)
    assert max(wire.data(1)) == 700 - 12  # the server sends within our clamp
    w.close()
    sw.close()
    server.close()


async def test_listening_socket_options_reach_the_syn_ack(net):
    c, s, wire = net
    server, port, q = await accept_one(s)
    server.sockets[0].setsockopt(S.IPPROTO_TCP, S.TCP_MAXSEG, 600)
    assert server.sockets[0].getsockopt(S.IPPROTO_TCP, S.TCP_MAXSEG) == 600
    with pytest.raises(OSError):
        server.sockets[0].setsockopt(S.IPPROTO_TCP, S.TCP_MAXSEG, 10)  # EINVAL, at once
    r, w = await c.open_connection(SERVER, port)
    synack = next(seg for side, seg in wire.segs if side == 1 and seg.flags & SYN)
    assert synack.mss == 600
    w.close()
    server.close()


async def test_nodelay_on_by_default_and_off_through_the_socket(net):
    """asyncio sets TCP_NODELAY on its TCP transports (base_events._set_nodelay()):
    small writes go at once. Set it off through the socket object, as a program would
    on a kernel socket, and Nagle holds the second small write."""
    c, s, wire = net
    server, port, q = await accept_one(s)
    r, w = await c.open_connection(SERVER, port)
    sr, sw = await asyncio.wait_for(q.get(), 5)
    sock = w.get_extra_info("socket")
    assert sock.getsockopt(S.IPPROTO_TCP, S.TCP_NODELAY) == 1
    for _ in range(3):
        w.write(b"a" * 10)
        await asyncio.sleep(0)  # one turn each: three segments
    await asyncio.wait_for(sr.readexactly(30), 5)
    assert wire.data(0)[-3:] == [10, 10, 10]
    sock.setsockopt(S.IPPROTO_TCP, S.TCP_NODELAY, 0)
    n = len(wire.data(0))
    for _ in range(3):
        w.write(b"b" * 10)
        await asyncio.sleep(0)
    await asyncio.wait_for(sr.readexactly(30), 5)
    assert wire.data(0)[n:] == [10, 20]  # the rest waited for the first one's ACK
    w.close()
    sw.close()
    server.close()


async def test_write_more_holds_the_tail(net):
    c, s, wire = net
    server, port, q = await accept_one(s)
    r, w = await c.open_connection(SERVER, port)
    sr, sw = await asyncio.wait_for(q.get(), 5)
    w.transport.write(b"head ", more=True)
    await asyncio.sleep(0.1)
    assert wire.data(0) == []
    w.transport.write(b"tail")
    assert await asyncio.wait_for(sr.readexactly(9), 5) == b"head tail"
    assert wire.data(0) == [9]
    w.close()
    sw.close()
    server.close()


async def test_cork_through_the_socket(net):
    c, s, wire = net
    server, port, q = await accept_one(s)
    r, w = await c.open_connection(SERVER, port)
    sr, sw = await asyncio.wait_for(q.get(), 5)
    sock = w.get_extra_info("socket")
    sock.setsockopt(S.IPPROTO_TCP, S.TCP_CORK, 1)
    for part in (b"a", b"b", b"c"):
        w.write(part)
        await asyncio.sleep(0.05)
    assert wire.data(0) == []
    sock.setsockopt(S.IPPROTO_TCP, S.TCP_CORK, 0)
    assert await asyncio.wait_for(sr.readexactly(3), 5) == b"abc"
    assert wire.data(0) == [3]
    w.close()
    sw.close()
    server.close()


async def _paused_at(c: Stack, s: Stack, lowat: int | None) -> int:
    """Bytes written before pause_writing(), the peer not reading."""
    server, port, q = await accept_one(s)
    paused = asyncio.get_running_loop().create_future()

    class P(asyncio.Protocol):
        def pause_writing(self) -> None:
            if not paused.done():
                paused.set_result(None)

    t, _ = await c.create_connection(P, SERVER, port)
    sr, sw = await asyncio.wait_for(q.get(), 5)
    sw.transport.pause_reading()
    if lowat is not None:
        t.get_extra_info("socket").setsockopt(S.IPPROTO_TCP, S.TCP_NOTSENT_LOWAT, lowat)
    t.set_write_buffer_limits(high=0)
    written = 0
    while not paused.done() and written < 8 << 20:
        t.write(b"z" * 4096)
        written += 4096
        await asyncio.sleep(0)
    t.abort()
    sw.close()
    server.close()
    return written


async def test_notsent_lowat_pauses_writing_early(net):
    c, s, _ = net
    plain = await _paused_at(c, s, None)
    low = await _paused_at(c, s, 8192)
    # Both send the peer's window's worth; then the plain one fills its send buffer
    # (tcp_wmem, 256 KiB), the other stops at the mark.
    assert plain - low > Config().tcp_wmem[1] - 3 * 8192


async def test_server_keep_alive_keyword_and_so_error(net):
    c, s, _ = net
    server, port, q = await accept_one(s, keep_alive=True)
    r, w = await c.open_connection(SERVER, port)
    sr, sw = await asyncio.wait_for(q.get(), 5)
    assert sw.get_extra_info("socket").getsockopt(S.SOL_SOCKET, S.SO_KEEPALIVE) == 1
    assert w.get_extra_info("socket").getsockopt(S.SOL_SOCKET, S.SO_KEEPALIVE) == 0
    assert w.get_extra_info("socket").getsockopt(S.SOL_SOCKET, S.SO_ERROR) == 0
    w.close()
    sw.close()
    server.close()
