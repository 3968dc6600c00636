"""The virtio-net header a TUN device opened with IFF_VNET_HDR puts before every packet
(LINUX-SPEC-2 items 200-211; `include/uapi/linux/virtio_net.h`).

Ten bytes: flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16,
csum_offset u16. The 16-bit fields are in the host's byte order for tun (legacy virtio,
`tun_is_little_endian()`), which is little-endian on every machine ustack runs on
(x86-64, arm64); `<` below says so.
"""

from __future__ import annotations

import struct

F_NEEDS_CSUM = 1  # the checksum field holds the pseudo-header sum; the rest is to be added
F_DATA_VALID = 2  # the checksum was verified (by the kernel, or the NIC before it)
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_ECN = 0x80

HDR = struct.Struct("<BBHHHH")
SIZE = HDR.size  # 10; ustack never asks for a bigger one (TUNSETVNETHDRSZ)
TCP_CSUM_OFFSET = 16  # the checksum field's offset in the TCP header

# A packet whose checksums are complete and that is no super-segment.
PLAIN = bytes(SIZE)


def partial_tcp(ihl: int, hdr_len: int, gso_size: int = 0) -> bytes:
    """The header of a TCP/IPv4 packet whose TCP checksum the kernel completes
    (NEEDS_CSUM from the TCP header on), and, with `gso_size`, which it may treat as a
    super-segment of `gso_size`-byte segments (item 210)."""
    return HDR.pack(F_NEEDS_CSUM, GSO_TCPV4 if gso_size else GSO_NONE, hdr_len, gso_size,
                    ihl, TCP_CSUM_OFFSET)

