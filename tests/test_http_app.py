"""The HTTP app on ustack itself: two Stacks over a MemoryLink (no TUN, no root).

What the kernel-loopback tests in test_apps.py cannot see is checked here: how many
segments and writes a response takes, who ends in TIME-WAIT, and the file cache's
re-validation, including the cases where a cached path starts leading outside the root.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import pathlib
from collections.abc import Callable

import h11
import pytest

import ustack.apps.http as http_app
from ustack import Stack
from ustack.aio import TcpTransport
from ustack.apps.http import (
    FILE_CHUNK,
    FileCache,
    keep_alive_head,
    start_http,
    wants_http10_keep_alive,
)
from ustack.io.memory import MemoryLink
from ustack.tcp.state import State
from ustack.wire.tcp import parse_tcp

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
PORT = 80


class Pair:
    """A client stack and a server stack running the HTTP app, with a segment tap."""

    def __init__(self, client: Stack, server: Stack) -> None:
        self.client, self.server = client, server
        self.server_data: list[bytes] = []  # payloads of the server's data segments
        server.taps.append(self._tap)

    def _tap(self, direction: str, frame: bytes) -> None:
        if direction != "out":
            return
        ihl = (frame[0] & 0x0F) * 4
        total = int.from_bytes(frame[2:4], "big")
        seg = parse_tcp(frame, ihl, total)
        if seg.sport == PORT and seg.payload:
            self.server_data.append(seg.payload)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.client.open_connection(SERVER, PORT)


@pytest.fixture
async def pair(tmp_path: pathlib.Path):
    made: list[tuple[Pair, object]] = []

    async def make(root: pathlib.Path | None = tmp_path) -> Pair:
        loop = asyncio.get_running_loop()
        c, s = Stack(CLIENT, loop=loop), Stack(SERVER, loop=loop)
        MemoryLink(loop).connect(c, s)
        server = await start_http(s.start_server, SERVER, PORT, root=root)
        p = Pair(c, s)
        made.append((p, server))
        return p

    yield make
    for p, server in made:
        server.close()
        p.client.close()
        p.server.close()
    gc.collect()  # the loop's leftovers finalized here, not in a later test


async def until(ok: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not ok():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False
                        ) -> tuple[int, dict[str, str], bytes]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers["content-length"])
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return int(lines[0].split()[1]), headers, body


async def fetch(p: Pair, path: str, *, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with `Connection: close`; the connection ends after it."""
    reader, writer = await p.connect()
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        return await read_response(reader, head=method == "HEAD")
    finally:
        writer.close()


async def still_open(reader: asyncio.StreamReader) -> bool:
    """True if nothing (no EOF either) arrives for a moment: the server kept it open."""
    try:
        await asyncio.wait_for(reader.read(1), 0.1)
    except TimeoutError:
        return True
    return False


# -- one write per response ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/small.txt", 200), ("HEAD", "/small.txt", 200), ("GET", "/nope", 404),
    ("HEAD", "/big.bin", 200),
])
async def test_response_is_one_segment(pair, tmp_path, method, path, status):
    """Head and body in one write: a second small write would wait behind Nagle for the
    client's delayed ACK."""
    (tmp_path / "small.txt").write_bytes(b"hello\n")
    (tmp_path / "big.bin").write_bytes(bytes(200_000))
    p = await pair()
    got, headers, body = await fetch(p, path, method=method)
    await until(lambda: p.server.table.tw or p.client.table.tw)
    assert got == status
    assert len(p.server_data) == 1, [len(d) for d in p.server_data]
    assert p.server_data[0].endswith(body)
    if path == "/big.bin":  # HEAD of a file whose contents are not cached
        assert headers["content-length"] == "200000"


async def test_large_file_intact_in_few_big_writes(pair, tmp_path, monkeypatch):
    data = os.urandom(3 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    writes: list[int] = []
    original = TcpTransport.write

    def counting(self: TcpTransport, buf) -> None:
        if self.get_extra_info("sockname")[1] == PORT:
            writes.append(len(buf))
        original(self, buf)

    monkeypatch.setattr(TcpTransport, "write", counting)
    p = await pair()
    status, headers, body = await fetch(p, "/big.bin")
    assert status == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert len(writes) == len(data) // FILE_CHUNK
    assert writes[0] > FILE_CHUNK  # the head rides with the first chunk
    assert all(n == FILE_CHUNK for n in writes[1:])


# -- the file cache -----------------------------------------------------------------------


@pytest.fixture
def count_resolve(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = http_app.resolve

    def counting(root: pathlib.Path, path: str):
        calls.append(path)
        return original(root, path)

    monkeypatch.setattr(http_app, "resolve", counting)
    return calls


async def test_cache_hit_skips_resolve_and_open(pair, tmp_path, count_resolve, monkeypatch):
    (tmp_path / "a.txt").write_bytes(b"cached")
    p = await pair()
    assert (await fetch(p, "/a.txt"))[::2] == (200, b"cached")
    opens: list[str] = []
    monkeypatch.setattr(http_app, "open", lambda *a, **k: opens.append(a[0]) or open(*a, **k),
                        raising=False)
    assert (await fetch(p, "/a.txt"))[::2] == (200, b"cached")
    assert (await fetch(p, "/a.txt", method="HEAD"))[0] == 200
    assert count_resolve == ["/a.txt"]
    assert opens == []


async def test_changed_file_is_served_anew(pair, tmp_path, count_resolve):
    f = tmp_path / "a.txt"
    f.write_bytes(b"first")
    p = await pair()
    assert (await fetch(p, "/a.txt"))[2] == b"first"
    st = f.stat()
    f.write_bytes(b"secnd")  # same size, same inode
    # A new mtime, set explicitly: two writes inside one tick of the file clock share one.
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert (await fetch(p, "/a.txt"))[2] == b"secnd"
    assert count_resolve == ["/a.txt", "/a.txt"]


async def test_deleted_file_is_404(pair, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"here")
    p = await pair()
    assert (await fetch(p, "/a.txt"))[0] == 200
    (tmp_path / "a.txt").unlink()
    assert (await fetch(p, "/a.txt"))[0] == 404


@pytest.mark.parametrize("size", [6, 100_000], ids=["contents-cached", "streamed"])
async def test_cached_file_replaced_by_symlink_outside_is_404(pair, tmp_path, size):
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"S" * size)  # same size as the file it replaces
    (root / "a.txt").write_bytes(b"a" * size)
    p = await pair(root)
    assert (await fetch(p, "/a.txt"))[::2] == (200, b"a" * size)
    (root / "a.txt").unlink()
    (root / "a.txt").symlink_to(secret)
    status, _, body = await fetch(p, "/a.txt")
    assert status == 404
    assert b"S" not in body


async def test_repointed_alias_inside_root_is_404(pair, tmp_path):
    """The stat follows the requested path, so a symlink re-pointed outside misses, even
    though the file it used to lead to is still there, unchanged."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_bytes(b"SECRET")
    (root / "real.txt").write_bytes(b"inside")
    (root / "alias.txt").symlink_to(root / "real.txt")
    p = await pair(root)
    assert (await fetch(p, "/alias.txt"))[::2] == (200, b"inside")
    (root / "alias.txt").unlink()
    (root / "alias.txt").symlink_to(tmp_path / "secret.txt")
    status, _, body = await fetch(p, "/alias.txt")
    assert (status, b"SECRET" in body) == (404, False)


async def test_directory_swapped_for_symlink_outside_is_404(pair, tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_bytes(b"SECRET")
    p = await pair(root)
    assert (await fetch(p, "/d/a.txt"))[2] == b"inside"
    (root / "d").rename(tmp_path / "d.old")
    (root / "d").symlink_to(outside)
    status, _, body = await fetch(p, "/d/a.txt")
    assert (status, b"SECRET" in body) == (404, False)


async def test_directory_index_is_cached_and_revalidated(pair, tmp_path, count_resolve):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "index.html").write_bytes(b"index")
    p = await pair()
    assert (await fetch(p, "/d/"))[2] == b"index"
    assert (await fetch(p, "/d/"))[2] == b"index"
    assert count_resolve == ["/d/"]  # the hit's stat lands on index.html, not on d
    (tmp_path / "d" / "index.html").unlink()
    assert (await fetch(p, "/d/"))[0] == 404


def test_cache_is_an_lru_bounded_in_entries_and_bytes(tmp_path):
    for name in "abcd":
        (tmp_path / name).write_bytes(name.encode() * 10)
    cache = FileCache(tmp_path, entries=2, max_bytes=25)
    for name in "abc":
        assert cache.lookup(f"/{name}") is not None
    assert list(cache._files) == ["/b", "/c"]  # /a, the oldest, went
    cache.lookup("/b")  # a hit makes /b the newest
    cache.lookup("/d")
    assert list(cache._files) == ["/b", "/d"]
    small = FileCache(tmp_path, entries=10, max_bytes=25)
    for name in "abc":
        small.lookup(f"/{name}")
    assert list(small._files) == ["/b", "/c"]  # 30 bytes would not fit in 25
    assert (small.hits, small.misses) == (0, 3)


def test_dotdot_is_refused_before_any_lookup(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    cache = FileCache(tmp_path.resolve())
    # The escape would land back inside the root: only the `..` rule refuses it.
    assert cache.lookup(f"/../{tmp_path.name}/a") is None
    assert len(cache) == 0


# -- HTTP/1.0 keep-alive --------------------------------------------------------------------


def ka10(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: x\r\n\r\n".encode()


async def test_http10_keep_alive_serves_three_and_the_client_closes_first(pair, tmp_path):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_bytes(name.encode() * 3)
    p = await pair()
    reader, writer = await p.connect()
    for name in "abc":
        writer.write(ka10(f"/{name}.txt"))
        status, headers, body = await read_response(reader)
        assert (status, body) == (200, name.encode() * 3)
        assert headers["connection"] == "keep-alive"
        assert headers["content-length"] == "3"
    assert await still_open(reader)
    writer.close()  # we close first ...
    await until(lambda: len(p.client.table.tw) == 1)
    assert len(p.server.table.tw) == 0  # ... so we, not the server, hold TIME-WAIT


async def test_http10_without_keep_alive_server_closes_first(pair, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a")
    p = await pair()
    reader, writer = await p.connect()
    writer.write(b"GET /a.txt HTTP/1.0\r\n\r\n")
    _, headers, body = await read_response(reader)
    assert (body, headers["connection"]) == (b"a", "close")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server's FIN
    writer.close()
    await until(lambda: len(p.server.table.tw) == 1)
    assert len(p.client.table.tw) == 0


async def test_http10_keep_alive_pipelined_in_one_write(pair, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"AAAA")
    (tmp_path / "b.txt").write_bytes(b"BB")
    p = await pair()
    reader, writer = await p.connect()
    writer.write(ka10("/a.txt") + ka10("/nope") + ka10("/b.txt", "HEAD") + ka10("/b.txt"))
    got = [await read_response(reader) for _ in range(2)]
    got.append(await read_response(reader, head=True))
    got.append(await read_response(reader))
    assert [(s, b) for s, _, b in got] == [(200, b"AAAA"), (404, b"not found\n"), (200, b""),
                                          (200, b"BB")]
    assert all(h["connection"] == "keep-alive" for _, h, _ in got)
    assert got[2][1]["content-length"] == "2"
    assert await still_open(reader)
    writer.close()


async def test_http10_keep_alive_then_close_request(pair, tmp_path):
    """A later request on the kept connection without the header ends it as HTTP/1.0
    does: the server closes."""
    (tmp_path / "a.txt").write_bytes(b"a")
    p = await pair()
    reader, writer = await p.connect()
    writer.write(ka10("/a.txt") + b"GET /a.txt HTTP/1.0\r\n\r\n")
    assert (await read_response(reader))[1]["connection"] == "keep-alive"
    assert (await read_response(reader))[1]["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await until(lambda: len(p.server.table.tw) == 1)


async def test_http11_keep_alive_unchanged(pair, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a")
    p = await pair()
    reader, writer = await p.connect()
    for _ in range(2):
        writer.write(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        _, headers, body = await read_response(reader)
        assert body == b"a" and "connection" not in headers  # implicit in HTTP/1.1
    assert await still_open(reader)
    writer.write(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_response(reader))[1]["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    tcb = writer.get_extra_info("ustack_tcb")
    await until(lambda: tcb.state is State.CLOSE_WAIT)
    writer.close()


def request_event(raw: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


@pytest.mark.parametrize(("raw", "wanted"), [
    (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    (b"GET / HTTP/1.0\r\nConnection: TE, keep-alive\r\n\r\n", True),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", False),  # h11's own
])
def test_wants_http10_keep_alive(raw, wanted):
    assert wants_http10_keep_alive(request_event(raw)) is wanted


def test_keep_alive_head_swaps_h11s_close():
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    conn.next_event()
    head = conn.send(h11.Response(status_code=200, headers=[("Content-Length", "1")]))
    assert b"connection: close" in head.lower()  # what h11 does, and why we need this
    out = keep_alive_head(head)
    assert b"close" not in out.lower()
    assert out.count(b"\r\nConnection: keep-alive\r\n") == 1
    assert out.endswith(b"\r\n\r\n") and out.startswith(b"HTTP/1.1 200 ")
    assert keep_alive_head(b"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\n") == \
        b"HTTP/1.1 200 \r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n"
