"""Close-path behaviours seen through asyncio streams: two Stacks over a MemoryLink
(no TUN, no root). Real loop time, so timer-driven cases use small knobs and loose
bounds only."""

from __future__ import annotations

import asyncio
import errno
import gc

import pytest

from ustack import Stack
from ustack.apps.http import start_http
from ustack.config import Config, apply_settings
from ustack.io.memory import MemoryLink
from ustack.tcp.state import State

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
PORT = 8080


class Pair:
    def __init__(self, client: Stack, server: Stack, link: MemoryLink) -> None:
        self.client, self.server, self.link = client, server, link
        self.results: list[asyncio.Future] = []

    def drop_from_server(self, on: bool = True) -> None:
        """Lose every frame the server sends (side 1 -> side 0) from now on."""
        self.link.drop = (lambda side, frame: side == 1) if on else None


@pytest.fixture
async def pair():
    def make(*settings: str) -> Pair:
        loop = asyncio.get_running_loop()
        c = Stack(CLIENT, config=apply_settings(Config(), list(settings)), loop=loop)
        s = Stack(SERVER, config=apply_settings(Config(), list(settings)), loop=loop)
        link = MemoryLink(loop)
        link.connect(c, s)
        p = Pair(c, s, link)
        made.append(p)
        return p

    made: list[Pair] = []
    yield make
    for p in made:
        p.client.close()
        p.server.close()
        for fut in p.results:  # a handler's error the test did not look at is not news
            if fut.done() and not fut.cancelled():
                fut.exception()
    made.clear()
    # Run finalizers of the loop's leftovers now, inside the test, not in a later
    # ast.parse (CPython 3.11.7 then fails with "AST constructor recursion depth mismatch").
    gc.collect()


async def serve(p: Pair, handler):
    """Start a stream server whose handler result lands in the returned future."""
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    p.results.append(done)

    async def cb(reader, writer):
        try:
            r = await handler(reader, writer)
        except Exception as exc:  # hand it to the test
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(r)

    server = await p.server.start_server(cb, SERVER, PORT)
    return server, done


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


# ---------------------------------------------------------------------- unread data


async def test_close_with_unconsumed_streamreader_bytes_resets_peer(pair):
    """RFC 9293 3.10.4 / RFC 2525 2.17 / LS 30: a server that reads only part of what
    arrived and closes sends RST; bytes left in its StreamReader count as unread. The
    client's read raises ConnectionResetError."""
    p = pair()

    async def handler(reader, writer):
        first = await reader.read(10)
        await settle()  # let the rest arrive into the StreamReader
        writer.close()
        return first

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.write(b"d" * 5000)
    assert await asyncio.wait_for(done, 5) == b"d" * 10
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), 5)
    assert p.server.stats["TcpExtTCPAbortOnClose"] == 1
    assert p.server.stats["TcpEstabResets"] == 1
    assert p.server.stats["TcpOutRsts"] == 1
    assert len(p.server.table.tw) == 0


class HoldingProtocol(asyncio.Protocol):
    """Keeps what it receives; with `declare` it reports the bytes via ustack_unread()."""

    def __init__(self, declare: bool) -> None:
        self.held = bytearray()
        self.transport = None
        if declare:
            self.ustack_unread = lambda: len(self.held)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.held += data


@pytest.mark.parametrize("declare, reset", [(True, True), (False, False)],
                         ids=["declared_unread_rst", "undeclared_fin"])
async def test_protocol_unread_hook_decides_rst_or_fin(pair, declare, reset):
    """LS 30 via aio.py's accounting: a protocol that declares bytes it holds unconsumed
    (ustack_unread) gets RST on close; one that declares nothing gets FIN (the core's
    own buffer was drained into the protocol)."""
    p = pair()
    protos: list[HoldingProtocol] = []

    def factory() -> HoldingProtocol:
        protos.append(HoldingProtocol(declare))
        return protos[-1]

    await p.server.create_server(factory, SERVER, PORT)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.write(b"h" * 3000)
    for _ in range(100):
        await settle(0.01)
        if protos and len(protos[0].held) == 3000:
            break
    protos[0].transport.close()
    if reset:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
    else:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert p.server.stats["TcpExtTCPAbortOnClose"] == (1 if reset else 0)


async def test_close_after_reading_everything_including_eof_sends_fin(pair):
    """LS 30 (a FIN is not unread data) / RFC 9293 3.6: the server that read all data and
    the EOF closes with FIN; the client sees a clean EOF and, having closed first, holds
    TIME_WAIT; the server holds none (LS 11)."""
    p = pair()

    async def handler(reader, writer):
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return len(data)

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.write(b"e" * 5000)
    writer.write_eof()
    assert await asyncio.wait_for(done, 5) == 5000
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await settle()
    assert p.server.stats["TcpExtTCPAbortOnClose"] == 0
    assert p.server.stats["TcpOutRsts"] == 0 and p.client.stats["TcpOutRsts"] == 0
    assert len(p.client.table.tw) == 1
    assert len(p.server.table.tw) == 0 and len(p.server.table.est) == 0


async def test_echo_delivers_everything_before_fin(pair):
    """RFC 9293 3.10.4 CLOSE: an echo server writes back all it read, closes, and the
    client receives every byte, then EOF; no RST anywhere."""
    p = pair()
    payload = bytes(range(256)) * 1000  # 256 kB: many windows' worth

    async def handler(reader, writer):
        data = await reader.read()
        writer.write(data)
        writer.close()
        return len(data)

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.write(payload)
    writer.write_eof()
    got = await asyncio.wait_for(reader.read(), 10)
    assert got == payload
    assert await asyncio.wait_for(done, 5) == len(payload)
    assert p.server.stats["TcpOutRsts"] == 0 and p.client.stats["TcpOutRsts"] == 0


async def test_half_close_server_still_sends_after_eof(pair):
    """RFC 9293 3.6.1 / LS 25-26: write_eof() sends FIN and keeps receiving; the server
    reads EOF (CLOSE_WAIT) and can still send; the client reads it all."""
    p = pair()

    async def handler(reader, writer):
        data = await reader.read()
        assert writer.transport.state == State.CLOSE_WAIT
        writer.write(b"after your FIN: " + data)
        await writer.drain()
        writer.close()
        return data

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.write(b"question")
    writer.write_eof()
    assert writer.transport.state == State.FIN_WAIT_1
    assert await asyncio.wait_for(reader.read(), 5) == b"after your FIN: question"
    assert await done == b"question"


async def test_data_after_close_gets_rst(pair):
    """RFC 1122 4.2.2.13 / LS 32: the server closes at once; data the client keeps
    sending reaches an orphan and is answered with RST (TcpExtTCPAbortOnData). The
    client, in CLOSE_WAIT, then gets EPIPE on write (LS 9)."""
    p = pair()

    async def handler(reader, writer):
        writer.close()

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    await asyncio.wait_for(done, 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server's FIN
    writer.write(b"too late")
    await settle()
    assert p.server.stats["TcpExtTCPAbortOnData"] == 1
    assert writer.transport.state == State.CLOSED
    # As asyncio's socket transport: write() never raises for a dead connection; the
    # send() that meets the error (EPIPE: Linux tcp_reset() in CLOSE_WAIT) ends the
    # transport, and drain() raises ("Connection lost": connection_lost() runs on the
    # next iteration, as asyncio schedules it).
    writer.write(b"again")
    with pytest.raises(ConnectionResetError):
        await writer.drain()


# ---------------------------------------------------------------------- SO_LINGER


async def test_linger_off_close_returns_at_once_and_data_then_fin_arrive(pair):
    """SO_LINGER off: close() returns at once; the unsent data is still sent, then FIN."""
    p = pair()
    payload = b"L" * 300_000

    async def handler(reader, writer):
        return await reader.read()

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.write(payload)
    assert writer.transport.get_write_buffer_size() > 0
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 1)
    assert await asyncio.wait_for(done, 10) == payload
    assert p.client.stats["TcpOutRsts"] == 0


async def test_linger_zero_resets_and_skips_time_wait(pair):
    """RFC 9293 3.10.5 / LS 31: SO_LINGER {1, 0}: close() sends RST, discards the send
    queue, no TIME_WAIT; the peer's read raises ConnectionResetError."""
    p = pair()
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(reader, writer):
        got.set_result(None)
        return await reader.read()

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    await asyncio.wait_for(got, 5)
    writer.transport.set_linger(True, 0)
    writer.write(b"z" * 200_000)
    writer.close()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(done, 5)
    assert p.client.stats["TcpExtTCPAbortOnData"] == 1
    assert p.client.stats["TcpEstabResets"] == 1
    # One RST from the close; the server's ACKs of data already in flight then find no
    # socket and get no-socket RSTs of their own (LS 100).
    assert p.client.stats["TcpOutRsts"] >= 1
    assert len(p.client.table.tw) == 0 and len(p.client.table.est) == 0


async def test_linger_n_waits_for_ack_then_returns(pair):
    """SO_LINGER {1, N}: wait_closed() waits until everything is acknowledged; a
    responsive peer ACKs in time, so no RST."""
    p = pair()

    async def handler(reader, writer):
        return len(await reader.read())

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.transport.set_linger(True, 5)
    writer.write(b"n" * 100_000)
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 4)
    assert writer.transport._tcb.send_queue == 0
    assert writer.transport.state in (State.FIN_WAIT_2, State.TIME_WAIT)
    assert await asyncio.wait_for(done, 5) == 100_000
    assert p.client.stats["TcpExtTCPAbortOnLinger"] == 0
    assert p.client.stats["TcpOutRsts"] == 0


async def test_linger_n_times_out_with_rst(pair):
    """SO_LINGER {1, N}: if the peer never ACKs, wait_closed() returns after about N
    seconds and the connection is reset (TcpExtTCPAbortOnLinger)."""
    p = pair()

    async def handler(reader, writer):
        return await reader.read()

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    p.drop_from_server()
    writer.transport.set_linger(True, 1)
    writer.write(b"m" * 1000)
    writer.close()
    closed = asyncio.ensure_future(writer.wait_closed())
    # Ordering, not timing: the loop's 0.2 s timer runs before the 1 s linger timer.
    finished, _ = await asyncio.wait([closed], timeout=0.2)
    assert not finished and p.client.stats["TcpExtTCPAbortOnLinger"] == 0
    await asyncio.wait_for(closed, 10)
    assert p.client.stats["TcpExtTCPAbortOnLinger"] == 1
    assert p.client.stats["TcpOutRsts"] == 1
    assert len(p.client.table.est) == 0 and len(p.client.table.tw) == 0
    # The server got data and FIN (only its ACKs were lost), then the RST in CLOSE_WAIT.
    assert await asyncio.wait_for(done, 5) == b"m" * 1000
    await settle()
    assert p.server.stats["TcpEstabResets"] == 1
    assert len(p.server.table.est) == 0


# ---------------------------------------------------------------------- errors


async def test_retransmission_exhaustion_raises_etimedout(pair):
    """RFC 9293 3.8.3 / LS 124: after tcp_retries2 unanswered retransmissions the reader
    gets OSError ETIMEDOUT (TimeoutError); no RST is sent."""
    p = pair("tcp_retries2=2")

    async def handler(reader, writer):
        await reader.read()

    await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    p.drop_from_server()
    writer.write(b"lost")
    with pytest.raises(TimeoutError) as ei:
        await asyncio.wait_for(reader.read(), 20)
    assert ei.value.errno == errno.ETIMEDOUT
    assert p.client.stats["TcpExtTCPAbortOnTimeout"] == 1
    assert p.client.stats["TcpOutRsts"] == 0
    writer.write(b"more")  # dropped, as asyncio drops writes after connection_lost
    with pytest.raises(TimeoutError):
        await writer.drain()


async def test_peer_rst_read_raises_connreset_write_raises_epipe(pair):
    """RFC 9293 3.10.7.4 / LS 110: after the peer's RST, reads raise ConnectionResetError;
    writes are dropped as by asyncio's transport, and drain() raises the reset."""
    p = pair()

    async def handler(reader, writer):
        writer.transport.reset()  # SO_LINGER {1, 0} and abort()

    _server, done = await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    await asyncio.wait_for(done, 5)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), 5)
    writer.write(b"x")
    with pytest.raises(ConnectionResetError):
        await writer.drain()
    assert p.client.stats["TcpEstabResets"] == 1


async def test_connect_to_closed_port_is_refused(pair):
    """RFC 9293 3.10.7.1, 3.10.7.3 / LS 100: a SYN to a port nobody listens on gets
    R. ack SEG.SEQ+1; open_connection raises ConnectionRefusedError."""
    p = pair()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(p.client.open_connection(SERVER, 9), 5)
    assert p.server.stats["TcpOutRsts"] == 1
    assert p.client.stats["TcpAttemptFails"] == 1


async def test_keepalive_dead_peer_times_out(pair):
    """RFC 9293 3.8.4 / LS 130-133: transport.set_keepalive(idle=1, interval=1, count=1)
    against a peer whose answers are lost: one probe, then RST and ETIMEDOUT."""
    p = pair()

    async def handler(reader, writer):
        await reader.read()

    await serve(p, handler)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.transport.set_keepalive(True, idle=1, interval=1, count=1)
    p.drop_from_server()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(), 10)
    assert p.client.stats["TcpExtTCPKeepAlive"] == 1
    assert p.client.stats["TcpExtTCPAbortOnTimeout"] == 1
    assert p.client.stats["TcpOutRsts"] == 1


# ---------------------------------------------------------------------- built-in HTTP server


async def test_http_close_with_extra_request_bytes_unread_resets(pair, tmp_path):
    """Issue 3 / RFC 9293 3.10.4 / RFC 2525 2.17 / LS 30: the built-in HTTP server
    answers a `Connection: close` request and closes while bytes the client sent after
    the request sit unread in its StreamReader: that close is a RST
    (TcpExtTCPAbortOnClose), not a FIN, and nobody holds TIME_WAIT."""
    p = pair()
    (tmp_path / "a.txt").write_bytes(b"a")
    await start_http(p.server.start_server, SERVER, PORT, root=tmp_path)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.write(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nEXTRA BYTES")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), 5)
    assert p.server.stats["TcpExtTCPAbortOnClose"] == 1
    # The close's RST; the client's ACKs of the response that were still on their way
    # then find no socket and may get no-socket RSTs of their own (LS 100).
    assert p.server.stats["TcpOutRsts"] >= 1
    assert p.client.stats["TcpEstabResets"] == 1
    assert len(p.server.table.tw) == 0 and len(p.client.table.tw) == 0


async def test_http_request_with_fin_closes_with_fin(pair, tmp_path):
    """Issue 3 / LS 30 ("a pending FIN byte does not count"): the request arrives with
    the client's FIN; the server's close after the response is a FIN, the client reads
    the whole response and EOF, and holds TIME_WAIT as the side that closed first."""
    p = pair()
    (tmp_path / "a.txt").write_bytes(b"a")
    await start_http(p.server.start_server, SERVER, PORT, root=tmp_path)
    reader, writer = await p.client.open_connection(SERVER, PORT)
    writer.write(b"GET /a.txt HTTP/1.0\r\n\r\n")
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 5)
    assert b" 200 " in data.split(b"\r\n", 1)[0] and data.endswith(b"\r\n\r\na")
    writer.close()
    await settle()
    assert p.server.stats["TcpExtTCPAbortOnClose"] == 0
    assert p.server.stats["TcpOutRsts"] == 0 and p.client.stats["TcpOutRsts"] == 0
    assert len(p.client.table.tw) == 1
    assert len(p.server.table.tw) == 0 and len(p.server.table.est) == 0
