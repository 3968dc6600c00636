"""The impairment layer (ustack.impair): the spec parser, each impairment on the sans-IO
Channel, the CLI's handling of a bad spec, and byte-exact transfers through impaired
Stacks over a MemoryLink (no TUN, no root)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import random
import re

import pytest
from conftest import PYTHON, STACK_ADDRESS

from ustack import Stack
from ustack.cli import main
from ustack.impair import REORDER_HOLD, Channel, DirectionSpec, Impairment, parse_spec
from ustack.io.memory import MemoryLink
from ustack.stats import Stats
from ustack.wire.checksum import checksum
from ustack.wire.ip import PROTO_ICMP, PROTO_TCP, build_ipv4, ip_to_bytes
from ustack.wire.tcp import ACK, PSH, Segment, build_tcp

A, B = "10.77.0.1", "10.77.0.2"

# ---------------------------------------------------------------------- the spec


def test_parse_full_spec_sets_both_directions():
    spec = parse_spec("loss=0.05,reorder=0.1,dup=0.02,corrupt=0.01,delay=5ms,seed=1")
    for d in (spec.inbound, spec.outbound):
        assert (d.loss, d.reorder, d.dup, d.corrupt) == (0.05, 0.1, 0.02, 0.01)
        assert d.delay == pytest.approx(0.005)
    assert spec.seed == 1
    assert spec.active


def test_parse_per_direction_percent_units_and_last_wins():
    spec = parse_spec("loss=1%, in.loss=0.2 ,out.delay=250us,delay=0.5s,out.dup=3%,loss=0.1")
    assert spec.inbound.loss == 0.1 and spec.outbound.loss == 0.1  # the last item wins
    assert spec.inbound.delay == 0.5 and spec.outbound.delay == 0.5
    assert spec.outbound.dup == pytest.approx(0.03) and spec.inbound.dup == 0
    assert spec.seed is None
    only_in = parse_spec("in.corrupt=0.5")
    assert only_in.inbound.active and not only_in.outbound.active


@pytest.mark.parametrize("text, words", [
    ("bogus=1", ["unknown", "bogus", "loss"]),
    ("up.loss=0.1", ["unknown", "up.loss"]),
    ("loss=1.5", ["loss", "between 0 and 1"]),
    ("loss=-0.1", ["loss", "between 0 and 1"]),
    ("dup=lots", ["dup", "not a number"]),
    ("delay=5", ["delay", "unit"]),
    ("delay=5min", ["delay"]),
    ("delay=20s", ["delay", "10 s"]),
    ("loss", ["KEY=VALUE"]),
    ("", ["empty"]),
    ("seed=x", ["seed", "integer"]),
    ("in.seed=1", ["seed"]),
])
def test_bad_spec_is_one_clear_line(text, words):
    with pytest.raises(ValueError) as info:
        parse_spec(text)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("spec", ["loss=2", "delay=5", "nonsense", "reorder=0.1,seed=one"])
def test_cli_bad_impair_spec_exits_2_before_any_device(capsys, spec):
    # Parsed before the TUN device is opened: no root needed, nothing created.
    assert main(["serve", "--impair", spec]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "--impair" in lines[0]


@pytest.mark.tun
def test_bad_impair_spec_from_the_real_command_exits_2(netns):
    # The real process (in a namespace of its own, should it get as far as a device).
    proc = netns.run(PYTHON, "-m", "ustack", "serve", "--impair", "loss=0.1,in.delay=fast",
                     timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("ustack: bad --impair") and "in.delay" in lines[0]


def echo_request(i: int) -> bytes:
    """An ICMP echo request from A to B: the stack answers it synchronously."""
    msg = bytearray(b"\x08\x00\x00\x00" + i.to_bytes(4, "big") + b"ping")
    msg[2:4] = checksum(msg).to_bytes(2, "big")
    return build_ipv4(ip_to_bytes(A), ip_to_bytes(B), PROTO_ICMP, bytes(msg), i)


class Wire:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)


@pytest.mark.parametrize("spec, replies, seen", [
    ("in.loss=1", 0, 0),  # requests dropped before the stack sees them
    ("out.loss=1", 0, 10),  # the stack answers, its replies are dropped
    ("in.dup=1", 20, 20),  # each request twice, each answered
    ("out.dup=1", 20, 10),  # each reply written twice
    ("in.loss=1,out.loss=0", 0, 0),
    ("loss=1,in.loss=0", 0, 10),  # a prefixed key overrides one direction only
])
async def test_each_direction_gets_its_own_spec(spec, replies, seen):
    """"in" is what the device hands the stack, "out" what the stack writes."""
    s = Stack(B, loop=asyncio.get_running_loop())
    wire = Wire()
    s.attach(wire)
    s.set_impairment(Impairment(spec + ",seed=1", s.stats))
    try:
        for i in range(10):
            s.receive(echo_request(i))
        assert s.stats["IcmpInEchos"] == seen
        assert len(wire.frames) == replies
    finally:
        s.close()


def test_the_seed_fixes_each_directions_fate_independently():
    """seed=N gives the same fate to the same frames, whatever the other direction does
    (one random stream per direction); another seed gives another fate."""
    def inbound_survivors(spec: str, outbound_traffic: bool) -> list[bytes]:
        imp = Impairment(spec)
        got = []
        for f in frames(300):
            if outbound_traffic:
                for g in frames(3):
                    imp.outbound.channel.push(g, 0.0)
            imp.inbound.channel.push(f, 0.0)
            got += imp.inbound.channel.pop_due(0.0)
        return got

    a = inbound_survivors("loss=0.5,dup=0.2,seed=7", False)
    assert a == inbound_survivors("loss=0.5,dup=0.2,seed=7", True)
    assert a != inbound_survivors("loss=0.5,dup=0.2,seed=8", False)


@pytest.mark.tun
def test_serve_applies_the_spec_per_direction_at_the_tun_boundary(daemon):
    """`ustack serve --impair`: in.delay holds every frame the stack reads, out.dup
    doubles every frame it writes; ping sees both (the delay as a lower bound only)."""
    d = daemon("--impair", "in.delay=100ms,out.dup=1,seed=1")
    assert "impairing" in d.stderr() and "in[delay=100ms] out[dup=1]" in d.stderr()
    proc = d.run("ping", "-c", "3", "-i", "0.3", "-W", "5", STACK_ADDRESS, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DUP!" in proc.stdout
    rtts = [float(t) for t in re.findall(r"time=([0-9.]+) ms", proc.stdout)]
    # A loose bound: timers may fire a tick early.
    assert len(rtts) >= 4 and min(rtts) >= 95, proc.stdout


# ---------------------------------------------------------------------- the channel


def frames(n: int) -> list[bytes]:
    return [b"\x45" + i.to_bytes(4, "big") + bytes(35) for i in range(n)]


def run(ch: Channel, items: list[bytes], dt: float = 0.0001, drain: float = 1.0) -> list[bytes]:
    """Push items at dt intervals, then let every timer run out."""
    out: list[bytes] = []
    now = 0.0
    for f in items:
        ch.push(f, now)
        out += ch.pop_due(now)
        now += dt
    end = now + drain
    while (d := ch.next_deadline()) is not None and d <= end:
        now = max(now, d)
        out += ch.pop_due(now)
    return out


def channel(seed: int = 1, **kw) -> Channel:
    return Channel(DirectionSpec(**kw), random.Random(seed), Stats())


def test_no_impairment_passes_everything_in_order_at_once():
    ch = channel()
    items = frames(100)
    for f in items:
        ch.push(f, 5.0)
        assert ch.pop_due(5.0) == [f]
    assert ch.next_deadline() is None


def test_loss_drops_about_its_share_and_counts_it():
    ch = channel(loss=0.3)
    out = run(ch, frames(10000))
    dropped = ch.stats["UstackImpairDropped"]
    assert 2500 < dropped < 3500
    assert len(out) == 10000 - dropped
    assert out == sorted(out)  # survivors keep their order


def test_same_seed_same_fate():
    a = run(channel(seed=7, loss=0.1, dup=0.1, reorder=0.1), frames(2000))
    b = run(channel(seed=7, loss=0.1, dup=0.1, reorder=0.1), frames(2000))
    c = run(channel(seed=8, loss=0.1, dup=0.1, reorder=0.1), frames(2000))
    assert a == b
    assert a != c


def test_dup_delivers_a_second_copy_right_after():
    items = frames(50)
    ch = channel(dup=1.0)
    assert run(ch, items) == [f for f in items for _ in range(2)]
    assert ch.stats["UstackImpairDuplicated"] == 50


def test_reorder_lets_the_next_frame_pass():
    items = frames(6)
    ch = channel(reorder=1.0)
    # Each held frame is overtaken by the next one (which is not held: one at a time).
    assert run(ch, items) == [items[1], items[0], items[3], items[2], items[5], items[4]]
    assert ch.stats["UstackImpairReordered"] == 3


def test_a_held_frame_without_successor_is_only_late():
    ch = channel(reorder=1.0)
    f = frames(1)[0]
    ch.push(f, 10.0)
    assert ch.pop_due(10.0) == []
    assert ch.next_deadline() == pytest.approx(10.0 + REORDER_HOLD)
    assert ch.pop_due(10.0 + REORDER_HOLD / 2) == []
    assert ch.pop_due(10.0 + REORDER_HOLD) == [f]


def test_delay_holds_every_frame_and_keeps_order():
    ch = channel(delay=0.005)
    items = frames(3)
    for i, f in enumerate(items):
        ch.push(f, 1.0 + i * 0.001)
    assert ch.pop_due(1.0049) == []
    assert ch.next_deadline() == pytest.approx(1.005)
    assert ch.pop_due(1.0061) == items[:2]
    assert ch.pop_due(1.1) == items[2:]


def test_corrupt_changes_exactly_one_byte_never_the_version():
    ch = channel(corrupt=1.0)
    items = frames(300)
    out = run(ch, items)
    assert len(out) == 300
    for a, b in zip(items, out, strict=True):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        assert len(diffs) == 1 and diffs[0] != 0
    assert ch.stats["UstackImpairCorrupted"] == 300


def tcp_frame(i: int) -> bytes:
    src, dst = ip_to_bytes(A), ip_to_bytes(B)
    seg = Segment(40000 + i, 9, 1000 + i, 1, ACK | PSH, 1000, bytes(range(i % 200)) * 3)
    return build_ipv4(src, dst, PROTO_TCP, build_tcp(seg, src, dst), i)


async def test_every_corrupted_frame_is_caught_by_a_checksum_and_counted():
    """The issue's rule: corrupted packets are counted (TcpInCsumErrors / IpInHdrErrors)
    and never delivered. 400 TCP frames, each with one byte flipped at random."""
    stack = Stack(B, loop=asyncio.get_running_loop())
    try:
        ch = channel(seed=3, corrupt=1.0)
        for i in range(400):
            ch.push(tcp_frame(i), 0.0)
        for f in ch.pop_due(0.0):
            stack.receive(f)
        st = stack.stats
        assert st["TcpInSegs"] == 0  # nothing reached the TCP layer
        assert st["TcpOutRsts"] == 0  # and so nothing was answered
        assert st["TcpInCsumErrors"] > 0 and st["IpInHdrErrors"] > 0
        # The IP header checksum is verified before anything else looks at the header,
        # so every frame is accounted for by exactly the two checksum counters.
        assert st["TcpInCsumErrors"] + st["IpInHdrErrors"] == 400, dict(st)
    finally:
        stack.close()


# ---------------------------------------------------------------------- through stacks


async def transfer(spec_a: str | None, nbytes: int, seed: int = 5) -> tuple[Stack, Stack]:
    """Client A sends nbytes to an echo server on B and reads them back; both
    directions byte-exact. Impairment on A's device (both directions)."""
    loop = asyncio.get_running_loop()
    a, b = Stack(A, loop=loop), Stack(B, loop=loop)
    MemoryLink(loop).connect(a, b)
    if spec_a:
        a.set_impairment(Impairment(spec_a, a.stats))
    data = random.Random(seed).randbytes(nbytes)
    largest = {"out": 0}

    def tap(direction: str, frame: bytes) -> None:
        if direction == "out":
            largest["out"] = max(largest["out"], len(frame))

    a.taps.append(tap)
    b.taps.append(tap)

    async def echo(reader, writer):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    await b.start_server(echo, B, 7)
    try:
        reader, writer = await a.open_connection(B, 7)

        async def send():
            for i in range(0, nbytes, 65536):
                writer.write(data[i:i + 65536])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = hashlib.sha256()
        n = 0
        async with asyncio.timeout(60):
            while chunk := await reader.read(65536):
                got.update(chunk)
                n += len(chunk)
            await sender
        writer.close()
        assert n == nbytes
        assert got.hexdigest() == hashlib.sha256(data).hexdigest()
        # Both ends send data while holding out-of-order data, so data segments carry
        # SACK blocks: they must still fit the MTU (RFC 6691).
        assert largest["out"] <= 1500, largest
        return a, b
    finally:
        a.close()
        b.close()
        gc.collect()


@pytest.mark.parametrize("spec, counters", [
    ("loss=0.05,seed=1", {"UstackImpairDropped", "TcpRetransSegs"}),
    ("reorder=0.1,seed=2", {"UstackImpairReordered"}),
    ("dup=0.05,seed=3", {"UstackImpairDuplicated"}),
    ("corrupt=0.02,seed=4", {"UstackImpairCorrupted", "TcpInCsumErrors", "TcpRetransSegs"}),
    ("delay=2ms,in.loss=0.01,seed=5", {"UstackImpairDropped"}),
], ids=["loss", "reorder", "dup", "corrupt", "delay"])
async def test_echo_through_an_impaired_stack_is_byte_exact(spec, counters):
    a, b = await transfer(spec, 1 << 20)
    seen = {k: a.stats[k] + b.stats[k] for k in counters}
    assert all(seen.values()), seen


async def test_removing_the_impairment_restores_the_direct_path():
    loop = asyncio.get_running_loop()
    s = Stack(B, loop=loop)
    s.set_impairment(Impairment("loss=1", s.stats))
    s.receive(tcp_frame(1))
    assert s.stats["IpInReceives"] == 0 and s.stats["UstackImpairDropped"] == 1
    s.set_impairment(None)
    s.receive(tcp_frame(1))
    assert s.stats["IpInReceives"] == 1
    s.close()
