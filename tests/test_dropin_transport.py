"""Differential suite: the Transport, on kernel sockets and on ustack (tests/dropin)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from dropin import Deviation, Rec, case, check, protocol_pair, raises, until

pytestmark = pytest.mark.netns


@case()
async def write_writelines_eof(net, rec: Rec) -> None:
    server, c, s = await protocol_pair(net, rec, server_keep_open=True)
    t = c.transport
    rec["can_write_eof"] = t.can_write_eof()
    t.write(b"one ")
    t.write(bytearray(b"two "))
    t.write(memoryview(b"three "))
    t.writelines([b"four ", bytearray(b"five "), memoryview(b"six")])
    t.write(b"")
    rec["buffer_after_small_writes"] = t.get_write_buffer_size()
    t.write_eof()
    rec["closing_after_write_eof"] = t.is_closing()
    t.write_eof()  # idempotent
    rec["write_after_eof"] = raises(lambda: t.write(b"x"))
    rec["empty_write_after_eof"] = raises(lambda: t.write(b""))
    await asyncio.wait_for(s.eof, 10)
    rec["server_got"] = bytes(s.data)
    s.transport.write(b"reply")
    s.transport.close()
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    rec["client_got"] = bytes(c.data)
    server.close()


@case()
async def write_type_errors(net, rec: Rec) -> None:
    server, c, s = await protocol_pair(net, rec)
    t = c.transport
    rec["str"] = raises(lambda: t.write("text"))
    rec["int"] = raises(lambda: t.write(42))
    rec["list"] = raises(lambda: t.writelines([b"a", "b"]))
    t.close()
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    server.close()


@case()
async def write_buffer_limits(net, rec: Rec) -> None:
    server, c, s = await protocol_pair(net, rec)
    t = c.transport
    rec["defaults"] = t.get_write_buffer_limits()
    t.set_write_buffer_limits(high=100)
    rec["high_100"] = t.get_write_buffer_limits()
    t.set_write_buffer_limits(low=10)
    rec["low_10"] = t.get_write_buffer_limits()
    t.set_write_buffer_limits(high=40, low=40)
    rec["equal"] = t.get_write_buffer_limits()
    t.set_write_buffer_limits(0, 0)
    rec["zero"] = t.get_write_buffer_limits()
    rec["low_above_high"] = raises(lambda: t.set_write_buffer_limits(high=10, low=20))
    rec["negative"] = raises(lambda: t.set_write_buffer_limits(high=-1))
    rec["negative_low"] = raises(lambda: t.set_write_buffer_limits(low=-4))
    t.set_write_buffer_limits()
    rec["reset"] = t.get_write_buffer_limits()
    t.close()
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    server.close()


@case()
async def flow_control(net, rec: Rec) -> None:
    """pause_writing above the high-water mark while the peer does not read, then
    resume_writing once it reads and the buffer falls to the low-water mark."""
    server, c, s = await protocol_pair(net, rec)
    s.transport.pause_reading()
    t = c.transport
    chunk = b"x" * 65536
    written = 0
    while not rec.seen("client", "pause_writing") and written < 64 << 20:
        t.write(chunk)
        written += len(chunk)
        await asyncio.sleep(0)
    rec["paused"] = rec.seen("client", "pause_writing")
    rec["above_high"] = t.get_write_buffer_size() > t.get_write_buffer_limits()[1]
    s.transport.resume_reading()
    await until(lambda: len(s.data) == written, 30)
    rec["resumed"] = rec.seen("client", "resume_writing")
    rec["buffer_at_end"] = t.get_write_buffer_size()
    rec["all_arrived"] = len(s.data) == written
    t.close()
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    server.close()


@case(Deviation("abort_dropped_the_buffer", True, False,
                "abort() drops asyncio's own buffer on a kernel socket; ustack's transport "
                "buffer is the tail of the core's send queue, which abort() lets go out "
                "before the FIN"))
async def limits_pause_at_once(net, rec: Rec) -> None:
    """set_write_buffer_limits() below the current buffer calls pause_writing() at
    once; raising it again does not resume (only a drained buffer does)."""
    server, c, s = await protocol_pair(net, rec)
    s.transport.pause_reading()
    t = c.transport
    total = 0
    while t.get_write_buffer_size() < 200_000:
        t.write(b"y" * 65536)
        total += 65536
        await asyncio.sleep(0)
    t.set_write_buffer_limits(high=1 << 30)
    n = rec.count("client", "pause_writing")
    rec["paused_before"] = n
    t.set_write_buffer_limits(high=1000)
    rec["paused_after_lowering"] = rec.count("client", "pause_writing") - n
    t.set_write_buffer_limits(high=1 << 30)
    rec["resumed_by_raising"] = rec.seen("client", "resume_writing")
    written = t.get_write_buffer_size()  # what abort() drops on a kernel socket
    t.abort()  # the transport's buffer is dropped; the socket's still goes, then FIN
    s.transport.resume_reading()
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    rec["abort_dropped_the_buffer"] = written > 0 and len(s.data) < total
    server.close()


@case(Deviation("fileno", True, -1,
                "no kernel socket behind a ustack transport: fileno() is -1, as for a "
                "closed socket"))
async def extra_info(net, rec: Rec) -> None:
    server, c, s = await protocol_pair(net, rec)
    t = c.transport
    peer, name = t.get_extra_info("peername"), t.get_extra_info("sockname")
    rec["names"] = (peer == s.transport.get_extra_info("sockname"),
                    name == s.transport.get_extra_info("peername"),
                    peer == (net.host, server.sockets[0].getsockname()[1]),
                    [type(v).__name__ for v in (*peer, *name)])
    rec["default"] = t.get_extra_info("no-such-key", "dflt")
    rec["none"] = t.get_extra_info("no-such-key")
    for key in ("compression", "cipher", "peercert", "sslcontext", "ssl_object", "pipe"):
        rec[f"extra_{key}"] = t.get_extra_info(key)
    sock = t.get_extra_info("socket")
    rec["socket"] = (sock.family, sock.type, sock.proto, sock.getsockname() == name,
                     sock.getpeername() == peer)
    fd = sock.fileno()
    rec["fileno"] = fd >= 0 if fd != -1 else -1
    # asyncio sets TCP_NODELAY on its TCP transports; the socket tunes like a socket
    rec["nodelay_default"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    rec["nodelay_off"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
    rec["keepalive"] = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
    rec["so_error"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    rec["so_type"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 5))
    rec["linger"] = struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))
    rec["timeout"] = sock.gettimeout()
    rec["settimeout_1"] = raises(lambda: sock.settimeout(1))
    rec["setblocking"] = raises(lambda: sock.setblocking(True))
    rec["bad_level"] = raises(lambda: sock.setsockopt(9999, 1, 1)) is not None
    t.close()
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    rec["names_after_close"] = (t.get_extra_info("peername") == peer,
                                t.get_extra_info("sockname") == name)
    server.close()


@case()
async def pause_resume_reading(net, rec: Rec) -> None:
    server, c, s = await protocol_pair(net, rec)
    st = s.transport
    rec["reading_at_start"] = st.is_reading()
    st.pause_reading()
    st.pause_reading()
    rec["after_pause"] = st.is_reading()
    c.transport.write(b"held")
    await asyncio.sleep(0.1)
    rec["delivered_while_paused"] = bytes(s.data)
    st.resume_reading()
    st.resume_reading()
    rec["after_resume"] = st.is_reading()
    await until(lambda: len(s.data) == 4)
    st.pause_reading()
    c.transport.close()
    await asyncio.sleep(0.1)
    rec["eof_while_paused"] = rec.seen("server", "eof")
    st.resume_reading()
    await asyncio.wait_for(s.eof, 10)
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    rec["reading_after_close"] = st.is_reading()
    st.resume_reading()
    st.pause_reading()
    rec["after_close_calls"] = (st.is_reading(), st.is_closing())
    server.close()


@case()
async def close_and_abort_state(net, rec: Rec) -> None:
    server, c, s = await protocol_pair(net, rec)
    t = c.transport
    rec["closing_at_start"] = t.is_closing()
    t.close()
    rec["closing_after_close"] = (t.is_closing(), t.is_reading())
    t.close()  # twice: nothing more
    t.abort()  # after close: nothing more either
    await asyncio.wait_for(asyncio.gather(c.lost, s.lost), 10)
    rec["buffer_after"] = t.get_write_buffer_size()
    server2, c2, s2 = await protocol_pair(net, rec)
    c2.transport.abort()
    rec["closing_after_abort"] = (c2.transport.is_closing(), c2.transport.is_reading())
    c2.transport.abort()
    await asyncio.wait_for(asyncio.gather(c2.lost, s2.lost), 10)
    server.close()
    server2.close()


@case()
async def set_protocol(net, rec: Rec) -> None:
    """get_protocol/set_protocol: data after the switch goes to the new protocol."""
    from dropin import Recorder
    server, c, s = await protocol_pair(net, rec)
    rec["get_protocol"] = s.transport.get_protocol() is s
    other = Recorder(rec, "other")
    s.transport.set_protocol(other)
    rec["switched"] = s.transport.get_protocol() is other
    c.transport.write(b"to the other one")
    await until(lambda: len(other.data) == 16)
    c.transport.close()
    await asyncio.wait_for(asyncio.gather(c.lost, other.lost), 10)
    rec["old_got"] = bytes(s.data)
    server.close()


@case()
async def buffered_protocol(net, rec: Rec) -> None:
    """A BufferedProtocol gets get_buffer()/buffer_updated() instead of data_received."""
    got = bytearray()
    calls = []
    lost = asyncio.get_running_loop().create_future()

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(1000)

        def connection_made(self, transport) -> None:
            calls.append("made")

        def get_buffer(self, sizehint: int):
            if calls[-1] != "get_buffer":
                calls.append("get_buffer")
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            got.extend(self.buf[:nbytes])

        def eof_received(self):
            calls.append("eof")

        def connection_lost(self, exc) -> None:
            calls.append(f"lost:{exc!r}")
            lost.set_result(None)

    server = await net.create_server(Buffered)
    port = server.sockets[0].getsockname()[1]
    from dropin import Recorder
    c = Recorder(rec, "client")
    await net.create_connection(lambda: c, port)
    payload = bytes(range(256)) * 40
    c.transport.write(payload)
    c.transport.close()
    await asyncio.wait_for(lost, 10)
    rec["calls"] = calls
    rec["got"] = bytes(got) == payload
    server.close()


@pytest.mark.parametrize("spec", [
    write_writelines_eof, write_type_errors, write_buffer_limits, flow_control,
    limits_pause_at_once, extra_info, pause_resume_reading, close_and_abort_state,
    set_protocol, buffered_protocol,
], ids=lambda s: s.fn.__name__)
async def test_transport(inside_netns, spec) -> None:
    await check(spec)
