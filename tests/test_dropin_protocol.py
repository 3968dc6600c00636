"""Differential suite: Protocol callbacks in every close and error path, and writes after
each (kernel sockets vs ustack; tests/dropin)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from dropin import Deviation, Rec, case, check, protocol_pair, until

pytestmark = pytest.mark.netns

LINGER_0 = struct.pack("ii", 1, 0)


def write_n(t: asyncio.Transport, n: int) -> list[str | None]:
    """`n` writes; what each raised (asyncio's transports never raise for a lost
    connection: they count and log)."""
    out: list[str | None] = []
    for _ in range(n):
        try:
            t.write(b"late")
            out.append(None)
        except Exception as exc:
            out.append(type(exc).__name__)
    return out


@case()
async def clean_close_by_client(net, rec: Rec) -> None:
    server, c, s = await protocol_pair(net, rec)
    c.transport.write(b"hello")
    await until(lambda: len(s.data) == 5)
    c.transport.close()
    rec["writes_after_close"] = write_n(c.transport, 3)
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    rec["writes_after_lost"] = write_n(c.transport, 6)
    server.close()


def _eof_case(keep: object):
    @case()
    async def eof_received_returns(net, rec: Rec) -> None:
        server, c, s = await protocol_pair(net, rec, server_keep_open=keep)
        c.transport.write_eof()
        await asyncio.wait_for(s.eof, 10)
        await asyncio.sleep(0.05)
        rec["server_closing_after_eof"] = s.transport.is_closing()
        if keep:
            s.transport.write(b"still open")
            await until(lambda: len(c.data) == 10)
            s.transport.close()
        await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
        rec["client_got"] = bytes(c.data)
        server.close()
    eof_received_returns.fn.__name__ = f"eof_received_returns_{keep}"
    return eof_received_returns


@case()
async def peer_reset(net, rec: Rec) -> None:
    """The server resets (SO_LINGER {1, 0}, close()): the client's connection_lost gets
    ConnectionResetError; its later writes are dropped and, from the fifth lost write
    on, logged as asyncio logs them."""
    server, c, s = await protocol_pair(net, rec)
    s.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                    LINGER_0)
    s.transport.close()
    exc = await asyncio.wait_for(c.lost, 10)
    rec["errno"] = getattr(exc, "errno", None)
    rec["client_closing"] = (c.transport.is_closing(), c.transport.is_reading())
    rec["writes_after_reset"] = write_n(c.transport, 7)
    await asyncio.wait_for(s.lost, 10)
    server.close()


@case()
async def reset_while_writing(net, rec: Rec) -> None:
    """The peer resets while we keep writing: no exception from write(); the transport
    ends with connection_lost(ConnectionResetError or BrokenPipeError)."""
    server, c, s = await protocol_pair(net, rec)
    s.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                    LINGER_0)
    s.transport.close()
    raised = []
    for _ in range(200):
        if c.lost.done():
            break
        raised += [r for r in write_n(c.transport, 1) if r]
        await asyncio.sleep(0.001)
    exc = await asyncio.wait_for(c.lost, 10)
    rec["write_raised"] = raised
    rec["lost_with"] = type(exc).__name__ in ("ConnectionResetError", "BrokenPipeError")
    # Which of the two it is races on every stack and loop (a write that meets the RST
    # first gives EPIPE, the read ECONNRESET): the log records that it was one of them.
    rec.log["client"] = [("lost", "reset") if e[0] == "lost" and e[1] in (
        "ConnectionResetError", "BrokenPipeError") else e for e in rec.log.get("client", [])]
    await asyncio.wait_for(s.lost, 10)
    server.close()


@case()
async def local_abort(net, rec: Rec) -> None:
    """abort() as asyncio's: connection_lost(None) here; on the wire the kernel's
    close() of the socket (FIN: the peer sees EOF)."""
    server, c, s = await protocol_pair(net, rec)
    c.transport.write(b"before abort")
    await until(lambda: len(s.data) == 12)
    s.transport.abort()
    rec["writes_after_abort"] = write_n(s.transport, 6)
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    rec["writes_after_peer_abort"] = write_n(c.transport, 2)
    server.close()


@case()
async def abort_with_linger_0(net, rec: Rec) -> None:
    """How an asyncio program resets on either stack: SO_LINGER {1, 0} and abort()."""
    server, c, s = await protocol_pair(net, rec)
    s.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                    LINGER_0)
    s.transport.abort()
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    server.close()


@case()
async def close_with_unread_data(net, rec: Rec) -> None:
    """close() with data the protocol never got (reading paused): RST on both stacks
    (RFC 2525 2.17, Linux tcp_close()); the peer's connection_lost says reset."""
    server, c, s = await protocol_pair(net, rec)
    s.transport.pause_reading()
    c.transport.write(b"never read")
    await asyncio.sleep(0.1)
    s.transport.close()
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    rec["server_got"] = bytes(s.data)
    server.close()


@case()
async def close_after_peer_eof_then_reset(net, rec: Rec) -> None:
    """EOF kept open (eof_received() true), then the peer resets: nothing reads, so the
    next write() is where the error surfaces (connection_lost with it)."""
    server, c, s = await protocol_pair(net, rec, client_keep_open=True)
    s.transport.close()
    await asyncio.wait_for(c.eof, 10)
    await asyncio.wait_for(s.lost, 10)
    rec["write_after_eof"] = write_n(c.transport, 1)  # the server's orphan answers RST
    await asyncio.sleep(0.2)
    rec["lost_yet"] = c.lost.done()
    rec["second_write"] = write_n(c.transport, 1)
    await asyncio.wait_for(c.lost, 10)
    rec["writes_after"] = write_n(c.transport, 6)
    server.close()


@case()
async def user_timeout_zero_window(net, rec: Rec) -> None:
    """TCP_USER_TIMEOUT 1 s against a peer that stops reading: zero-window probes are
    answered, yet the connection ends with ETIMEDOUT (Linux tcp_probe_timer())."""
    server, c, s = await protocol_pair(net, rec)
    s.transport.pause_reading()
    sock = c.transport.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1000)
    rec["user_timeout"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(400):  # 25 MiB: more than both stacks' buffers
        c.transport.write(b"z" * 65536)
    exc = await asyncio.wait_for(c.lost, 15)
    rec["lost_with"] = (type(exc).__name__, getattr(exc, "errno", None))
    rec["loosely_on_time"] = 1.0 <= loop.time() - t0 < 12
    rec["writes_after_timeout"] = write_n(c.transport, 1)
    s.transport.abort()
    await asyncio.wait_for(s.lost, 10)
    server.close()


@case(Deviation("client_saw", ["made", "eof", "lost:None"], ["made", "lost:ConnectionResetError"],
                "a stream's close() counts bytes left in its StreamReader as unread "
                "(RFC 2525 2.17): RST, where asyncio had emptied the kernel buffer into "
                "the reader, so the kernel sends FIN; read the reader empty before close() "
                "(or use a plain Protocol) for the kernel-asyncio behaviour"))
async def stream_close_with_data_in_reader(net, rec: Rec) -> None:
    from dropin import Recorder
    accepted: asyncio.Queue = asyncio.Queue()

    async def cb(reader, writer):
        await accepted.put((reader, writer))

    server = await net.start_server(cb)
    port = server.sockets[0].getsockname()[1]
    c = Recorder(rec, "client")
    await net.create_connection(lambda: c, port)
    sr, sw = await asyncio.wait_for(accepted.get(), 10)
    c.transport.write(b"left in the reader")
    await asyncio.sleep(0.1)
    sw.close()
    await asyncio.wait_for(c.lost, 10)
    rec["client_saw"] = [ev[0] if len(ev) == 1 else f"{ev[0]}:{ev[1]}"
                         for ev in rec.log.pop("client")]
    server.close()


@case()
async def close_while_paused_writing(net, rec: Rec) -> None:
    """close() with the transport's buffer above the high-water mark (pause_writing
    called): resume_writing() comes before connection_lost(), once the buffer is out;
    writes after close() are dropped."""
    server, c, s = await protocol_pair(net, rec)
    s.transport.pause_reading()
    t = c.transport
    total = 0

    def paused() -> bool:
        return rec.count("client", "pause_writing") > rec.count("client", "resume_writing")

    for _ in range(20):  # write until the pause lasts: every buffer on the way full
        while not paused() and total < 64 << 20:
            t.write(b"p" * 65536)
            total += 65536
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        if paused():
            break
    rec["buffered_at_close"] = t.get_write_buffer_size() > 0
    rec.log["client"] = [e for e in rec.log["client"] if e[0] not in (
        "pause_writing", "resume_writing")] + [("pause_writing",)]  # the last pause only
    t.close()
    rec["lost_at_close"] = c.lost.done()
    rec["writes_after_close"] = write_n(t, 2)
    await asyncio.sleep(0.1)
    rec["lost_before_peer_reads"] = c.lost.done()
    s.transport.resume_reading()
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 30)
    rec["peer_got_all"] = len(s.data) == total
    server.close()


CASES = [close_while_paused_writing, clean_close_by_client, _eof_case(None), _eof_case(False), _eof_case(True),
         peer_reset, reset_while_writing, local_abort, abort_with_linger_0,
         close_with_unread_data, close_after_peer_eof_then_reset, user_timeout_zero_window,
         stream_close_with_data_in_reader]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.fn.__name__)
async def test_protocol(inside_netns, spec) -> None:
    await check(spec)
