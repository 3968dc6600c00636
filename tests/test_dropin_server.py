"""Differential suite: asyncio's Server (kernel sockets vs ustack; tests/dropin)."""

from __future__ import annotations

import asyncio

import pytest
from dropin import Deviation, Rec, case, check, outcome, raises

pytestmark = pytest.mark.netns


async def noop(reader, writer) -> None:
    pass


async def connect_outcome(net, port: int) -> str | None:
    async def go():
        r, w = await net.open_connection(port)
        w.close()
        await w.wait_closed()
    return await outcome(go())


@case()
async def lifecycle(net, rec: Rec) -> None:
    server = await net.start_server(noop)
    rec["serving"] = server.is_serving()
    rec["loop"] = server.get_loop() is asyncio.get_running_loop()
    socks = server.sockets
    rec["sockets"] = (type(socks).__name__, len(socks))
    name = socks[0].getsockname()
    port = name[1]
    rec["sockname"] = (name[0] == net.host, port > 0)
    rec["socket_api"] = (socks[0].family, socks[0].type, socks[0].proto)
    rec["connect"] = await connect_outcome(net, port)
    server.close()
    rec["after_close"] = (server.is_serving(), server.sockets)
    server.close()  # twice: nothing
    rec["wait_closed"] = await outcome(server.wait_closed())
    rec["wait_closed_again"] = await outcome(server.wait_closed())
    rec["connect_after_close"] = await connect_outcome(net, port)
    rec["serve_forever_closed"] = await outcome(server.serve_forever())
    rec["start_serving_closed"] = await outcome(server.start_serving())


@case()
async def start_serving_false(net, rec: Rec) -> None:
    server = await net.start_server(noop, start_serving=False)
    port = server.sockets[0].getsockname()[1]
    rec["serving"] = server.is_serving()
    rec["connect_before"] = await connect_outcome(net, port)
    await server.start_serving()
    rec["serving_after"] = server.is_serving()
    rec["connect_after"] = await connect_outcome(net, port)
    await server.start_serving()  # again: nothing
    server.close()
    await server.wait_closed()


@case()
async def serve_forever_and_cancel(net, rec: Rec) -> None:
    server = await net.start_server(noop, start_serving=False)
    port = server.sockets[0].getsockname()[1]
    task = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0.05)
    rec["serving"] = server.is_serving()
    rec["second_serve_forever"] = (await outcome(server.serve_forever()))
    rec["connect"] = await connect_outcome(net, port)
    task.cancel()
    rec["task"] = await outcome(task)
    rec["after_cancel"] = (server.is_serving(), server.sockets)
    rec["connect_after"] = await connect_outcome(net, port)


@case()
async def close_ends_serve_forever(net, rec: Rec) -> None:
    server = await net.start_server(noop)
    task = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0.05)
    server.close()
    rec["task"] = await outcome(task)
    rec["serving"] = server.is_serving()


@case()
async def async_with(net, rec: Rec) -> None:
    server = await net.start_server(noop)
    async with server as s:
        rec["same"] = s is server
        rec["inside"] = s.is_serving()
        port = s.sockets[0].getsockname()[1]
        rec["connect"] = await connect_outcome(net, port)
    rec["after"] = (server.is_serving(), server.sockets)


@case()
async def close_keeps_connections(net, rec: Rec) -> None:
    """Server.close() stops listening; accepted connections live on (and, on 3.11,
    wait_closed() does not wait for them)."""
    accepted: asyncio.Queue = asyncio.Queue()

    async def cb(reader, writer):
        await accepted.put((reader, writer))

    server = await net.start_server(cb)
    port = server.sockets[0].getsockname()[1]
    cr, cw = await net.open_connection(port)
    sr, sw = await asyncio.wait_for(accepted.get(), 10)
    server.close()
    wait = asyncio.ensure_future(server.wait_closed())
    await asyncio.sleep(0.1)
    rec["wait_closed_done_with_a_connection"] = wait.done()
    cw.write(b"still here")
    rec["still_talks"] = await asyncio.wait_for(sr.readexactly(10), 10)
    sw.close()
    cw.close()
    await asyncio.wait_for(asyncio.gather(sw.wait_closed(), cw.wait_closed()), 10)
    rec["wait_closed"] = await outcome(wait)


@case()
async def protocol_factory_error(net, rec: Rec) -> None:
    """The connection callback raises: asyncio logs it via the exception handler? No:
    a start_server callback's exception is only the task's; the connection stays."""
    async def bad(reader, writer):
        raise RuntimeError("boom")

    server = await net.start_server(bad)
    port = server.sockets[0].getsockname()[1]
    cr, cw = await net.open_connection(port)
    await asyncio.sleep(0.1)
    cw.close()
    await cw.wait_closed()
    server.close()
    await server.wait_closed()
    rec["done"] = True


@case()
async def listen_socket_options(net, rec: Rec) -> None:
    import socket
    server = await net.start_server(noop)
    sock = server.sockets[0]
    rec["reuseaddr"] = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
    rec["type"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    rec["peername"] = raises(sock.getpeername)
    server.close()


@case(Deviation("families", [2, 10], [2],
                "ustack is IPv4 only: host=None listens on the stack's address, where "
                "asyncio binds every interface of both families (0.0.0.0 and ::)"))
async def no_host(net, rec: Rec) -> None:
    server = await net.server_api().start_server(noop, port=0)
    rec["no_host_no_port"] = await outcome(net.server_api().start_server(noop))
    rec["families"] = sorted(s.family for s in server.sockets)
    port = next(s for s in server.sockets if s.family == 2).getsockname()[1]
    rec["connect"] = await connect_outcome(net, port)
    server.close()


CASES = [no_host, lifecycle, start_serving_false, serve_forever_and_cancel, close_ends_serve_forever,
         async_with, close_keeps_connections, protocol_factory_error, listen_socket_options]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.fn.__name__)
async def test_server(inside_netns, spec) -> None:
    await check(spec)
