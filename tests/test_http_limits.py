"""The HTTP server's nginx-like defences (HttpLimits) on two Stacks over a MemoryLink.

Each test sets one limit small and checks the answer (status, counter) and that the
connection is gone; with the limit at its default the same client would be served or
left waiting, so each would fail without its defence."""

from __future__ import annotations

import asyncio
import gc
import pathlib

import pytest

from ustack import Stack
from ustack.apps.http import COUNTERS, HttpLimits, start_http
from ustack.io.memory import MemoryLink

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
PORT = 80


@pytest.fixture
async def served(tmp_path: pathlib.Path):
    made = []

    async def make(**limits) -> tuple[Stack, dict[str, int]]:
        loop = asyncio.get_running_loop()
        c, s = Stack(CLIENT, loop=loop), Stack(SERVER, loop=loop)
        MemoryLink(loop).connect(c, s)
        (tmp_path / "small.txt").write_bytes(b"hello\n")
        stats = dict.fromkeys(COUNTERS, 0)
        server = await start_http(s.start_server, SERVER, PORT, root=tmp_path,
                                  limits=HttpLimits(**limits), stats=stats)
        made.append((c, s, server))
        return c, stats

    yield make
    for c, s, server in made:
        server.close()
        c.close()
        s.close()
    gc.collect()


async def exchange(client: Stack, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send `data`, then read until the server closes (or `wait` passes)."""
    reader, writer = await client.open_connection(SERVER, PORT)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), wait)
    except ConnectionError:
        return b"<reset>"
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def only(stats: dict[str, int], name: str) -> bool:
    return stats[name] == 1 and sum(stats.values()) == 1


async def test_defaults_are_nginx():
    lim = HttpLimits()
    assert (lim.header_timeout, lim.keepalive_timeout, lim.body_timeout,
            lim.send_timeout) == (60, 75, 60, 60)
    assert (lim.max_request_line, lim.max_head, lim.max_body) == (8192, 32768, 1 << 20)


@pytest.mark.parametrize("bad", [{"header_timeout": 0}, {"max_head": 10},
                                 {"max_body": -1}])
def test_bad_limits_refused(bad):
    with pytest.raises(ValueError):
        HttpLimits(**bad)


async def test_long_request_line_is_414(served):
    client, stats = await served(max_request_line=100)
    ok = await exchange(client, b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close"
                                b"\r\n\r\n")
    assert status_of(ok) == 200
    resp = await exchange(client, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(resp) == 414 and only(stats, "UstackHttpUriTooLong")


async def test_request_line_without_lf_is_414_before_it_ends(served):
    """The limit acts while the line is still arriving: no LF ever comes."""
    client, stats = await served(max_request_line=100)
    resp = await exchange(client, b"GET /" + b"a" * 70000)
    assert status_of(resp) == 414 and only(stats, "UstackHttpUriTooLong")


async def test_long_header_line_is_431(served):
    client, stats = await served(max_header_line=100)
    resp = await exchange(client, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200
                          + b"\r\n\r\n")
    assert status_of(resp) == 431 and only(stats, "UstackHttpHeaderTooLarge")


async def test_many_header_lines_are_431(served):
    client, stats = await served(max_head=1000)
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(200))
    resp = await exchange(client, b"GET / HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert status_of(resp) == 431 and only(stats, "UstackHttpHeaderTooLarge")


async def test_declared_body_too_large_is_413_unread(served):
    client, stats = await served(max_body=1000)
    resp = await exchange(client, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000"
                                  b"\r\n\r\n")
    assert status_of(resp) == 413 and only(stats, "UstackHttpBodyTooLarge")


async def test_chunked_body_too_large_is_413(served):
    client, stats = await served(max_body=1000)
    chunks = b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(8))
    resp = await exchange(client, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                                  b"chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    assert status_of(resp) == 413 and only(stats, "UstackHttpBodyTooLarge")


async def test_body_within_limit_is_read_and_answered(served):
    client, stats = await served(max_body=1000)
    resp = await exchange(client, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 900"
                                  b"\r\nConnection: close\r\n\r\n" + b"x" * 900)
    assert status_of(resp) == 405 and sum(stats.values()) == 0


async def test_trickled_head_times_out_with_408(served):
    """Slowloris: a byte every 50 ms never finishes the head within 0.5 s."""
    client, stats = await served(header_timeout=0.5)
    reader, writer = await client.open_connection(SERVER, PORT)
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = b""
    for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"s" * 1000:
        writer.write(bytes([byte]))
        try:
            got = await asyncio.wait_for(reader.read(), 0.05)
            break
        except TimeoutError:
            continue
    writer.close()
    assert status_of(got) == 408 and only(stats, "UstackHttpHeaderTimeouts")
    assert loop.time() - start < 5  # loose: the 0.5 s timeout fired, not a default


async def test_idle_keep_alive_closes_silently(served):
    client, stats = await served(keepalive_timeout=0.3)
    reader, writer = await client.open_connection(SERVER, PORT)
    writer.write(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b" 200 " in head
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"hello\n"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing sent
    writer.close()
    assert only(stats, "UstackHttpKeepaliveTimeouts")


async def test_keep_alive_second_request_has_its_own_header_clock(served):
    """After a keep-alive idle, the next head's timeout starts with its first byte."""
    client, stats = await served(keepalive_timeout=5, header_timeout=0.4)
    reader, writer = await client.open_connection(SERVER, PORT)
    for _ in range(2):
        writer.write(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b" 200 " in head
        await asyncio.wait_for(reader.readexactly(6), 5)
        await asyncio.sleep(0.6)  # idle longer than header_timeout: still kept
    writer.write(b"GET /small.txt HTTP/1.1\r\n")  # and now a head that never ends
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert status_of(rest) == 408 and only(stats, "UstackHttpHeaderTimeouts")


async def test_stalled_body_times_out(served):
    client, stats = await served(body_timeout=0.3)
    resp = await exchange(client, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                                  b"\r\n\r\n" + b"x" * 10)
    assert status_of(resp) == 408 and only(stats, "UstackHttpBodyTimeouts")


async def test_client_that_never_reads_is_dropped_after_send_timeout(served, tmp_path):
    (tmp_path / "big.bin").write_bytes(b"z" * (4 << 20))
    client, stats = await served(send_timeout=0.3)
    reader, writer = await client.open_connection(SERVER, PORT)
    writer.write(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    # Read nothing: the windows fill, the server's drain() stalls, then gives up.
    deadline = asyncio.get_running_loop().time() + 10
    while stats["UstackHttpSendTimeouts"] == 0:
        assert asyncio.get_running_loop().time() < deadline, stats
        await asyncio.sleep(0.05)
    writer.close()
    assert only(stats, "UstackHttpSendTimeouts")
