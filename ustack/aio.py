"""The asyncio face of ustack: `Stack`, a Transport per connection, servers, streams.

Existing asyncio code runs unchanged: `open_connection`/`start_server` return real
`asyncio.StreamReader`/`StreamWriter` pairs, `create_connection`/`create_server` take a
protocol factory, with every keyword of Python 3.11-3.13's asyncio (honoured, or refused
with asyncio's own error; see the functions). `Stack` is the shell
(`ustack.stack.StackShell`) plus these four methods. The transport implements the
shell's `ConnectionOwner` interface (`core_events`) and the server its `ListenerOwner`
(`accept_ready`); the shell never imports this module. The transport turns core events
into protocol callbacks and user calls into core calls; it reads a few TCB views (state,
addresses, queue lengths) and changes the connection only through the TCB's methods.

The contract is asyncio's socket transport's and Server's, held to the kernel's by the
differential suite (tests/test_dropin_*.py; the README's "Drop-in for asyncio" lists the
deviations): writes after the connection is lost are dropped and logged from the fifth
on, `abort()` closes as the kernel's close() does (FIN; RST with unread data or
SO_LINGER {1, 0}; `reset()` always resets), `close()` with a full transport buffer ends
the transport once it is out, TCP_NODELAY is on (as base_events._set_nodelay() sets
it), BufferedProtocol is served, `loop.sendfile()` takes asyncio's fallback, and
`ssl=` runs asyncio's own TLS (sslproto) over the connection.

Socket options: `get_extra_info('socket')` is a `TransportSocket` whose
getsockopt/setsockopt take Linux's numbers (ustack/sockopt.py has them all); a
listening socket's options (`server.sockets[0].setsockopt`) are its connections' from
their SYN-ACK on; `sockopts=[(level, optname, value)]` sets options before the SYN;
`transport.write(data, more=True)` is MSG_MORE. Older methods stay:
  set_linger(onoff, seconds)   SO_LINGER: off, {1, 0} abort with RST, {1, N} wait_closed()
                               waits up to N s for everything to be acknowledged, then RST
                               (deliberately unlike Linux, whose orphan runs on, LS 29)
  set_keepalive(on, idle=, interval=, count=)   SO_KEEPALIVE + TCP_KEEPIDLE/INTVL/CNT
  set_nodelay(on)              TCP_NODELAY
`get_extra_info('ustack_tcb')` gives the core's TCB, for tests and tools.

"Unread" data decides between FIN and RST on close (RFC 9293 3.10.4, RFC 2525 2.17): the
bytes still in the core's receive buffer, plus the bytes this transport handed to the
protocol that the application never consumed. A protocol says how many bytes it holds by
defining `ustack_unread() -> int`. The streams this module builds (`Stack.open_connection`,
`Stack.start_server`) use `StreamReaderProtocol`, a small subclass of asyncio's whose
`ustack_unread()` is the length of its `StreamReader`'s buffer (read by our own
StreamReader subclass). A foreign protocol without the hook, a stock
`asyncio.StreamReaderProtocol` built by the application included, counts as 0 unread:
only the core's own buffer then decides, so its close may send FIN where the kernel's
would send RST.
"""

from __future__ import annotations

import asyncio
import errno as E
import logging
import os
import socket
import ssl as ssl_mod
import sys
import weakref
from asyncio import constants, sslproto, transports
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import sockopt
from .stack import GONE, StackShell
from .tcp.events import (
    Connected,
    ConnectionClosed,
    DataReceived,
    EofReceived,
    SendSpaceAvailable,
    StateChanged,
)
from .tcp.state import State
from .tcp.tcb import Tcb

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
Buffer = bytes | bytearray | memoryview
logger = logging.getLogger("asyncio")  # asyncio's own logger: its warnings, as asyncio logs them


def _error(errno: int) -> OSError:
    # OSError(errno, ...) picks the subclass: ConnectionResetError, TimeoutError, ...
    return OSError(errno, os.strerror(errno))


def _protocol_unread(protocol: asyncio.BaseProtocol) -> int:
    hook = getattr(protocol, "ustack_unread", None)
    return int(hook()) if hook is not None else 0


class StreamReader(asyncio.StreamReader):
    """asyncio's StreamReader that can say how many bytes it holds unconsumed."""

    def ustack_unread(self) -> int:
        return len(self._buffer)  # our own (inherited) state, not another object's


class StreamReaderProtocol(asyncio.StreamReaderProtocol):
    """asyncio's StreamReaderProtocol answering the `ustack_unread()` hook.

    It keeps its own weak reference to the reader, as the base class does, so the
    reader's lifetime is what it is under asyncio."""

    def __init__(self, stream_reader: StreamReader, client_connected_cb:
                 ClientConnected | None = None, loop: asyncio.AbstractEventLoop | None = None
                 ) -> None:
        super().__init__(stream_reader, client_connected_cb, loop=loop)
        self._ustack_reader = weakref.ref(stream_reader)

    def ustack_unread(self) -> int:
        reader = self._ustack_reader()
        return reader.ustack_unread() if reader is not None else 0


class TransportSocket:
    """What `get_extra_info('socket')` and `Server.sockets` hand out, as asyncio's own
    `asyncio.trsock.TransportSocket` does for a kernel socket: family, type, proto,
    getsockname/getpeername and getsockopt/setsockopt (ustack/sockopt.py's options, by
    Linux's numbers), so library code that tunes its socket (aiohttp's and uvicorn's
    TCP_NODELAY) runs unchanged. There is no file descriptor: `fileno()` is -1, as for a
    closed socket (asyncio's docs promise only that the object "wraps" a socket; code
    that needs a real fd cannot work on a userspace stack anyway)."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM
    proto = socket.IPPROTO_TCP

    def __init__(self, stack: StackShell, tcb: Tcb | None = None,
                 name: tuple[str, int] | None = None,
                 options: list[tuple[int, int, sockopt.Value]] | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self._stack = stack
        self._tcb = tcb
        self._name = name
        self._options = options  # a listener's: applied to each child (Listener.inherit)
        self._on_change = on_change

    def __repr__(self) -> str:
        s = f"<ustack.TransportSocket fd=-1, family={self.family!s}, type={self.type!s}, " \
            f"proto={self.proto}"
        try:
            s += f", laddr={self.getsockname()}"
        except OSError:
            pass
        return s + ">"

    def fileno(self) -> int:
        return -1

    def getsockname(self) -> tuple[str, int]:
        if self._tcb is not None:
            return self._tcb.local
        assert self._name is not None
        return self._name

    def getpeername(self) -> tuple[str, int]:
        if self._tcb is None or self._tcb.state == State.CLOSED:
            raise OSError(E.ENOTCONN, os.strerror(E.ENOTCONN))
        return self._tcb.remote

    def setsockopt(self, level: int, optname: int, value: sockopt.Value,
                   optlen: int | None = None) -> None:
        tcb = self._tcb
        if tcb is None:  # a listener: checked on a scratch TCB, kept for its children
            assert self._options is not None
            self._check_on_scratch(level, optname, value)
            self._options.append((level, optname, value))
            if self._on_change is not None:
                self._on_change()
            return
        self._stack.call(tcb, sockopt.setsockopt, tcb, level, optname, value,
                         self._stack.now())

    def getsockopt(self, level: int, optname: int, buflen: int = 0) -> int | bytes:
        tcb = self._tcb
        if tcb is None:
            return sockopt.getsockopt(self._scratch(), level, optname, buflen)
        return sockopt.getsockopt(tcb, level, optname, buflen, self._stack.now())

    def _scratch(self) -> Tcb:
        tcb = Tcb(self._stack.ctx, b"\0" * 12, self.getsockname(), ("0.0.0.0", 0))
        for level, optname, value in self._options or ():
            sockopt.setsockopt(tcb, level, optname, value)
        return tcb

    def _check_on_scratch(self, level: int, optname: int, value: sockopt.Value) -> None:
        sockopt.setsockopt(self._scratch(), level, optname, value)

    # What asyncio's TransportSocket answers for the rest: no blocking mode to change.
    def gettimeout(self) -> float:
        return 0

    def settimeout(self, value: float | None) -> None:
        if value == 0:
            return
        raise ValueError("settimeout(): only 0 timeout is allowed on transport sockets")

    def setblocking(self, flag: bool) -> None:
        if not flag:
            return
        raise ValueError("setblocking(): transport sockets cannot be blocking")


class TcpTransport(transports._FlowControlMixin, asyncio.Transport):
    """One connection; implements the shell's ConnectionOwner (core_events).

    Its contract is asyncio's socket transport's (selector_events._SelectorSocketTransport)
    method by method, the differential suite (tests/test_dropin_*.py) holding it to the
    kernel's; the differences are in the README's table. "The transport's buffer" of
    asyncio, what `get_write_buffer_size()` counts and flow control watches, is here what
    lies beyond the socket's send buffer (SO_SNDBUF, tcp_wmem; with TCP_NOTSENT_LOWAT no
    more unsent than the mark), as a kernel socket would have refused it."""

    # loop.sendfile(): asyncio's fallback (read, write, drain); no native path.
    _sendfile_compatible = constants._SendfileMode.FALLBACK
    # loop.start_tls() / StreamWriter.start_tls(): asyncio's sslproto over this transport.
    _start_tls_compatible = True

    def __init__(self, stack: StackShell, tcb: Tcb, protocol: asyncio.BaseProtocol,
                 server: Server | None = None) -> None:
        super().__init__(None, stack.loop)
        self._stack = stack
        self._tcb = tcb
        stack.adopt(tcb, self)
        self._sock = TransportSocket(stack, tcb)
        self._extra.update(socket=self._sock, sockname=tcb.local, peername=tcb.remote,
                           ustack_tcb=tcb)
        self._protocol: asyncio.BaseProtocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._closing = False  # close(), abort() or a fatal error
        self._sock_closed = False  # the TCB's close() called (the kernel's close(2))
        self._conn_lost = 0  # asyncio's: connection_lost scheduled, then writes dropped
        self._lost = False  # connection_lost called
        self._paused = False  # pause_reading()
        self._eof = False  # write_eof()
        self._eof_pending = False
        self._eof_delivered = False
        self._error: OSError | None = None
        self._dead: OSError | None = None  # an error after EOF, for the next write()
        self._server = server
        self._connect_waiter: asyncio.Future | None = None
        self._recheck = False
        if server is not None:
            server._attach()
        # TCP_NODELAY on, as asyncio sets it on every TCP socket transport
        # (base_events._set_nodelay(), Python >= 3.6): the drop-in promise. A program
        # that wants Nagle sets TCP_NODELAY 0 through get_extra_info('socket').
        tcb.nodelay = True

    def __repr__(self) -> str:
        return f"<TcpTransport {self._tcb!r}>"

    # --- info

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def is_closing(self) -> bool:
        return self._closing

    @property
    def state(self) -> State:
        return self._tcb.state

    # --- socket options (ustack's own methods; the socket object has the rest)

    def set_linger(self, onoff: bool, seconds: int = 0) -> None:
        """SO_LINGER; see the module doc for N > 0."""
        self._tcb.set_linger(int(seconds) if onoff else None)

    def set_keepalive(self, on: bool = True, *, idle: int | None = None,
                      interval: int | None = None, count: int | None = None) -> None:
        self._stack.call(self._tcb, self._tcb.set_keepalive, on, self._stack.now(), idle,
                         interval, count)

    def set_nodelay(self, on: bool = True) -> None:
        self._stack.call(self._tcb, self._tcb.set_nodelay, on, self._stack.now())

    def setsockopt(self, level: int, optname: int, value: sockopt.Value) -> None:
        self._sock.setsockopt(level, optname, value)

    def getsockopt(self, level: int, optname: int, buflen: int = 0) -> int | bytes:
        return self._sock.getsockopt(level, optname, buflen)

    # --- writing

    def write(self, data: Buffer, *, more: bool = False) -> None:
        """asyncio's write(); `more=True` is Linux's MSG_MORE (ustack's extension): the
        last partial segment of this write waits for the next write without it."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._conn_lost:
            # As asyncio's socket transport: writes after the connection was lost are
            # dropped, and from the fifth on each one logs a warning.
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if self._sock_closed:
            return  # SO_LINGER N > 0 waiting: the socket is closed, nothing more goes
        if self._dead is not None:
            # The connection died after EOF while no one was reading: this send() is
            # where a kernel socket reports it (EPIPE, ECONNRESET, ETIMEDOUT).
            self._fatal_error(self._dead)
            return
        tcb = self._tcb
        try:
            self._stack.call(tcb, tcb.send, bytes(data), self._stack.now(), more)
        except OSError as exc:  # the kernel's send() failing: EPIPE after close()
            self._fatal_error(exc)
            return
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[Buffer]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        self._stack.call(self._tcb, self._tcb.shutdown, self._stack.now())

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        """Bytes beyond what a kernel socket would have taken: the send buffer
        (SO_SNDBUF / tcp_wmem), and with TCP_NOTSENT_LOWAT the unsent mark."""
        if self._conn_lost:
            return 0
        room = sockopt.notsent_room(self._tcb)
        return -room if room < 0 else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        super().set_write_buffer_limits(high, low)  # asyncio's defaults and ValueError
        self._maybe_pause_protocol()

    def _on_send_space(self) -> None:
        self._maybe_resume_protocol()
        if self._closing and not self._sock_closed and self.get_write_buffer_size() == 0:
            # close() with a full buffer: the socket closes once it has all, as
            # asyncio's _write_ready() does.
            self._close_socket()
        elif self._tcb.notsent_lowat and not self._recheck and (
                self._protocol_paused or self._closing):
            # TCP_NOTSENT_LOWAT: room comes when data is sent, after the events of a
            # batch; look again once the batch's output is out.
            self._recheck = True
            self._loop.call_soon(self._recheck_space)

    def _recheck_space(self) -> None:
        self._recheck = False
        if not self._lost:
            self._on_send_space()

    # --- reading

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        # Data stays in the core's buffer, so the advertised window closes: this is how
        # a slow reader pushes back on the peer.
        if not self.is_reading():
            return
        self._paused = True

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop.call_soon(self._deliver)

    def _feed(self, data: bytes) -> None:
        protocol = self._protocol
        if not self._buffered:
            protocol.data_received(data)  # type: ignore[attr-defined]
            return
        view = memoryview(data)
        while view:  # BufferedProtocol: fill the buffers it offers
            buf = protocol.get_buffer(len(view))  # type: ignore[attr-defined]
            n = min(len(buf), len(view))
            if not n:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            protocol.buffer_updated(n)  # type: ignore[attr-defined]
            view = view[n:]

    def _deliver(self) -> None:
        if self._paused or self._closing:
            return
        tcb = self._tcb
        if tcb.recv_queue:
            data = self._stack.call(tcb, tcb.recv, -1, self._stack.now())
            if data:
                try:
                    self._feed(data)
                except Exception as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                    return
        if self._eof_pending and not tcb.recv_queue and not self._eof_delivered \
                and not self._closing and not self._paused:
            self._eof_delivered = True
            try:
                keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
            except Exception as exc:
                self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
                return
            if not keep_open:
                self.close()

    # --- closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.get_write_buffer_size() == 0:
            self._close_socket()
        # else as asyncio's: the socket is closed once the transport's buffer has gone
        # into it (_on_send_space); writes meanwhile still join the buffer.

    def _close_socket(self) -> None:
        """close(2) on the socket, then connection_lost (asyncio's order)."""
        self._sock_closed = True
        tcb = self._tcb
        self._stack.call(tcb, tcb.close, self._stack.now(), _protocol_unread(self._protocol))
        if tcb.linger and tcb.state not in (State.CLOSED, State.TIME_WAIT, State.FIN_WAIT_2):
            return  # SO_LINGER N > 0: connection_lost waits for the ACK or the timeout
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """asyncio's abort(): drop the transport's buffer and close the socket at once.
        On a kernel socket that close() sends FIN (RST only with unread data or
        SO_LINGER {1, 0}: Linux's rules), so it does here; `reset()` always resets."""
        self._force_close(None)

    def reset(self) -> None:
        """ABORT (RFC 9293 3.10.5): RST at once, as SO_LINGER {1, 0} then abort()."""
        self._tcb.set_linger(0)
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport"
                     ) -> None:
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler({"message": message, "exception": exc,
                                               "transport": self,
                                               "protocol": self._protocol})
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._closing = True
        self._conn_lost += 1
        tcb = self._tcb
        if not self._sock_closed and tcb.state not in (State.CLOSED, State.TIME_WAIT):
            self._sock_closed = True
            self._stack.call(tcb, tcb.close, self._stack.now(), _protocol_unread(self._protocol))
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._protocol = None  # type: ignore[assignment]  # as asyncio's
            server, self._server = self._server, None
            if server is not None:
                server._detach()
            self._release_if_done()

    def _release_if_done(self) -> None:
        """Once the protocol has heard the end and the TCB has left the table, break
        the TCB's reference cycles (Tcb.release): left to the cyclic collector, whose
        full passes come rarely at the daemon's gc threshold, 20,000 short connections
        doubled the RSS for good (issue 13). Until both, events still matter: data and
        EOF are read from a TIME_WAIT TCB after the FIN."""
        if self._lost and self._tcb.state in GONE:
            self._tcb.release()

    # --- events from the core (ConnectionOwner: delivered by the shell's _flush)

    def core_events(self, events: list) -> None:
        for ev in events:
            t = type(ev)
            if t is DataReceived:
                self._deliver()
            elif t is SendSpaceAvailable:
                if not self._conn_lost:
                    self._on_send_space()
            elif t is EofReceived:
                self._eof_pending = True
                self._deliver()
            elif t is Connected:
                w = self._connect_waiter
                if w is not None and not w.done():
                    w.set_result(None)
            elif t is StateChanged:
                if self._closing and not self._conn_lost and self._tcb.linger and \
                        ev.new in (State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSED):
                    self._conn_lost += 1  # SO_LINGER N > 0: all acknowledged (or gone)
                    self._loop.call_soon(self._call_connection_lost, None)
            elif t is ConnectionClosed:
                self._on_closed(ev.errno)
        if self._lost:
            self._release_if_done()

    def _on_closed(self, errno: int) -> None:
        w = self._connect_waiter
        if w is not None and not w.done():
            w.set_exception(_error(errno or E.ECONNREFUSED))
            self._lost = True
            self._conn_lost += 1
            return
        if self._conn_lost:
            return
        if errno:
            self._error = _error(errno)
        if self._closing:
            # Closed by us and now gone: connection_lost, with the error if the buffer
            # was still going out (asyncio's _write_ready() meets it in send()).
            self._force_close(None if self._sock_closed else self._error)
            return
        # Buffered data is still handed over before the error, as a kernel socket
        # lets recv() return it first.
        tcb = self._tcb
        if tcb.recv_queue and not self._paused:
            data = self._stack.call(tcb, tcb.recv, -1, self._stack.now())
            if data:
                self._feed(data)
        if self._eof_delivered and errno:
            # EOF delivered and the protocol kept the transport open (eof_received()
            # true): asyncio no longer reads, so only the next write() learns of it.
            self._dead = self._error
            return
        # After the peer's FIN, reads end in EOF even if an error (RST, timeout) follows:
        # Linux tcp_recvmsg() checks SOCK_DONE before sk_err. Writes still fail (_error).
        eof = tcb.fin_received
        if (not errno or eof) and not self._eof_delivered and not self._paused:
            self._eof_delivered = True
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
            if not keep_open or not errno:
                self._closing = True
                self._conn_lost += 1
                self._loop.call_soon(self._call_connection_lost, None)
                return
        self._force_close(None if eof and not errno else self._error)


class Server(asyncio.AbstractServer):
    """A listener; implements the shell's ListenerOwner (accept_ready). asyncio's
    base_events.Server method by method, for the Python running it (wait_closed()
    returns at once after close() on 3.11, waits for the connections on 3.12+)."""

    def __init__(self, stack: StackShell, protocol_factory: ProtocolFactory, hosts: list[str],
                 port: int, backlog: int, start_serving: bool = True,
                 options: list[tuple[int, int, sockopt.Value]] | None = None,
                 ssl: ssl_mod.SSLContext | None = None, ssl_handshake_timeout: float | None = None,
                 ssl_shutdown_timeout: float | None = None) -> None:
        self._stack = stack
        self._loop = stack.loop
        self._factory = protocol_factory
        self._backlog = backlog
        self._options: list[tuple[int, int, sockopt.Value]] = list(options or ())
        self._ssl = ssl
        self._ssl_timeouts = (ssl_handshake_timeout, ssl_shutdown_timeout)
        self._listeners: list = []
        names: list[tuple[str, int]] = []
        for host in hosts:
            lst = stack.listen(host, port, backlog, owner=self)  # bind(): the port now
            sockopt.listener_setsockopt(lst, stack.ctx, self._options)
            names.append((host, lst.port))
            self._listeners.append(lst)
            port = port or lst.port  # one port for every host, as asyncio's
        self._names = names
        self._sockets: list[TransportSocket] | None = [
            TransportSocket(stack, name=n, options=self._options,
                            on_change=self._options_changed) for n in names]
        self._serving = True
        if not start_serving:
            # Bound but not listening (asyncio calls listen() in _start_serving()): a
            # connection meanwhile is refused, as by the kernel. The port stays ours
            # in name only until start_serving() listens on it again.
            self._serving = False
            for lst in self._listeners:
                stack.unlisten(lst)
        self._active_count = 0
        self._waiters: list[asyncio.Future] | None = []
        self._serving_forever_fut: asyncio.Future | None = None

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} sockets={self.sockets!r}>"

    def _options_changed(self) -> None:
        for lst in self._listeners:
            sockopt.listener_setsockopt(lst, self._stack.ctx, self._options)

    def accept_ready(self) -> None:
        for lst in self._listeners:
            while (tcb := self._stack.accept(lst)) is not None:
                self._accepted(tcb)

    def _accepted(self, tcb: Tcb) -> None:
        if self._ssl is not None:
            waiter = self._loop.create_future()
            proto = sslproto.SSLProtocol(
                self._loop, self._factory(), self._ssl, waiter, server_side=True,
                ssl_handshake_timeout=self._ssl_timeouts[0],
                ssl_shutdown_timeout=self._ssl_timeouts[1])
            transport = TcpTransport(self._stack, tcb, proto, server=self)
            proto.connection_made(transport)
            waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            return
        protocol = self._factory()
        transport = TcpTransport(self._stack, tcb, protocol, server=self)
        protocol.connection_made(transport)

    def _attach(self) -> None:
        self._active_count += 1

    def _detach(self) -> None:
        self._active_count -= 1
        if self._active_count == 0 and self._sockets is None:
            self._wakeup()

    def _wakeup(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(waiter)

    @property
    def sockets(self) -> tuple[TransportSocket, ...]:
        return () if self._sockets is None else tuple(self._sockets)

    def close(self) -> None:
        if self._sockets is None:
            return
        self._sockets = None
        if self._serving:
            for lst in self._listeners:
                self._stack.unlisten(lst)
        self._listeners = []
        self._serving = False
        fut = self._serving_forever_fut
        if fut is not None and not fut.done():
            fut.cancel()
            self._serving_forever_fut = None
        if self._active_count == 0:
            self._wakeup()

    def close_clients(self) -> None:  # Python 3.13
        for t in self._clients():
            t.close()

    def abort_clients(self) -> None:  # Python 3.13
        for t in self._clients():
            t.abort()

    def _clients(self) -> list[TcpTransport]:
        return [tcb.owner for tcb in self._stack.table.connections()
                if isinstance(tcb.owner, TcpTransport) and tcb.owner._server is self]

    async def wait_closed(self) -> None:
        if sys.version_info < (3, 12) and self._sockets is None:
            return  # 3.11's: nothing to wait for once closed
        if self._waiters is None:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _start_serving(self) -> None:
        if self._serving:
            return
        if self._sockets is None:
            # asyncio's start_serving() on a closed server iterates its sockets, None.
            raise TypeError("'NoneType' object is not iterable")
        self._serving = True
        listeners, self._listeners = self._listeners, []
        for old in listeners:
            lst = self._stack.listen(_ip(old.ip), old.port, self._backlog, owner=self)
            sockopt.listener_setsockopt(lst, self._stack.ctx, self._options)
            self._listeners.append(lst)

    async def start_serving(self) -> None:
        self._start_serving()
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


Options = Iterable[tuple[int, int, sockopt.Value]]


def _ip(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def _check_ssl_args(ssl: object, server_hostname: object, handshake: object,
                    shutdown: object) -> None:
    """asyncio's own checks (base_events.create_connection / create_server)."""
    if server_hostname is not None and not ssl:
        raise ValueError("server_hostname is only meaningful with ssl")
    if handshake is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if shutdown is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


def _check_family(stack: StackShell, family: int, proto: int) -> None:
    if family not in (0, socket.AF_INET):
        # What getaddrinfo() says for an IPv4 address asked as another family.
        raise socket.gaierror(socket.EAI_ADDRFAMILY,
                              "Address family for hostname not supported")
    if proto not in (0, socket.IPPROTO_TCP):
        raise socket.gaierror(socket.EAI_SERVICE, "Servname not supported for ai_socktype")


def _no_sock(sock: object, host: object, port: object) -> None:
    if sock is None:
        return
    if host is not None or port is not None:
        raise ValueError("host/port and sock can not be specified at the same time")
    # A kernel socket cannot be adopted by a userspace stack.
    raise ValueError(f"ustack cannot use a kernel socket (sock={sock!r}); pass host and port")


async def create_server(stack: StackShell, protocol_factory: ProtocolFactory,
                        host: str | Iterable[str] | None = None, port: int | None = None, *,
                        family: int = socket.AF_UNSPEC, flags: int = socket.AI_PASSIVE,
                        sock: object = None, backlog: int = 100,
                        ssl: ssl_mod.SSLContext | None = None,
                        reuse_address: bool | None = None, reuse_port: bool | None = None,
                        keep_alive: bool | None = None,
                        ssl_handshake_timeout: float | None = None,
                        ssl_shutdown_timeout: float | None = None,
                        start_serving: bool = True, sockopts: Options = ()) -> Server:
    """asyncio's loop.create_server() (3.11-3.13 keywords): `reuse_address` and
    `reuse_port` are accepted (a ustack port is reusable as Linux's is with both), `flags`
    is for the resolver ustack does not have, `keep_alive` sets SO_KEEPALIVE on each
    connection (3.13). `sockopts` (ustack's): (level, optname, value) set on each
    connection before its SYN-ACK, as options set on a listening socket."""
    if isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    _check_ssl_args(ssl, None, ssl_handshake_timeout, ssl_shutdown_timeout)
    _no_sock(sock, host, port)
    if host is None and port is None:
        raise ValueError("Neither host/port nor sock were specified")
    _check_family(stack, family if family != socket.AF_UNSPEC else 0, 0)
    if isinstance(host, str) or host is None:
        hosts = [host or stack.address]
    else:
        hosts = list(dict.fromkeys(h or stack.address for h in host))
    for h in hosts:
        if h not in (stack.address, "0.0.0.0"):
            raise OSError(E.EADDRNOTAVAIL,
                          f"error while attempting to bind on address {(h, port or 0)!r}: "
                          f"cannot assign requested address")
    options = list(sockopts)
    if keep_alive:
        options.append((sockopt.SOL_SOCKET, sockopt.SO_KEEPALIVE, 1))
    for level, optname, value in options:  # bad options fail here, as on the socket
        sockopt.setsockopt(Tcb(stack.ctx, b"\0" * 12, ("0.0.0.0", 0), ("0.0.0.0", 0)),
                           level, optname, value)
    server = Server(stack, protocol_factory, hosts, port or 0, backlog, start_serving,
                    options, ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
    await asyncio.sleep(0)  # as asyncio's: one loop iteration before returning
    return server


async def create_connection(stack: StackShell, protocol_factory: ProtocolFactory,
                            host: str | None = None, port: int | None = None, *,
                            ssl: ssl_mod.SSLContext | bool | None = None, family: int = 0,
                            proto: int = 0, flags: int = 0, sock: object = None,
                            local_addr: tuple[str, int] | None = None,
                            server_hostname: str | None = None,
                            ssl_handshake_timeout: float | None = None,
                            ssl_shutdown_timeout: float | None = None,
                            happy_eyeballs_delay: float | None = None,
                            interleave: int | None = None, all_errors: bool = False,
                            local_port: int | None = None, sockopts: Options = ()
                            ) -> tuple[TcpTransport, asyncio.BaseProtocol]:
    """asyncio's loop.create_connection() (3.11-3.13 keywords). ustack has one address
    and no resolver: `host` is an IPv4 address, `happy_eyeballs_delay`, `interleave`
    and `all_errors` have one address to work on, `flags` is for getaddrinfo().
    `local_addr` binds (this stack's address or 0.0.0.0; `local_port` is the older
    ustack spelling of its port). `ssl` runs asyncio's own TLS (sslproto) over the
    connection. `sockopts` (ustack's): (level, optname, value) set before the SYN, as
    options set between socket() and connect()."""
    _check_ssl_args(ssl, server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout)
    if sock is not None:
        _no_sock(sock, host, port)
    if host is None or port is None:
        raise ValueError("host and port was not specified and no sock specified")
    _check_family(stack, family, proto)
    if local_addr is not None:
        lhost, lport = local_addr[0], local_addr[1]
        if lhost not in (None, "", stack.address, "0.0.0.0"):
            raise OSError(E.EADDRNOTAVAIL, f"error while attempting to bind on address "
                                           f"{(lhost, lport)!r}: cannot assign requested address")
        local_port = lport or local_port
    options = list(sockopts)

    def prepare(tcb: Tcb) -> None:
        for level, optname, value in options:
            sockopt.setsockopt(tcb, level, optname, value, stack.now())

    loop = stack.loop
    tcb = stack.connect(host, port, local_port=local_port, prepare=prepare)
    waiter = None
    if ssl:
        sslcontext = ssl if not isinstance(ssl, bool) else ssl_mod.create_default_context()
        waiter = loop.create_future()
        app_protocol = protocol_factory()
        protocol: asyncio.BaseProtocol = sslproto.SSLProtocol(
            loop, app_protocol, sslcontext, waiter, server_side=False,
            server_hostname=server_hostname if server_hostname is not None else host,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
    else:
        protocol = app_protocol = protocol_factory()
    transport = TcpTransport(stack, tcb, protocol)
    transport._connect_waiter = loop.create_future()
    try:
        await transport._connect_waiter
    except asyncio.CancelledError:
        stack.call(tcb, tcb.abort, stack.now())
        raise
    transport._connect_waiter = None
    protocol.connection_made(transport)
    if waiter is not None:
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return protocol._app_transport, app_protocol  # type: ignore[attr-defined]
    return transport, protocol


async def open_connection(stack: StackShell, host: str | None = None, port: int | None = None,
                          *, limit: int = 2 ** 16, **kwds: Any
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = stack.loop
    reader = StreamReader(limit=limit, loop=loop)
    protocol = StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(stack, lambda: protocol, host, port, **kwds)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def start_server(stack: StackShell, client_connected_cb: ClientConnected,
                       host: str | Iterable[str] | None = None, port: int | None = None, *,
                       limit: int = 2 ** 16, **kwds: Any) -> Server:
    loop = stack.loop

    def factory() -> StreamReaderProtocol:
        reader = StreamReader(limit=limit, loop=loop)
        return StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(stack, factory, host, port, **kwds)


class Stack(StackShell):
    """The shell plus asyncio's four entry points, with asyncio's signatures and
    keywords (see the functions above; `local_port` and `sockopts` are ustack's)."""

    async def start_server(self, client_connected_cb: ClientConnected,
                           host: str | Iterable[str] | None = None, port: int | None = None,
                           *, limit: int = 2 ** 16, **kwds: Any) -> Server:
        return await start_server(self, client_connected_cb, host, port, limit=limit, **kwds)

    async def open_connection(self, host: str | None = None, port: int | None = None, *,
                              limit: int = 2 ** 16, **kwds: Any
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_connection(self, host, port, limit=limit, **kwds)

    async def create_server(self, protocol_factory: ProtocolFactory,
                            host: str | Iterable[str] | None = None, port: int | None = None,
                            **kwds: Any) -> Server:
        return await create_server(self, protocol_factory, host, port, **kwds)

    async def create_connection(self, protocol_factory: ProtocolFactory,
                                host: str | None = None, port: int | None = None, **kwds: Any
                                ) -> tuple[TcpTransport, asyncio.BaseProtocol]:
        return await create_connection(self, protocol_factory, host, port, **kwds)
