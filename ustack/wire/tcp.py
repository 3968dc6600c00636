"""TCP header and options (RFC 9293 section 3.1, RFC 7323, RFC 2018), parsed and built.

`Segment` is the parsed representation the core works on (smoltcp's `TcpRepr`): ports,
sequence numbers, flags, the raw window field and the options ustack understands.
Addresses stay in the IP layer; the demultiplexer has already matched them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .checksum import checksum, mod_ffff, pseudo_header_sum

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERM, OPT_SACK, OPT_TS = 0, 1, 2, 3, 4, 5, 8

_HDR = struct.Struct("!HHIIBBHHH")
_TS = struct.Struct("!BBBBII")  # nop, nop, kind 8, len 10, tsval, tsecr
_II = struct.Struct("!II")


class ParseError(ValueError):
    """A malformed header or option: the segment is dropped and counted."""


class OptionError(ParseError):
    """A malformed option (counted as TcpExtTCPBadOptions as well as TcpInErrs)."""


@dataclass(slots=True)
class Segment:
    sport: int = 0
    dport: int = 0
    seq: int = 0
    ack: int = 0
    flags: int = 0
    wnd: int = 0  # the raw 16-bit field; scaling is the TCB's business
    payload: bytes | memoryview = b""  # maybe a view: into the send queue, or a read
    # Payload bytes per wire segment when this is a super-segment (TSO/GRO through a
    # TUN device with offloads, LINUX-SPEC-2 items 208-211); 0 for an ordinary segment.
    gso: int = 0
    mss: int | None = None
    wscale: int | None = None
    sack_perm: bool = False
    ts: tuple[int, int] | None = None  # (TSval, TSecr)
    sack: tuple[tuple[int, int], ...] = field(default=())
    urg: int = 0
    # The IP header's ECN field (RFC 3168 5: 0 Not-ECT, 1 ECT(1), 2 ECT(0), 3 CE): set
    # by the shell from the TOS byte of an arriving frame, written into the TOS byte
    # of an outgoing one (tcp/ecn.py decides).
    ecn: int = 0

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: data plus one for SYN and one for FIN."""
        n = len(self.payload)
        if self.flags & SYN:
            n += 1
        if self.flags & FIN:
            n += 1
        return n

    def __str__(self) -> str:
        return format_segment(self)


def flag_string(flags: int) -> str:
    """tcpdump/packetdrill style: S, S., F., P., R, R., FP. ...; ECN's ECE and CWR as
    tcpdump prints them, after the rest (SEW, S.E, .E, P.W)."""
    s = ""
    if flags & SYN:
        s += "S"
    if flags & FIN:
        s += "F"
    if flags & RST:
        s += "R"
    if flags & PSH:
        s += "P"
    if flags & ACK:
        s += "."
    if flags & (ECE | CWR):
        if flags & ECE:
            s += "E"
        if flags & CWR:
            s += "W"
    return s or "none"


def format_segment(seg: Segment, seq_base: int = 0, ack_base: int = 0,
                   brief: bool = False) -> str:
    """tcpdump-like text of a segment; `brief` leaves out the window and options."""
    s = f"{flag_string(seg.flags)} seq {(seg.seq - seq_base) & 0xFFFFFFFF}"
    if seg.flags & ACK:
        s += f" ack {(seg.ack - ack_base) & 0xFFFFFFFF}"
    if not brief:
        s += f" win {seg.wnd}"
    if seg.payload:
        s += f" len {len(seg.payload)}"
    if brief:
        return s
    opts = []
    if seg.mss is not None:
        opts.append(f"mss {seg.mss}")
    if seg.sack_perm:
        opts.append("sackOK")
    if seg.ts is not None:
        opts.append(f"TS val {seg.ts[0]} ecr {seg.ts[1]}")
    if seg.wscale is not None:
        opts.append(f"wscale {seg.wscale}")
    if seg.sack:
        opts.append("sack " + " ".join(f"{a}:{b}" for a, b in seg.sack))
    if opts:
        s += " <" + ",".join(opts) + ">"
    return s


def parse_tcp(buf: bytes | memoryview, off: int, end: int) -> Segment:
    """Parse the TCP segment in buf[off:end]. Raises ParseError if malformed.

    Unknown options are skipped by their length (RFC 9293 3.1, MUST-68); a length that
    is below 2 or runs past the header is malformed and drops the segment.
    """
    if end - off < 20:
        raise ParseError("TCP header shorter than 20 bytes")
    sport, dport, seqn, ackn, off_byte, flags, wnd, _csum, urg = _HDR.unpack_from(buf, off)
    hlen = (off_byte >> 4) * 4
    if hlen < 20 or off + hlen > end:
        raise ParseError(f"bad TCP data offset {hlen}")
    # From bytes, a slice (a copy); from a memoryview (a super-segment as read from a
    # TUN with offloads), a view: its payload is copied once, into the receive buffer.
    seg = Segment(sport, dport, seqn, ackn, flags, wnd, buf[off + hlen:end])
    seg.urg = urg
    if hlen > 20:
        _parse_options(seg, buf, off + 20, off + hlen)
    return seg


def _parse_options(seg: Segment, buf: bytes | memoryview, i: int, end: int) -> None:
    while i < end:
        kind = buf[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise OptionError(f"option {kind} has no length byte")
        length = buf[i + 1]
        if length < 2 or i + length > end:
            raise OptionError(f"option {kind} has bad length {length}")
        if kind == OPT_MSS:
            if length != 4:
                raise OptionError(f"MSS option length {length}")
            seg.mss = (buf[i + 2] << 8) | buf[i + 3]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise OptionError(f"window scale option length {length}")
            # RFC 7323 2.3: a shift above 14 is treated as 14.
            seg.wscale = min(buf[i + 2], 14)
        elif kind == OPT_SACK_PERM:
            if length != 2:
                raise OptionError(f"SACK-permitted option length {length}")
            seg.sack_perm = True
        elif kind == OPT_TS:
            if length != 10:
                raise OptionError(f"timestamp option length {length}")
            seg.ts = _II.unpack_from(buf, i + 2)
        elif kind == OPT_SACK:
            if (length - 2) % 8:
                raise OptionError(f"SACK option length {length}")
            seg.sack = tuple(
                _II.unpack_from(buf, j) for j in range(i + 2, i + length, 8)
            )
        i += length


def encode_options(seg: Segment) -> bytes:
    """Options in Linux's order: MSS, SACK-permitted, timestamps, window scale; padded."""
    out = bytearray()
    if seg.mss is not None:
        out += struct.pack("!BBH", OPT_MSS, 4, seg.mss)
    if seg.sack_perm and seg.ts is not None:
        out += struct.pack("!BBBBII", OPT_SACK_PERM, 2, OPT_TS, 10, seg.ts[0], seg.ts[1])
    else:
        if seg.sack_perm:
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2))
        if seg.ts is not None:
            out += _TS.pack(OPT_NOP, OPT_NOP, OPT_TS, 10, seg.ts[0], seg.ts[1])
    if seg.wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, seg.wscale))
    if seg.sack:
        blocks = seg.sack[:3] if seg.ts is not None else seg.sack[:4]
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks)))
        for a, b in blocks:
            out += _II.pack(a, b)
    while len(out) & 3:
        out.append(OPT_NOP)
    return bytes(out)


_IP = struct.Struct("!BBHHHBBH4s4s")


def build_tcp_ipv4(seg: Segment, src: bytes, dst: bytes, ident: int) -> bytes:
    """The whole IPv4 frame of `seg` (what `build_ipv4(src, dst, 6, build_tcp(seg, src,
    dst), ident)` gives, with DF set and TTL 64), built for the output path: the
    payload is copied once, into the frame, and read once, for the checksum.

    The one's-complement sum of a concatenation of even-length pieces is the sum of
    their sums (RFC 1071), and each piece's sum is its big-endian integer modulo
    0xFFFF (checksum.py), so the pseudo-header, the header and the payload are summed
    apart and never joined for it. Measured by benchmarks/bench_wire.py ("build"): the
    two-step build copied the payload four times."""
    opts = encode_options(seg) if (seg.mss is not None or seg.ts is not None or seg.sack
                                   or seg.sack_perm or seg.wscale is not None) else b""
    if len(opts) > 40:
        raise ValueError(f"TCP options need {len(opts)} bytes, more than the 40 that fit")
    hlen = 20 + len(opts)
    payload = seg.payload
    tcp_len = hlen + len(payload)
    header = _HDR.pack(seg.sport, seg.dport, seg.seq, seg.ack, (hlen // 4) << 4, seg.flags,
                       seg.wnd, 0, seg.urg) + opts
    addrs = int.from_bytes(src + dst, "big")
    plen = len(payload)
    p = int.from_bytes(payload, "big") << 8 if plen & 1 else int.from_bytes(payload, "big")
    r = mod_ffff(addrs + 6 + tcp_len + int.from_bytes(header, "big") + p, plen + 1)
    csum = (~(r or 0xFFFF)) & 0xFFFF
    ip = _IP.pack(0x45, seg.ecn, 20 + tcp_len, ident & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
    ir = int.from_bytes(ip, "big") % 0xFFFF
    icsum = (~(ir or 0xFFFF)) & 0xFFFF
    return b"".join((ip[:10], icsum.to_bytes(2, "big"), ip[12:], header[:16],
                     csum.to_bytes(2, "big"), header[18:], payload))


def build_tcp_ipv4_head(seg: Segment, src: bytes, dst: bytes, ident: int) -> bytes:
    """The IPv4 and TCP headers of `seg` for a device that completes the TCP checksum
    (TUN with TUN_F_CSUM): the checksum field gets the folded pseudo-header sum, not
    complemented, and the payload is never read (LINUX-SPEC-2 item 210; Linux's
    CHECKSUM_PARTIAL). Without the payload: the device writes it from where it lies
    (writev), so a 64 KB segment is never copied into a frame."""
    opts = encode_options(seg) if (seg.mss is not None or seg.ts is not None or seg.sack
                                   or seg.sack_perm or seg.wscale is not None) else b""
    if len(opts) > 40:
        raise ValueError(f"TCP options need {len(opts)} bytes, more than the 40 that fit")
    hlen = 20 + len(opts)
    tcp_len = hlen + len(seg.payload)
    csum = (int.from_bytes(src + dst, "big") + 6 + tcp_len) % 0xFFFF or 0xFFFF
    # ECT on a super-segment is fine: the kernel copies the TOS byte into every
    # segment it cuts (inet_gso_segment()), and tcp_gso_segment() keeps a CWR on the
    # first one only.
    ip = _IP.pack(0x45, seg.ecn, 20 + tcp_len, ident & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
    ir = int.from_bytes(ip, "big") % 0xFFFF
    icsum = (~(ir or 0xFFFF)) & 0xFFFF
    return b"".join((ip[:10], icsum.to_bytes(2, "big"), ip[12:],
                     _HDR.pack(seg.sport, seg.dport, seg.seq, seg.ack, (hlen // 4) << 4,
                               seg.flags, seg.wnd, csum, seg.urg), opts))


def build_tcp(seg: Segment, src: bytes, dst: bytes) -> bytes:
    """Serialize `seg` with its checksum over the IPv4 pseudo-header (RFC 9293 3.1)."""
    opts = encode_options(seg) if (seg.mss is not None or seg.ts is not None or seg.sack
                                   or seg.sack_perm or seg.wscale is not None) else b""
    if len(opts) > 40:
        raise ValueError(f"TCP options need {len(opts)} bytes, more than the 40 that fit")
    hlen = 20 + len(opts)
    header = _HDR.pack(seg.sport, seg.dport, seg.seq, seg.ack, (hlen // 4) << 4, seg.flags,
                       seg.wnd, 0, seg.urg) + opts
    data = header + seg.payload
    csum = checksum(data, pseudo_header_sum(src, dst, 6, len(data)))
    return data[:16] + csum.to_bytes(2, "big") + data[18:]


def tcp_checksum_filled(frame: bytes) -> bytes:
    """`frame` (IPv4 + TCP, its TCP checksum field holding the partial pseudo-header
    sum) with the complete TCP checksum, as the kernel will see it."""
    ihl = (frame[0] & 15) * 4
    seg = memoryview(frame)[ihl:]
    n = int.from_bytes(seg, "big") << 8 if len(seg) & 1 else int.from_bytes(seg, "big")
    # The field already holds the pseudo-header sum, so summing the segment with it
    # gives the whole sum; the checksum is its complement (Linux skb_checksum_help()).
    r = n % 0xFFFF
    csum = (~(r or 0xFFFF)) & 0xFFFF
    return b"".join((frame[:ihl + 16], csum.to_bytes(2, "big"), frame[ihl + 18:]))
