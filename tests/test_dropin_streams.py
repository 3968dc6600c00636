"""Differential suite: asyncio Streams (kernel sockets vs ustack; tests/dropin)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from dropin import Deviation, Rec, case, check, outcome, stream_pair

pytestmark = pytest.mark.netns


async def caught(aw) -> object:
    """The awaited value, or (exception type, its interesting fields)."""
    try:
        return await asyncio.wait_for(aw, 10)
    except asyncio.IncompleteReadError as exc:
        return ("IncompleteReadError", exc.partial, exc.expected)
    except asyncio.LimitOverrunError as exc:
        return ("LimitOverrunError", exc.consumed)
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@case()
async def reads(net, rec: Rec) -> None:
    server, (cr, cw), (sr, sw) = await stream_pair(net)
    cw.write(b"line one\nline two\nrest:exact12345678tail")
    await cw.drain()
    rec["readline"] = await caught(sr.readline())
    rec["readuntil"] = await caught(sr.readuntil(b"two\n"))
    rec["readuntil_tuple"] = await caught(sr.readuntil(b":"))
    rec["readexactly"] = await caught(sr.readexactly(13))
    rec["read_n"] = await caught(sr.read(2))
    rec["at_eof_before"] = sr.at_eof()
    cw.write_eof()
    rec["read_rest"] = await caught(sr.read())
    rec["at_eof"] = sr.at_eof()
    rec["read_after_eof"] = await caught(sr.read())
    rec["readline_after_eof"] = await caught(sr.readline())
    rec["readexactly_after_eof"] = await caught(sr.readexactly(1))
    rec["readexactly_0"] = await caught(sr.readexactly(0))
    rec["readuntil_after_eof"] = await caught(sr.readuntil(b"x"))
    sw.close()
    await sw.wait_closed()
    rec["client_reads_eof"] = await caught(cr.read())
    cw.close()
    rec["wait_closed"] = await outcome(cw.wait_closed())
    server.close()
    await server.wait_closed()


@case()
async def incomplete_at_eof(net, rec: Rec) -> None:
    server, (cr, cw), (sr, sw) = await stream_pair(net)
    sw.write(b"abc")
    sw.close()
    await sw.wait_closed()
    rec["readexactly"] = await caught(cr.readexactly(5))
    rec["readuntil"] = await caught(cr.readuntil(b"\n"))
    rec["readline"] = await caught(cr.readline())
    rec["read"] = (await caught(cr.read()), cr.at_eof())
    cw.close()
    rec["wait_closed"] = await outcome(cw.wait_closed())
    rec["wait_closed_again"] = await outcome(cw.wait_closed())
    server.close()


@case()
async def limits(net, rec: Rec) -> None:
    """The StreamReader's limit (here 16 bytes): readline/readuntil overrun."""
    accepted: asyncio.Queue = asyncio.Queue()

    async def cb(reader, writer):
        await accepted.put((reader, writer))

    server = await net.start_server(cb, limit=16)
    port = server.sockets[0].getsockname()[1]
    cr, cw = await net.open_connection(port, limit=16)
    sr, sw = await asyncio.wait_for(accepted.get(), 10)
    cw.write(b"a" * 40 + b"\n" + b"short\n")
    await cw.drain()
    await asyncio.sleep(0.1)
    rec["readuntil_overrun"] = await caught(sr.readuntil(b"\n"))
    rec["readline_overrun"] = await caught(sr.readline())
    rec["after"] = await caught(sr.readline())
    sw.write(b"x" * 20 + b"\n")
    await sw.drain()
    await asyncio.sleep(0.1)
    rec["client_readline"] = await caught(cr.readline())
    cw.close()
    sw.close()
    await cw.wait_closed()
    await sw.wait_closed()
    server.close()


@case()
async def drain_and_backpressure(net, rec: Rec) -> None:
    server, (cr, cw), (sr, sw) = await stream_pair(net)
    big = os.urandom(16 << 20)  # more than the kernel's autotuned loopback buffers
    cw.write(big)
    drain = asyncio.ensure_future(cw.drain())
    await asyncio.sleep(0.2)
    rec["drain_waits"] = not drain.done()
    got = await asyncio.wait_for(sr.readexactly(len(big)), 60)
    rec["drain_result"] = await outcome(drain)
    rec["big"] = hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
    rec["drain_idle"] = await outcome(cw.drain())
    cw.close()
    rec["closing"] = cw.is_closing()
    rec["drain_after_close"] = await outcome(cw.drain())
    await cw.wait_closed()
    sw.close()
    await sw.wait_closed()
    server.close()


@case()
async def close_during_drain(net, rec: Rec) -> None:
    """close() while drain() waits: the drain ends once the buffer is out, the peer gets
    every byte, then EOF."""
    server, (cr, cw), (sr, sw) = await stream_pair(net)
    big = os.urandom(16 << 20)
    cw.write(big)
    drain = asyncio.ensure_future(cw.drain())
    await asyncio.sleep(0.2)
    rec["pending"] = not drain.done()
    cw.close()
    wait = asyncio.ensure_future(cw.wait_closed())
    await asyncio.sleep(0.2)
    rec["done_before_peer_reads"] = (drain.done(), wait.done())
    got = await asyncio.wait_for(sr.read(), 60)
    rec["peer_got_everything"] = got == big
    rec["drain"] = await outcome(drain)
    rec["wait_closed"] = await outcome(wait)
    sw.close()
    await sw.wait_closed()
    server.close()


@case()
async def reset_seen_by_streams(net, rec: Rec) -> None:
    """The peer resets: read() raises, drain() raises, write() does not; wait_closed()
    raises the reset too."""
    import socket
    import struct
    server, (cr, cw), (sr, sw) = await stream_pair(net)
    sw.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
    sw.close()
    rec["read"] = await caught(cr.read())
    rec["exception"] = type(cr.exception()).__name__
    rec["write"] = await caught(asyncio.sleep(0, cw.write(b"x")))
    rec["drain"] = await caught(cw.drain())
    rec["closing"] = cw.is_closing()
    cw.close()
    rec["wait_closed"] = await outcome(cw.wait_closed())
    await sw.wait_closed()
    server.close()


@case()
async def writer_transport_use(net, rec: Rec) -> None:
    """What libraries do with StreamWriter.transport: flow-control limits, the socket's
    options, pause/resume reading, get_extra_info through the writer."""
    import socket
    server, (cr, cw), (sr, sw) = await stream_pair(net)
    t = cw.transport
    rec["is_transport"] = isinstance(t, asyncio.Transport)
    t.set_write_buffer_limits(high=1024)
    rec["limits"] = t.get_write_buffer_limits()
    sock = cw.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rec["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    rec["peer"] = cw.get_extra_info("peername") == sw.get_extra_info("sockname")
    sw.transport.pause_reading()
    cw.write(b"hello")
    await cw.drain()
    await asyncio.sleep(0.05)
    rec["paused_read"] = await caught(asyncio.wait_for(sr.read(5), 0.2))
    sw.transport.resume_reading()
    rec["after_resume"] = await caught(sr.read(5))
    rec["can_write_eof"] = cw.can_write_eof()
    cw.close()
    await cw.wait_closed()
    sw.close()
    await sw.wait_closed()
    server.close()


@case(Deviation("client_closing_before_close", False, True,
                "once both FINs are through (and ours is acknowledged) ustack ends the "
                "transport (connection_lost) without waiting for close(); asyncio's stays "
                "open until close(). `ustack connect` relies on it; close() works the same "
                "afterwards"))
async def both_fins_then_close(net, rec: Rec) -> None:
    server, (cr, cw), (sr, sw) = await stream_pair(net)
    cw.write_eof()
    rec["server_reads_eof"] = await caught(sr.read())
    sw.close()
    await sw.wait_closed()
    rec["client_reads_eof"] = await caught(cr.read())
    await asyncio.sleep(0.1)  # the last ACK of the close handshake
    rec["client_closing_before_close"] = cw.is_closing()
    cw.close()
    rec["client_closing"] = cw.is_closing()
    rec["wait_closed"] = await outcome(cw.wait_closed())
    server.close()


CASES = [both_fins_then_close, reads, incomplete_at_eof, limits, drain_and_backpressure, close_during_drain,
         reset_seen_by_streams, writer_transport_use]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.fn.__name__)
async def test_streams(inside_netns, spec) -> None:
    await check(spec)
