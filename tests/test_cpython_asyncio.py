"""CPython's own asyncio tests, run over ustack (the house issue, section 6).

ustack promises that existing asyncio code runs on it unchanged; its own tests compare
it with kernel sockets on cases it chose. Here the cases are someone else's: the
TestCase classes of the interpreter's `test.test_asyncio.test_streams` and the TCP
transport/protocol cases of `test.test_asyncio.test_events`, imported from the
interpreter's own `test` package (never copied into this repository) and run unchanged
with a shim in front of them:

* `asyncio.open_connection` / `asyncio.start_server` and the loop methods
  `create_connection` / `create_server`, for TCP host/port (or a listening `sock=`),
  go to two ustack Stacks (client 10.77.0.1, server 10.77.0.2) over a MemoryLink on the
  test's own loop. 127.0.0.1, localhost and 0.0.0.0 name the server stack; a client
  stack's connections come from 10.77.0.1, so a peername is that address.
* `test_utils.run_test_server()`, a WSGI server in a thread on kernel sockets that a
  ustack client cannot reach over a MemoryLink, is replaced by a ustack server (on the
  loop of the first client that connects to it) that answers what the WSGI app answers:
  `HTTP/1.0 200 OK`, the same headers, `Test message`, then close (and `/loop` echoes
  the body). The client side, the code under test, is CPython's unchanged.

Every test that opens a connection must have made at least one through the shim, and
none through the kernel, else it proved nothing about ustack. The kernel sockets some
tests create (to find a free port, or `sock=`) live in a namespace the test creates.
Excluded tests are listed in EXCLUDED with the reason; the README summarises them.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.streams
import contextlib
import email.utils
import importlib
import os
import platform
import socket
import unittest

import pytest

from ustack import Stack
from ustack.io.memory import MemoryLink

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
LOCAL_NAMES = {"127.0.0.1", "localhost", "0.0.0.0", "", None, SERVER}


def load(module: str):
    try:
        return importlib.import_module(f"test.test_asyncio.{module}")
    except ImportError as exc:
        reason = (f"the interpreter's test package is not installed ({exc}); "
                  "install it (e.g. python3-test / a full CPython build) to run these")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


test_streams = load("test_streams")
test_events = load("test_events")
test_utils = load("utils")

UNIX = "needs an AF_UNIX socket: out of scope (ustack is TCP/IPv4)"
BLOCKING = ("its peer is a blocking kernel socket (socket.socket().connect or accept in a "
            "thread); over a MemoryLink there is no kernel socket to reach ustack")

# test id -> why it does not run. Everything else in the chosen classes runs.
EXCLUDED: dict[str, str] = {
    "StreamTests.test_open_unix_connection": UNIX,
    "StreamTests.test_open_unix_connection_error": UNIX,
    "StreamTests.test_open_unix_connection_no_loop_ssl": UNIX,
    "StreamTests.test_start_unix_server": UNIX,
    "StreamTests.test_drain_raises": BLOCKING,
}
# test_events: only the TCP transport/protocol cases of the event-loop mixin; the rest
# of it is about the loop itself (call_soon, signals, pipes, datagrams, subprocesses).
EVENTS_CHOSEN = {
    "test_create_connection": None,
    "test_create_connection_local_addr": None,
    "test_create_connection_local_addr_in_use": (
        "binds the client to the server's own 127.0.0.1:port and expects EADDRINUSE; the "
        "shim gives each stack its own address, so the two never share a port space"),
    "test_create_connection_local_addr_skip_different_family": (
        "mocks getaddrinfo to return IPv6 addresses: ustack is IPv4 only"),
    "test_create_connection_local_addr_nomatch_family": (
        "mocks getaddrinfo to return IPv6 addresses: ustack is IPv4 only"),
    "test_create_server": BLOCKING,
    "test_create_server_sock": BLOCKING,
    "test_create_server_addr_in_use": (
        "expects create_server(sock=kernel socket) to own the kernel's port; a ustack "
        "listener never sees the kernel's port table"),
    "test_server_close": BLOCKING,
    "test_create_ssl_connection": (
        "asserts the TLS transport's peername is 127.0.0.1; the shim's server stack is "
        "10.77.0.2 (TLS itself runs: test_open_connection_no_loop_ssl, test_start_tls)"),
    "test_create_server_ssl": (
        "asserts the server socket's host is 127.0.0.1; the shim's server stack is "
        "10.77.0.2"),
    "test_create_unix_connection": UNIX,
    "test_create_unix_server": UNIX,
    "test_connect_accepted_socket": "wraps an accepted kernel socket (sock=): no TCP "
                                    "host/port for the shim to route",
}
EVENTS_CLASS = "EPollEventLoopTests"
for _name, _why in EVENTS_CHOSEN.items():
    if _why is not None:
        EXCLUDED[f"{EVENTS_CLASS}.{_name}"] = _why

# The tests that open a TCP connection: each must make one through the shim.
NETWORK = {f"StreamTests.{n}" for n in (
    "test_open_connection", "test_open_connection_error", "test_start_server",
    "test_wait_closed_on_close", "test_wait_closed_on_close_with_unread_data",
    "test_async_writer_api", "test_async_writer_api_exception_after_close",
    "test_eof_feed_when_closing_writer", "test_unclosed_resource_warnings",
    "test_loop_is_closed_resource_warnings", "test_unhandled_exceptions",
    "test_open_connection_no_loop_ssl", "test_start_tls")} | {
    f"{EVENTS_CLASS}.{n}" for n, why in EVENTS_CHOSEN.items() if why is None}


def chosen() -> list[str]:
    ids = [f"StreamTests.{n}" for n in unittest.TestLoader().getTestCaseNames(
        test_streams.StreamTests)]
    ids += [f"{EVENTS_CLASS}.{n}" for n in EVENTS_CHOSEN]
    return ids


# ---------------------------------------------------------------------- the shim


class Shim:
    """Routes TCP host/port calls of asyncio to two Stacks per event loop."""

    def __init__(self) -> None:
        self.pairs: dict[asyncio.AbstractEventLoop, tuple[Stack, Stack]] = {}
        self.http_ports: set[int] = set()  # run_test_server()s waiting for a loop
        self.tls_ports: set[int] = set()  # of those, the ones that speak TLS
        self.http_servers: dict[tuple[asyncio.AbstractEventLoop, int], object] = {}
        self.connections = 0  # through ustack: client connects and server accepts
        self.kernel = 0  # TCP calls the shim let through to the kernel
        self.kernel_socks: list[socket.socket] = []
        self._next_port = 20000
        orig = asyncio.base_events.BaseEventLoop
        self.orig_create_connection = orig.create_connection
        self.orig_create_server = orig.create_server
        self.orig_open_connection = asyncio.streams.open_connection
        self.orig_start_server = asyncio.streams.start_server

    def pair(self, loop: asyncio.AbstractEventLoop) -> tuple[Stack, Stack]:
        if loop not in self.pairs:
            c, s = Stack(CLIENT, loop=loop), Stack(SERVER, loop=loop)
            MemoryLink(loop).connect(c, s)
            self.pairs[loop] = (c, s)
        return self.pairs[loop]

    def close(self) -> None:
        for c, s in self.pairs.values():
            c.close()
            s.close()
        self.pairs.clear()
        for sock in self.kernel_socks:
            sock.close()

    # --- where a call goes

    def routed(self, host, kwds: dict) -> bool:
        plain = kwds.get("family", 0) in (0, socket.AF_INET)
        return plain and (host in LOCAL_NAMES)

    async def _client_ready(self, loop, port: int) -> None:
        if port in self.http_ports and (loop, port) not in self.http_servers:
            _, server = self.pair(loop)
            ssl = test_utils.simple_server_sslcontext() if port in self.tls_ports else None
            self.http_servers[(loop, port)] = await server.start_server(
                self._counted(_wsgi_like), SERVER, port, ssl=ssl)

    def _counted(self, cb):
        def counted(*args):
            self.connections += 1
            return cb(*args)
        return counted

    def _counted_factory(self, factory):
        def made():
            self.connections += 1
            return factory()
        return made

    # --- the four entry points

    async def open_connection(self, host=None, port=None, *, limit=2 ** 16, **kwds):
        if not self.routed(host, kwds) or kwds.get("sock") is not None:
            self.kernel += 1
            return await self.orig_open_connection(host, port, limit=limit, **kwds)
        loop = asyncio.get_running_loop()
        await self._client_ready(loop, port)
        client, _ = self.pair(loop)
        local_port = kwds.pop("local_addr", (None, None))[1]
        reader, writer = await client.open_connection(SERVER, port, limit=limit,
                                                      local_port=local_port, **_tls(kwds))
        self.connections += 1
        return reader, writer

    async def start_server(self, cb, host=None, port=None, *, limit=2 ** 16, **kwds):
        host, port = self._listen_address(host, port, kwds)
        if host is False:
            self.kernel += 1
            return await self.orig_start_server(cb, None, None, limit=limit, **kwds)
        _, server = self.pair(asyncio.get_running_loop())
        return await server.start_server(self._counted(cb), host, port or 0, limit=limit,
                                         **_tls(kwds))

    async def create_connection(self, loop, factory, host=None, port=None, **kwds):
        if not self.routed(host, kwds) or kwds.get("sock") is not None:
            self.kernel += 1
            return await self.orig_create_connection(loop, factory, host, port, **kwds)
        await self._client_ready(loop, port)
        client, _ = self.pair(loop)
        local_addr = kwds.get("local_addr")
        result = await client.create_connection(
            factory, SERVER, port, local_port=local_addr[1] if local_addr else None,
            **_tls(kwds))
        self.connections += 1
        return result

    async def create_server(self, loop, factory, host=None, port=None, **kwds):
        host, port = self._listen_address(host, port, kwds)
        if host is False:
            self.kernel += 1
            return await self.orig_create_server(loop, factory, None, None, **kwds)
        _, server = self.pair(loop)
        return await server.create_server(self._counted_factory(factory), host, port or 0,
                                          backlog=kwds.get("backlog", 100), **_tls(kwds))

    def _listen_address(self, host, port, kwds: dict):
        sock = kwds.get("sock")
        if sock is not None and sock.family == socket.AF_INET:
            # A listening kernel socket handed over: listen on its port instead. It stays
            # open (the test may still ask it its name) and is closed after the test.
            self.kernel_socks.append(sock)
            kwds.pop("sock")
            host, port = sock.getsockname()
        elif not self.routed(host, kwds):
            return False, None
        return ("0.0.0.0" if host == "0.0.0.0" else SERVER), port

    @contextlib.contextmanager
    def run_test_server(self, *, host="127.0.0.1", port=0, use_ssl=False):
        if not port:
            port = self._next_port
            self._next_port += 1
        self.http_ports.add(port)
        if use_ssl:  # asyncio's own TLS over the ustack transport (aio.py's ssl=)
            self.tls_ports.add(port)
        httpd = type("Httpd", (), {"address": ("127.0.0.1", port)})()
        try:
            yield httpd
        finally:
            self.http_ports.discard(port)
            self.tls_ports.discard(port)
            for (loop, p), server in list(self.http_servers.items()):
                if p == port:
                    server.close()
                    del self.http_servers[(loop, p)]


def _tls(kwds: dict) -> dict:
    """The TLS keywords of a call, for ustack's entry points (aio.py runs sslproto)."""
    return {k: v for k, v in kwds.items() if k in (
        "ssl", "server_hostname", "ssl_handshake_timeout", "ssl_shutdown_timeout")}


SERVER_HEADER = (f"WSGIServer/0.2 {platform.python_implementation()}/"
                 f"{platform.python_version()}")


async def _wsgi_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What test_utils.run_test_server's wsgiref app answers, byte for byte but the Date."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split()[1] if len(lines[0].split()) > 1 else "/"
        headers = {k.lower(): v for k, v in (ln.split(": ", 1) for ln in lines[1:] if ln)}
        if path == "/loop":
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            length = ""
        else:
            body = b"Test message"
            length = f"Content-Length: {len(body)}\r\n"
        writer.write(f"HTTP/1.0 200 OK\r\nDate: {email.utils.formatdate(usegmt=True)}\r\n"
                     f"Server: {SERVER_HEADER}\r\nContent-type: text/plain\r\n{length}\r\n"
                     .encode() + body)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass  # the client went away: the WSGI server's handle_error() is silent too
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.fixture
def shim(monkeypatch):
    s = Shim()
    monkeypatch.setattr(asyncio, "open_connection", s.open_connection)
    monkeypatch.setattr(asyncio.streams, "open_connection", s.open_connection)
    monkeypatch.setattr(asyncio, "start_server", s.start_server)
    monkeypatch.setattr(asyncio.streams, "start_server", s.start_server)

    async def create_connection(loop, *args, **kwds):
        return await s.create_connection(loop, *args, **kwds)

    async def create_server(loop, *args, **kwds):
        return await s.create_server(loop, *args, **kwds)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_connection",
                        create_connection)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_server", create_server)
    monkeypatch.setattr(test_utils, "run_test_server", s.run_test_server)
    try:
        yield s
    finally:
        s.close()
        asyncio.set_event_loop(None)


def run_case(test_id: str) -> unittest.TestResult:
    cls_name, method = test_id.split(".")
    module = test_streams if cls_name == "StreamTests" else test_events
    case = getattr(module, cls_name)(method)
    result = unittest.TestResult()
    case.run(result)
    return result


@pytest.mark.netns
@pytest.mark.parametrize("test_id", [t for t in chosen() if t not in EXCLUDED])
def test_cpython(test_id, shim, inside_netns):
    """One CPython test, run over ustack (the excluded ones are not collected: they
    are data, each with its reason, checked by test_the_exclusions_name_real_tests)."""
    result = run_case(test_id)
    problems = [f"{kind}: {case}\n{tb}" for kind, items in
                (("error", result.errors), ("failure", result.failures))
                for case, tb in items]
    assert not problems, "\n".join(problems)
    assert not result.skipped, result.skipped
    assert result.testsRun == 1
    if test_id in NETWORK:
        assert shim.connections > 0, "no connection went through ustack"
        assert shim.kernel == 0, "a TCP call went to the kernel"
    else:
        assert shim.connections == 0 and shim.kernel == 0, "not in NETWORK, yet connected"


def test_the_exclusions_name_real_tests():
    """A renamed or removed CPython test must not leave a stale entry behind."""
    assert set(EXCLUDED) <= set(chosen())
    assert NETWORK <= set(chosen()) and not NETWORK & set(EXCLUDED)
