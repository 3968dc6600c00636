"""Differential suite: every keyword argument of open_connection, start_server,
create_connection and create_server that the running Python's asyncio accepts, on kernel
sockets and on ustack: honoured, or refused with asyncio's own error, never a TypeError
that asyncio would not raise (tests/dropin)."""

from __future__ import annotations

import asyncio
import inspect
import socket

import pytest
from dropin import Rec, Spec, case, check

pytestmark = pytest.mark.netns

CONNECTION_KW = set(inspect.signature(asyncio.AbstractEventLoop.create_connection).parameters)
SERVER_KW = set(inspect.signature(asyncio.AbstractEventLoop.create_server).parameters)


def _norm(net, text: str) -> str:
    return text.replace(repr(net.host), "'HOST'").replace(repr(net.client_host), "'CLIENT'") \
        .replace(net.host, "HOST").replace(net.client_host, "CLIENT")


async def _result(net, aw) -> str:
    try:
        got = await asyncio.wait_for(aw, 10)
    except Exception as exc:
        return f"{type(exc).__name__}: {_norm(net, str(exc))}"
    return "ok" if got is None else str(got)


def connection_case(name: str, make_kw):
    """create_connection (and open_connection) with the keywords `make_kw(net, port)`."""
    @case()
    async def fn(net, rec: Rec) -> None:
        server = await net.create_server(asyncio.Protocol)
        port = server.sockets[0].getsockname()[1]
        api = net.client_api()
        host = net.host

        async def via_create():
            t, _ = await api.create_connection(asyncio.Protocol, host, port,
                                               **make_kw(net, port))
            local = t.get_extra_info("sockname")
            t.close()
            return f"ok local_is_client={local[0] == net.client_host}"

        async def via_open():
            r, w = await api.open_connection(host, port, **make_kw(net, port))
            w.close()
            await w.wait_closed()

        rec["create_connection"] = await _result(net, via_create())
        rec["open_connection"] = await _result(net, via_open())
        server.close()
    fn.fn.__name__ = f"create_connection_{name}"
    return fn


def server_case(name: str, make_kw):
    @case()
    async def fn(net, rec: Rec) -> None:
        api = net.server_api()
        host = net.host

        async def via(create: bool):
            kw = make_kw(net)
            if create:
                server = await api.create_server(asyncio.Protocol, host, 0, **kw)
            else:
                async def cb(r, w):
                    w.close()
                server = await api.start_server(cb, host, 0, **kw)
            try:
                port = server.sockets[0].getsockname()[1]
                if not server.is_serving():
                    await server.start_serving()
                r, w = await net.open_connection(port)
                w.close()
                await w.wait_closed()
                return f"ok serving={server.is_serving()}"
            finally:
                server.close()

        rec["create_server"] = await _result(net, via(True))
        rec["start_server"] = await _result(net, via(False))
    fn.fn.__name__ = f"create_server_{name}"
    return fn


def _local(net, port):
    return {"local_addr": (net.client_host, 0)}


def _bad_local(net, port):
    return {"local_addr": ("10.77.250.250", 0)}  # an address this host does not have


CONNECTION_CASES: list[Spec] = [
    connection_case("none", lambda net, port: {}),
    connection_case("ssl_none", lambda net, port: {"ssl": None}),
    connection_case("ssl_false", lambda net, port: {"ssl": False}),
    connection_case("family_inet", lambda net, port: {"family": socket.AF_INET}),
    connection_case("family_inet6", lambda net, port: {"family": socket.AF_INET6}),
    connection_case("proto_tcp", lambda net, port: {"proto": socket.IPPROTO_TCP}),
    connection_case("flags", lambda net, port: {"flags": socket.AI_NUMERICHOST}),
    connection_case("local_addr", _local),
    connection_case("local_addr_any", lambda net, port: {"local_addr": ("0.0.0.0", 0)}),
    connection_case("local_addr_foreign", _bad_local),
    connection_case("server_hostname_no_ssl", lambda net, port: {"server_hostname": "x"}),
    connection_case("handshake_timeout_no_ssl",
                    lambda net, port: {"ssl_handshake_timeout": 5}),
    connection_case("shutdown_timeout_no_ssl",
                    lambda net, port: {"ssl_shutdown_timeout": 5}),
    connection_case("happy_eyeballs", lambda net, port: {"happy_eyeballs_delay": 0.25}),
    connection_case("interleave", lambda net, port: {"interleave": 2}),
    connection_case("sock_and_host", lambda net, port: {"sock": object()}),
]
if "all_errors" in CONNECTION_KW:  # Python 3.12+
    CONNECTION_CASES.append(connection_case("all_errors", lambda net, port: {"all_errors": True}))

SERVER_CASES: list[Spec] = [
    server_case("none", lambda net: {}),
    server_case("backlog", lambda net: {"backlog": 5}),
    server_case("ssl_none", lambda net: {"ssl": None}),
    server_case("ssl_true", lambda net: {"ssl": True}),
    server_case("family_inet", lambda net: {"family": socket.AF_INET}),
    server_case("flags", lambda net: {"flags": socket.AI_PASSIVE}),
    server_case("reuse_address", lambda net: {"reuse_address": True}),
    server_case("reuse_port", lambda net: {"reuse_port": True}),
    server_case("handshake_timeout_no_ssl", lambda net: {"ssl_handshake_timeout": 5}),
    server_case("shutdown_timeout_no_ssl", lambda net: {"ssl_shutdown_timeout": 5}),
    server_case("start_serving_false", lambda net: {"start_serving": False}),
    server_case("sock_and_host", lambda net: {"sock": object()}),
]
if "keep_alive" in SERVER_KW:  # Python 3.13+
    SERVER_CASES.append(server_case("keep_alive", lambda net: {"keep_alive": True}))


@case()
async def stream_limit_and_positional(net, rec: Rec) -> None:
    """open_connection/start_server's `limit`, and host/port given by keyword."""
    api, sapi = net.client_api(), net.server_api()

    async def cb(r, w):
        rec["server_limit_overrun"] = await _result(net, r.readline())
        w.close()

    server = await sapi.start_server(cb, host=net.host, port=0, limit=8)
    port = server.sockets[0].getsockname()[1]
    r, w = await api.open_connection(host=net.host, port=port, limit=8)
    w.write(b"0123456789abcdef\n")
    rec["client_read"] = await _result(net, r.read())
    w.close()
    await w.wait_closed()
    server.close()


def test_keywords_cover_asyncio() -> None:
    """Each keyword of the running asyncio has a case (a new Python's new keyword fails
    here until it gets one)."""
    covered_conn = {"ssl", "family", "proto", "flags", "local_addr", "server_hostname",
                    "ssl_handshake_timeout", "ssl_shutdown_timeout", "happy_eyeballs_delay",
                    "interleave", "sock", "all_errors"}
    covered_srv = {"backlog", "ssl", "family", "flags", "reuse_address", "reuse_port",
                   "ssl_handshake_timeout", "ssl_shutdown_timeout", "start_serving", "sock",
                   "keep_alive"}
    assert CONNECTION_KW - {"self", "protocol_factory", "host", "port"} <= covered_conn
    assert SERVER_KW - {"self", "protocol_factory", "host", "port"} <= covered_srv


def test_ustack_signatures_accept_asyncio_keywords() -> None:
    """No TypeError for a keyword asyncio accepts: ustack's functions name them all."""
    from ustack import aio
    conn = set(inspect.signature(aio.create_connection).parameters)
    srv = set(inspect.signature(aio.create_server).parameters)
    assert CONNECTION_KW - {"self"} <= conn | {"protocol_factory"}
    assert SERVER_KW - {"self"} <= srv


@pytest.mark.parametrize("spec", CONNECTION_CASES + SERVER_CASES + [stream_limit_and_positional],
                         ids=lambda s: s.fn.__name__)
async def test_keyword(inside_netns, spec) -> None:
    await check(spec)
