"""The wire of `--kernel` mode: a network namespace of its own with a TUN device in it,
opened as packetdrill's netdev.c opens it, and the packets a script names, built and
parsed byte for byte.

packetdrill's design (netdev.c): the kernel under test sees an ordinary interface
(`tun0`, 10.77.0.2/24); the script's remote host (10.77.0.1) is beyond it, so what the
kernel sends there is read from the TUN fd and what the script injects is written to it.
IFF_VNET_HDR with TUNSETOFFLOAD(CSUM | TSO4 | TSO6 | TSO_ECN) makes the device look like
a NIC with TSO: the kernel hands its super-segments over whole, as the scripts expect
them ("P. 1:10001(10000)"), with their TCP checksum left partial (not checked here).

Options are kept as the words of the script, in wire order both ways, so that an
option list is compared exactly as Linux laid it out (not re-encoded in some order).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import secrets
import struct
import subprocess
from dataclasses import dataclass

import pytun

from ..wire import vnet
from ..wire.checksum import checksum, pseudo_header_sum
from ..wire.ip import build_ipv4, ip_to_bytes
from ..wire.tcp import OPT_MSS, OPT_NOP, OPT_SACK, OPT_SACK_PERM, OPT_TS, OPT_WSCALE, Segment
from ..wire.tcp import parse_tcp as _parse_tcp

LOCAL = "10.77.0.2"  # the kernel under test
REMOTE = "10.77.0.1"  # the script's host, beyond the TUN
PREFIX = 24
DEVICE = "tun0"  # the scripts' own name for it (`tc qdisc ... dev tun0`)
MTU = 1500
CLONE_NEWNET = 0x40000000
# include/uapi/linux/if_tun.h (asm-generic _IOC layout, as ustack/io/tun.py).
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN  # netdev.c's set
READ_SIZE = vnet.SIZE + 65535
MASK = 0xFFFFFFFF


class WireError(Exception):
    """The namespace or the TUN device cannot be set up (the message says why)."""


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Namespace:
    """`ip netns add ustk-pd-XXXX`, entered by the calling thread only (setns(2), as
    tests/conftest.py's `inside_netns`), with the TUN device inside. `close()` brings
    the thread home and deletes the namespace; it is safe to call twice and after a
    failed set-up."""

    def __init__(self) -> None:
        self.name = f"ustk-pd-{secrets.token_hex(2)}"
        self.dev: pytun.TunTapDevice | None = None
        self._home: int | None = None
        self._added = False
        try:
            self._run(["ip", "netns", "add", self.name])
            self._added = True
            self.exec("ip", "link", "set", "lo", "up")
            # No IPv6 on the test's wire: router solicitations and MLD reports are
            # nothing a TCP script expects.
            self.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                      "net.ipv6.conf.default.disable_ipv6=1", check=False)
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            ns = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                _setns(ns)
            finally:
                os.close(ns)
            self._open_tun()
        except BaseException:
            self.close()
            raise

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise WireError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")
        return r

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the namespace (never on the host)."""
        return self._run(["ip", "netns", "exec", self.name, *argv], check=check)

    def _open_tun(self) -> None:
        # Opened after setns: a TUN device is created in the namespace of the thread
        # that opens /dev/net/tun (tun_set_iff() takes the file's net).
        try:
            self.dev = pytun.TunTapDevice(
                name=DEVICE, flags=pytun.IFF_TUN | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR)
            fcntl.ioctl(self.dev.fileno(), TUNSETOFFLOAD, OFFLOADS)
            self.dev.addr = LOCAL
            self.dev.netmask = "255.255.255.0"
            self.dev.mtu = MTU
            self.dev.up()
        except (OSError, pytun.Error) as exc:
            raise WireError(f"cannot set up {DEVICE} in {self.name}: {exc}") from None
        os.set_blocking(self.dev.fileno(), False)

    def set_offload(self, flags: int) -> None:
        """`ethtool -K tun0 tso off`: the device stops taking super-segments."""
        assert self.dev is not None
        fcntl.ioctl(self.dev.fileno(), TUNSETOFFLOAD, flags)

    @property
    def fd(self) -> int:
        assert self.dev is not None
        return self.dev.fileno()

    def close(self) -> None:
        if self.dev is not None:
            self.dev.close()
            self.dev = None
        if self._home is not None:
            _setns(self._home)
            os.close(self._home)
            self._home = None
        if self._added:
            self._run(["ip", "netns", "delete", self.name], check=False)
            self._added = False


# ---------------------------------------------------------------------- inbound


def encode_options(words: list[str], ecr_map, sack_base: int) -> bytes:
    """The script's option list as bytes, in its order (packetdrill's tcp_options.c);
    `ecr_map` turns a script TSecr into the kernel's clock, `sack_base` is the kernel's
    ISS for SACK blocks (relative in the script)."""
    out = bytearray()
    for opt in words:
        w = opt.split()
        if w[0] == "nop":
            out.append(OPT_NOP)
        elif w[0] == "eol":
            out.append(0)
        elif w[0] == "mss":
            out += struct.pack("!BBH", OPT_MSS, 4, int(w[1]))
        elif w[0] == "sackOK":
            out += bytes((OPT_SACK_PERM, 2))
        elif w[0] == "wscale":
            out += bytes((OPT_WSCALE, 3, int(w[1])))
        elif w[0] == "TS" and len(w) == 5 and w[1] == "val" and w[3] == "ecr":
            out += struct.pack("!BBII", OPT_TS, 10, int(w[2]) & MASK, ecr_map(int(w[4])))
        elif w[0] == "sack":
            blocks = [blk.split(":") for blk in w[1:]]
            out += bytes((OPT_SACK, 2 + 8 * len(blocks)))
            for a, b in blocks:
                out += struct.pack("!II", (sack_base + int(a)) & MASK,
                                   (sack_base + int(b)) & MASK)
        else:
            raise ValueError(opt)
    if len(out) > 40:
        raise ValueError(f"{len(out)} bytes of options, more than the 40 that fit")
    while len(out) & 3:
        out.append(0)  # EOL padding to the 32-bit boundary
    return bytes(out)


def build_inbound(seg: Segment, options: bytes, tos: int = 0) -> bytes:
    """A frame to write to the TUN: a plain virtio-net header (complete checksums, no
    GSO: netdev.c's linux_tun_write() without --mss) and the IPv4/TCP packet."""
    src, dst = ip_to_bytes(REMOTE), ip_to_bytes(LOCAL)
    hlen = 20 + len(options)
    hdr = struct.pack("!HHIIBBHHH", seg.sport, seg.dport, seg.seq, seg.ack, (hlen // 4) << 4,
                      seg.flags, seg.wnd, 0, seg.urg) + options
    data = hdr + bytes(seg.payload)
    csum = checksum(data, pseudo_header_sum(src, dst, 6, len(data)))
    tcp = data[:16] + csum.to_bytes(2, "big") + data[18:]
    ip = bytearray(build_ipv4(src, dst, 6, tcp))
    if tos:
        ip[1] = tos
        ip[10:12] = b"\0\0"
        ip[10:12] = checksum(bytes(ip[:20])).to_bytes(2, "big")
    return vnet.PLAIN + bytes(ip)


# ---------------------------------------------------------------------- outbound


@dataclass
class Outbound:
    """A packet the kernel sent, as read from the TUN."""

    at: float  # time.monotonic() when it was read
    seg: Segment
    options: list[str]  # packetdrill's words, in wire order
    tos: int
    gso_size: int


def option_words(raw: bytes) -> list[str]:
    out, i = [], 0
    while i < len(raw):
        kind = raw[i]
        if kind == OPT_NOP:
            out.append("nop")
            i += 1
            continue
        if kind == 0:
            # EOL ends the list; what follows is padding (RFC 9293 3.1).
            if any(raw[i:]):
                out.append("eol")
            break
        if i + 1 >= len(raw) or raw[i + 1] < 2:
            out.append(f"kind {kind} (malformed)")
            break
        length = raw[i + 1]
        body = raw[i + 2:i + length]
        if kind == OPT_MSS and length == 4:
            out.append(f"mss {int.from_bytes(body, 'big')}")
        elif kind == OPT_SACK_PERM:
            out.append("sackOK")
        elif kind == OPT_TS and length == 10:
            out.append(f"TS val {int.from_bytes(body[:4], 'big')} "
                       f"ecr {int.from_bytes(body[4:], 'big')}")
        elif kind == OPT_WSCALE and length == 3:
            out.append(f"wscale {body[0]}")
        elif kind == OPT_SACK:
            edges = [int.from_bytes(body[j:j + 4], "big") for j in range(0, len(body) - 3, 4)]
            out.append("sack " + " ".join(f"{a}:{b}" for a, b in zip(edges[::2], edges[1::2],
                                                                    strict=False)))
        else:
            out.append(f"kind {kind} len {length}")
        i += length
    return out


def parse_outbound(frame: bytes, at: float) -> Outbound | None:
    """The TCP/IPv4 packet in a frame read from the TUN; None for anything else (the
    namespace has no IPv6, but nothing else belongs to the script either)."""
    if len(frame) < vnet.SIZE + 40:
        return None
    _flags, _gso_type, _hdr_len, gso_size, _cs, _co = vnet.HDR.unpack_from(frame)
    ip = frame[vnet.SIZE:]
    if ip[0] >> 4 != 4 or ip[9] != 6:
        return None
    ihl = (ip[0] & 15) * 4
    total = int.from_bytes(ip[2:4], "big") or len(ip)
    end = min(total, len(ip))
    seg = _parse_tcp(ip, ihl, end)
    hlen = (ip[ihl + 12] >> 4) * 4
    return Outbound(at, seg, option_words(ip[ihl + 20:ihl + hlen]), ip[1], gso_size)
