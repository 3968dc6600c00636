"""The built-in services, run on the kernel's loopback via plain asyncio.start_server.

They only use the streams API, so passing them asyncio.start_server exercises exactly the
code that runs on ustack. The loopback is that of a namespace each test creates
(`inside_netns`), so no packet touches the host's own network stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator

import pytest

from ustack.apps.discard import start_discard
from ustack.apps.echo import start_echo
from ustack.apps.http import start_http

HOST = "127.0.0.1"

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("inside_netns")]


@contextlib.asynccontextmanager
async def running(start, *args, **kwargs) -> AsyncIterator[int]:
    server = await start(*args, HOST, 0, **kwargs)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def http(**kwargs) -> AsyncIterator[int]:
    async with running(start_http, asyncio.start_server, **kwargs) as port:
        yield port


async def read_response(
    reader: asyncio.StreamReader, *, head: bool = False
) -> tuple[int, dict[str, str], bytes]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 2)
    return status, headers, body


async def request(port: int, raw: bytes, *, head: bool = False):
    """Send one raw request; return the response and whether the server then closed."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(raw)
        status, headers, body = await read_response(reader, head=head)
        try:
            rest = await asyncio.wait_for(reader.read(), 1)
            closed = rest == b""
        except TimeoutError:
            closed = False
        return status, headers, body, closed
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def get(path: str, *, method: str = "GET", version: str = "1.1", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode()


# -- static files -----------------------------------------------------------------------


async def test_get_file(tmp_path):
    (tmp_path / "hello.txt").write_bytes(b"hello, world\n")
    async with http(root=tmp_path) as port:
        status, headers, body, closed = await request(port, get("/hello.txt"))
    assert status == 200
    assert body == b"hello, world\n"
    assert headers["content-length"] == "13"
    assert headers["content-type"].startswith("text/plain")
    assert headers["server"] == "ustack"
    assert closed


async def test_head_has_get_headers_and_no_body(tmp_path):
    (tmp_path / "page.html").write_bytes(b"<p>hi</p>")
    async with http(root=tmp_path) as port:
        _, get_headers, _, _ = await request(port, get("/page.html"))
        status, headers, body, closed = await request(port, get("/page.html", method="HEAD"),
                                                      head=True)
    assert status == 200
    assert body == b""
    assert closed  # nothing after the head: the next thing is EOF, not body bytes
    assert headers["content-length"] == get_headers["content-length"] == "9"
    assert headers["content-type"] == get_headers["content-type"] == "text/html"


async def test_default_content_type(tmp_path):
    (tmp_path / "blob.unknownext").write_bytes(b"\x00\x01")
    async with http(root=tmp_path) as port:
        _, headers, body, _ = await request(port, get("/blob.unknownext"))
    assert headers["content-type"] == "application/octet-stream"
    assert body == b"\x00\x01"


async def test_missing_file_is_404(tmp_path):
    async with http(root=tmp_path) as port:
        status, _, _, closed = await request(port, get("/nope.txt"))
    assert status == 404
    assert closed


async def test_directory_index(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "index.html").write_bytes(b"index")
    (tmp_path / "empty").mkdir()
    async with http(root=tmp_path) as port:
        assert (await request(port, get("/d/")))[:3:2] == (200, b"index")
        assert (await request(port, get("/d")))[:3:2] == (200, b"index")
        assert (await request(port, get("/empty/")))[0] == 404


async def test_other_methods_are_405(tmp_path):
    async with http(root=tmp_path) as port:
        raw = get("/", method="POST", extra="Content-Length: 3\r\n") + b"abc"
        status, headers, _, closed = await request(port, raw)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert closed


@pytest.mark.parametrize("garbage", [
    b"\x00\x01garbage\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
], ids=["binary", "bad-header", "no-host", "bad-length"])
async def test_malformed_request_is_400_then_close(tmp_path, garbage):
    async with http(root=tmp_path) as port:
        status, _, _, closed = await request(port, garbage)
    assert status == 400
    assert closed


@pytest.mark.parametrize("target", [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E%2Fsecret.txt",
    "/sub/../../secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "//secret.txt",
    "http://x/../secret.txt",
    "/out/secret.txt",      # directory symlink pointing outside the root
    "/linked.txt",          # file symlink pointing outside the root
    "/%00secret.txt",
    "{abs}/secret.txt",     # an absolute filesystem path is just a path under the root
])
async def test_path_escapes_are_refused(tmp_path, target):
    (tmp_path / "secret.txt").write_bytes(b"SECRET")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path)
    (root / "linked.txt").symlink_to(tmp_path / "secret.txt")
    target = target.format(abs=tmp_path)
    async with http(root=root) as port:
        status, _, body, _ = await request(port, get(target))
    assert status in (400, 404)
    assert b"SECRET" not in body


async def test_symlink_inside_root_is_served(tmp_path):
    (tmp_path / "real.txt").write_bytes(b"inside")
    (tmp_path / "alias.txt").symlink_to(tmp_path / "real.txt")
    async with http(root=tmp_path) as port:
        status, _, body, _ = await request(port, get("/alias.txt"))
    assert (status, body) == (200, b"inside")


async def test_large_file_sha256(tmp_path):
    data = os.urandom(1 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    async with http(root=tmp_path) as port:
        status, headers, body, _ = await request(port, get("/big.bin"))
    assert status == 200
    assert headers["content-length"] == str(len(data))
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


# -- connection handling ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "line"), [("/a.txt", "HTTP/1.1 200 OK"),
                                            ("/nope", "HTTP/1.1 404 Not Found")])
async def test_status_line_has_a_reason_phrase(tmp_path, path, line):
    (tmp_path / "a.txt").write_bytes(b"a")
    async with http(root=tmp_path) as port:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        first = await asyncio.wait_for(reader.readline(), 2)
        writer.close()
    assert first.decode("latin-1").rstrip("\r\n") == line  # h11 answers as HTTP/1.1


async def test_http10_server_closes_first(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a")
    async with http(root=tmp_path) as port:
        status, _, body, closed = await request(port, b"GET /a.txt HTTP/1.0\r\n\r\n")
    assert (status, body) == (200, b"a")
    assert closed  # EOF reached us before we closed: the server closed first


async def test_connection_close_server_closes_first(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a")
    async with http(root=tmp_path) as port:
        status, headers, _, closed = await request(port, get("/a.txt"))
    assert status == 200
    assert headers["connection"] == "close"
    assert closed


async def test_keep_alive_two_requests_one_connection(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"first")
    (tmp_path / "b.txt").write_bytes(b"second")
    async with http(root=tmp_path) as port:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[::2] == (200, b"first")
        writer.write(b"GET /b.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[::2] == (200, b"second")
        with pytest.raises(TimeoutError):  # still open: keep-alive
            await asyncio.wait_for(reader.read(1), 0.1)
        # Client closes; the server follows with its own FIN.
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 1) == b""
        writer.close()


async def test_pipelined_requests(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"A")
    async with http(root=tmp_path) as port:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n" + get("/a.txt", method="HEAD"))
        assert (await read_response(reader))[::2] == (200, b"A")
        assert (await read_response(reader, head=True))[0] == 200
        assert await asyncio.wait_for(reader.read(), 1) == b""
        writer.close()


async def test_bytes_beyond_the_request_stay_unread(tmp_path):
    """Like a kernel server, only the request is consumed; ustack turns the rest into RST."""
    (tmp_path / "a.txt").write_bytes(b"a")
    leftovers: list[bytes] = []

    async def capturing_start_server(cb, host, port):
        async def wrapped(reader, writer):
            await cb(reader, writer)
            leftovers.append(await reader.read())  # buffered, never consumed by the app

        return await asyncio.start_server(wrapped, host, port)

    async with running(start_http, capturing_start_server, root=tmp_path) as port:
        status, _, _, _ = await request(port, b"GET /a.txt HTTP/1.0\r\n\r\nEXTRA BYTES")
        for _ in range(100):
            if leftovers:
                break
            await asyncio.sleep(0.01)
    assert status == 200
    assert leftovers == [b"EXTRA BYTES"]


async def test_idle_client_eof_closes_server_side(tmp_path):
    async with http(root=tmp_path) as port:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 1) == b""
        writer.close()


# -- built-in status page ---------------------------------------------------------------

SNAPSHOT = {
    "connections": [
        {"state": "ESTABLISHED", "local": "10.0.0.1:80", "peer": "10.0.0.2:4000",
         "recv_q": 0, "send_q": 12, "timer": ""},
        {"state": "TIME-WAIT", "local": "10.0.0.1:80", "peer": "10.0.0.2:4001",
         "recv_q": 0, "send_q": 0, "timer": "timewait 59.2s", "extra": "<b>"},
    ],
    "stats": {"ActiveOpens": 3, "TW": 1},
}


async def test_builtin_page_shows_connections_and_counters():
    async with http(status=lambda: SNAPSHOT) as port:
        status, headers, body, _ = await request(port, get("/"))
    page = body.decode()
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert 'http-equiv="refresh" content="1"' in page
    for column in ("state", "local", "peer", "recv_q", "send_q", "timer", "extra"):
        assert f"<th>{column}</th>" in page
    assert "TIME-WAIT" in page and "timewait 59.2s" in page
    assert "&lt;b&gt;" in page  # escaped, not markup
    assert "ActiveOpens" in page and "<td>3</td>" in page


async def test_status_json():
    async with http(status=lambda: SNAPSHOT) as port:
        status, headers, body, _ = await request(port, get("/status.json"))
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == SNAPSHOT


async def test_builtin_page_without_status():
    async with http() as port:
        status, _, body, _ = await request(port, get("/"))
        assert status == 200 and b"<table>" in body
        status, _, body, _ = await request(port, get("/status.json"))
        assert status == 200 and json.loads(body) == {"connections": [], "stats": {}}
        assert (await request(port, get("/other")))[0] == 404


async def test_status_json_with_root(tmp_path):
    async with http(root=tmp_path, status=lambda: SNAPSHOT) as port:
        assert json.loads((await request(port, get("/status.json")))[2]) == SNAPSHOT
        (tmp_path / "status.json").write_bytes(b'{"file": 1}')
        assert json.loads((await request(port, get("/status.json")))[2]) == {"file": 1}


async def test_failing_status_is_500_not_a_crash():
    def broken() -> dict:
        raise RuntimeError("boom")

    async with http(status=broken) as port:
        assert (await request(port, get("/")))[0] == 500


# -- echo and discard -------------------------------------------------------------------


async def test_echo_roundtrip_with_half_close():
    data = os.urandom(300_000)
    async with running(start_echo, asyncio.start_server) as port:
        reader, writer = await asyncio.open_connection(HOST, port)
        received = bytearray()

        async def collect() -> None:
            while chunk := await reader.read(65536):
                received.extend(chunk)

        collector = asyncio.create_task(collect())
        writer.write(data)
        await writer.drain()
        writer.write_eof()  # half-close: we can still receive
        await asyncio.wait_for(collector, 2)  # ends on the server's EOF
        writer.close()
    assert bytes(received) == data


async def test_echo_is_bounded_when_the_peer_stops_reading():
    loop = asyncio.get_running_loop()
    readers: list[asyncio.StreamReader] = []

    async def small_buffer_server(cb, host, port):
        async def wrapped(reader, writer):
            readers.append(reader)
            await cb(reader, writer)

        server = await asyncio.start_server(wrapped, host, port)
        # Accepted sockets inherit fixed buffers, so kernel autotuning cannot hide the test.
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            server.sockets[0].setsockopt(socket.SOL_SOCKET, opt, 65536)
        return server

    limit = 8 << 20
    async with running(start_echo, small_buffer_server) as port:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (HOST, port))
            chunk = bytes(65536)
            sent = 0
            while sent < limit:  # never read: the echo must stall us
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, chunk), 0.2)
                except TimeoutError:
                    break
                sent += len(chunk)
            assert sent < limit, "echo kept reading although nobody read its output"
            # The app itself holds little: StreamReader pauses at 2 * its limit.
            assert len(readers[0]._buffer) <= 256 * 1024
            # Reading resumes the flow: everything sent comes back, then EOF.
            received = 0
            while received < sent:
                got = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 2)
                assert got
                received += len(got)
        finally:
            sock.close()


async def test_discard():
    async with running(start_discard, asyncio.start_server) as port:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(os.urandom(1 << 20))
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
