"""The asyncio face of ustack: `Stack`, a Transport per connection, servers, streams.

Existing asyncio code runs unchanged: `open_connection`/`start_server` return real
`asyncio.StreamReader`/`StreamWriter` pairs, `create_connection`/`create_server` take a
protocol factory. `Stack` is the shell (`ustack.stack.StackShell`) plus these four
methods. The transport implements the shell's `ConnectionOwner` interface
(`core_events`) and the server its `ListenerOwner` (`accept_ready`); the shell never
imports this module. The transport turns core events into protocol callbacks and user
calls into core calls; it reads a few TCB views (state, addresses, queue lengths) and
changes the connection only through the TCB's methods.

Socket options, as methods on the transport (`writer.transport.set_linger(...)`):
  set_linger(onoff, seconds)   SO_LINGER: off, {1, 0} abort with RST, {1, N} wait_closed()
                               waits up to N s for everything to be acknowledged, then RST
                               (deliberately unlike Linux, whose orphan runs on, LS 29)
  set_keepalive(on, idle=, interval=, count=)   SO_KEEPALIVE + TCP_KEEPIDLE/INTVL/CNT
  set_nodelay(on)              TCP_NODELAY (Nagle off)

`get_extra_info()` answers what asyncio's socket transports answer for TCP: `peername`,
`sockname`, and `socket`, which is None (there is no kernel socket to hand out; asyncio
code that reaches for it to set options must use the methods above instead). `ustack_tcb`
gives the core's TCB, for tests and tools.

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
import os
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

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


class TcpTransport(asyncio.Transport):
    """One connection; implements the shell's ConnectionOwner (core_events)."""

    def __init__(self, stack: StackShell, tcb: Tcb, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._stack = stack
        self._tcb = tcb
        self._protocol = protocol
        stack.adopt(tcb, self)
        self._closing = False
        self._lost = False
        self._error: OSError | None = None
        self._reading_paused = False
        self._eof_pending = False
        self._eof_delivered = False
        self._eof_written = False
        self._writing_paused = False
        # asyncio's limits (64 KiB, a quarter of it), counted beyond the socket buffer
        # (get_write_buffer_size()): tcp_wmem holds the unacknowledged data and a
        # window's worth more, which keeps loss recovery going (new data after a
        # retransmission reveals its loss).
        self._high = 64 * 1024
        self._low = self._high // 4
        self._linger: int | None = None
        self._wait_linger = False
        self._connect_waiter: asyncio.Future | None = None

    def __repr__(self) -> str:
        return f"<TcpTransport {self._tcb!r}>"

    # --- info

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._tcb.remote
        if name == "sockname":
            return self._tcb.local
        if name == "socket":
            return None  # no kernel socket behind this transport (see the module doc)
        if name == "ustack_tcb":
            return self._tcb
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing or self._lost

    @property
    def state(self) -> State:
        return self._tcb.state

    # --- socket options

    def set_linger(self, onoff: bool, seconds: int = 0) -> None:
        self._linger = int(seconds) if onoff else None
        self._tcb.set_linger(self._linger)

    def set_keepalive(self, on: bool = True, *, idle: int | None = None,
                      interval: int | None = None, count: int | None = None) -> None:
        self._stack.call(self._tcb, self._tcb.set_keepalive, on, self._stack.now(), idle,
                         interval, count)

    def set_nodelay(self, on: bool = True) -> None:
        self._stack.call(self._tcb, self._tcb.set_nodelay, on, self._stack.now())

    # --- writing

    def write(self, data: Buffer) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        if self._eof_written:  # as asyncio's and uvloop's socket transports
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._error is not None or self._tcb.state == State.CLOSED and not self._closing:
            # As a kernel socket: a write after the connection died is EPIPE.
            raise BrokenPipeError(E.EPIPE, "Broken pipe")
        if self._closing:
            return  # like asyncio's transports: writes after close() are dropped
        self._stack.call(self._tcb, self._tcb.send, bytes(data), self._stack.now())
        self._maybe_pause_writing()

    def writelines(self, list_of_data: Iterable[Buffer]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._closing or self._error is not None:
            return
        self._eof_written = True
        self._stack.call(self._tcb, self._tcb.shutdown, self._stack.now())

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        """Bytes beyond the socket's send buffer (tcp_wmem), as over a kernel socket:
        there write() hands the kernel what fits in SO_SNDBUF and only the rest waits
        in the transport, which is what asyncio's buffer size and flow control see."""
        excess = self._tcb.send_queue - self._tcb.snd_cap
        return excess if excess > 0 else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        self._high, self._low = high, low
        self._maybe_pause_writing()

    def _maybe_pause_writing(self) -> None:
        if not self._writing_paused and self.get_write_buffer_size() > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_writing(self) -> None:
        # Not after connection_lost (close() during a drain: the core still sends).
        if self._writing_paused and not self._lost and self.get_write_buffer_size() <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    # --- reading

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._lost

    def pause_reading(self) -> None:
        # Data stays in the core's buffer, so the advertised window closes: this is how
        # a slow reader pushes back on the peer.
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        self._stack.loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        if self._reading_paused or self._lost or self._closing:
            return
        tcb = self._tcb
        if tcb.recv_queue:
            data = self._stack.call(tcb, tcb.recv, -1, self._stack.now())
            if data:
                self._protocol.data_received(data)
        if self._eof_pending and not tcb.recv_queue and not self._eof_delivered:
            self._eof_delivered = True
            keep_open = self._protocol.eof_received()
            if not keep_open and not self._closing:
                self.close()

    # --- closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        tcb = self._tcb
        unread = _protocol_unread(self._protocol)
        self._stack.call(tcb, tcb.close, self._stack.now(), unread)
        if self._linger and tcb.state not in (State.CLOSED, State.TIME_WAIT, State.FIN_WAIT_2):
            self._wait_linger = True  # connection_lost waits for the ACK or the timeout
        else:
            self._stack.loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        self._closing = True
        tcb = self._tcb
        self._stack.call(tcb, tcb.abort, self._stack.now())
        self._stack.loop.call_soon(self._connection_lost, None)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._wait_linger = False
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._protocol = None  # type: ignore[assignment]
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
                self._maybe_resume_writing()
            elif t is EofReceived:
                self._eof_pending = True
                self._deliver()
            elif t is Connected:
                w = self._connect_waiter
                if w is not None and not w.done():
                    w.set_result(None)
            elif t is StateChanged:
                if self._wait_linger and ev.new in (State.FIN_WAIT_2, State.TIME_WAIT,
                                                    State.CLOSED):
                    self._connection_lost(None)
            elif t is ConnectionClosed:
                self._on_closed(ev.errno)
        if self._lost:
            self._release_if_done()

    def _on_closed(self, errno: int) -> None:
        w = self._connect_waiter
        if w is not None and not w.done():
            w.set_exception(_error(errno or E.ECONNREFUSED))
            self._lost = True
            return
        if self._lost:
            return
        if errno:
            self._error = _error(errno)
        if self._closing:
            self._connection_lost(None)
            return
        # Buffered data is still handed over before the error, as a kernel socket
        # lets recv() return it first.
        if self._tcb.recv_queue and self._protocol is not None and not self._reading_paused:
            data = self._stack.call(self._tcb, self._tcb.recv, -1, self._stack.now())
            if data:
                self._protocol.data_received(data)
        # After the peer's FIN, reads end in EOF even if an error (RST, timeout) follows:
        # Linux tcp_recvmsg() checks SOCK_DONE before sk_err. Writes still fail (_error).
        eof = self._tcb.fin_received
        if (not errno or eof) and not self._eof_delivered:
            self._eof_delivered = True
            self._protocol.eof_received()
        self._connection_lost(None if eof else self._error)


class ListenSocket:
    """What `server.sockets` holds: enough for `getsockname()`."""

    def __init__(self, host: str, port: int) -> None:
        self._name = (host, port)

    def getsockname(self) -> tuple[str, int]:
        return self._name


class Server(asyncio.AbstractServer):
    """A listener; implements the shell's ListenerOwner (accept_ready)."""

    def __init__(self, stack: StackShell, protocol_factory: ProtocolFactory, host: str, port: int,
                 backlog: int) -> None:
        self._stack = stack
        self._factory = protocol_factory
        self._listener = stack.listen(host, port, backlog, owner=self)
        self.sockets = [ListenSocket(host, self._listener.port)]  # port 0: the one chosen
        self._serving = True
        self._closed = asyncio.get_running_loop().create_future()
        self._transports: set[TcpTransport] = set()

    def accept_ready(self) -> None:
        while (tcb := self._stack.accept(self._listener)) is not None:
            protocol = self._factory()
            transport = TcpTransport(self._stack, tcb, protocol)
            protocol.connection_made(transport)

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        self._stack.unlisten(self._listener)
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._stack.loop

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
        await self.wait_closed()


async def create_server(stack: StackShell, protocol_factory: ProtocolFactory, host: str | None,
                        port: int, *, backlog: int = 128) -> Server:
    host = host or stack.address
    if host not in (stack.address, "0.0.0.0"):
        raise OSError(E.EADDRNOTAVAIL, f"Cannot assign requested address: {host}")
    return Server(stack, protocol_factory, host, port, backlog)


async def create_connection(stack: StackShell, protocol_factory: ProtocolFactory, host: str,
                            port: int, *, local_port: int | None = None
                            ) -> tuple[TcpTransport, asyncio.BaseProtocol]:
    loop = stack.loop
    tcb = stack.connect(host, port, local_port=local_port)
    protocol = protocol_factory()
    transport = TcpTransport(stack, tcb, protocol)
    transport._connect_waiter = loop.create_future()
    try:
        await transport._connect_waiter
    except asyncio.CancelledError:
        stack.call(tcb, tcb.abort, stack.now())
        raise
    transport._connect_waiter = None
    protocol.connection_made(transport)
    return transport, protocol


async def open_connection(stack: StackShell, host: str, port: int, *, limit: int = 2 ** 16,
                          local_port: int | None = None
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = stack.loop
    reader = StreamReader(limit=limit, loop=loop)
    protocol = StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(stack, lambda: protocol, host, port,
                                           local_port=local_port)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def start_server(stack: StackShell, client_connected_cb: ClientConnected, host: str | None,
                       port: int, *, limit: int = 2 ** 16, backlog: int = 128) -> Server:
    loop = stack.loop

    def factory() -> StreamReaderProtocol:
        reader = StreamReader(limit=limit, loop=loop)
        return StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(stack, factory, host, port, backlog=backlog)


class Stack(StackShell):
    """The shell plus asyncio's four entry points, with asyncio's signatures (host and
    port; `local_port` binds the client's port)."""

    async def start_server(self, client_connected_cb: ClientConnected, host: str | None = None,
                           port: int = 0, *, limit: int = 2 ** 16, backlog: int = 128
                           ) -> Server:
        return await start_server(self, client_connected_cb, host, port, limit=limit,
                                  backlog=backlog)

    async def open_connection(self, host: str, port: int, *, limit: int = 2 ** 16,
                              local_port: int | None = None
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_connection(self, host, port, limit=limit, local_port=local_port)

    async def create_server(self, protocol_factory: ProtocolFactory, host: str | None = None,
                            port: int = 0, *, backlog: int = 128) -> Server:
        return await create_server(self, protocol_factory, host, port, backlog=backlog)

    async def create_connection(self, protocol_factory: ProtocolFactory, host: str, port: int,
                                *, local_port: int | None = None
                                ) -> tuple[TcpTransport, asyncio.BaseProtocol]:
        return await create_connection(self, protocol_factory, host, port,
                                       local_port=local_port)
