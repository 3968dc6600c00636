"""A small HTTP/1.1 server: static files under a root, or a live view of the stack.

h11 owns the protocol state machine; this module only moves bytes and picks responses.

Reading is deliberately frugal, like a kernel-backed server: the request head is read one
line at a time and a Content-Length body exactly to its length, so bytes the client sends
beyond the request stay unread in the StreamReader. When we then close first, ustack (like
Linux) answers with RST instead of FIN (RFC 9293 3.10.4), which is behaviour worth seeing.

Who closes first decides who holds TIME-WAIT: HTTP/1.0 requests and `Connection: close`
make us close after the response; otherwise the connection stays open for the next request
until the client closes it.
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
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import h11

log = logging.getLogger(__name__)

CHUNK = 65536
ALLOWED = (b"GET", b"HEAD")
OCTET_STREAM = "application/octet-stream"
HTML = "text/html; charset=utf-8"
EMPTY: dict = {"connections": [], "stats": {}}

StartServer = Callable[..., Awaitable[Any]]
Status = Callable[[], dict]


async def start_http(
    start_server: StartServer,
    host: str,
    port: int,
    *,
    root: pathlib.Path | None = None,
    status: Status | None = None,
) -> Any:
    """Serve files under `root` (or the built-in status page when None); returns the server."""
    # Resolve once so the containment check compares real paths with a real root.
    real_root = root.resolve(strict=True) if root is not None else None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _Session(reader, writer, real_root, status).run()

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
    """Up to and including the next LF, so we never read past the end of a request head."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial  # EOF: the next call returns b"", which h11 takes as close
    except asyncio.LimitOverrunError as exc:
        # A very long line: take what was scanned; h11 enforces its own size limit.
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
    """One connection: read a request, answer it, repeat while both sides keep alive."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        root: pathlib.Path | None,
        status: Status | None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.root = root
        self.status = status
        self.conn = h11.Connection(h11.SERVER)
        self.body_left = 0

    async def run(self) -> None:
        peer = self.writer.get_extra_info("peername")
        try:
            while await self._cycle():
                self.conn.start_next_cycle()
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
                    self.body_left = _declared_length(event)
                return event
            if self.body_left > 0:
                data = await self.reader.read(min(self.body_left, CHUNK))
                self.body_left -= len(data)
            else:
                data = await _read_line(self.reader)
            self.conn.receive_data(data)

    async def _cycle(self) -> bool:
        """Serve one request; True if the connection stays open for another."""
        request = await self._next_event()
        if not isinstance(request, h11.Request):
            return False  # ConnectionClosed: the client closed while idle
        while not isinstance(event := await self._next_event(), h11.EndOfMessage):
            if isinstance(event, h11.ConnectionClosed):
                return False
            # Data: a body nobody asked for (GET with a body, or a 405 upload); drop it.
        await self._respond(request)
        # MUST_CLOSE after HTTP/1.0 or `Connection: close`: we close first.
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def _respond(self, request: h11.Request) -> None:
        if request.method not in ALLOWED:
            await self._send_bytes(405, b"method not allowed\n", extra=[("Allow", "GET, HEAD")])
            return
        head = request.method == b"HEAD"
        path = url_path(request.target)
        if path is None:
            await self._send_bytes(400, b"bad request\n", head=head)
            return
        if self.root is not None:
            file = resolve(self.root, path)
            if file is not None and await self._send_file(file, head):
                return
        elif path in ("/", "/index.html"):
            await self._send_snapshot(status_page, HTML, head)
            return
        if path == "/status.json" and (self.root is None or self.status is not None):
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

    def _start(self, status: int, ctype: str, length: int, extra: list[tuple[str, str]]) -> None:
        headers = [
            ("Server", "ustack"),
            ("Date", formatdate(usegmt=True)),
            ("Content-Type", ctype),
            ("Content-Length", str(length)),
            *extra,
        ]
        # h11 leaves the reason phrase empty unless given one: "HTTP/1.1 200 OK", please.
        self.writer.write(self.conn.send(h11.Response(
            status_code=status, headers=headers, reason=HTTPStatus(status).phrase)))

    async def _send_bytes(
        self,
        status: int,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        *,
        head: bool = False,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        self._start(status, ctype, len(body), extra or [])
        if not head and body:
            self.writer.write(self.conn.send(h11.Data(data=body)))
        self.writer.write(self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()

    async def _send_file(self, path: pathlib.Path, head: bool) -> bool:
        """Stream a file in chunks, draining after each; False if it cannot be opened."""
        try:
            f = path.open("rb")
        except OSError:
            return False
        with f:
            # Length from the open file, so a rename after resolve() cannot mismatch it.
            size = os.fstat(f.fileno()).st_size
            self._start(200, content_type(path), size, [])
            left = 0 if head else size
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break  # file shrank: h11 refuses EndOfMessage below and we close
                left -= len(chunk)
                self.writer.write(self.conn.send(h11.Data(data=chunk)))
                await self.writer.drain()
            self.writer.write(self.conn.send(h11.EndOfMessage()))
            await self.writer.drain()
        return True

    async def _send_error(self, status: int) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # a response is already under way; closing is all that is left
        body = f"{status} error\n".encode()
        self._start(status, "text/plain; charset=utf-8", len(body), [("Connection", "close")])
        self.writer.write(self.conn.send(h11.Data(data=body)))
        self.writer.write(self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()


def _status_json(snapshot: dict) -> bytes:
    return json.dumps(snapshot, default=str).encode()
