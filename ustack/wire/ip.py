"""IPv4 headers (RFC 791) and ICMP echo (RFC 792)."""

from __future__ import annotations

import ipaddress
import struct

from .checksum import checksum, ones_sum

PROTO_ICMP = 1
PROTO_TCP = 6

_IP = struct.Struct("!BBHHHBBH4s4s")


# Pure conversions, not socket.inet_aton/inet_ntoa: the core imports no socket module.
# Bad input raises OSError, as those do.


def ip_to_bytes(addr: str) -> bytes:
    """A dotted quad as 4 bytes (no inet_aton shorthand such as "10.1")."""
    try:
        return ipaddress.IPv4Address(addr).packed
    except ValueError:
        raise OSError(f"illegal IPv4 address {addr!r}") from None


def ip_to_str(addr: bytes) -> str:
    if len(addr) != 4:
        raise OSError(f"packed IPv4 address must be 4 bytes, not {len(addr)}")
    return f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}"


def build_ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 0,
               ttl: int = 64, tos: int = 0) -> bytes:
    # DF set: ustack never fragments (it clamps the MSS instead). `tos`: DSCP and the
    # ECN field (RFC 3168 5, its two low bits).
    header = _IP.pack(0x45, tos, 20 + len(payload), ident & 0xFFFF, 0x4000, ttl, proto, 0,
                      src, dst)
    csum = checksum(header)
    return header[:10] + csum.to_bytes(2, "big") + header[12:] + payload


def set_ce(frame: bytes) -> bytes:
    """`frame` with its ECN field set to CE (RFC 3168 5, what a congested router does
    to an ECT packet), the header checksum updated incrementally (RFC 1624 eqn. 3)."""
    old = (frame[0] << 8) | frame[1]
    new = old | 3
    csum = (frame[10] << 8) | frame[11]
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return b"".join((frame[:1], bytes((new & 0xFF,)), frame[2:10],
                     ((~s) & 0xFFFF).to_bytes(2, "big"), frame[12:]))


def header_ok(frame: bytes | memoryview, ihl: int) -> bool:
    """True if the IPv4 header checksum verifies."""
    return ones_sum(frame[:ihl]) == 0xFFFF


def build_icmp_echo_reply(request: bytes | memoryview) -> bytes:
    """Turn an ICMP echo request (type 8) message into its reply (type 0), same id/seq/data."""
    body = bytes(request[4:])
    msg = b"\x00\x00\x00\x00" + body
    csum = checksum(msg)
    return msg[:2] + csum.to_bytes(2, "big") + msg[4:]
