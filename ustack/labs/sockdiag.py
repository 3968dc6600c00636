"""The kernel's own view of its TCP sockets, through NETLINK_SOCK_DIAG (what `ss` reads).

A lab's kernel peer runs in the lab's namespace; a netlink socket opened there sees that
namespace's sockets only. One dump request (SOCK_DIAG_BY_FAMILY with an
inet_diag_req_v2, include/uapi/linux/inet_diag.h) answers with one inet_diag_msg per
socket: its state in Linux's numbering (include/net/tcp_states.h) and its four-tuple.
TIME-WAIT sockets (inet_timewait_sock) are in the same dump, as `ss` shows them.

A dump costs about a hundred microseconds, so a lab can sample every millisecond and
see states that last a round trip, which polling `ss` (a fork and exec each time)
cannot.
"""

from __future__ import annotations

import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

# include/net/tcp_states.h, with the names ustack's own states use (tcp/state.py).
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECEIVED", 4: "FIN_WAIT_1",
          5: "FIN_WAIT_2", 6: "TIME_WAIT", 7: "CLOSED", 8: "CLOSE_WAIT", 9: "LAST_ACK",
          10: "LISTEN", 11: "CLOSING", 12: "SYN_RECEIVED"}  # 12: TCP_NEW_SYN_RECV
ALL_STATES = 0xFFFFFFFF

_NLMSG = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (ports
# big-endian, 4x4 bytes of addresses, interface, 2x4 bytes of cookie).
_REQ = struct.Struct("=BBBBI")
_SOCKID = struct.Struct(">HH16s16sI8s")
# inet_diag_msg: family, state, timer, retrans, then the sockid, expires, rqueue,
# wqueue, uid, inode.
_MSG_HEAD = struct.Struct("=BBBB")

Endpoint = tuple[str, int]


class SockDiag:
    """A NETLINK_SOCK_DIAG socket in the caller's network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self.sock.bind((0, 0))
        self._seq = 0
        req = _REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, ALL_STATES) + \
            _SOCKID.pack(0, 0, bytes(16), bytes(16), 0, bytes(8))
        self._body = req

    def close(self) -> None:
        self.sock.close()

    def tcp_sockets(self) -> list[tuple[Endpoint, Endpoint, str]]:
        """Every IPv4 TCP socket of the namespace: (local, remote, state name)."""
        self._seq += 1
        msg = _NLMSG.pack(_NLMSG.size + len(self._body), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0) + self._body
        self.sock.send(msg)
        out: list[tuple[Endpoint, Endpoint, str]] = []
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    return out  # malformed: stop rather than loop
                if seq == self._seq:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, off + _NLMSG.size)
                        raise OSError(-err, f"sock_diag: error {-err}")
                    if kind == SOCK_DIAG_BY_FAMILY:
                        out.append(_parse(data, off + _NLMSG.size))
                off += (length + 3) & ~3

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(data: bytes, off: int) -> tuple[Endpoint, Endpoint, str]:
    _family, state, _timer, _retrans = _MSG_HEAD.unpack_from(data, off)
    sport, dport, src, dst, _ifindex, _cookie = _SOCKID.unpack_from(data, off + 4)
    return ((socket.inet_ntoa(src[:4]), sport), (socket.inet_ntoa(dst[:4]), dport),
            STATES.get(state, f"STATE{state}"))
