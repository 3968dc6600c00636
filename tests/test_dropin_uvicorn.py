"""Differential suite: a real library's protocol on both stacks. uvicorn's HTTP/1.1
protocol (h11) serves an ASGI app; it learns the client's and its own address from
get_extra_info('socket') (uvicorn.protocols.utils), as it does on kernel sockets."""

from __future__ import annotations

import asyncio

import pytest
from dropin import Rec, case, check

uvicorn = pytest.importorskip("uvicorn")  # the `test` extra installs it

pytestmark = pytest.mark.netns


def _protocol_factory(seen: list):
    from uvicorn.config import Config
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        seen.append((scope["client"], scope["server"], scope["method"], scope["path"], body))
        out = b"echo:" + body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    config = Config(app=app, lifespan="off", log_level="critical", access_log=False)
    config.load()
    state = ServerState()
    return lambda: H11Protocol(config, state, {})


@case()
async def uvicorn_h11(net, rec: Rec) -> None:
    seen: list = []
    server = await net.create_server(_protocol_factory(seen))
    port = server.sockets[0].getsockname()[1]
    reader, writer = await net.open_connection(port)
    writer.write(b"POST /path?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    rec["status"] = lines[0]
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    rec["headers"] = sorted(k for k in headers if k not in ("date",))
    rec["body"] = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    client, srv, method, path, body = seen[0]
    local = writer.get_extra_info("sockname")
    rec["scope"] = (tuple(client) == tuple(local), tuple(srv) == (net.host, port), method,
                    path, body)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 10)
    rec["second"] = (rest.split(b"\r\n", 1)[0], rest.endswith(b"echo:"))
    writer.close()
    await writer.wait_closed()
    server.close()


@pytest.mark.parametrize("spec", [uvicorn_h11], ids=lambda s: s.fn.__name__)
async def test_library(inside_netns, spec) -> None:
    await check(spec)
