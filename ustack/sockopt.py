"""Socket options by Linux's numbers: one entry point for every user of them.

`setsockopt(tcb, level, optname, value, now)` and `getsockopt(tcb, level, optname,
buflen, now)` take the numeric constants of Linux's headers (the `socket` module's, the
same numbers), values as Python's `socket.setsockopt` takes them (an int, or bytes for
structures such as SO_LINGER's `struct linger` or TCP_CONGESTION's name) and answer as
`socket.getsockopt` does (an int without `buflen`, bytes with it). Errors are OSError
with Linux's errno: EINVAL for a bad value, ENOPROTOOPT for an option ustack does not
have. The asyncio transport's socket-like object (`aio.TransportSocket`) calls these, and
so can a packetdrill runner. Run them through `StackShell.call(tcb, setsockopt, ...)`
so that what an option releases (TCP_NODELAY, TCP_CORK off) goes out.

The semantics follow Linux's do_tcp_setsockopt()/do_tcp_getsockopt() (net/ipv4/tcp.c)
and sk_setsockopt()/sk_getsockopt() (net/core/sock.c); each case cites its rule.
"""

from __future__ import annotations

import errno as E
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .table import Listener
    from .tcp.context import Context
    from .tcp.tcb import Tcb

# <asm-generic/socket.h>, <netinet/tcp.h> (Linux's values on every architecture ustack runs on)
SOL_SOCKET = 1
SO_REUSEADDR = 2
SO_TYPE = 3
SO_ERROR = 4
SO_SNDBUF = 7
SO_RCVBUF = 8
SO_KEEPALIVE = 9
SO_LINGER = 13
SO_REUSEPORT = 15
IPPROTO_TCP = 6
IPPROTO_IP = 0  # SOL_IP
IP_TOS = 1
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT, IP_PMTUDISC_WANT, IP_PMTUDISC_DO, IP_PMTUDISC_PROBE = 0, 1, 2, 3
IP_PMTUDISC_INTERFACE, IP_PMTUDISC_OMIT = 4, 5
TCP_NODELAY = 1
TCP_MAXSEG = 2
TCP_CORK = 3
TCP_KEEPIDLE = 4
TCP_KEEPINTVL = 5
TCP_KEEPCNT = 6
TCP_INFO = 11
TCP_QUICKACK = 12
TCP_CONGESTION = 13
TCP_USER_TIMEOUT = 18
TCP_NOTSENT_LOWAT = 25
SOCK_STREAM = 1

TCP_MIN_MSS = 88  # include/net/tcp.h
MAX_TCP_WINDOW = 32767  # TCP_MAXSEG's upper bound in do_tcp_setsockopt()
MAX_TCP_KEEPIDLE = 32767
MAX_TCP_KEEPINTVL = 32767
MAX_TCP_KEEPCNT = 127
SOCK_MIN_SNDBUF = 4608  # 2 * (2048 + sizeof(struct sk_buff)) on x86-64
SOCK_MIN_RCVBUF = 2304
TCP_CA_NAME_MAX = 16
TCP_MSS_DEFAULT = 536  # what TCP_MAXSEG reads before a handshake (tp->mss_cache)

Value = int | bytes | bytearray | memoryview


def _err(errno: int) -> OSError:
    return OSError(errno, os.strerror(errno))


def _int(value: Value) -> int:
    """An int option's value: an int, or at least 4 bytes of a C int (Linux reads an int;
    fewer bytes is EINVAL, as `optlen < sizeof(int)`)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not -(1 << 31) <= value < 1 << 31:
            raise _err(E.EINVAL)
        return value
    b = bytes(value)
    if len(b) < 4:
        raise _err(E.EINVAL)
    return struct.unpack("i", b[:4])[0]


def _answer(v: int, buflen: int) -> int | bytes:
    if not buflen:
        return v
    return struct.pack("i", v)[:buflen]


def setsockopt(tcb: Tcb, level: int, optname: int, value: Value, now: float = 0.0) -> None:
    """Set one option on a connection, as Linux's setsockopt(2) on its socket."""
    cfg = tcb.ctx.config
    if level == SOL_SOCKET:
        if optname == SO_LINGER:
            b = bytes(value) if not isinstance(value, int) else b""
            if len(b) < 8:
                raise _err(E.EINVAL)  # sk_setsockopt(): optlen < sizeof(struct linger)
            onoff, seconds = struct.unpack("ii", b[:8])
            tcb.set_linger(max(seconds, 0) if onoff else None)
        elif optname == SO_KEEPALIVE:
            tcb.set_keepalive(bool(_int(value)), now)
        elif optname in (SO_SNDBUF, SO_RCVBUF):
            # sk_setsockopt(): min(val, {w,r}mem_max) doubled (the kernel's bookkeeping
            # overhead), at least SOCK_MIN_*; the lock (SOCK_*BUF_LOCK) is implicit:
            # ustack does not autotune.
            v = _int(value)
            if optname == SO_SNDBUF:
                v = min(max(v, 0), cfg.wmem_max)
                tcb.set_buffers(sndbuf=max(v * 2, SOCK_MIN_SNDBUF))
            else:
                v = min(max(v, 0), cfg.rmem_max)
                tcb.set_buffers(rcvbuf=max(v * 2, SOCK_MIN_RCVBUF))
        elif optname in (SO_REUSEADDR, SO_REUSEPORT):
            _int(value)  # accepted: a ustack port is reusable as Linux's with both set
        else:
            raise _err(E.ENOPROTOOPT)
        return
    if level == IPPROTO_IP:
        v = _int(value)
        if optname == IP_TOS:
            # do_ip_setsockopt() IP_TOS (__ip_sock_set_tos()): the DSCP bits; a TCP
            # socket's ECN field stays TCP's (INET_ECN_MASK kept).
            tcb.ip_tos = v & 0xFC
        elif optname == IP_MTU_DISCOVER:
            if not IP_PMTUDISC_DONT <= v <= IP_PMTUDISC_OMIT:
                raise _err(E.EINVAL)
            # Kept and answered; ustack sets DF always and does no path MTU discovery
            # (the MSS comes from the link's MTU), so every value sends the same.
            tcb.pmtudisc = v
        else:
            raise _err(E.ENOPROTOOPT)
        return
    if level != IPPROTO_TCP:
        raise _err(E.ENOPROTOOPT)
    if optname == TCP_CONGESTION:
        name = bytes(value).split(b"\0", 1)[0].decode("ascii", "replace") \
            if not isinstance(value, int) else ""
        from .tcp import cc
        if name not in cc.available():
            raise _err(E.ENOENT)  # tcp_set_congestion_control(): no such module
        tcb.set_congestion(name)
        return
    v = _int(value)
    if optname == TCP_NODELAY:
        tcb.set_nodelay(bool(v), now)  # pushes what Nagle held (tcp_push_pending_frames())
    elif optname == TCP_CORK:
        tcb.set_cork(bool(v), now)
    elif optname == TCP_MAXSEG:
        if v and not TCP_MIN_MSS <= v <= MAX_TCP_WINDOW:
            raise _err(E.EINVAL)
        tcb.set_maxseg(v)
    elif optname == TCP_KEEPIDLE:
        if not 1 <= v <= MAX_TCP_KEEPIDLE:
            raise _err(E.EINVAL)
        tcb.set_keepalive(tcb.keepalive, now, idle=v)
    elif optname == TCP_KEEPINTVL:
        if not 1 <= v <= MAX_TCP_KEEPINTVL:
            raise _err(E.EINVAL)
        tcb.set_keepalive(tcb.keepalive, now, intvl=v)
    elif optname == TCP_KEEPCNT:
        if not 1 <= v <= MAX_TCP_KEEPCNT:
            raise _err(E.EINVAL)
        tcb.set_keepalive(tcb.keepalive, now, cnt=v)
    elif optname == TCP_USER_TIMEOUT:
        if v < 0:
            raise _err(E.EINVAL)  # do_tcp_setsockopt(): "Cap the max time in ms"
        tcb.set_user_timeout(v / 1000, now)
    elif optname == TCP_QUICKACK:
        tcb.set_quickack(bool(v), now)
    elif optname == TCP_NOTSENT_LOWAT:
        tcb.set_notsent_lowat(max(v, 0))
    elif optname == TCP_INFO:
        raise _err(E.ENOPROTOOPT)  # read-only
    else:
        raise _err(E.ENOPROTOOPT)


def getsockopt(tcb: Tcb, level: int, optname: int, buflen: int = 0,
               now: float = 0.0) -> int | bytes:
    """Read one option, as Linux's getsockopt(2) answers it."""
    if level == SOL_SOCKET:
        if optname == SO_ERROR:
            # sock_error(): the pending error, cleared by reading it (tcb.error stays as
            # the record of how the connection ended, for the log and the tools).
            err = 0 if tcb.error_reported else tcb.error
            if err:
                tcb.error_reported = True
            return _answer(err, buflen)
        if optname == SO_LINGER:
            lg = tcb.linger
            b = struct.pack("ii", 0 if lg is None else 1, 0 if lg is None else int(lg))
            return b[:buflen] if buflen else struct.unpack("ii", b)[0]
        if optname == SO_KEEPALIVE:
            return _answer(int(tcb.keepalive), buflen)
        if optname == SO_SNDBUF:
            return _answer(tcb.snd_cap, buflen)
        if optname == SO_RCVBUF:
            return _answer(tcb.rcv_cap, buflen)
        if optname == SO_TYPE:
            return _answer(SOCK_STREAM, buflen)
        if optname in (SO_REUSEADDR, SO_REUSEPORT):
            return _answer(1, buflen)
        raise _err(E.ENOPROTOOPT)
    if level == IPPROTO_IP:
        if optname == IP_TOS:
            return _answer(tcb.ip_tos, buflen)
        if optname == IP_MTU_DISCOVER:
            return _answer(tcb.pmtudisc, buflen)
        raise _err(E.ENOPROTOOPT)
    if level != IPPROTO_TCP:
        raise _err(E.ENOPROTOOPT)
    if optname == TCP_INFO:
        from .tcp.info import pack_tcp_info, tcp_info
        b = pack_tcp_info(tcp_info(tcb, now))
        return b[:buflen] if buflen else b
    if optname == TCP_CONGESTION:
        b = tcb.cc.name.encode().ljust(TCP_CA_NAME_MAX, b"\0")
        return b[:buflen] if buflen else b
    if optname == TCP_NODELAY:
        v = int(tcb.nodelay)
    elif optname == TCP_CORK:
        v = int(tcb.cork)
    elif optname == TCP_MAXSEG:
        # do_tcp_getsockopt(): mss_cache; user_mss in CLOSE and LISTEN.
        if not tcb.state.synchronized:
            v = tcb.user_mss or TCP_MSS_DEFAULT
        else:
            v = tcb.mss
    elif optname == TCP_KEEPIDLE:
        v = int(tcb.keepidle)
    elif optname == TCP_KEEPINTVL:
        v = int(tcb.keepintvl)
    elif optname == TCP_KEEPCNT:
        v = int(tcb.keepcnt)
    elif optname == TCP_USER_TIMEOUT:
        v = round(tcb.user_timeout * 1000)
    elif optname == TCP_QUICKACK:
        v = int(tcb.quickacks > 0)  # inet_csk_in_pingpong_mode() negated, roughly
    elif optname == TCP_NOTSENT_LOWAT:
        v = tcb.notsent_lowat
    else:
        raise _err(E.ENOPROTOOPT)
    return _answer(v, buflen)


def listener_setsockopt(lst: Listener, ctx: Context,
                        options: list[tuple[int, int, Value]]) -> None:
    """Options set on a listening socket: every connection it makes gets them before its
    handshake completes (Linux clones the listener, sk_clone_lock()), and its SYN-ACK
    says what they change of it (TCP_MAXSEG, SO_RCVBUF: tcp_make_synack()). Checked on
    a scratch TCB first, so a bad one fails here."""
    from .tcp.tcb import Tcb
    scratch = Tcb(ctx, b"\0" * 12, ("0.0.0.0", 0), ("0.0.0.0", 0))
    default_rcv = scratch.rcv_cap
    for level, optname, value in options:
        setsockopt(scratch, level, optname, value)
    opts = list(options)

    def inherit(tcb: Tcb) -> None:
        for level, optname, value in opts:
            setsockopt(tcb, level, optname, value)

    lst.inherit = inherit if opts else None
    lst.user_mss = scratch.user_mss
    lst.rcvbuf = scratch.rcv_cap if scratch.rcv_cap != default_rcv else 0


def notsent_room(tcb: Tcb) -> int:
    """How much more the application may queue before the socket is "full": the send
    buffer's room, and with TCP_NOTSENT_LOWAT no more unsent than the mark
    (tcp_stream_memory_free())."""
    cap = tcb.snd_cap - tcb.send_queue
    lowat = tcb.notsent_lowat
    if lowat:
        cap = min(cap, lowat - tcb.unsent())
    return cap


__all__ = ["getsockopt", "listener_setsockopt", "notsent_room", "setsockopt"]
