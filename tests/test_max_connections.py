"""`ustack serve --max-connections`: beyond N TCBs a new connection's SYN is dropped
and counted (UstackMaxConnDrops, TcpExtListenDrops); the client's retransmitted SYN
gets in once a connection has gone. Two Stacks over a MemoryLink."""

from __future__ import annotations

import asyncio
import gc

from ustack import Stack
from ustack.apps.echo import start_echo
from ustack.io.memory import MemoryLink

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"


async def test_syn_over_the_limit_is_dropped_then_retried():
    loop = asyncio.get_running_loop()
    client, server = Stack(CLIENT, loop=loop), Stack(SERVER, loop=loop)
    MemoryLink(loop).connect(client, server)
    server.max_connections = 3
    echo = await start_echo(server.start_server, SERVER, 7)
    try:
        conns = [await client.open_connection(SERVER, 7) for _ in range(3)]
        for reader, writer in conns:  # all three really work
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        fourth = asyncio.ensure_future(client.open_connection(SERVER, 7))
        await asyncio.sleep(0.3)
        assert not fourth.done()
        assert server.stats["UstackMaxConnDrops"] == 1
        assert server.stats["TcpExtListenDrops"] == 1
        assert len(server.table.est) == 3
        # Existing connections are not affected by the limit.
        conns[1][1].write(b"more")
        assert await asyncio.wait_for(conns[1][0].readexactly(4), 5) == b"more"
        # One goes (the echo closes after our FIN); the SYN's retransmission (1 s) wins.
        conns[0][1].close()
        reader, writer = await asyncio.wait_for(fourth, 10)
        writer.write(b"late")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"late"
        assert server.stats["UstackMaxConnDrops"] == 1
        for _, w in conns[1:] + [(reader, writer)]:
            w.close()
    finally:
        echo.close()
        client.close()
        server.close()
        gc.collect()


def test_cli_default_and_zero():
    from ustack.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.max_connections == 65536
    assert build_parser().parse_args(["serve", "--max-connections", "0"]).max_connections == 0
