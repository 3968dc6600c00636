"""The picture of the sender's mind, in process: TCP_INFO (ustack/tcp/info.py) and its
binary layout, `ustack ss -i`, the recordings (ustack/record.py) and `ustack plot`.

Transfers run between two Stacks over a MemoryLink that drops a seeded fraction of
the data segments (a real loss, so recovery runs), on the real event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ustack import Stack
from ustack.control import ControlServer
from ustack.io.memory import MemoryLink
from ustack.record import VERSION, Recordings
from ustack.tcp.info import (
    TCP_INFO_SIZE,
    TcpInfo,
    pack_tcp_info,
    tcp_info,
    unpack_tcp_info,
)
from ustack.tools.plot import VERSION as READER_VERSION
from ustack.tools.plot import load, read_records, render_svg
from ustack.tools.ss import info_fields, info_line, sprint_bw

PEER, STACK = "10.77.0.1", "10.77.0.2"
SVG = "{http://www.w3.org/2000/svg}"
SIZE = 1_500_000

# Linux 6.12 include/uapi/linux/tcp.h struct tcp_info, read off the header by hand:
# (field, offset, struct format). Independent of info.py's own layout table.
LINUX_OFFSETS = [
    ("state", 0, "B"), ("ca_state", 1, "B"), ("retransmits", 2, "B"), ("probes", 3, "B"),
    ("backoff", 4, "B"), ("options", 5, "B"), ("rto", 8, "I"), ("ato", 12, "I"),
    ("snd_mss", 16, "I"), ("rcv_mss", 20, "I"), ("unacked", 24, "I"), ("sacked", 28, "I"),
    ("lost", 32, "I"), ("retrans", 36, "I"), ("fackets", 40, "I"),
    ("last_data_sent", 44, "I"), ("last_ack_sent", 48, "I"), ("last_data_recv", 52, "I"),
    ("last_ack_recv", 56, "I"), ("pmtu", 60, "I"), ("rcv_ssthresh", 64, "I"),
    ("rtt", 68, "I"), ("rttvar", 72, "I"), ("snd_ssthresh", 76, "I"), ("snd_cwnd", 80, "I"),
    ("advmss", 84, "I"), ("reordering", 88, "I"), ("rcv_rtt", 92, "I"),
    ("rcv_space", 96, "I"), ("total_retrans", 100, "I"), ("pacing_rate", 104, "Q"),
    ("max_pacing_rate", 112, "Q"), ("bytes_acked", 120, "Q"), ("bytes_received", 128, "Q"),
    ("segs_out", 136, "I"), ("segs_in", 140, "I"), ("notsent_bytes", 144, "I"),
    ("min_rtt", 148, "I"), ("data_segs_in", 152, "I"), ("data_segs_out", 156, "I"),
    ("delivery_rate", 160, "Q"), ("busy_time", 168, "Q"), ("rwnd_limited", 176, "Q"),
    ("sndbuf_limited", 184, "Q"), ("delivered", 192, "I"), ("delivered_ce", 196, "I"),
    ("bytes_sent", 200, "Q"), ("bytes_retrans", 208, "Q"), ("dsack_dups", 216, "I"),
    ("reord_seen", 220, "I"), ("rcv_ooopack", 224, "I"), ("snd_wnd", 228, "I"),
    ("rcv_wnd", 232, "I"), ("rehash", 236, "I"), ("total_rto", 240, "H"),
    ("total_rto_recoveries", 242, "H"), ("total_rto_time", 244, "I"),
]


def test_pack_tcp_info_is_linux_layout():
    info = TcpInfo()
    for n, (name, _, fmt) in enumerate(LINUX_OFFSETS):
        # Distinct values that fill more than one byte where the field is wider.
        setattr(info, name, (n + 1) * (1 if fmt == "B" else 0x01010101 if fmt != "H" else 0x101))
    info.snd_wscale, info.rcv_wscale = 7, 9
    info.delivery_rate_app_limited, info.fastopen_client_fail = 1, 2
    data = pack_tcp_info(info)
    assert len(data) == TCP_INFO_SIZE == 248
    for name, off, fmt in LINUX_OFFSETS:
        (v,) = struct.unpack_from("<" + fmt, data, off)
        assert v == getattr(info, name), name
    # tcpi_snd_wscale:4, tcpi_rcv_wscale:4 share byte 6 (low nibble first on x86);
    # byte 7: delivery_rate_app_limited:1, fastopen_client_fail:2.
    assert data[6] == 7 | 9 << 4
    assert data[7] == 1 | 2 << 1
    back = unpack_tcp_info(data)
    assert back == info
    # Clamped, not wrapped: a counter beyond its field reads as the field's maximum.
    info.segs_out = 1 << 40
    assert struct.unpack_from("<I", pack_tcp_info(info), 136)[0] == 0xFFFFFFFF
    # An older kernel's shorter struct reads with zeros after its end.
    short = unpack_tcp_info(data[:104])
    assert short.total_retrans == info.total_retrans and short.pacing_rate == 0


@pytest.mark.netns
def test_unpack_reads_the_kernels_own_tcp_info(inside_netns):
    """The layout against the real thing: a kernel socket's getsockopt(TCP_INFO)."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    cli.sendall(b"x" * 100_000)
    got = 0
    while got < 100_000:
        got += len(conn.recv(65536))
    raw = cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512)
    mss = cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    info = unpack_tcp_info(raw)
    peer = unpack_tcp_info(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512))
    for s in (cli, conn, srv):
        s.close()
    assert len(raw) >= 232  # every kernel since 5.4 fills at least through snd_wnd
    assert info.state == 1 and info.snd_mss == mss
    assert info.bytes_sent == 100_000 and info.bytes_acked == 100_001  # the SYN counts
    assert peer.bytes_received == 100_000 and peer.data_segs_in >= 1
    assert info.segs_out >= info.data_segs_out >= 2
    assert info.options & 1 and info.options & 2  # timestamps, SACK on loopback


# ---------------------------------------------------------------------- a lossy transfer


async def lossy_transfer(loss: float, seed: int = 7, size: int = SIZE, record: bool = True):
    """ustack (10.77.0.2) sends `size` bytes to a peer Stack that reads them all; the
    link drops `loss` of the frames towards the peer. Returns (stack, peer, tcb,
    records or None, received)."""
    loop = asyncio.get_running_loop()
    peer, stack = Stack(PEER, loop=loop), Stack(STACK, loop=loop)
    link = MemoryLink(loop)
    link.connect(peer, stack)
    rng = random.Random(seed)
    link.drop = lambda side, frame: side == 1 and len(frame) > 100 and rng.random() < loss
    recordings = Recordings(stack)
    session = recordings.start("port 5000", None) if record else None
    got = bytearray()
    done = asyncio.Event()

    async def handler(reader, writer):
        while data := await reader.read(65536):
            got.extend(data)
        writer.close()
        done.set()

    server = await peer.start_server(handler, PEER, 5000)
    _, writer = await stack.open_connection(PEER, 5000)
    tcb = writer.get_extra_info("ustack_tcb")
    writer.write(random.Random(seed).randbytes(size))
    await writer.drain()
    writer.write_eof()
    await asyncio.wait_for(done.wait(), 120)
    records = session.snapshot() if session else None
    recordings.close()
    server.close()
    return stack, peer, tcb, records, bytes(got)


async def test_tcp_info_counts_a_lossy_transfer():
    stack, peer, tcb, _, got = await lossy_transfer(0.03, record=False)
    try:
        assert len(got) == SIZE
        info = tcp_info(tcb, stack.now())
        assert info.state in (4, 5, 6, 1)  # FIN_WAIT_1/2 or later, by now
        assert info.bytes_acked == SIZE + 1 + (1 if tcb.fin_acked else 0)  # SYN (and FIN)
        assert info.bytes_sent == SIZE + info.bytes_retrans
        assert info.bytes_retrans > 0 and info.total_retrans >= info.bytes_retrans // tcb.mss
        assert info.total_retrans == stack.stats["TcpRetransSegs"]
        assert info.segs_out >= info.data_segs_out >= SIZE // tcb.mss
        assert info.segs_in >= 1 and info.snd_mss == tcb.mss == 1448  # TS on
        assert info.options & 1 and info.options & 2 and info.options & 4
        assert info.rtt > 0 and info.rto >= 200_000 and info.snd_cwnd >= 1
        assert info.cong == "cubic" and info.last_ack_recv < 60_000  # the default, as Linux
        assert 0 < info.busy_time < (stack.now() - tcb.created) * 1e6
        # The receiving side counted what it took in.
        ptcb = next(t for t in peer.table.est.values() if t.remote[1] == tcb.local[1])
        pinfo = tcp_info(ptcb, peer.now())
        assert pinfo.bytes_received == SIZE and pinfo.data_segs_in >= SIZE // 1448
        assert pinfo.rcv_ooopack > 0  # losses left holes, later filled
        assert pinfo.ato == 40_000 and pinfo.bytes_sent == 0
        assert unpack_tcp_info(pack_tcp_info(info)).bytes_retrans == info.bytes_retrans
    finally:
        stack.close()
        peer.close()


# ---------------------------------------------------------------------- ss -i


def test_ss_info_line_is_in_ss_order():
    """iproute2 tcp_stats_print(): the order ss prints, its spellings and units."""
    info = TcpInfo(state=1, options=7, snd_wscale=7, rcv_wscale=8, rto=204_000, rtt=1_500,
                   rttvar=750, ato=40_000, snd_mss=1448, pmtu=1500, rcv_mss=536,
                   advmss=1448, snd_cwnd=10, snd_ssthresh=0x7FFFFFFF, bytes_sent=5000,
                   bytes_retrans=1448, bytes_acked=4000, bytes_received=300, segs_out=9,
                   segs_in=7, data_segs_out=5, data_segs_in=1, last_data_sent=10,
                   last_data_recv=20, last_ack_recv=30, pacing_rate=1_000_000,
                   max_pacing_rate=(1 << 64) - 1, delivery_rate=250_000, delivered=4,
                   delivery_rate_app_limited=1, unacked=2, retrans=1, total_retrans=3,
                   lost=1, sacked=2, reordering=3, rcv_space=14480, rcv_ssthresh=64000,
                   notsent_bytes=100, min_rtt=900, snd_wnd=65536, rcv_wnd=64000,
                   cong="reno").as_dict()
    line = info_line(info, options=True)
    assert line == (
        "\t ts sack reno wscale:7,8 rto:204 rtt:1.5/0.75 ato:40 mss:1448 pmtu:1500 "
        "rcvmss:536 advmss:1448 cwnd:10 bytes_sent:5000 bytes_retrans:1448 "
        "bytes_acked:4000 bytes_received:300 segs_out:9 segs_in:7 data_segs_out:5 "
        "data_segs_in:1 send 77.2Mbps lastsnd:10 lastrcv:20 lastack:30 "
        "pacing_rate 8Mbps delivery_rate 2Mbps delivered:4 app_limited unacked:2 "
        "retrans:1/3 lost:1 sacked:2 rcv_space:14480 rcv_ssthresh:64000 notsent:100 "
        "minrtt:0.9 snd_wnd:65536 rcv_wnd:64000")
    assert not info_line(info).startswith("\t ts")  # options only with -o, as in ss
    fields = {name: value for name, value, _ in info_fields(info, True)}
    assert fields["wscale"] == [7, 8] and fields["rtt"] == [1.5, 0.75]
    assert fields["retrans"] == [1, 3] and fields["app_limited"] is True
    assert fields["send"] == pytest.approx(10 * 1448 * 8e6 / 1500)
    assert "ssthresh" not in fields  # infinite, as ss leaves it out
    assert [sprint_bw(x) for x in (999, 1500, 2.5e6, 155e9, 3e12)] == \
        ["999", "1.5k", "2.5M", "155G", "3T"]


# ---------------------------------------------------------------------- recording, plot


def cwnd_reduced(records: list[dict]) -> bool:
    """A congestion episode that lowered cwnd: the cwnd of some sample in Recovery or
    Loss is below the largest cwnd seen before it."""
    peak = 0
    for r in records:
        if "cwnd" not in r:
            continue
        if r.get("ca") in ("Recovery", "Loss") and r["cwnd"] < peak:
            return True
        peak = max(peak, r["cwnd"])
    return False


def check_plot_svg(svg: str) -> ET.Element:
    """What every plot of a lossy transfer shows; the parsed root."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    texts = {t.text for t in root.iter(f"{SVG}text")}
    for label in ("data sent", "ACK", "receive window", "cwnd", "ssthresh", "pipe", "SRTT",
                  "RTO", "retransmission"):
        assert label in texts, label
    classes = [e.get("class", "") for e in root.iter()]
    assert classes.count("rtx") >= 1  # a mark per retransmission
    assert any(c.startswith("episode episode-") for c in classes)
    assert "seq-new" in classes and "ack-line" in classes and "line-cwnd" in classes
    return root


async def test_recording_of_a_lossy_transfer_and_its_plot(tmp_path: Path):
    stack, peer, tcb, records, got = await lossy_transfer(0.03)
    try:
        assert len(got) == SIZE
        heads = [r for r in records if r["ev"] == "conn"]
        assert len(heads) == 1 and heads[0]["peer"] == f"{PEER}:5000"
        cid = heads[0]["c"]
        assert all(r["c"] == cid for r in records if "c" in r)
        kinds = {r["ev"] for r in records}
        assert {"recording", "conn", "est", "tx", "ack", "ca", "end"} <= kinds
        tx = [r for r in records if r["ev"] == "tx"]
        assert sum(1 for r in tx if r["rtx"]) == tcb.retrans_segs > 0
        assert sum(r["len"] for r in tx if not r["rtx"]) == SIZE + 1  # data and FIN
        acks = [r for r in records if r["ev"] == "ack"]
        assert any(r.get("sack") for r in acks)
        assert [r["t"] for r in records if "t" in r] == sorted(r["t"] for r in records
                                                               if "t" in r)
        assert cwnd_reduced(records)
        # The file format round-trips through read_records, a torn last line skipped.
        text = "".join(json.dumps(r) + "\n" for r in records) + '{"ev": "tx", "c"'
        assert read_records(text.splitlines(keepends=True)) == records
        conn = load(records)[cid]
        assert conn.head["mss"] == 1448 and conn.episodes()
        svg = render_svg(conn)
        check_plot_svg(svg)
        (tmp_path / "plot.svg").write_text(svg)
    finally:
        stack.close()
        peer.close()


def test_read_records_rejects_garbage(tmp_path: Path):
    assert READER_VERSION == VERSION  # the tool reads what the daemon writes
    head = {"ev": "conn", "c": 1, "local": "10.77.0.2:80", "peer": "10.77.0.1:5"}
    good = {"ev": "tx", "c": 1, "t": 0.1, "seq": 1, "len": 10, "rtx": False, "una": 1,
            "nxt": 11, "cwnd": 100, "ssthresh": None, "pipe": 10, "srtt": None,
            "rto": 1.0, "ca": "Open"}
    assert load([head, good])[1].tx == [(0.1, 0, 10, False)]
    for bad in ({**good, "seq": "x"}, {**good, "cwnd": "many"}, {**good, "t": None},
                {k: v for k, v in good.items() if k != "len"},
                {"ev": "ack", "c": 1, "t": 0.2, "ack": 5, "sack": [[1]]},
                {"ev": "end", "c": 1, "t": "soon"}, {"ev": "conn", "c": [1]}):
        with pytest.raises(ValueError, match="record 2"):
            load([head, bad])
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(head) + "\n" + json.dumps({**good, "nxt": [1]}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "ustack", "plot", str(f), "-o",
                           str(tmp_path / "x.svg")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "ustack plot: record 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(ValueError, match="line 1"):
        read_records(["not json\n", '{"ev": "tx"}\n'])
    with pytest.raises(ValueError, match="line 2"):
        read_records(['{"ev": "recording", "version": 1}\n', "[1, 2]\n"])
    with pytest.raises(ValueError, match="newer"):
        read_records(['{"ev": "recording", "version": 99}\n'])


# ---------------------------------------------------------------------- through the tools


@pytest.fixture
async def daemon_env():
    """A Stack with a ControlServer (the daemon's side) and a peer Stack over a lossy
    MemoryLink; yields (stack, peer, control path, link)."""
    loop = asyncio.get_running_loop()
    peer, stack = Stack(PEER, loop=loop), Stack(STACK, loop=loop)
    link = MemoryLink(loop)
    link.connect(peer, stack)
    d = tempfile.mkdtemp(prefix="ustack-plot-")
    path = os.path.join(d, "ctl.sock")
    control = ControlServer(stack, path, name="test")
    await control.start()
    yield stack, peer, path, link
    control.close()
    peer.close()
    stack.close()
    shutil.rmtree(d, ignore_errors=True)


async def cli(*argv: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ustack", *argv, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_ss_i_and_plot_live_through_the_control_socket(daemon_env, tmp_path: Path):
    stack, peer, path, link = daemon_env
    rng = random.Random(5)
    link.drop = lambda side, frame: side == 1 and len(frame) > 100 and rng.random() < 0.03
    stop = asyncio.Event()

    async def sink(reader, writer):
        while await reader.read(65536):
            pass
        writer.close()

    server = await peer.start_server(sink, PEER, 6000)
    _, writer = await stack.open_connection(PEER, 6000)

    async def pump():
        chunk = b"y" * 65536
        while not stop.is_set():
            writer.write(chunk)
            await writer.drain()

    task = asyncio.ensure_future(pump())
    try:
        # The plot records for a second while data flows, then draws.
        out_svg = tmp_path / "live.svg"
        rc, out, err = await cli("plot", "--control", path, "--live", "port 6000",
                                 "--duration", "1", "-o", str(out_svg))
        assert rc == 0, err
        check_plot_svg(out_svg.read_text())
        rc, out, err = await cli("ss", "--control", path, "-i", "-o")
        assert rc == 0, err
        lines = out.splitlines()
        row = next(i for i, line in enumerate(lines) if f"{PEER}:6000" in line)
        info = lines[row + 1]
        assert info.startswith("\t ts sack cubic wscale:")
        names = [tok.split(":")[0] for tok in info.split()]
        for name in ("rto", "rtt", "mss", "cwnd", "bytes_sent", "bytes_retrans",
                     "bytes_acked", "segs_out", "segs_in", "data_segs_out", "send",
                     "pacing_rate", "delivered", "retrans", "snd_wnd"):
            assert name in names, name
        rc, out, err = await cli("ss", "--control", path, "-i", "--json")
        assert rc == 0, err
        conn = next(c for c in json.loads(out)["connections"] if c["peer"] == f"{PEER}:6000")
        assert conn["tcp_info"]["snd_mss"] == 1448 and conn["tcp_info"]["bytes_retrans"] > 0
        assert conn["info"]["mss"] == 1448 and conn["info"]["wscale"] == [3, 3]
        assert conn["info"]["retrans"][1] == conn["tcp_info"]["total_retrans"] > 0
        # Without -i, no info line (the old output is unchanged).
        rc, out, _ = await cli("ss", "--control", path)
        assert rc == 0 and "\t" not in out and "cwnd" not in out
        # Bad input: clear errors, exit 1.
        rc, _, err = await cli("plot", "--control", path, "-o", str(out_svg))
        assert rc == 1 and "one of them" in err
        rc, _, err = await cli("plot", str(tmp_path / "none.jsonl"), "-o", str(out_svg))
        assert rc == 1 and "No such file" in err
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        writer.close()
        await asyncio.sleep(0.3)  # the sink sees the FIN and returns
        server.close()


async def test_record_op_to_a_file(daemon_env, tmp_path: Path):
    stack, peer, path, link = daemon_env
    from ustack.tools.client import Control

    def request(obj):
        with Control(path) as c:
            return c.request(obj)

    rec = tmp_path / "rec.jsonl"
    rep = await asyncio.to_thread(request, {"op": "record", "action": "start",
                                            "filter": "port 7000", "file": str(rec)})
    sid = rep["id"]

    async def sink(reader, writer):
        while await reader.read(65536):
            pass
        writer.close()

    server = await peer.start_server(sink, PEER, 7000)
    _, writer = await stack.open_connection(PEER, 7000)
    writer.write(b"z" * 300_000)
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.5)
    listed = await asyncio.to_thread(request, {"op": "record", "action": "list"})
    assert listed["recordings"][0]["connections"] == 1
    with pytest.raises(Exception, match="read that file"):
        await asyncio.to_thread(request, {"op": "record", "action": "snapshot", "id": sid})
    with pytest.raises(Exception, match="absolute"):
        await asyncio.to_thread(request, {"op": "record", "action": "start", "file": "x"})
    for bad, message in (({"action": "start", "filter": "port zz"}, "port"),
                         ({"action": "stop", "id": 99}, "no recording 99"),
                         ({"action": "snapshot"}, "missing field 'id'"),
                         ({"action": "stop", "id": "1"}, "wrong type"),
                         ({"action": "frob"}, "unknown record action"),
                         ({"action": "start", "file": str(rec)}, "already recording")):
        with pytest.raises(Exception, match=message):
            await asyncio.to_thread(request, {"op": "record", **bad})
    await asyncio.to_thread(request, {"op": "record", "action": "stop", "id": sid})
    records = read_records(rec.read_text().splitlines())
    assert records[0]["ev"] == "recording" and records[0]["filter"] == "port 7000"
    assert sum(r["len"] for r in records if r["ev"] == "tx" and not r["rtx"]) >= 300_000
    assert stack.table.est == {} or all(t.recorder is None for t in stack.table.est.values())
    rc, _, err = await cli("plot", str(rec), "--conn", "port 7000", "-o",
                           str(tmp_path / "f.svg"))
    assert rc == 0, err
    rc, _, err = await cli("plot", str(rec), "--conn", "9", "-o", str(tmp_path / "f.svg"))
    assert rc == 1 and "no connection 9" in err
    server.close()


async def test_record_tool_and_plot_of_a_recording_so_far(daemon_env, tmp_path: Path):
    stack, peer, path, link = daemon_env
    rc, out, err = await cli("record", "--control", path, "start", "port", "8000")
    assert rc == 0 and out.strip() == "recording 1 started", err

    async def sink(reader, writer):
        while await reader.read(65536):
            pass
        writer.close()

    server = await peer.start_server(sink, PEER, 8000)
    _, writer = await stack.open_connection(PEER, 8000)
    writer.write(b"w" * 200_000)
    await writer.drain()
    rc, out, err = await cli("record", "--control", path, "list")
    assert rc == 0 and out.startswith("1: port 8000 -> in memory (1 connections, "), err
    svg = tmp_path / "so-far.svg"
    rc, _, err = await cli("plot", "--control", path, "--recording", "1", "-o", str(svg))
    assert rc == 0, err
    root = ET.fromstring(svg.read_text())
    assert any(e.get("class") == "seq-new" for e in root.iter())
    rc, out, err = await cli("record", "--control", path, "stop", "1")
    assert rc == 0 and out.startswith("stopped 1: "), err
    rc, _, err = await cli("plot", "--control", path, "--recording", "1", "-o", str(svg))
    assert rc == 1 and "no recording 1" in err
    rc, _, err = await cli("record", "--control", path, "stop", "x")
    assert rc == 2 and "one recording id" in err
    writer.close()
    await asyncio.sleep(0.2)
    server.close()


def test_serve_rejects_record_filter_without_record():
    proc = subprocess.run([sys.executable, "-m", "ustack", "serve", "--record-filter",
                           "port 80"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--record-filter needs --record FILE" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ustack", "serve", "--record", "/tmp/x",
                           "--record-filter", "port nonsense"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "bad --record-filter" in proc.stderr


async def test_recording_marks_an_rto_and_the_plot_draws_it():
    """Everything towards the peer is lost for 0.5 s in the middle of a transfer: the
    retransmission timer fires, the recording says so (an "rto" record, the Loss state)
    and the plot marks it."""
    loop = asyncio.get_running_loop()
    peer, stack = Stack(PEER, loop=loop), Stack(STACK, loop=loop)
    link = MemoryLink(loop)
    link.connect(peer, stack)
    blackout: list[float] = []
    link.drop = lambda side, frame: side == 1 and bool(blackout) and loop.time() < blackout[0]
    recordings = Recordings(stack)
    session = recordings.start("", None)
    got = bytearray()

    async def handler(reader, writer):
        while data := await reader.read(65536):
            got.extend(data)
        writer.close()

    server = await peer.start_server(handler, PEER, 5100)
    try:
        _, writer = await stack.open_connection(PEER, 5100)
        writer.write(b"a" * 100_000)
        await writer.drain()
        blackout.append(loop.time() + 0.5)
        writer.write(b"b" * 100_000)
        await writer.drain()
        writer.write_eof()
        await until_true(lambda: len(got) == 200_000, 30)
        records = session.snapshot()
    finally:
        recordings.close()
        server.close()
        stack.close()
        peer.close()
    assert any(r["ev"] == "rto" for r in records)
    assert any(r["ev"] == "ca" and r["to"] == "Loss" for r in records)
    rto = next(r for r in records if r["ev"] == "rto")
    assert rto["cwnd"] == 1448 and rto["ca"] == "Loss"  # RFC 5681 3.1: one segment
    conn = next(iter(load(records).values()))
    assert ("Loss" in {ca for _, _, ca in conn.episodes()})
    root = ET.fromstring(render_svg(conn))
    assert any(e.get("class") == "mark mark-rto" for e in root.iter(f"{SVG}line"))
    assert "RTO recovery" in {t.text for t in root.iter(f"{SVG}text")}


async def until_true(cond, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


class _FakeCc:
    name = "reno"

    def __init__(self) -> None:
        self.cwnd, self.ssthresh = 14480, 1 << 30


class _FakeRecovery:
    """What the recovery rewrite exposes (ca_state), and today's flight()."""

    in_recovery = False

    def __init__(self) -> None:
        self.ca_state = "Open"

    def flight(self) -> int:
        return 2896


class _FakeRtt:
    srtt = 0.001

    def current(self) -> float:
        return 0.2


class _FakeTcb:
    iss, snd_una, snd_nxt, sack_ok, mss, snd_wnd = 1000, 1001, 3897, True, 1448, 65535

    def __init__(self) -> None:
        self.cc, self.recovery, self.rtt = _FakeCc(), _FakeRecovery(), _FakeRtt()


class _Seg:
    ack, sack = 3897, ((5000, 6448),)


def test_recorder_marks_undo_only_when_cwnd_comes_back():
    from ustack.record import Recorder, Session
    from ustack.ssfilter import parse

    session = Session(1, parse(""), None, lambda: 0.0, lambda: 0.0)
    tcb = _FakeTcb()
    rec = Recorder(tcb, 0.0)
    rec.sinks.append((session, 1))

    def episode(end_cwnd: int, t: float) -> None:
        tcb.recovery.ca_state, tcb.cc.cwnd, tcb.cc.ssthresh = "Recovery", 7240, 7240
        rec.on_ack(tcb, _Seg, t)
        tcb.recovery.ca_state, tcb.cc.cwnd = "Open", end_cwnd
        rec.on_ack(tcb, _Seg, t + 0.01)

    rec.on_ack(tcb, _Seg, 0.001)  # Open, cwnd 14480
    episode(7240, 0.1)  # ran its course: cwnd stays at ssthresh
    tcb.cc.cwnd = 8688
    rec.on_ack(tcb, _Seg, 0.2)
    episode(8688, 0.3)  # undone: cwnd back where it was before the episode
    evs = [(r["ev"], r["t"]) for r in session.records if r["ev"] in ("ca", "undo")]
    assert evs == [("ca", 0.1), ("ca", 0.11), ("ca", 0.3), ("ca", 0.31), ("undo", 0.31)]
    ack = next(r for r in session.records if r["ev"] == "ack")
    assert ack["sack"] == [[4000, 5448]] and ack["ack"] == 2897 and ack["pipe"] == 2896
    assert ack["ssthresh"] is None and ack["una"] == 1 and ack["ca"] == "Open"


async def test_tcp_info_before_the_handshake_is_done():
    """A SYN that never gets an answer: SYN-SENT, no RTT yet, the SYN's RTO backed off."""
    loop = asyncio.get_running_loop()
    peer, stack = Stack(PEER, loop=loop), Stack(STACK, loop=loop)
    link = MemoryLink(loop)
    link.connect(peer, stack)
    link.drop = lambda side, frame: True
    task = asyncio.ensure_future(stack.open_connection(PEER, 5200))
    try:
        await until_true(lambda: bool(stack.table.est), 5)
        tcb = next(iter(stack.table.est.values()))
        info = tcp_info(tcb, stack.now())
        assert info.state == 2 and info.rtt == 0 and info.min_rtt == 0xFFFFFFFF
        assert info.rto == 1_000_000 and info.snd_mss == 536 and info.unacked == 1
        assert info.options == 0 and info.bytes_acked == 0 and info.segs_out == 1
        fields = {name for name, _, _ in info_fields(info.as_dict(), True)}
        assert "rtt" not in fields and "minrtt" not in fields and "wscale" not in fields
        assert len(pack_tcp_info(info)) == TCP_INFO_SIZE
    finally:
        task.cancel()
        stack.close()
        peer.close()


def test_the_adapter_prefers_what_the_recovery_rewrite_exposes():
    """With ca_state, sacked_out, lost_out, retrans_out, reordering, total_retrans,
    delivery_rate and app_limited on tcb.recovery, info.py reads those and none of
    today's recovery internals."""
    from types import SimpleNamespace

    from ustack.tcp.info import pipe_bytes, recovery_view

    rec = SimpleNamespace(ca_state="Recovery", sacked_out=3, lost_out=2, retrans_out=1,
                          reordering=5, total_retrans=9, delivery_rate=125_000,
                          app_limited=True)
    tcb = SimpleNamespace(recovery=rec, mss=1000, snd_una=0, snd_max=10_000,
                          retrans_segs=0, sack_ok=True, retries=0)
    view = recovery_view(tcb)
    assert (view.ca_state, view.sacked_out, view.lost_out, view.retrans_out) == \
        ("Recovery", 3, 2, 1)
    assert (view.reordering, view.total_retrans, view.delivery_rate, view.app_limited) == \
        (5, 9, 125_000, True)
    assert pipe_bytes(tcb) == 10_000 - (3 + 2 - 1) * 1000
