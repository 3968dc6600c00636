"""Fuzzing the input path. `Stack.receive()` must never raise, must count each bad frame
exactly once, and must answer a frame with at most one well-formed segment. Healthy
connections and TIME_WAIT records must come through it intact, as RFC 5961 requires.

Frames go straight into `Stack.receive()`, and the stack's output is flushed right away
(`inject()`), so the tap sees exactly the replies to that one frame, with no timer
firing in between. Each test owns its event loop and runs it between hypothesis
examples. The loop's exception handler and an ERROR handler on the "ustack" logger
record anything that goes wrong out of sight, and `Harness.assert_clean()` fails on it.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import NamedTuple

import dpkt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ustack import Stack
from ustack import seq as sq
from ustack.config import Config, apply_settings
from ustack.io.memory import MemoryLink
from ustack.tcp.state import State
from ustack.wire.checksum import checksum, pseudo_header_sum
from ustack.wire.ip import ip_to_bytes
from ustack.wire.tcp import ACK, FIN, PSH, RST, SYN, ParseError, parse_tcp

SERVER, CLIENT, STRANGER = "10.77.0.2", "10.77.0.1", "10.77.0.9"
S_IP, C_IP, X_IP = ip_to_bytes(SERVER), ip_to_bytes(CLIENT), ip_to_bytes(STRANGER)
LISTEN_PORT, CLOSED_PORT = 80, 81
MASK = 0xFFFFFFFF
# Farther than any window in these tests (tcp_rmem and tcp_wmem are 256 KiB): a sequence
# number this far from RCV.NXT is outside the receive window, and an ACK this far from
# SND.NXT is outside RFC 5961 5.2's acceptable range.
FAR = 1 << 20
FUZZ = settings(max_examples=250, deadline=None)

# Every IPv4 frame ends in exactly one of these: dropped by IP, dropped by TCP (TcpInErrs),
# delivered to TCP (TcpInSegs) or to ICMP. An IPv6 frame ends in none.
OUTCOMES = ("IpInHdrErrors", "IpInAddrErrors", "IpReasmFails", "IpInUnknownProtos",
            "TcpInErrs", "TcpInSegs", "IcmpInMsgs")
WATCHED = (*OUTCOMES, "TcpInCsumErrors", "TcpExtTCPBadOptions", "IcmpInErrors")

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, MASK)


# --- frames, built independently of ustack.wire's builders ----------------------------


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, *, version: int = 4,
         ihl: int | None = None, total: int | None = None, frag: int = 0x4000,
         ip_opts: bytes = b"", csum_ok: bool = True) -> bytes:
    """An IPv4 frame. Every header field can be set wrong on purpose."""
    hlen = 20 + len(ip_opts)
    ihl = hlen // 4 if ihl is None else ihl
    total = hlen + len(payload) if total is None else total
    header = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total, 0x1234, frag, 64,
                         proto, 0, src, dst) + ip_opts
    csum = checksum(header)
    if not csum_ok:
        csum ^= 0x0101  # never turns 0x0000 into 0xFFFF, the one equivalent value
    return header[:10] + csum.to_bytes(2, "big") + header[12:] + payload


def tcp_bytes(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
              flags: int, wnd: int, opts: bytes = b"", payload: bytes = b"", urg: int = 0,
              *, doff: int | None = None, csum_ok: bool = True) -> bytes:
    """A TCP header (options as raw bytes, padded by the caller) and payload."""
    doff = (20 + len(opts)) // 4 if doff is None else doff
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & MASK, ack & MASK, doff << 4, flags,
                      wnd, 0, urg) + opts + payload
    csum = checksum(seg, pseudo_header_sum(src, dst, 6, len(seg)))
    if not csum_ok:
        csum ^= 0x0101
    return seg[:16] + csum.to_bytes(2, "big") + seg[18:]


def tcp_frame(src: bytes, dst: bytes, sport: int, dport: int, **fields) -> bytes:
    return ipv4(src, dst, 6, tcp_bytes(src, dst, sport, dport, **fields))


def options_malformed(opts: bytes) -> bool:
    """The rule ustack documents (RFC 9293 3.1, MUST-68): unknown options are skipped by
    their length, which must be at least 2 and must not run past the header; the options
    ustack knows must have their own length (SACK: 2 + 8n). EOL ends the list."""
    fixed = {2: 4, 3: 3, 4: 2, 8: 10}  # MSS, window scale, SACK-permitted, timestamps
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            return False
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts):
            return True
        length = opts[i + 1]
        if length < 2 or i + length > len(opts):
            return True
        if kind in fixed and length != fixed[kind]:
            return True
        if kind == 5 and (length - 2) % 8:
            return True
        i += length
    return False


def check_reply(frame: bytes, src: bytes, dst: bytes, sport: int, dport: int) -> dpkt.tcp.TCP:
    """A segment the stack sent must be well-formed, with dpkt as the judge, and must go
    back where the frame came from."""
    ip = dpkt.ip.IP(frame)
    assert (ip.v, ip.hl, ip.len, ip.p) == (4, 5, len(frame), 6)
    assert (ip.src, ip.dst) == (src, dst)
    assert dpkt.in_cksum(frame[:20]) == 0, "bad IP checksum in a reply"
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(frame) - 20)
    assert dpkt.in_cksum(pseudo + frame[20:]) == 0, "bad TCP checksum in a reply"
    tcp = ip.data
    assert isinstance(tcp, dpkt.tcp.TCP)
    assert (tcp.sport, tcp.dport) == (sport, dport)
    assert all(opt is not None for opt in dpkt.tcp.parse_opts(tcp.opts)), "truncated option"
    try:
        parse_tcp(frame, 20, len(frame))
    except ParseError as exc:  # ustack would drop its own segment
        raise AssertionError(f"reply does not parse: {exc}") from None
    if tcp.flags & RST:
        assert not tcp.data and not tcp.flags & (SYN | FIN)
    return tcp


# --- strategies -----------------------------------------------------------------------


def _opt(kind: int, body: bytes) -> bytes:
    return bytes((kind, 2 + len(body))) + body


def option_items(ts_base: int | None = None) -> st.SearchStrategy[bytes]:
    """One TCP option, well-formed or not."""
    tsval = u32 if ts_base is None else st.integers(-3, 3).map(lambda d: (ts_base + d) & MASK)
    good = st.one_of(
        st.just(b"\x01"),  # NOP
        u16.map(lambda v: _opt(2, v.to_bytes(2, "big"))),
        u8.map(lambda v: _opt(3, bytes((v,)))),
        st.just(_opt(4, b"")),
        st.tuples(tsval, u32).map(lambda t: _opt(8, struct.pack("!II", *t))),
        st.lists(st.tuples(u32, u32), max_size=4).map(
            lambda bl: _opt(5, b"".join(struct.pack("!II", *b) for b in bl))),
        st.tuples(st.integers(6, 254).filter(lambda k: k != 8),
                  st.binary(max_size=8)).map(lambda kb: _opt(*kb)),  # unknown kinds
    )
    bad = st.one_of(
        st.tuples(st.sampled_from([2, 3, 4, 5, 8]), st.binary(max_size=12)).map(
            lambda kb: _opt(*kb)),  # a known kind with any length
        st.tuples(u8, st.integers(0, 1)).map(bytes),  # length below 2
        st.tuples(st.integers(2, 254), st.integers(2, 255)).map(bytes),  # runs off the end
    )
    return st.one_of(good, good, bad)


def options(ts_base: int | None = None) -> st.SearchStrategy[bytes]:
    """An option block as it would sit in a header: at most 40 bytes, padded with EOL."""
    block = st.one_of(
        st.just(b""),
        st.lists(option_items(ts_base), max_size=5).map(b"".join),
        st.binary(max_size=40),
    )
    return block.map(lambda b: b[:40] + bytes(-len(b[:40]) % 4))


FLAGS = st.one_of(st.integers(0, 0xFF),
                  st.sampled_from([SYN, ACK, RST, RST | ACK, FIN | ACK, PSH | ACK, SYN | ACK,
                                   SYN | FIN, SYN | RST, 0]))


def tcp_fields(seq=u32, ack=u32, ts_base: int | None = None) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "seq": seq, "ack": ack, "flags": FLAGS, "wnd": u16, "urg": st.just(0) | u16,
        "opts": options(ts_base), "payload": st.binary(max_size=200),
    })


def near(base: int, spread: int = 70000) -> st.SearchStrategy[int]:
    """Sequence numbers around `base`, where the edge cases are, and anywhere."""
    return st.one_of(st.integers(-3, 3), st.integers(-spread, spread), u32).map(
        lambda d: (base + d) & MASK)


@st.composite
def garbage_frames(draw) -> bytes:
    """Raw bytes, or a checksummed IPv4 frame (TCP most often) with at most one IP field
    and one TCP field wrong, so that frames get past each check in turn."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=80))
    ip_bad = draw(st.sampled_from([None, None, "version", "ihl", "total", "frag", "csum",
                                   "src", "dst", "proto", "ip_opts"]))
    tcp_bad = draw(st.sampled_from([None, None, "doff", "csum", "cut", "body"]))

    def pick(field, good, bad):
        return draw(bad) if field in (ip_bad, tcp_bad) else good

    src = pick("src", X_IP, st.binary(min_size=4, max_size=4))
    dst = pick("dst", S_IP, st.binary(min_size=4, max_size=4))
    proto = pick("proto", 6, st.sampled_from([1, 17, 41]) | u8)
    if proto == 6 and tcp_bad != "body":
        payload = tcp_bytes(
            src, dst, draw(u16), draw(st.sampled_from([LISTEN_PORT, CLOSED_PORT]) | u16),
            draw(u32), draw(u32), draw(FLAGS), draw(u16), draw(options()),
            draw(st.binary(max_size=40)),
            doff=pick("doff", None, st.integers(0, 15)),
            csum_ok=tcp_bad != "csum")
        if tcp_bad == "cut":
            payload = payload[:draw(st.integers(0, len(payload)))]
    else:
        payload = draw(st.binary(max_size=60))
    frame = ipv4(src, dst, proto, payload,
                 ip_opts=pick("ip_opts", b"", st.binary(max_size=40).map(
                     lambda b: b + bytes(-len(b) % 4))),
                 version=pick("version", 4, st.integers(0, 15)),
                 ihl=pick("ihl", None, st.integers(0, 15)),
                 total=pick("total", None, u16),
                 frag=pick("frag", 0x4000, st.sampled_from([0, 0x2000, 0x0001]) | u16),
                 csum_ok=ip_bad != "csum")
    return frame + draw(st.binary(max_size=8))  # link-layer padding


# --- harness --------------------------------------------------------------------------


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Harness:
    """An event loop owned by the test, stacks on it, and a record of what went wrong."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict] = []
        self.loop.set_exception_handler(lambda loop, ctx: self.errors.append(ctx))
        self.log = _Errors()
        logging.getLogger("ustack").addHandler(self.log)
        self.stacks: list[Stack] = []
        self.out: dict[Stack, list[bytes]] = {}
        self.keep: list = []  # streams the test holds open

    def stack(self, address: str, *knobs: str) -> Stack:
        s = Stack(address, config=apply_settings(Config(), list(knobs)), loop=self.loop)
        out: list[bytes] = []
        s.taps.append(lambda direction, frame: out.append(frame) if direction == "out" else None)
        self.stacks.append(s)
        self.out[s] = out
        return s

    def run(self, coro, timeout: float = 10.0):
        """Run `coro` on the loop. The timeout turns a hang into a failure; it is no
        measurement."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def inject(self, stack: Stack, frame: bytes) -> list[bytes]:
        """Hand `frame` to the stack. Returns the frames it sent in reply, flushed right
        away, so no timer can add anything in between."""
        stack._flush()  # anything already pending is not a reply to this frame
        out = self.out[stack]
        n = len(out)
        stack.receive(frame)
        stack._flush()
        return out[n:]

    def assert_clean(self) -> None:
        assert not self.errors, f"loop exception handler called: {self.errors}"
        assert not self.log.records, [r.getMessage() for r in self.log.records]

    def close(self) -> None:
        for s in self.stacks:
            s.close()
        tasks = asyncio.all_tasks(self.loop)
        for t in tasks:
            t.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()
        logging.getLogger("ustack").removeHandler(self.log)


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def delta(stack: Stack, before: dict[str, int], names=WATCHED) -> dict[str, int]:
    return {n: stack.stats[n] - before[n] for n in names if stack.stats[n] != before[n]}


async def serve(stack: Stack, port: int = LISTEN_PORT) -> asyncio.Queue:
    """A server whose accepted (reader, writer) pairs go to the returned queue."""
    accepted: asyncio.Queue = asyncio.Queue()

    async def cb(reader, writer):
        await accepted.put((reader, writer))

    await stack.start_server(cb, stack.address, port)
    return accepted


class Conn:
    """A connection between two stacks, with its streams and TCBs on both ends."""

    def __init__(self, client: Stack, server: Stack, cr, cw, sr, sw) -> None:
        self.client, self.server = client, server
        self.cr, self.cw, self.sr, self.sw = cr, cw, sr, sw
        self.ckey = cw.transport._tcb.key
        self.skey = self.ckey[4:8] + self.ckey[0:4] + self.ckey[10:12] + self.ckey[8:10]

    def end(self, side: str):
        """(stack, key) of one end; the key is in the orientation of frames it receives."""
        return (self.client, self.ckey) if side == "client" else (self.server, self.skey)

    async def exchange(self, a: bytes, b: bytes) -> None:
        """`a` client to server and `b` back; both must arrive byte-exact."""
        self.cw.write(a)
        self.sw.write(b)
        assert await self.sr.readexactly(len(a)) == a
        assert await self.cr.readexactly(len(b)) == b


def pair(h: Harness, *knobs: str) -> tuple[Stack, Stack, asyncio.Queue]:
    client, server = h.stack(CLIENT, *knobs), h.stack(SERVER, *knobs)
    MemoryLink(h.loop).connect(client, server)
    accepted = h.run(serve(server))
    return client, server, accepted


async def connect(client: Stack, server: Stack, accepted: asyncio.Queue) -> Conn:
    cr, cw = await client.open_connection(SERVER, LISTEN_PORT)
    sr, sw = await accepted.get()
    return Conn(client, server, cr, cw, sr, sw)


def frame_to(stack: Stack, key: bytes, **fields) -> bytes:
    """A TCP frame on the four-tuple of `key` (remote ip, local ip, rport, lport)."""
    return tcp_frame(key[0:4], key[4:8], int.from_bytes(key[8:10], "big"),
                     int.from_bytes(key[10:12], "big"), **fields)


def check_replies(replies: list[bytes], key: bytes, fields: dict) -> None:
    """At most one reply, well-formed, back to the sender; never a RST for a RST."""
    assert len(replies) <= 1, f"{len(replies)} replies to one frame"
    for r in replies:
        tcp = check_reply(r, key[4:8], key[0:4], int.from_bytes(key[10:12], "big"),
                          int.from_bytes(key[8:10], "big"))
        if fields["flags"] & RST:
            assert not tcp.flags & RST, "a RST answered with a RST"


# --- 1. garbage: every frame is counted exactly once ----------------------------------


def test_garbage_is_counted_once_and_never_raises(h):
    s = h.stack(SERVER)
    h.run(serve(s))

    @FUZZ
    @given(frame=garbage_frames())
    def run(frame: bytes) -> None:
        before = dict(s.stats)
        replies = h.inject(s, frame)
        if frame and frame[0] >> 4 == 6:
            assert delta(s, before, tuple(before)) == {}  # IPv6: ignored (see below)
        else:
            assert s.stats["IpInReceives"] == before["IpInReceives"] + 1
            ends = delta(s, before, OUTCOMES)
            assert list(ends.values()) == [1], ends
        assert len(replies) <= 1
        for r in replies:
            ip = dpkt.ip.IP(r)
            assert ip.dst == frame[12:16] and dpkt.in_cksum(r[:20]) == 0
            if ip.p == 6:
                sport, dport = struct.unpack_from("!HH", frame, (frame[0] & 15) * 4)
                check_reply(r, S_IP, frame[12:16], dport, sport)
            else:
                assert ip.p == 1 and dpkt.in_cksum(r[20:]) == 0

    run()
    h.assert_clean()


SYN_TO_CLOSED = {"seq": 1000, "ack": 0, "flags": SYN, "wnd": 65535}


def _syn(**kw) -> bytes:
    return tcp_bytes(X_IP, S_IP, 4000, CLOSED_PORT, **{**SYN_TO_CLOSED, **kw})


GOOD_TCP = _syn()
HDR = "IpInHdrErrors"
BAD_TCP = {"TcpInErrs": 1}
BAD_OPT = {"TcpInErrs": 1, "TcpExtTCPBadOptions": 1}
DELIVERED = {"TcpInSegs": 1}

CASES = {
    # name: (frame, counters that must rise by one, reply expected)
    "empty": (b"", {HDR: 1}, False),
    "runt": (ipv4(X_IP, S_IP, 6, GOOD_TCP)[:19], {HDR: 1}, False),
    "truncated": (ipv4(X_IP, S_IP, 6, GOOD_TCP)[:-1], {HDR: 1}, False),
    "version_5": (ipv4(X_IP, S_IP, 6, GOOD_TCP, version=5), {HDR: 1}, False),
    "ihl_4": (ipv4(X_IP, S_IP, 6, GOOD_TCP, ihl=4), {HDR: 1}, False),
    "ihl_past_total": (ipv4(X_IP, S_IP, 6, b"", ihl=15), {HDR: 1}, False),
    "total_below_ihl": (ipv4(X_IP, S_IP, 6, GOOD_TCP, total=19), {HDR: 1}, False),
    "total_past_frame": (ipv4(X_IP, S_IP, 6, GOOD_TCP, total=100), {HDR: 1}, False),
    "ip_checksum": (ipv4(X_IP, S_IP, 6, GOOD_TCP, csum_ok=False), {HDR: 1}, False),
    "not_our_address": (ipv4(X_IP, C_IP, 6, GOOD_TCP), {"IpInAddrErrors": 1}, False),
    # Martian sources (RFC 1122 3.2.1.3) never get an answer, least of all a RST.
    **{f"martian_source_{name}": (ipv4(ip_to_bytes(src), S_IP, 6, GOOD_TCP),
                                  {"IpInAddrErrors": 1}, False)
       for name, src in (("zero", "0.0.0.0"), ("this_net", "0.1.2.3"),
                         ("loopback", "127.0.0.1"), ("multicast", "224.0.0.1"),
                         ("class_e", "240.0.0.1"), ("broadcast", "255.255.255.255"),
                         ("ourselves", SERVER))},
    "more_fragments": (ipv4(X_IP, S_IP, 6, GOOD_TCP, frag=0x2000), {"IpReasmFails": 1}, False),
    "fragment_offset": (ipv4(X_IP, S_IP, 6, GOOD_TCP, frag=0x0001), {"IpReasmFails": 1}, False),
    "udp": (ipv4(X_IP, S_IP, 17, GOOD_TCP), {"IpInUnknownProtos": 1}, False),
    "icmp_checksum": (ipv4(X_IP, S_IP, 1, b"\x08\0\0\0\0\0\0\0"),
                      {"IcmpInMsgs": 1, "IcmpInErrors": 1}, False),
    "tcp_runt": (ipv4(X_IP, S_IP, 6, GOOD_TCP[:19]), BAD_TCP, False),
    "tcp_checksum": (ipv4(X_IP, S_IP, 6, _syn(csum_ok=False)),
                     {"TcpInErrs": 1, "TcpInCsumErrors": 1}, False),
    # A bad data offset is a bad header, not a bad option (Linux: TCP_MIB_INERRS only).
    "doff_4": (ipv4(X_IP, S_IP, 6, _syn(doff=4)), BAD_TCP, False),
    "doff_past_end": (ipv4(X_IP, S_IP, 6, _syn(doff=6)), BAD_TCP, False),
    "option_length_0": (ipv4(X_IP, S_IP, 6, _syn(opts=b"\x1e\x00\x00\x00")), BAD_OPT, False),
    "option_length_1": (ipv4(X_IP, S_IP, 6, _syn(opts=b"\x1e\x01\x00\x00")), BAD_OPT, False),
    "option_past_header": (ipv4(X_IP, S_IP, 6, _syn(opts=b"\x1e\x05\x00\x00")), BAD_OPT,
                           False),
    "option_without_length": (ipv4(X_IP, S_IP, 6, _syn(opts=b"\x01\x01\x01\x02")), BAD_OPT,
                              False),
    "mss_length_3": (ipv4(X_IP, S_IP, 6, _syn(opts=b"\x02\x03\x05\x01")), BAD_OPT, False),
    "ts_length_8": (ipv4(X_IP, S_IP, 6, _syn(opts=b"\x08\x08" + bytes(6) + b"\x01\x00\x00\x00")),
                    BAD_OPT, False),
    "sack_length_9": (ipv4(X_IP, S_IP, 6, _syn(opts=b"\x05\x09" + bytes(7) + bytes(3))),
                      BAD_OPT, False),
    # Healthy frames in unusual shapes: delivered, answered with the RST a closed port gets.
    "link_padding": (ipv4(X_IP, S_IP, 6, GOOD_TCP) + bytes(6), DELIVERED, True),
    "ip_options": (ipv4(X_IP, S_IP, 6, GOOD_TCP, ip_opts=b"\x01\x01\x01\x00"), DELIVERED, True),
    "unknown_option": (ipv4(X_IP, S_IP, 6, _syn(opts=b"\xfd\x04\xab\xcd")), DELIVERED, True),
    "after_eol": (ipv4(X_IP, S_IP, 6, _syn(opts=b"\x00\x02\x01\x00")), DELIVERED, True),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_frame_counts_where_it_dropped(h, name):
    frame, expected, answered = CASES[name]
    s = h.stack(SERVER)
    before = dict(s.stats)
    replies = h.inject(s, frame)
    assert delta(s, before) == expected
    assert s.stats["IpInReceives"] == before["IpInReceives"] + 1
    if answered:
        assert len(replies) == 1
        tcp = check_reply(replies[0], S_IP, X_IP, CLOSED_PORT, 4000)
        assert (tcp.flags, tcp.seq, tcp.ack) == (RST | ACK, 0, 1001)
    else:
        assert replies == []
    h.assert_clean()


def test_ipv6_is_ignored_without_a_reply(h):
    """The kernel sends IPv6 (router solicitations) down a TUN; ustack has no IPv6 and
    ignores it deliberately: no IP header error, and no IPv4 counter at all."""
    s = h.stack(SERVER)
    before = dict(s.stats)
    assert h.inject(s, b"\x60" + bytes(39)) == []
    assert h.inject(s, b"\x6f") == []
    assert delta(s, before, tuple(before)) == {}


# --- 2. well-formed TCP at a listener, a closed port and a live connection ------------


def test_tcp_fuzz_at_listener_and_closed_port(h):
    s = h.stack(SERVER)
    h.run(serve(s))

    @FUZZ
    @given(dport=st.sampled_from([LISTEN_PORT, CLOSED_PORT]), sport=u16, f=tcp_fields())
    def run(dport: int, sport: int, f: dict) -> None:
        key = X_IP + S_IP + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
        before = dict(s.stats)
        replies = h.inject(s, frame_to(s, key, **f))
        check_replies(replies, key, f)
        if options_malformed(f["opts"]):
            assert delta(s, before) == BAD_OPT
            assert replies == []
            return
        assert delta(s, before) == DELIVERED
        if dport == CLOSED_PORT:
            # RFC 9293 3.10.7.1: a RST for anything but a RST, in the form the ACK bit picks.
            if f["flags"] & RST:
                assert replies == []
            else:
                tcp = dpkt.ip.IP(replies[0]).data
                seg_len = len(f["payload"]) + bool(f["flags"] & SYN) + bool(f["flags"] & FIN)
                if f["flags"] & ACK:
                    assert (tcp.flags, tcp.seq) == (RST, f["ack"])
                else:
                    assert (tcp.flags, tcp.seq, tcp.ack) == (RST | ACK, 0,
                                                             (f["seq"] + seg_len) & MASK)

    run()
    h.assert_clean()


def test_out_of_window_segments_leave_a_connection_alone(h):
    """RFC 5961: a segment whose sequence number is outside the receive window (and, for
    good measure, whose ACK is outside the acceptable range) changes nothing, whatever
    its flags, options and payload. The connection must still carry data both ways.
    Each example gets a fresh connection, so a failure shrinks to the segments that
    caused it."""
    client, server, accepted = pair(h)

    @FUZZ
    @given(side=st.sampled_from(["server", "client"]), n=st.integers(1, 3), data=st.data(),
           a=st.binary(min_size=1, max_size=3000), b=st.binary(min_size=1, max_size=3000))
    def run(side, n, data, a, b) -> None:
        conn = h.run(connect(client, server, accepted))
        h.run(conn.exchange(b"hello", b"world"))
        stack, key = conn.end(side)
        tcb = stack.table.est[key]
        for _ in range(n):
            seq_off = data.draw(st.integers(FAR, (1 << 32) - 2 * FAR), "seq - RCV.NXT")
            ack_off = data.draw(st.integers(1, (1 << 32) - FAR), "ack - SND.NXT")
            f = data.draw(tcp_fields(seq=st.just((tcb.rcv_nxt + seq_off) & MASK),
                                     ack=st.just((tcb.snd_max + ack_off) & MASK),
                                     ts_base=tcb.ts_recent))
            before = dict(stack.stats)
            replies = h.inject(stack, frame_to(stack, key, **f))
            check_replies(replies, key, f)
            if options_malformed(f["opts"]):
                assert replies == [] and delta(stack, before)["TcpExtTCPBadOptions"] == 1
            assert stack.table.est.get(key) is tcb and tcb.state == State.ESTABLISHED
            assert stack.stats["TcpEstabResets"] == before["TcpEstabResets"]
        h.run(conn.exchange(a, b))
        conn.cw.close()
        conn.sw.close()
        h.assert_clean()

    run()


# --- 3. TIME_WAIT ---------------------------------------------------------------------


async def into_time_wait(conn: Conn, closer: str) -> None:
    """Close `conn`, `closer` first, until the closer holds a TIME_WAIT record."""
    first, second = (conn.cw, conn.sw) if closer == "client" else (conn.sw, conn.cw)
    reader = conn.sr if closer == "client" else conn.cr
    first.close()
    assert await reader.read() == b""
    second.close()
    stack, key = conn.end(closer)
    while key not in stack.table.tw:
        await asyncio.sleep(0)


def test_segments_to_time_wait(h):
    """Arbitrary segments, several in a row, to a TIME_WAIT four-tuple: on the client
    (no listener) and on the server, where a new SYN may reopen it (RFC 6191)."""
    client, server, accepted = pair(h)

    @FUZZ
    @given(closer=st.sampled_from(["client", "server"]),
           n=st.integers(1, 3), data=st.data())
    def run(closer, n, data) -> None:
        conn = h.run(connect(client, server, accepted))
        h.run(conn.exchange(b"q", b"a"))
        h.run(into_time_wait(conn, closer))
        stack, key = conn.end(closer)
        rec = stack.table.tw.get(key)
        for _ in range(n):
            f = data.draw(tcp_fields(seq=near(rec.rcv_nxt), ack=near(rec.snd_nxt),
                                     ts_base=rec.ts_recent))
            before = dict(stack.stats)
            replies = h.inject(stack, frame_to(stack, key, **f))
            check_replies(replies, key, f)
            if options_malformed(f["opts"]):
                assert replies == [] and delta(stack, before) == BAD_OPT
            h.assert_clean()
        h.run(asyncio.sleep(0))  # let the peer take whatever was sent to it

    run()
    # Both stacks still work.
    conn = h.run(connect(client, server, accepted))
    h.run(conn.exchange(b"still", b"alive"))
    h.assert_clean()


# --- a scripted peer: the SYN's options, then garbage inside the window ---------------


class Listening(NamedTuple):
    h: Harness
    stack: Stack
    accepted: asyncio.Queue


@pytest.fixture
def listening(h) -> Listening:
    s = h.stack(SERVER)
    return Listening(h, s, h.run(serve(s)))


class ScriptedPeer:
    """The remote end of one connection to a listening stack, played by hand from
    STRANGER: it sends what the test says and ACKs what arrives. Timestamps are on if
    the SYN-ACK has them."""

    def __init__(self, lst: Listening, sport: int) -> None:
        self.h, self.stack, self.accepted = lst
        h, stack = lst.h, lst.stack
        self.key = X_IP + S_IP + sport.to_bytes(2, "big") + LISTEN_PORT.to_bytes(2, "big")
        self.seq = 7000  # our next sequence number
        self.rcv = 0  # the stack's data we have, in sequence space
        self.tsval = 100
        self.ts_echo: int | None = None  # None: timestamps are off
        self.got = bytearray()
        self.sizes: list[int] = []
        self.seen = len(h.out[stack])

    def send(self, **fields) -> list[bytes]:
        fields.setdefault("seq", self.seq)
        fields.setdefault("ack", self.rcv)
        fields.setdefault("wnd", 65535)
        if self.ts_echo is not None and "opts" not in fields:
            self.tsval += 1
            fields["opts"] = b"\x01\x01" + _opt(8, struct.pack("!II", self.tsval, self.ts_echo))
        return self.h.inject(self.stack, frame_to(self.stack, self.key, **fields))

    def take(self) -> bool:
        """Read what the stack sent since last time; True if new data arrived in order."""
        out = self.h.out[self.stack]
        frames, self.seen = out[self.seen:], len(out)
        progress = False
        for fr in frames:
            sport = int.from_bytes(self.key[8:10], "big")
            ip = dpkt.ip.IP(fr)
            if ip.dst != X_IP or ip.data.dport != sport:
                continue  # another connection's
            tcp = check_reply(fr, S_IP, X_IP, LISTEN_PORT, sport)
            for kind, val in dpkt.tcp.parse_opts(tcp.opts):
                if kind == dpkt.tcp.TCP_OPT_TIMESTAMP and self.ts_echo is not None:
                    self.ts_echo = struct.unpack("!II", val)[0]
            if tcp.data:
                self.sizes.append(len(tcp.data))
                skip = (self.rcv - tcp.seq) & MASK
                if skip < len(tcp.data):
                    self.got += tcp.data[skip:]
                    self.rcv = (self.rcv + len(tcp.data) - skip) & MASK
                    progress = True
        return progress

    def connect(self, opts: bytes, ts: bool) -> asyncio.StreamWriter:
        """Handshake with `opts` in the SYN; returns the server side's writer."""
        (synack,) = self.send(seq=self.seq, ack=0, flags=SYN, opts=opts)
        self.seen += 1
        tcp = dpkt.ip.IP(synack).data
        assert tcp.flags == SYN | ACK
        self.seq += 1
        self.rcv = (tcp.seq + 1) & MASK
        for kind, val in dpkt.tcp.parse_opts(tcp.opts):
            if kind == dpkt.tcp.TCP_OPT_TIMESTAMP:
                assert ts
                self.ts_echo = struct.unpack("!II", val)[0]
        assert self.send(flags=ACK) == []
        _, writer = self.h.run(self.accepted.get())
        self.h.keep.append(writer)
        return writer

    def fetch(self, size: int) -> None:
        """ACK everything until `size` bytes arrived; fail if the stack stops sending."""
        idle = 0
        while len(self.got) < size:
            self.h.run(asyncio.sleep(0))
            if self.take():
                idle = 0
                self.send(flags=ACK)
            else:
                idle += 1
                assert idle < 50, f"stalled after {len(self.got)} of {size} bytes"


def syn_options(mss: int | None, wscale: int | None, sack_perm: bool, ts: bool) -> bytes:
    opts = b""
    if mss is not None:
        opts += _opt(2, mss.to_bytes(2, "big"))
    if wscale is not None:
        opts += b"\x01" + _opt(3, bytes((wscale,)))
    if sack_perm:
        opts += _opt(4, b"")
    if ts:
        opts += _opt(8, struct.pack("!II", 50, 0))
    return opts + bytes(-len(opts) % 4)


def fetch_with_syn_options(lst: Listening, mss: int | None, wscale: int | None,
                           sack_perm: bool, ts: bool, sport: int) -> None:
    """Connect with these SYN options and fetch 1 KiB from the server's side."""
    peer = ScriptedPeer(lst, sport)
    writer = peer.connect(syn_options(mss, wscale, sack_perm, ts), ts)
    data = bytes(range(256)) * 4
    writer.write(data)
    peer.fetch(len(data))
    assert bytes(peer.got) == data
    # What one segment may carry: the peer's MSS (none or 0: 536; at least Linux's
    # tcp_min_snd_mss, 48), at most ours, less the timestamp option.
    cap = min(max(mss, 48) if mss else 536, 1460) - (12 if ts else 0)
    assert max(peer.sizes) <= cap


@pytest.mark.parametrize("ts", [True, False], ids=["ts", "no_ts"])
@pytest.mark.parametrize("mss", [1, 12, 13, 47, 48, 0])
def test_tiny_peer_mss_still_moves_data(listening, mss, ts):
    """A SYN's MSS of 12 or less left no room for data once the 12-byte timestamp option
    was subtracted: the connection stalled for good. The peer's MSS is floored at 48
    like Linux's tcp_min_snd_mss."""
    fetch_with_syn_options(listening, mss, None, False, ts, sport=5000)
    listening.h.assert_clean()


def test_syn_options_fuzz(listening):
    """Any MSS, window scale, SACK-permitted and timestamps in a SYN: data still flows,
    in segments no larger than the options allow."""
    h = listening.h
    ports = iter(range(10000, 60000))

    @settings(max_examples=100, deadline=None)
    @given(mss=st.none() | u16, wscale=st.none() | u8, sack_perm=st.booleans(),
           ts=st.booleans())
    @example(mss=1, wscale=None, sack_perm=True, ts=True)
    def run(mss, wscale, sack_perm, ts) -> None:
        fetch_with_syn_options(listening, mss, wscale, sack_perm, ts, next(ports))
        h.assert_clean()

    run()


def test_in_window_garbage_with_data_in_flight(listening):
    """Not protected by RFC 5961: segments inside the window, with ACKs and SACK blocks
    around what is in flight, may change the connection, but must never raise, and what
    the stack sends in answer must be well-formed."""
    h, s, _ = listening
    ports = iter(range(10000, 60000))

    def block(base: int):
        return st.tuples(near(base, 30000), near(base, 30000))

    @FUZZ
    @given(n=st.integers(1, 6), data=st.data())
    def run(n, data) -> None:
        peer = ScriptedPeer(listening, next(ports))
        writer = peer.connect(syn_options(1460, 7, True, True), True)
        writer.write(bytes(30000))
        h.run(asyncio.sleep(0))
        peer.take()
        tcb = s.table.est[peer.key]
        for _ in range(n):
            una = tcb.snd_una
            sack = data.draw(st.lists(block(una), max_size=3))
            opts = b"\x01\x01" + _opt(8, struct.pack("!II", peer.tsval + 1, peer.ts_echo or 0))
            opts += b"\x01\x01" + _opt(5, b"".join(struct.pack("!II", *b) for b in sack))
            f = data.draw(tcp_fields(seq=near(peer.seq, 3000), ack=near(una, 30000)))
            f["opts"] = opts if data.draw(st.booleans()) else f["opts"]
            peer.tsval += 1
            replies = peer.send(**f)
            for r in replies:
                check_reply(r, S_IP, X_IP, LISTEN_PORT, int.from_bytes(peer.key[8:10], "big"))
            if tcb.state != State.CLOSED:  # SND.UNA <= SND.MAX, never back, no more than sent
                assert sq.ge(tcb.snd_una, una) and sq.le(tcb.snd_una, tcb.snd_max)
                assert sq.diff(tcb.snd_max, tcb.snd_una) <= 30000
        writer.transport.abort()
        h.run(asyncio.sleep(0))
        h.assert_clean()

    run()
