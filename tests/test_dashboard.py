"""The dashboard's daemon side against in-process stacks (no TUN, no browser): what
/ustack/status.json reports, the table's filter and paging, the ladder and plot routes,
and the hold service that leaves CLOSE-WAIT. The page itself is tested in a real
browser in test_dashboard_browser.py.

The "daemon" is a Stack at 10.77.0.2 with a Dashboard; its peer is a Stack at 10.77.0.1
over a MemoryLink.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import xml.etree.ElementTree as ET

import pytest

from ustack import Stack
from ustack import ssfilter as flt
from ustack.apps.dashboard import Dashboard, Web, model
from ustack.apps.dashboard.model import group_of, measure_tw_record, parse_conn_id
from ustack.apps.hold import start_hold
from ustack.apps.http import start_http, url_query
from ustack.config import Config, apply_settings
from ustack.io.memory import MemoryLink

PEER, STACK = "10.77.0.1", "10.77.0.2"
SVG = "{http://www.w3.org/2000/svg}"


class Env:
    def __init__(self, peer: Stack, stack: Stack, dash: Dashboard) -> None:
        self.peer, self.stack, self.dash = peer, stack, dash
        self.web = Web(dash)

    def get(self, path: str) -> tuple[int, str, bytes]:
        path, _, query = path.partition("?")
        reply = self.web.respond(path, query, root=False)
        assert reply is not None, path
        return reply

    def status(self, query: str = "") -> dict:
        code, ctype, body = self.get("/ustack/status.json?" + query)
        assert code == 200, body
        assert ctype == "application/json"
        return json.loads(body)


@pytest.fixture
async def env():
    made: list[tuple[Env, MemoryLink]] = []

    async def make(*settings: str, close_wait_warn: float = 60.0) -> Env:
        loop = asyncio.get_running_loop()
        peer = Stack(PEER, config=apply_settings(Config(), list(settings)), loop=loop)
        stack = Stack(STACK, config=apply_settings(Config(), list(settings)), loop=loop)
        link = MemoryLink(loop)
        link.connect(peer, stack)
        dash = Dashboard(stack, close_wait_warn=close_wait_warn)
        dash.start()
        e = Env(peer, stack, dash)
        made.append((e, link))
        return e

    yield make
    for e, _link in made:
        e.dash.close()
        e.peer.close()
        e.stack.close()
    gc.collect()


async def until(cond, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def closing_server(stack: Stack, host: str, port: int):
    """Answers one line and closes first: the closer (this side) holds TIME-WAIT."""
    async def handler(reader, writer):
        await reader.readline()
        writer.write(b"bye\n")
        writer.close()
    return await stack.start_server(handler, host, port)


async def one_exchange(client: Stack, host: str, port: int) -> None:
    reader, writer = await client.open_connection(host, port)
    writer.write(b"hi\n")
    assert await reader.readline() == b"bye\n"
    assert await reader.read() == b""
    writer.close()


def states(e: Env) -> dict[str, int]:
    return e.dash.sample().states


# ---------------------------------------------------------------------- figures


def test_a_time_wait_record_is_measured_not_guessed():
    size = measure_tw_record(500)
    # Key (45 B) + packed record (69 B) + a dict slot and a bucket reference: the real
    # figure lies between the two objects alone and a few hundred bytes.
    assert 45 + 69 < size < 400, size


def test_counter_groups_follow_nstat():
    assert group_of("TcpExtTW") == "TcpExt"
    assert group_of("TcpActiveOpens") == "Tcp"
    assert group_of("IpInReceives") == "Ip"
    assert group_of("IcmpInEchos") == "Icmp"
    assert group_of("UstackImpairDropped") == "Ustack"


def test_connection_ids_round_trip_and_reject_garbage():
    assert parse_conn_id("10.77.0.2:80-10.77.0.1:43120") == ("10.77.0.2:80", "10.77.0.1:43120")
    for bad in ("", "10.77.0.2:80", "a-b", "1:2:3-4:5"):
        assert parse_conn_id(bad) is None
    assert url_query(b"/ustack/status.json?state=ESTAB&x=1#frag") == "state=ESTAB&x=1"
    assert url_query(b"/") == ""


async def test_time_wait_on_the_closing_side_and_its_ports_per_destination(env):
    e = await env()
    # The stack connects (ephemeral ports) to the peer's server, which closes first:
    # TIME-WAIT is the peer's. Then the peer connects to the stack's closing server:
    # TIME-WAIT is the stack's, but on port 7000, not an ephemeral one.
    await closing_server(e.peer, PEER, 5000)
    await closing_server(e.stack, STACK, 7000)
    for _ in range(3):
        await one_exchange(e.peer, STACK, 7000)
    await until(lambda: len(e.stack.table.tw) == 3)
    s = e.status()
    assert s["states"]["TIME-WAIT"] == 3
    tw = s["time_wait"]
    assert tw["records"] == 3 and tw["bytes"] == 3 * tw["record_bytes"]
    assert tw["destinations"] == []  # port 7000 is ours: no ephemeral port is held

    # Now the stack's own active opens, and a server on the peer that lets the stack
    # close first (it reads to EOF): the stack's ephemeral ports go into TIME-WAIT.
    async def reads_to_eof(reader, writer):
        await reader.read()
        writer.close()
    await e.peer.start_server(reads_to_eof, PEER, 6000)
    for _ in range(4):
        _, writer = await e.stack.open_connection(PEER, 6000)
        writer.close()
    await until(lambda: len(e.stack.table.tw) == 7)
    tw = e.status()["time_wait"]
    assert [(d["dest"], d["time_wait"]) for d in tw["destinations"]] == [(f"{PEER}:6000", 4)]
    lo, hi = tw["port_range"]
    assert tw["destinations"][0]["free"] == hi - lo + 1 - 4
    # The records going (reuse or 2MSL) take the count down with them.
    for key in list(e.stack.table.tw.records):
        e.stack.table.tw.remove(key)
    assert e.status()["time_wait"]["destinations"] == []


async def test_narrow_port_range_shows_how_close_connect_is_to_eaddrnotavail(env):
    e = await env("ip_local_port_range=40000 40003", "tcp_tw_reuse=0")

    async def reads_to_eof(reader, writer):
        await reader.read()
        writer.close()
    await e.peer.start_server(reads_to_eof, PEER, 6000)
    for _ in range(4):
        _, writer = await e.stack.open_connection(PEER, 6000)
        writer.close()
    await until(lambda: len(e.stack.table.tw) == 4)
    dest = e.status()["time_wait"]["destinations"][0]
    assert (dest["time_wait"], dest["free"], dest["used_pct"]) == (4, 0, 100.0)
    with pytest.raises(OSError) as info:
        await e.stack.open_connection(PEER, 6000)
    assert info.value.errno == 99  # EADDRNOTAVAIL, as the panel said


async def test_history_ring_and_rates(env):
    e = await env()
    await closing_server(e.stack, STACK, 7000)
    await one_exchange(e.peer, STACK, 7000)
    await until(lambda: len(e.stack.table.tw) == 1)
    e.dash.sample()
    s = e.status()
    h = s["history"]
    assert len(h["t"]) == len(h["states"]["TIME-WAIT"]) >= 2
    assert h["states"]["TIME-WAIT"][-1] == 1
    assert h["t"] == sorted(h["t"])
    names = [c["name"] for c in s["counters"]]
    assert "TcpPassiveOpens" in names
    moved = [c for c in s["counters"] if c["moved"]]
    still = [c for c in s["counters"] if not c["moved"]]
    assert moved and s["counters"][:len(moved)] == moved  # the ones that moved first
    assert all(c["value"] for c in still)  # zeros are left out
    # `since` leaves out what the page already has.
    assert e.status(f"since={h['t'][-1]}")["history"]["t"] == []


async def test_close_wait_older_than_the_threshold_is_flagged(env):
    e = await env(close_wait_warn=0.2)
    await start_hold(e.stack.start_server, STACK, 5001)
    reader, writer = await e.peer.open_connection(STACK, 5001)
    writer.write(b"data")
    writer.write_eof()  # our FIN; the hold service never answers with its own
    await until(lambda: states(e)["CLOSE-WAIT"] == 1)
    assert e.status()["leaks"]["count"] == 0  # younger than the threshold
    await asyncio.sleep(0.3)
    leaks = e.status()["leaks"]
    assert leaks["count"] == 1
    flagged = leaks["flagged"][0]
    local, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
    assert flagged["peer"] == f"{local[0]}:{local[1]}"
    assert flagged["local"] == f"{peer[0]}:{peer[1]}"
    assert flagged["age"] >= 0.2
    row = e.status("state=CLOSE-WAIT")["table"]["rows"][0]
    assert row["state"] == "CLOSE-WAIT" and row["state_age"] >= 0.2
    # The peer's reset ends it; the flag goes with it.
    writer.transport.reset()  # a RST (abort() closes as asyncio's: FIN)
    await until(lambda: states(e)["CLOSE-WAIT"] == 0)
    assert e.status()["leaks"] == {**leaks, "count": 0, "close_wait": 0, "flagged": []}


async def test_hold_service_reads_but_never_closes(env):
    e = await env()
    await start_hold(e.stack.start_server, STACK, 5001)
    reader, writer = await e.peer.open_connection(STACK, 5001)
    writer.write(b"x" * 10000)
    writer.write_eof()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(), 0.3)  # no data, and no FIN either
    assert states(e)["CLOSE-WAIT"] == 1


# ---------------------------------------------------------------------- the table


async def test_table_filter_state_and_paging_are_bounded(env, monkeypatch):
    e = await env()
    await closing_server(e.stack, STACK, 7000)
    for _ in range(5):
        await one_exchange(e.peer, STACK, 7000)
    held = [await e.peer.open_connection(STACK, 7000) for _ in range(3)]  # ESTAB
    await until(lambda: len(e.stack.table.tw) == 5 and states(e)["ESTAB"] == 3)
    t = e.status("limit=2")["table"]
    # One listener, 3 ESTAB, 5 TIME-WAIT.
    assert t["total"] == 1 + 3 + 5 and len(t["rows"]) == 2
    pages = [e.status(f"limit=2&offset={o}")["table"]["rows"] for o in range(0, 10, 2)]
    rows = [r for p in pages for r in p]
    assert len(rows) == 9 and len({(r["local"], r["peer"]) for r in rows}) == 9
    assert [r["state"] for r in rows] == ["LISTEN"] + ["ESTAB"] * 3 + ["TIME-WAIT"] * 5
    tw = e.status("state=TIME-WAIT")["table"]
    assert tw["total"] == 5 and {r["state"] for r in tw["rows"]} == {"TIME-WAIT"}
    port = held[0][1].get_extra_info("sockname")[1]
    one = e.status(f"filter=port+{port}")["table"]
    assert [r["peer"] for r in one["rows"]] == [f"{PEER}:{port}"]
    both = e.status("state=ESTAB,TIME-WAIT&filter=host+10.77.0.1")["table"]
    assert both["total"] == 8 and both["tw_scanned"] == both["tw_records"] == 5
    # ss's own words: `state NAME` / `exclude NAME` in the filter, ss names in state=.
    assert e.status("filter=state+time-wait+host+10.77.0.1")["table"]["total"] == 5
    assert e.status("filter=state+established+state+listening")["table"]["total"] == 4
    assert {r["state"] for r in e.status("filter=exclude+bucket")["table"]["rows"]} == \
        {"LISTEN", "ESTAB"}
    assert e.status("state=established")["table"]["total"] == 3
    assert e.status("state=connected&filter=exclude+time-wait")["table"]["total"] == 3
    # Records left out by the state set were not skipped by the scan.
    assert e.status("state=ESTAB&filter=host+10.77.0.1")["table"]["tw_scanned"] == 5
    # A filtered request decodes TW_SCAN records at most, and says so.
    monkeypatch.setattr(model, "TW_SCAN", 2)
    capped = e.status("state=TIME-WAIT&filter=host+10.77.0.1")["table"]
    assert (capped["total"], capped["tw_scanned"], capped["tw_records"]) == (2, 2, 5)
    for _reader, writer in held:
        writer.close()
    await until(lambda: not e.stack.table.est)  # the handlers return before teardown


async def test_bad_queries_are_400_with_the_reason(env):
    e = await env()
    for query, word in (("filter=host+nonsense", "nonsense"), ("state=FOO", "FOO"),
                        ("offset=x", "offset"), ("limit=100000", "limit"),
                        ("since=yesterday", "since"), ("filter=state", "needs a state"),
                        ("filter=exclude+nothing", "nothing")):
        code, _, body = e.get("/ustack/status.json?" + query)
        assert code == 400 and word in body.decode(), (query, body)
    assert e.get("/ustack/ladder/nonsense.svg")[0] == 400
    assert e.get("/ustack/static/../model.py")[0] == 404
    assert e.get("/ustack/nothing")[0] == 404
    assert e.web.respond("/other", "", root=False) is None  # not the dashboard's


async def test_page_and_assets_are_package_data(env):
    e = await env()
    code, ctype, page = e.get("/")
    assert code == 200 and ctype.startswith("text/html") and b"dash.js" in page
    assert e.web.respond("/", "", root=True) is None  # with --root, / is the files'
    assert e.get("/ustack/")[2] == page
    for name, kind in (("dash.js", "javascript"), ("dash.css", "css"),
                       ("vendor/uPlot.iife.min.js", "javascript"),
                       ("vendor/uPlot.LICENSE", "text/plain")):
        code, ctype, body = e.get("/ustack/static/" + name)
        assert code == 200 and kind in ctype and body, name
    assert b"MIT" in e.get("/ustack/static/vendor/uPlot.LICENSE")[2]


async def test_ladder_of_a_clicked_connection_grows_live_and_plot_is_a_hook(env):
    e = await env()

    async def echo_once(reader, writer):
        writer.write(await reader.readline())
        await reader.read()
        writer.close()
    await e.stack.start_server(echo_once, STACK, 7001)
    reader, writer = await e.peer.open_connection(STACK, 7001)
    local = writer.get_extra_info("sockname")
    ident = f"{STACK}:7001-{local[0]}:{local[1]}"
    code, ctype, body = e.get(f"/ustack/ladder/{ident}.svg")
    assert code == 200 and ctype == "image/svg+xml" and b"no segment yet" in body
    assert e.status()["ladders"] == [ident]
    writer.write(b"hello\n")
    assert await reader.readline() == b"hello\n"
    writer.close()  # the client closes first; the stack goes CLOSE_WAIT, LAST_ACK, CLOSED
    await until(lambda: not e.stack.table.est or all(
        t.remote[1] != local[1] for t in e.stack.table.est.values()))
    await asyncio.sleep(0.05)
    root = ET.fromstring(e.get(f"/ustack/ladder/{ident}.svg")[2])
    flags = [g.get("data-flags") for g in root.iter(f"{SVG}g") if g.get("class") == "segment"]
    assert any("F" in f for f in flags) and any("P" in f for f in flags), flags
    ours = [t.get("data-state") for t in root.iter(f"{SVG}text")
            if t.get("class") == "state" and t.get("data-host") == f"{STACK}:7001"]
    assert ours[-2:] == ["LAST_ACK", "CLOSED"], ours
    assert e.get(f"/ustack/plot/{ident}.svg")[:3:2] == (404, b"not recorded\n")
    e.dash.ladders.expire()
    assert e.stack.taps  # still watched
    e.dash.ladders.watches.clear()
    e.dash.ladders.expire()
    assert not e.stack.taps  # nothing watched: the tap is gone


# ---------------------------------------------------------------------- over HTTP


async def test_http_routes_dashboard_and_keeps_status_json(env):
    e = await env()
    server = await start_http(asyncio.start_server, "127.0.0.1", 0,
                              status=e.stack.status, dashboard=e.web.respond)
    port = server.sockets[0].getsockname()[1]

    async def get(path: str) -> tuple[bytes, bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        data = await r.read()
        w.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return head, body

    try:
        head, body = await get("/")
        assert head.startswith(b"HTTP/1.1 200") and b"dash.js" in body
        assert b"cache-control: no-store" in head.lower()
        head, body = await get("/ustack/status.json?state=LISTEN")
        assert json.loads(body)["table"]["total"] == 0
        head, body = await get("/status.json")  # the old full form, unchanged
        assert set(json.loads(body)) == {"address", "connections", "stats", "time_wait"}
        head, _ = await get("/ustack/status.json?state=BOGUS")
        assert head.startswith(b"HTTP/1.1 400")
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


def test_key_matcher_agrees_with_the_filter():
    # The TIME-WAIT scan matches filters on the demux key's bytes; it must say what
    # Filter.matches says on the decoded endpoints, for every kind of term.
    import random

    from ustack.table import make_key
    from ustack.wire.ip import ip_to_bytes

    rng = random.Random(7)
    hosts, ports = ["10.77.0.1", "10.77.0.2", "10.77.0.3"], [80, 443, 40000]
    filters = ["", "host 10.77.0.1", "port 80", "10.77.0.1:80", ":443",
               "host 10.77.0.2 port 40000", "10.77.0.3 80"]
    for text in filters:
        f = flt.parse(text)
        match = model.key_matcher(f)
        for _ in range(300):
            rh, lh = rng.choice(hosts), rng.choice(hosts)
            rp, lp = rng.choice(ports), rng.choice(ports)
            key = make_key(ip_to_bytes(rh), ip_to_bytes(lh), rp, lp)
            assert match(key) == f.matches((lh, lp), (rh, rp)), (text, rh, rp, lh, lp)


def test_serve_options_hold_and_close_wait_warn(capsys):
    from ustack.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.hold, args.close_wait_warn) == (0, 60.0)  # off, and a minute
    args = build_parser().parse_args(["serve", "--hold", "5001", "--close-wait-warn", "2.5"])
    assert (args.hold, args.close_wait_warn) == (5001, 2.5)
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["serve", "--close-wait-warn", bad])
        assert info.value.code == 2
        assert "--close-wait-warn" in capsys.readouterr().err


def test_filter_grammar_is_the_ss_one():
    # The table's filter is ustack/ssfilter.py: the same words as ss, trace and ladder.
    assert str(flt.parse("host 10.77.0.1 port 80")) == "host 10.77.0.1 port 80"


async def test_sender_plot_of_a_clicked_connection(env):
    """/ustack/plot/ID.svg: the first request starts recording the connection (404 "not
    recorded"), later ones draw `ustack plot`'s SVG of what was recorded since."""
    from ustack.apps.dashboard.plots import MAX_WATCHED, Plots
    from ustack.record import Recordings

    e = await env()
    recordings = Recordings(e.stack)
    e.web = Web(e.dash, plot=Plots(recordings))
    got = asyncio.Event()

    async def source(reader, writer):  # the stack sends: its sender state is plotted
        await reader.readline()
        writer.write(b"x" * 200_000)
        await writer.drain()
        got.set()
        await reader.read()
        writer.close()
    await e.stack.start_server(source, STACK, 7002)
    reader, writer = await e.peer.open_connection(STACK, 7002)
    local = writer.get_extra_info("sockname")
    ident = f"{STACK}:7002-{local[0]}:{local[1]}"
    assert e.get(f"/ustack/plot/{ident}.svg")[:3:2] == (404, b"not recorded\n")
    assert len(recordings.sessions) == 1
    writer.write(b"go\n")
    assert len(await reader.readexactly(200_000)) == 200_000
    await asyncio.wait_for(got.wait(), 10)
    code, ctype, body = e.get(f"/ustack/plot/{ident}.svg")
    assert code == 200 and ctype == "image/svg+xml", body[:200]
    root = ET.fromstring(body)
    assert root.tag == f"{SVG}svg"
    assert len(recordings.sessions) == 1  # no second recording for the same connection
    for port in range(MAX_WATCHED + 2):  # the hook's own recordings are bounded
        e.get(f"/ustack/plot/{STACK}:7002-{PEER}:{50000 + port}.svg")
    assert len(recordings.sessions) == MAX_WATCHED
    recordings.close()
    writer.close()

