"""tcp_mem (ustack/tcp/mem.py, LINUX-SPEC-2 items 394-397): connections whose
application never reads, five of them, against a stack-wide limit of a few pages. Without
the limit each would queue a whole receive buffer (256 KB); with it, pressure is entered
and counted, windows clamp, and beyond the maximum new data is dropped (TCPRcvQDrop) so
the sum stays near the limit; once the application reads, the data arrives intact."""

from __future__ import annotations

import asyncio
import gc

from ustack import Stack
from ustack.config import Config, apply_settings
from ustack.stats import Stats
from ustack.tcp import mem as tcp_mem
from ustack.tcp.mem import TcpMem

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
SIZE = 200_000


def test_pressure_enters_above_pressure_and_leaves_at_min():
    m, stats = TcpMem(), Stats()
    limits = (2, 4, 6)
    m.sample(4 * 4096, limits, 0.0, stats)
    assert not m.pressure
    m.sample(5 * 4096, limits, 1.0, stats)
    assert m.pressure and not m.over and stats["TcpExtTCPMemoryPressures"] == 1
    m.sample(3 * 4096, limits, 1.5, stats)
    assert m.pressure  # cleared only at tcp_mem[0]
    m.sample(7 * 4096, limits, 1.7, stats)
    assert m.over and stats["TcpExtTCPMemoryPressures"] == 1
    m.sample(2 * 4096, limits, 2.0, stats)
    assert not m.pressure and not m.over
    assert stats["TcpExtTCPMemoryPressuresChrono"] == 1000


def test_knob_parses_three_pages():
    cfg = apply_settings(Config(), ["tcp_mem=10 20 30"])
    assert cfg.tcp_mem == (10, 20, 30)
    from ustack.stack import default_tcp_mem

    assert Config().tcp_mem is None  # the shell fills it in
    low, mid, high = default_tcp_mem()  # Linux's formula: 3/4 L, L, 3/2 L
    assert low == mid * 3 // 4 and high == mid * 3 // 2 and mid >= 128


async def test_unread_connections_stay_within_tcp_mem():
    from ustack.io.memory import MemoryLink

    loop = asyncio.get_running_loop()
    cfg = apply_settings(Config(), ["tcp_mem=8 16 24"])  # 96 KB at most
    client, server = Stack(CLIENT, loop=loop), Stack(SERVER, loop=loop, config=cfg)
    MemoryLink(loop).connect(client, server)
    held: list = []
    release = asyncio.Event()
    got: list[bytes] = []

    async def stalled(reader, writer):  # reads nothing until told
        held.append(writer)
        await release.wait()
        got.append(await reader.readexactly(SIZE))
        writer.close()

    srv = await server.start_server(stalled, SERVER, 9000)
    payload = bytes(range(256)) * (SIZE // 256) + bytes(SIZE % 256)
    writers = []
    try:
        for _ in range(5):
            _r, w = await client.open_connection(SERVER, 9000)
            w.write(payload)
            writers.append(w)
        peak = 0
        for _ in range(60):
            await asyncio.sleep(0.05)
            peak = max(peak, tcp_mem.usage(server.table.est.values()))
        s = server.stats
        assert s["TcpExtTCPMemoryPressures"] >= 1  # (StreamReaders take some: it leaves)
        assert s["TcpExtTCPRcvQDrop"] > 0 and s["TcpExtPruneCalled"] > 0
        # The limit and its slack (an eighth) plus one batch, far below 5 x 200 KB.
        assert peak < 24 * 4096 * 2, peak
        release.set()
        deadline = loop.time() + 60
        while len(got) < 5:
            assert loop.time() < deadline, (len(got), s["TcpExtTCPRcvQDrop"])
            await asyncio.sleep(0.05)
        assert all(g == payload for g in got)
    finally:
        for w in writers:
            w.close()
        srv.close()
        client.close()
        server.close()
        gc.collect()
