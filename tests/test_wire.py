"""Wire formats: TCP parse/build round trips, checksums and option parsing, with dpkt as oracle.

dpkt is an independent implementation: it recomputes the IPv4, TCP and ICMP checksums when
they are zeroed before serialization, and it parses TCP options on its own.
"""

import socket
import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.wire.checksum import checksum, ones_sum, pseudo_header_sum
from ustack.wire.ip import (
    PROTO_ICMP,
    PROTO_TCP,
    build_icmp_echo_reply,
    build_ipv4,
    header_ok,
    ip_to_bytes,
    ip_to_str,
)
from ustack.wire.tcp import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    ParseError,
    Segment,
    build_tcp,
    build_tcp_ipv4,
    encode_options,
    format_segment,
    parse_tcp,
)

SRC = ip_to_bytes("10.0.0.1")
DST = ip_to_bytes("10.0.0.2")
MASK32 = 0xFFFFFFFF

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addrs = st.binary(min_size=4, max_size=4)


@st.composite
def segments(draw) -> Segment:
    ts = draw(st.none() | st.tuples(u32, u32))
    max_blocks = 3 if ts is not None else 4
    return Segment(
        sport=draw(u16),
        dport=draw(u16),
        seq=draw(u32),
        ack=draw(u32),
        flags=draw(st.integers(0, 0xFF)),
        wnd=draw(u16),
        payload=draw(st.binary(max_size=2000)),
        mss=draw(st.none() | u16),
        wscale=draw(st.none() | st.integers(0, 14)),
        sack_perm=draw(st.booleans()),
        ts=ts,
        sack=tuple(draw(st.lists(st.tuples(u32, u32), max_size=max_blocks))),
        urg=draw(u16),
    )


def options_size(seg: Segment) -> int:
    """Bytes of options build_tcp emits for `seg`, counted independently of encode_options."""
    n = 4 if seg.mss is not None else 0
    if seg.ts is not None:
        n += 12  # NOP NOP TS, or SACK-permitted (2 bytes) in place of the two NOPs
    elif seg.sack_perm:
        n += 4  # NOP NOP SACK-permitted
    n += 4 if seg.wscale is not None else 0
    n += 4 + 8 * len(seg.sack) if seg.sack else 0
    return n


def ref_ones_sum(data: bytes) -> int:
    """RFC 1071 section 4.1, word by word with end-around carry."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def raw_tcp(opts: bytes = b"", payload: bytes = b"", flags: int = ACK) -> bytes:
    """A TCP header with `opts` verbatim (must be a multiple of 4 bytes); checksum left 0."""
    assert len(opts) % 4 == 0
    hlen = 20 + len(opts)
    return struct.pack("!HHIIBBHHH", 1234, 80, 1, 2, (hlen // 4) << 4, flags, 1000, 0, 0) \
        + opts + payload


def dpkt_options(tcp: dpkt.tcp.TCP) -> dict:
    found: dict = {"sack_perm": False, "sack": ()}
    for opt in dpkt.tcp.parse_opts(tcp.opts):
        assert opt is not None, "dpkt found a truncated option"
        kind, data = opt
        if kind == dpkt.tcp.TCP_OPT_MSS:
            found["mss"] = struct.unpack("!H", data)[0]
        elif kind == dpkt.tcp.TCP_OPT_WSCALE:
            found["wscale"] = data[0]
        elif kind == dpkt.tcp.TCP_OPT_SACKOK:
            found["sack_perm"] = True
        elif kind == dpkt.tcp.TCP_OPT_TIMESTAMP:
            found["ts"] = struct.unpack("!II", data)
        elif kind == dpkt.tcp.TCP_OPT_SACK:
            found["sack"] = tuple(struct.unpack_from("!II", data, j)
                                  for j in range(0, len(data), 8))
        else:
            assert kind in (dpkt.tcp.TCP_OPT_NOP, dpkt.tcp.TCP_OPT_EOL), kind
    return found


# --- round trip and dpkt oracle --------------------------------------------------------


@settings(deadline=None)
@given(segments())
def test_round_trip(seg):
    if options_size(seg) > 40:
        with pytest.raises(ValueError, match="40"):
            build_tcp(seg, SRC, DST)
        return
    wire = build_tcp(seg, SRC, DST)
    assert len(wire) == 20 + options_size(seg) + len(seg.payload)
    assert parse_tcp(wire, 0, len(wire)) == seg
    # The same bytes inside an IPv4 frame, parsed at an offset, through a memoryview.
    frame = build_ipv4(SRC, DST, PROTO_TCP, wire)
    assert parse_tcp(memoryview(frame), 20, len(frame)) == seg


@settings(deadline=None)
@given(segments(), addrs, addrs, u16)
def test_dpkt_agrees_on_fields_options_and_checksums(seg, src, dst, ident):
    if options_size(seg) > 40:
        return
    frame = build_ipv4(src, dst, PROTO_TCP, build_tcp(seg, src, dst), ident=ident)
    assert header_ok(frame, 20)
    ip = dpkt.ip.IP(frame)
    tcp = ip.data
    assert isinstance(tcp, dpkt.tcp.TCP)
    assert (ip.src, ip.dst, ip.p, ip.len, ip.id) == (src, dst, PROTO_TCP, len(frame), ident)
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.flags, tcp.win, tcp.urp) == (
        seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.wnd, seg.urg)
    assert tcp.data == seg.payload
    opts = dpkt_options(tcp)
    assert opts.get("mss") == seg.mss
    assert opts.get("wscale") == seg.wscale
    assert opts["sack_perm"] == seg.sack_perm
    assert opts.get("ts") == seg.ts
    assert opts["sack"] == seg.sack
    # Zero both checksums and let dpkt compute them: it must produce our bytes exactly.
    ip.sum = 0
    tcp.sum = 0
    assert bytes(ip) == frame


def test_options_over_40_bytes_refused():
    seg = Segment(mss=1460, sack_perm=True, ts=(1, 2), wscale=7, sack=((1, 2), (3, 4), (5, 6)))
    assert options_size(seg) == 48
    with pytest.raises(ValueError, match="40"):
        build_tcp(seg, SRC, DST)


def test_options_exactly_40_bytes():
    seg = Segment(mss=1460, sack=((1, 2), (3, 4), (5, 6), (7, 8)))
    assert len(encode_options(seg)) == 40
    wire = build_tcp(seg, SRC, DST)
    assert wire[12] >> 4 == 15
    assert parse_tcp(wire, 0, len(wire)) == seg


def test_syn_option_layout_matches_linux():
    seg = Segment(flags=SYN, mss=1460, sack_perm=True, ts=(7, 0), wscale=7)
    assert encode_options(seg) == bytes.fromhex("020405b4" "0402080a0000000700000000" "01030307")
    assert format_segment(seg) == "S seq 0 win 0 <mss 1460,sackOK,TS val 7 ecr 0,wscale 7>"


# --- checksum ----------------------------------------------------------------------------


@given(st.binary(max_size=3001).filter(lambda b: len(b) & 1) | st.binary(max_size=64))
def test_ones_sum_matches_word_loop(data):
    assert ones_sum(data) == ref_ones_sum(data)
    assert checksum(data) == ~ref_ones_sum(data) & 0xFFFF
    assert checksum(data) == dpkt.in_cksum(data)


@given(st.binary(max_size=301), u16)
def test_checksum_with_initial_sum(data, initial):
    s = ref_ones_sum(data) + initial
    s = (s & 0xFFFF) + (s >> 16)
    assert checksum(data, initial) == ~s & 0xFFFF


@pytest.mark.parametrize("data", [b"", b"\0", b"\0\0\0", b"\xff\xff", b"\xff\xff\xff\xff",
                                  b"\xff", b"\x00\x01\xff\xfe"])
def test_checksum_edge_words(data):
    assert ones_sum(data) == ref_ones_sum(data)
    assert checksum(data) == dpkt.in_cksum(data)


@given(st.binary(max_size=1501))
def test_built_segment_verifies(payload):
    wire = build_tcp(Segment(flags=ACK, payload=payload), SRC, DST)
    # Receiver's check: the sum over pseudo-header and segment, checksum included, is -0.
    s = ones_sum(wire) + pseudo_header_sum(SRC, DST, PROTO_TCP, len(wire))
    s = (s & 0xFFFF) + (s >> 16)
    assert s == 0xFFFF


def test_header_ok_detects_corruption():
    frame = bytearray(build_ipv4(SRC, DST, PROTO_TCP, b"x" * 20))
    assert header_ok(frame, 20)
    frame[8] ^= 0x01  # TTL
    assert not header_ok(frame, 20)


@given(addrs)
def test_ip_conversions_agree_with_the_socket_module(packed):
    """ip_to_bytes/ip_to_str are pure (no socket in the core) but must match
    inet_aton/inet_ntoa on dotted quads, and raise OSError on anything else as they do."""
    text = socket.inet_ntoa(packed)
    assert ip_to_str(packed) == text
    assert ip_to_bytes(text) == packed


@pytest.mark.parametrize("bad", ["", "x", "1.2.3.4.5", "256.0.0.1", "10.0.0.1 "])
def test_ip_to_bytes_rejects_non_dotted_quads(bad):
    with pytest.raises(OSError):
        ip_to_bytes(bad)
    with pytest.raises(OSError):
        ip_to_str(b"\x01\x02\x03")


@given(u16, u16, st.binary(max_size=1473))
def test_icmp_echo_reply_checksum_verified_by_dpkt(ident, seqno, data):
    request = struct.pack("!BBHHH", 8, 0, 0, ident, seqno) + data
    request = request[:2] + checksum(request).to_bytes(2, "big") + request[4:]
    reply = build_icmp_echo_reply(request)
    ip = dpkt.ip.IP(build_ipv4(DST, SRC, PROTO_ICMP, reply))
    icmp = ip.data
    assert isinstance(icmp, dpkt.icmp.ICMP)
    assert (icmp.type, icmp.code) == (0, 0)
    assert (icmp.data.id, icmp.data.seq, icmp.data.data) == (ident, seqno, data)
    icmp.sum = 0
    assert bytes(icmp) == reply


# --- parser robustness -----------------------------------------------------------------


def parse_or_reject(buf: bytes, off: int, end: int) -> Segment | None:
    try:
        seg = parse_tcp(buf, off, end)
    except ParseError:
        return None
    assert len(seg.payload) <= end - off - 20
    return seg


@given(st.binary(max_size=100), st.data())
def test_fuzzed_bytes_raise_only_parse_error(buf, data):
    off = data.draw(st.integers(0, len(buf)))
    end = data.draw(st.integers(off, len(buf)))
    parse_or_reject(buf, off, end)
    parse_or_reject(memoryview(buf), off, end)


@given(st.integers(0, 15), st.binary(min_size=0, max_size=44), st.binary(max_size=8))
def test_fuzzed_options_raise_only_parse_error(doff, opts, tail):
    """A plausible header in front of random option bytes, so the option parser is reached."""
    header = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, doff << 4, ACK, 5, 0, 0)
    buf = header + opts + tail
    seg = parse_or_reject(buf, 0, len(buf))
    if doff < 5 or 4 * doff > len(buf):
        assert seg is None


@given(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 10, 30, 255]), max_size=40),
       st.integers(0, 10))
def test_fuzzed_option_kinds_and_lengths(tokens, pad):
    """Option-shaped bytes (small kinds and lengths) exercise each option's length checks."""
    opts = bytes(tokens)[:40]
    opts += b"\1" * (-len(opts) % 4)
    buf = raw_tcp(opts, b"p" * pad)
    parse_or_reject(buf, 0, len(buf))


@pytest.mark.parametrize("buf", [
    b"",
    b"\0" * 19,
    raw_tcp()[:12] + bytes([0x40]) + raw_tcp()[13:],  # data offset 4
    raw_tcp()[:12] + bytes([0x60]) + raw_tcp()[13:],  # data offset 6, only 20 bytes
])
def test_bad_header_length(buf):
    with pytest.raises(ParseError):
        parse_tcp(buf, 0, len(buf))


@pytest.mark.parametrize("opts", [
    bytes([2, 0, 0, 0]),                 # length 0
    bytes([30, 1, 0, 0]),                # length 1
    bytes([1, 1, 1, 30]),                # last byte has no room for a length
    bytes([8, 10, 0, 0]),                # TS length runs past the header
    bytes([30, 6, 0, 0]),                # unknown option runs past the header
    bytes([2, 3, 5, 1]),                 # MSS length 3
    bytes([2, 5, 5, 180, 0, 1, 1, 1]),   # MSS length 5
    bytes([3, 4, 7, 0]),                 # window scale length 4
    bytes([4, 3, 0, 1]),                 # SACK-permitted length 3
    bytes([8, 8]) + bytes(6),            # TS length 8
    bytes([5, 11]) + bytes(9) + b"\1",   # SACK length not 2 + 8n
])
def test_bad_option_lengths(opts):
    with pytest.raises(ParseError):
        parse_tcp(raw_tcp(opts), 0, 20 + len(opts))


def test_unknown_options_skipped_by_length():
    opts = bytes([30, 6, 9, 9, 9, 9]) + bytes([254, 2]) + bytes([2, 4, 0x05, 0xB4]) + bytes(
        [1, 3, 3, 7])
    seg = parse_tcp(raw_tcp(opts, b"data"), 0, 20 + len(opts) + 4)
    assert (seg.mss, seg.wscale, seg.payload) == (1460, 7, b"data")


def test_eol_stops_parsing():
    # Bytes after EOL are padding even if they would be a malformed option.
    opts = bytes([2, 4, 0x05, 0xB4, 0, 2, 3, 0xFF])
    seg = parse_tcp(raw_tcp(opts), 0, 28)
    assert seg.mss == 1460
    opts = bytes([0, 3, 3, 7])
    assert parse_tcp(raw_tcp(opts), 0, 24).wscale is None


def test_wscale_above_14_treated_as_14():
    seg = parse_tcp(raw_tcp(bytes([1, 3, 3, 20])), 0, 24)
    assert seg.wscale == 14


def test_sack_with_no_blocks():
    seg = parse_tcp(raw_tcp(bytes([1, 1, 5, 2])), 0, 24)
    assert seg.sack == ()


def test_seg_len_and_flags():
    seg = Segment(flags=SYN | FIN | ACK, payload=b"abc")
    assert seg.seg_len == 5
    assert str(Segment(flags=RST | ACK, ack=9)) == "R. seq 0 ack 9 win 0"
    assert str(Segment(flags=FIN | PSH | ACK, payload=b"x")) == "FP. seq 0 ack 0 win 0 len 1"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, MASK32),
       st.integers(0, MASK32), st.integers(0, 0xFF), st.integers(0, 0xFFFF),
       st.binary(max_size=1500), st.booleans(), st.integers(0, 0xFFFF),
       st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4))
def test_one_pass_frame_builder_equals_the_two_step_build(sport, dport, seq, ack, flags, wnd,
                                                          payload, ts, ident, src, dst):
    """build_tcp_ipv4 (the output path's) gives exactly build_ipv4(build_tcp(...))."""
    seg = Segment(sport, dport, seq, ack, flags, wnd, payload,
                  ts=(seq, ack) if ts else None, sack=((seq, ack),) if flags & 1 else ())
    want = build_ipv4(src, dst, PROTO_TCP, build_tcp(seg, src, dst), ident)
    assert build_tcp_ipv4(seg, src, dst, ident) == want


@given(st.binary(max_size=70_000), st.integers(0, 1 << 48), st.integers(0, 80_000))
def test_the_folded_remainder_is_the_remainder(data, extra, hint):
    """mod_ffff() folds at multiples of 16 bits: the remainder never changes, whatever
    size it is told (the hint only decides how often it folds)."""
    from ustack.wire.checksum import mod_ffff

    x = int.from_bytes(data, "big") + extra
    assert mod_ffff(x, len(data)) == x % 0xFFFF
    assert mod_ffff(x, hint) == x % 0xFFFF
