"""Connection churn frees what it used: a closed connection's objects go by reference
counting alone, without the cyclic collector (issue 13: the daemon's RSS never came
back after 38,000 short connections).

The cyclic collector is disabled for the test, as good as the daemon's rare full
passes (gc threshold 20000, cli.py): before Tcb.release() broke the TCB's cycles
(owner <-> transport, recovery <-> TCB), every TCB of the churn stayed alive here."""

from __future__ import annotations

import asyncio
import gc
import pathlib

from ustack import Stack
from ustack.aio import TcpTransport
from ustack.apps.http import start_http
from ustack.config import Config
from ustack.io.memory import MemoryLink
from ustack.tcp.tcb import Tcb

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"


def alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


async def test_churn_leaves_no_tcb_behind(tmp_path: pathlib.Path):
    loop = asyncio.get_running_loop()
    fast = Config()
    fast.tcp_msl = 1  # TIME_WAIT 2 s
    client, server = Stack(CLIENT, loop=loop, config=fast), Stack(SERVER, loop=loop,
                                                                  config=fast)
    MemoryLink(loop).connect(client, server)
    (tmp_path / "s.txt").write_bytes(b"hi\n")
    http = await start_http(server.start_server, SERVER, 80, root=tmp_path)

    async def one(close_first: bool) -> None:
        # HTTP/1.0: the server closes first (its TIME_WAIT); keep-alive with the
        # client closing after the response: the client's TIME_WAIT.
        reader, writer = await client.open_connection(SERVER, 80)
        if close_first:
            writer.write(b"GET /s.txt HTTP/1.0\r\n\r\n")
            assert (await reader.read()).endswith(b"hi\n")
        else:
            writer.write(b"GET /s.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"hi\n")).startswith(b"HTTP/1.1 200")
        writer.close()

    gc.collect()
    gc.disable()
    try:
        base = alive(Tcb), alive(TcpTransport)
        for i in range(300):
            await one(close_first=i % 2 == 0)
        deadline = loop.time() + 10
        while (server.status()["time_wait"] or client.status()["time_wait"]
               or alive(Tcb) > base[0]):
            assert loop.time() < deadline, (alive(Tcb), server.status()["time_wait"])
            await asyncio.sleep(0.1)
        assert (alive(Tcb), alive(TcpTransport)) == base
    finally:
        gc.enable()
        http.close()
        client.close()
        server.close()
