"""The control socket's bound on clients: a client that connects and says nothing holds
a task; beyond MAX_CLIENTS of them the next is refused in words, so a stuck tool (or a
loop of `ustack ss` that never exits) cannot pile up tasks without end."""

from __future__ import annotations

import asyncio
import json

from test_control import env  # noqa: F401  (the fixture)

from ustack import control


async def test_clients_beyond_the_limit_are_refused(env, monkeypatch):  # noqa: F811
    monkeypatch.setattr(control, "MAX_CLIENTS", 8)
    e = await env()
    idle = [await asyncio.open_unix_connection(e.path) for _ in range(8)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_unix_connection(e.path)
    line = await asyncio.wait_for(reader.readline(), 5)
    assert json.loads(line) == {"ok": False, "error": "too many control clients (8)"}
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and closed
    writer.close()
    # One idle client goes: the next request is served again.
    idle[0][1].close()
    await asyncio.sleep(0.1)
    assert (await e.request({"op": "ping"}))["ok"] is True
    for _, w in idle[1:]:
        w.close()


def test_trace_queue_of_a_slow_reader_is_bounded(monkeypatch):
    """A trace client that stops reading: its queue stops at TRACE_QUEUE events and
    the rest are counted, reported to it as {"type": "dropped"} when it reads again."""
    monkeypatch.setattr(control, "TRACE_QUEUE", 50)
    from ustack.ssfilter import parse

    sub = control._Subscriber(parse(""), segments=False)
    for i in range(120):
        sub.put({"type": "state", "n": i})
    assert len(sub.queue) == 50 and sub.dropped == 70
    assert [item["n"] for item in sub.queue] == list(range(50))  # the oldest kept
