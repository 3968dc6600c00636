"""A small HTTP/1.1 server: static files under a root, or a live view of the stack.

h11 owns the protocol state machine; this module only moves bytes and picks responses.

Reading is deliberately frugal, like a kernel-backed server: the request head is read one
line at a time and a Content-Length body exactly to its length, so bytes the client sends
beyond the request stay unread in the StreamReader. When we then close first, ustack (like
Linux) answers with RST instead of FIN (RFC 9293 3.10.4), which is behaviour worth seeing.

Who closes first decides who holds TIME-WAIT: HTTP/1.0 requests and `Connection: close`
make us close after the response; otherwise (HTTP/1.1, or HTTP/1.0 with `Connection:
keep-alive`) the connection stays open for the next request until the client closes it.

Each response leaves in one write: head and body together for small files, head and the
first 256 KiB for large ones. Two small writes in a row would put the second behind Nagle,
waiting for the client's delayed ACK (40 ms). File lookups are cached (`FileCache`).

Defences, as nginx has them (`HttpLimits`, each a `ustack serve --http-...` option): the
request head must arrive within `header_timeout` (client_header_timeout), an idle
keep-alive connection is closed after `keepalive_timeout`, a request line beyond
`max_request_line` is answered 414 and a header line or head beyond its limit 431 (RFC
6585; nginx says 400 "Request Header Or Cookie Too Large" for the same), a body beyond
`max_body` is refused with 413 before it is read (client_max_body_size), each body read
and each response write must progress within `body_timeout` / `send_timeout`
(client_body_timeout, send_timeout). A slowloris connection trickling its head byte by
byte thus lives at most `header_timeout`, costing a StreamReader and a task meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import mimetypes
import os
import pathlib
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import h11

from .limits import HttpLimits

log = logging.getLogger(__name__)

CHUNK = 65536  # request body reads
FILE_CHUNK = 256 * 1024  # file reads: big writes, with a drain() between them
SMALL_FILE = 64 * 1024  # files up to this size have their contents cached
CACHE_ENTRIES = 1024
CACHE_BYTES = 16 * 1024 * 1024  # cached contents in all
ALLOWED = (b"GET", b"HEAD")
OCTET_STREAM = "application/octet-stream"
HTML = "text/html; charset=utf-8"
EMPTY: dict = {"connections": [], "stats": {}}
# What the defences count (in the stack's Stats, so `ustack nstat` shows them).
COUNTERS = ("UstackHttpHeaderTimeouts", "UstackHttpKeepaliveTimeouts",
            "UstackHttpBodyTimeouts", "UstackHttpSendTimeouts", "UstackHttpUriTooLong",
            "UstackHttpHeaderTooLarge", "UstackHttpBodyTooLarge")

StartServer = Callable[..., Awaitable[Any]]
Status = Callable[[], dict]
# The dashboard's router (ustack/apps/dashboard/web.py, Web.respond): (path, query,
# root=...) -> (status, content type, body), or None for a path it does not own.
Router = Callable[..., tuple[int, str, bytes] | None]
NO_STORE = [("Cache-Control", "no-store")]
Counters = Any  # a ustack.stats.Stats, or any dict with the Ustack* names below


class _Refused(Exception):
    """A request we answer with `status` and close; `counter` is what it counts."""

    def __init__(self, status: int, counter: str) -> None:
        super().__init__(status)
        self.status = status
        self.counter = counter


async def start_http(
    start_server: StartServer,
    host: str,
    port: int,
    *,
    root: pathlib.Path | None = None,
    status: Status | None = None,
    dashboard: Router | None = None,
    limits: HttpLimits | None = None,
    stats: Counters | None = None,
) -> Any:
    """Serve files under `root` (or the built-in status page when None); returns the server.

    `dashboard`: the dashboard's router; it answers /ustack/..., and `/` too when there
    is no root (the old status page is then gone from `/`; /status.json stays).
    `stats` (the stack's counters) gets the Ustack* counts of timeouts and refusals."""
    # Resolve once so the containment check compares real paths with a real root.
    cache = FileCache(root.resolve(strict=True)) if root is not None else None
    lim = limits or HttpLimits()
    counters = stats if stats is not None else dict.fromkeys(COUNTERS, 0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _Session(reader, writer, cache, status, dashboard, lim, counters).run()

    return await start_server(handle, host, port)


def url_path(target: bytes) -> str | None:
    """The percent-decoded path of a request target, or None if it is not usable."""
    try:
        text = target.decode("ascii")
        if text.startswith("/"):
            # origin-form; urlsplit would read "//etc/x" as a network location.
            path = text.split("?", 1)[0].split("#", 1)[0]
        else:
            parts = urlsplit(text)  # absolute-form, as sent to proxies
            if parts.scheme not in ("http", "https"):
                return None
            path = parts.path or "/"
        path = unquote(path, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    if not path.startswith("/") or "\x00" in path:
        return None
    return path


def url_query(target: bytes) -> str:
    """The query string of a request target ('' if none), still percent-encoded."""
    text = target.decode("ascii", "replace").split("#", 1)[0]
    return text.split("?", 1)[1] if "?" in text else ""


def resolve(root: pathlib.Path, path: str) -> pathlib.Path | None:
    """The regular file `path` names under `root` (already resolved), or None.

    Rejects `..` outright, then resolves symlinks and checks the result is still under
    root, so neither traversal nor a link pointing outside can escape.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    try:
        candidate = root.joinpath(*parts).resolve()
        if candidate.is_dir():
            candidate = (candidate / "index.html").resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
    except (OSError, RuntimeError, ValueError):  # RuntimeError: symlink loop
        return None
    return candidate


def content_type(path: pathlib.Path) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or OCTET_STREAM


Signature = tuple[int, int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    """What identifies a file and its state: same inode, unchanged since we looked.

    ctime is there because it moves on everything else that matters here: chmod, chown,
    rename, link and unlink (so a file moved out of the root misses), and writes."""
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(slots=True)
class CachedFile:
    probe: str  # the requested path under the root, symlinks not resolved; a hit
    # opens it, and its fstat must show the signature resolve() validated
    sig: Signature
    ctype: str
    body: bytes | None  # contents of a small file; None for large ones

    @property
    def size(self) -> int:
        return self.sig[2]


class FileCache:
    """Request path -> validated file, so a hit costs one stat instead of a resolve.

    A miss runs resolve() (`..` refused, symlinks followed, containment checked), opens
    the file and records its signature. A hit stats the *requested* path, following
    symlinks as the next open would, and must find the very signature recorded: then
    the request leads to the inode that passed the containment check, unchanged since.
    Anything else (the file rewritten, deleted, chmod-ed, replaced by a symlink, a
    directory on the way swapped for a link pointing outside) means another inode or
    a new ctime: the entry is dropped and resolve() runs again. Not os.lstat: a symlink
    inside the root (alias.txt -> real.txt) is fine, and lstat would see the link, not
    the file it leads to; nor a stat of the resolved path, which a symlink re-pointed
    elsewhere would not touch.

    A write that keeps the size inside one tick of the kernel's coarse file clock keeps
    the signature too: as with any stat-validated cache (nginx's open_file_cache), such
    a change shows only after the next one.

    Bounded: an LRU of `entries` files holding at most `max_bytes` of contents.
    """

    def __init__(self, root: pathlib.Path, *, entries: int = CACHE_ENTRIES,
                 max_bytes: int = CACHE_BYTES, small: int = SMALL_FILE) -> None:
        self.root = root  # already resolved
        self.entries = entries
        self.max_bytes = max_bytes
        self.small = small
        self._files: OrderedDict[str, CachedFile] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._files)

    def lookup(self, path: str) -> CachedFile | None:
        """The validated file for a decoded request path, or None (404)."""
        entry = self._files.get(path)
        if entry is not None:
            try:
                if signature(os.stat(entry.probe)) == entry.sig:
                    self._files.move_to_end(path)
                    self.hits += 1
                    return entry
            except (OSError, ValueError):
                pass
            self._drop(path)
        self.misses += 1
        entry = self._fill(path)
        if entry is not None:
            self._files[path] = entry
            self._bytes += len(entry.body or b"")
            while len(self._files) > self.entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._files)))
        return entry

    def forget(self, path: str) -> None:
        """Drop `path`'s entry: what it named turned out different when opened."""
        if path in self._files:
            self._drop(path)

    def _drop(self, path: str) -> None:
        entry = self._files.pop(path)
        self._bytes -= len(entry.body or b"")

    def _fill(self, path: str) -> CachedFile | None:
        real = resolve(self.root, path)
        if real is None:
            return None  # 404s are not cached: nothing to re-validate them by
        parts = [p for p in path.split("/") if p not in ("", ".")]
        probe = os.path.join(self.root, *parts)
        if real.name == "index.html" and os.path.isdir(probe):
            probe = os.path.join(probe, "index.html")
        try:
            with open(real, "rb") as f:
                st = os.fstat(f.fileno())
                body = f.read(st.st_size) if st.st_size <= self.small else None
        except OSError:
            return None
        if body is not None and len(body) != st.st_size:
            return None  # changed while we read it; the next request tries again
        return CachedFile(probe, signature(st), content_type(real), body)


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header's value, formatted once a second rather than per response."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def wants_http10_keep_alive(request: h11.Request) -> bool:
    """An HTTP/1.0 request asking to keep the connection (ab -k sends this)."""
    if request.http_version != b"1.0":
        return False
    for name, value in request.headers:
        if name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"keep-alive" in tokens and b"close" not in tokens:
                return True
    return False


_CLOSE = b"\r\nconnection: close\r\n"


def keep_alive_head(head: bytes) -> bytes:
    """h11's response head with `Connection: keep-alive` in place of `Connection: close`.

    h11 (0.16) keeps no HTTP/1.0 connection alive: it marks the exchange must-close and
    writes `Connection: close` into the head itself. We do keep it (see _Session), so
    the client must hear so. lower() keeps offsets, so the splice finds h11's header
    whatever its case."""
    i = head.lower().find(_CLOSE)
    if i < 0:  # an h11 that wrote no close header: add ours before the blank line
        return head[:-2] + b"Connection: keep-alive\r\n\r\n"
    return head[:i] + b"\r\nConnection: keep-alive\r\n" + head[i + len(_CLOSE):]


def status_page(snapshot: dict) -> bytes:
    """Render the connection table and counters; columns are whatever keys the rows have."""
    rows = snapshot.get("connections", [])
    stats = snapshot.get("stats", {})
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    counters = "".join(
        f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in stats.items()
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1">
<title>ustack</title>
<style>body{{font-family:monospace}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:2px 6px;text-align:left}}</style></head>
<body><h1>ustack</h1>
<h2>Connections ({len(rows)} listed; TIME-WAIT in all: {snapshot.get("time_wait", 0)})</h2>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Counters</h2>
<table><tbody>{counters}</tbody></table>
<p><a href="/status.json">status.json</a></p>
</body></html>
"""
    return page.encode()


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """Up to and including the next LF, so we never read past the end of a request head.

    A line longer than the reader's limit (64 KiB) comes back in pieces without its LF;
    the caller's line limit (at most that) refuses it."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial  # EOF: the next call returns b"", which h11 takes as close
    except asyncio.LimitOverrunError as exc:
        return await reader.read(max(1, exc.consumed))


def _declared_length(request: h11.Request) -> int:
    """Bytes of Content-Length body to read exactly; 0 for none or chunked."""
    length = 0
    for name, value in request.headers:
        if name == b"transfer-encoding":
            return 0  # chunked bodies are read line by line; their framing ends in LF
        if name == b"content-length":
            length = int(value)  # h11 has already validated it
    return length


class _Session:
    """One connection: read a request, answer it, repeat while both sides keep alive.

    HTTP/1.0 keep-alive is ours, not h11's: h11 makes every HTTP/1.0 exchange must-close.
    When the request asked for it, the response says `Connection: keep-alive` (always with
    a Content-Length), and once both sides are done we start a fresh h11.Connection on
    the same streams, handing it whatever the old one had received beyond the request."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cache: FileCache | None,
        status: Status | None,
        dashboard: Router | None = None,
        limits: HttpLimits | None = None,
        stats: Counters | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.cache = cache
        self.status = status
        self.dashboard = dashboard
        self.limits = limits = limits or HttpLimits()
        self.stats = stats if stats is not None else dict.fromkeys(COUNTERS, 0)
        self.conn = self._new_conn()
        self.body_left = 0
        self.body_read = 0  # body bytes of the current request, against max_body
        self.keep_alive_10 = False  # the current request is HTTP/1.0 asking keep-alive
        self.requests = 0
        # Head accounting for the request being read: bytes so far, and the length of
        # the line under way (the first line is the request line).
        self.head_bytes = 0
        self.line_bytes = 0
        self.in_request_line = True
        self.in_head = True

    def _new_conn(self) -> h11.Connection:
        # h11's own cap (16 KiB by default) must not fire before ours do.
        size = max(self.limits.max_head, self.limits.max_request_line) + 1024
        return h11.Connection(h11.SERVER, max_incomplete_event_size=size)

    async def run(self) -> None:
        peer = self.writer.get_extra_info("peername")
        try:
            while await self._cycle():
                self.requests += 1
        except _Refused as exc:
            self.stats[exc.counter] += 1
            log.debug("http %s: refused with %d (%s)", peer, exc.status, exc.counter)
            with contextlib.suppress(ConnectionError, OSError, h11.LocalProtocolError,
                                     TimeoutError):
                await self._send_error(exc.status)
                await self._linger()
        except h11.RemoteProtocolError as exc:
            log.debug("http %s: bad request: %s", peer, exc)
            with contextlib.suppress(ConnectionError, OSError, h11.LocalProtocolError):
                await self._send_error(exc.error_status_hint)
        except (ConnectionError, OSError) as exc:
            log.debug("http %s: %r", peer, exc)
        except Exception:
            log.debug("http %s: closing after error", peer, exc_info=True)
        finally:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.Request):
                    self.in_head = False
                    self.body_left = _declared_length(event)
                    if self.body_left > self.limits.max_body:
                        # client_max_body_size: refused on the header, before reading.
                        raise _Refused(413, "UstackHttpBodyTooLarge")
                elif isinstance(event, h11.Data):
                    self.body_read += len(event.data)
                    if self.body_read > self.limits.max_body:
                        raise _Refused(413, "UstackHttpBodyTooLarge")  # chunked
                return event
            if self.in_head:
                data = await _read_line(self.reader)
                self._count_head(data)
            else:
                data = await self._read_body()
            self.conn.receive_data(data)

    def _count_head(self, data: bytes) -> None:
        """Hold the head to large_client_header_buffers' limits as it arrives."""
        lim = self.limits
        self.head_bytes += len(data)
        self.line_bytes += len(data)
        if self.in_request_line and self.line_bytes > lim.max_request_line:
            raise _Refused(414, "UstackHttpUriTooLong")
        if not self.in_request_line and self.line_bytes > lim.max_header_line:
            raise _Refused(431, "UstackHttpHeaderTooLarge")
        if self.head_bytes > lim.max_head:
            raise _Refused(431, "UstackHttpHeaderTooLarge")
        if data.endswith(b"\n"):
            # Blank lines before the request line are allowed (RFC 9112 2.2).
            if self.in_request_line and data.strip():
                self.in_request_line = False
            self.line_bytes = 0

    async def _read_body(self) -> bytes:
        """The next piece of the body, within client_body_timeout of asking."""
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                if self.body_left > 0:
                    data = await self.reader.read(min(self.body_left, CHUNK))
                    self.body_left -= len(data)
                    return data
                return await _read_line(self.reader)  # chunked framing
        except TimeoutError:
            raise _Refused(408, "UstackHttpBodyTimeouts") from None

    async def _read_request(self) -> Any:
        """The next request head (or ConnectionClosed), within the timeouts.

        As nginx: the first request's head must arrive within client_header_timeout of
        the accept; between requests the connection may idle for keepalive_timeout, and
        the head's clock starts with its first byte."""
        self.head_bytes = self.line_bytes = self.body_read = 0
        self.in_request_line = self.in_head = True
        lim = self.limits
        if self.requests:
            data, closed = self.conn.trailing_data
            if not (data or closed):  # else pipelined: the next request is already here
                try:
                    async with asyncio.timeout(lim.keepalive_timeout):
                        first = await self.reader.read(1)
                except TimeoutError:
                    self.stats["UstackHttpKeepaliveTimeouts"] += 1
                    return h11.ConnectionClosed()  # nginx closes silently, so do we
                self._count_head(first)
                self.conn.receive_data(first)
        try:
            async with asyncio.timeout(lim.header_timeout):
                return await self._next_event()
        except TimeoutError:
            raise _Refused(408, "UstackHttpHeaderTimeouts") from None

    async def _cycle(self) -> bool:
        """Serve one request; True if the connection stays open for another."""
        request = await self._read_request()
        if not isinstance(request, h11.Request):
            return False  # ConnectionClosed: the client closed while idle
        self.keep_alive_10 = wants_http10_keep_alive(request)
        while not isinstance(event := await self._next_event(), h11.EndOfMessage):
            if isinstance(event, h11.ConnectionClosed):
                return False
            # Data: a body nobody asked for (GET with a body, or a 405 upload); drop it.
        await self._respond(request)
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        if (self.keep_alive_10 and conn.our_state is h11.MUST_CLOSE
                and conn.their_state is h11.MUST_CLOSE):
            data, closed = conn.trailing_data
            self.conn = self._new_conn()
            if data:  # receive_data(b"") would mean EOF to h11
                self.conn.receive_data(data)
            if closed:
                self.conn.receive_data(b"")
            return True
        # MUST_CLOSE after HTTP/1.0 or `Connection: close`: we close first.
        return False

    async def _respond(self, request: h11.Request) -> None:
        if request.method not in ALLOWED:
            await self._send_bytes(405, b"method not allowed\n", extra=[("Allow", "GET, HEAD")])
            return
        head = request.method == b"HEAD"
        path = url_path(request.target)
        if path is None:
            await self._send_bytes(400, b"bad request\n", head=head)
            return
        if self.dashboard is not None:
            try:
                reply = self.dashboard(path, url_query(request.target),
                                       root=self.cache is not None)
            except Exception:
                log.warning("http: dashboard failed on %s", path, exc_info=True)
                reply = (500, "text/plain; charset=utf-8", b"dashboard error\n")
            if reply is not None:
                await self._send_bytes(reply[0], reply[2], reply[1], head=head,
                                       extra=NO_STORE)
                return
        if self.cache is not None:
            file = self.cache.lookup(path)
            if file is not None and await self._send_file(self.cache, path, file, head):
                return
        elif path in ("/", "/index.html"):
            await self._send_snapshot(status_page, HTML, head)
            return
        if path == "/status.json" and (self.cache is None or self.status is not None):
            await self._send_snapshot(_status_json, "application/json", head)
            return
        await self._send_bytes(404, b"not found\n", head=head)

    async def _send_snapshot(
        self, render: Callable[[dict], bytes], ctype: str, head: bool
    ) -> None:
        try:
            snapshot = self.status() if self.status is not None else EMPTY
            body = render(snapshot)
        except Exception:
            log.debug("http: status() failed", exc_info=True)
            await self._send_bytes(500, b"status unavailable\n", head=head)
            return
        await self._send_bytes(200, body, ctype, head=head)

    def _head(self, status: int, ctype: str, length: int, extra: list[tuple[str, str]]) -> bytes:
        """The response head, not yet written: it leaves together with the body."""
        headers = [
            ("Server", "ustack"),
            ("Date", http_date()),
            ("Content-Type", ctype),
            ("Content-Length", str(length)),
            *extra,
        ]
        # h11 leaves the reason phrase empty unless given one: "HTTP/1.1 200 OK", please.
        data = self.conn.send(h11.Response(
            status_code=status, headers=headers, reason=HTTPStatus(status).phrase))
        return keep_alive_head(data) if self.keep_alive_10 else data

    def _body(self, chunk: bytes) -> list[bytes]:
        # Passthrough: h11 hands the chunk back instead of copying it into a new bytes.
        return self.conn.send_with_data_passthrough(h11.Data(data=chunk)) or []

    def _end(self) -> bytes:
        return self.conn.send(h11.EndOfMessage())  # b"" with a Content-Length

    async def _send_bytes(
        self,
        status: int,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        *,
        head: bool = False,
        extra: list[tuple[str, str]] | None = None,
        length: int | None = None,
    ) -> None:
        """A whole response in one write (see the module docstring); `length` is for a
        HEAD whose body we do not have."""
        size = len(body) if length is None else length
        parts = [self._head(status, ctype, size, extra or [])]
        if not head and body:
            parts += self._body(body)
        parts.append(self._end())
        self.writer.write(b"".join(parts))
        await self._drain()

    async def _drain(self) -> None:
        """drain(), but a client that reads nothing for send_timeout loses the
        connection (nginx's send_timeout): its unsent response is what it costs us."""
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await self.writer.drain()
        except TimeoutError:
            self.stats["UstackHttpSendTimeouts"] += 1
            self.writer.transport.abort()
            raise ConnectionResetError("send_timeout") from None

    async def _send_file(self, cache: FileCache, path: str, file: CachedFile,
                         head: bool) -> bool:
        """Send a cached file, or stream a large one; False if it cannot be opened."""
        if head or file.body is not None:
            await self._send_bytes(200, file.body or b"", file.ctype, head=head,
                                   length=file.size)
            return True
        try:
            f = open(file.probe, "rb")
        except OSError:
            cache.forget(path)
            return False
        with f:
            st = os.fstat(f.fileno())
            if signature(st) != file.sig or not stat.S_ISREG(st.st_mode):
                # Swapped between the cache's stat and our open: not the file validated.
                cache.forget(path)
                return False
            left = file.size
            parts = [self._head(200, file.ctype, left, [])]
            # Each write is one FILE_CHUNK of the file; the first also carries the head.
            while left > 0:
                chunk = f.read(min(FILE_CHUNK, left))
                if not chunk:
                    # The file shrank: h11 refuses EndOfMessage, run() closes the connection.
                    break
                left -= len(chunk)
                parts += self._body(chunk)
                if left == 0 and (end := self._end()):
                    parts.append(end)
                self.writer.write(parts[0] if len(parts) == 1 else b"".join(parts))
                await self._drain()
                parts = []
            if left:
                self._end()
        return True

    async def _linger(self) -> None:
        """nginx's lingering close: FIN after the response, then drop what the client
        still sends until its EOF, a quiet lingering_timeout, or lingering_time."""
        if self.writer.can_write_eof():
            self.writer.write_eof()
        lim = self.limits
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(lim.lingering_time):
                while await asyncio.wait_for(self.reader.read(CHUNK), lim.lingering_timeout):
                    pass

    async def _send_error(self, status: int) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # a response is already under way; closing is all that is left
        self.keep_alive_10 = False
        body = f"{status} error\n".encode()
        await self._send_bytes(status, body, extra=[("Connection", "close")])


def _status_json(snapshot: dict) -> bytes:
    return json.dumps(snapshot, default=str).encode()
