"""The labs: each one plays a scenario of the close-path story on a real connection
between ustack and the kernel, and says what should happen and why.

A lab is a coroutine taking the World (world.py) and returning the connection to draw.
Each has the state sequences it must show on each side (`ustack` and `kernel`); the
tests run every lab and compare, so a lab that stopped showing its lesson fails CI.
ustack's states are its own events; the kernel's are what sock_diag reported.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .world import KERNEL, USTACK, World, pure_ack_after_fin

MSL = 1  # tcp_msl in the labs: ustack's TIME_WAIT lasts 2 s


@dataclass
class Outcome:
    """What a lab run produced: the connection to draw and what it showed."""

    ustack_ep: str
    kernel_ep: str
    kernel_initial: str  # "CLOSED" for a kernel client, "LISTEN" for a kernel server
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Lab:
    name: str
    title: str
    rule: str  # the rule at work, with its source
    explain: str  # what happens, in a few sentences
    play: Callable[[World], Awaitable[Outcome]]
    ustack: tuple[str, ...]  # the states ustack must go through, in order
    kernel: tuple[str, ...]  # the states the kernel must report, in order
    settings: tuple[str, ...] = ()  # ustack knobs for this lab (beyond tcp_msl=1)


def _ep(addr: tuple) -> str:
    return f"{addr[0]}:{addr[1]}"


async def _wait_closed(world: World, ustack_ep: str, kernel_ep: str, timeout: float = 6.0
                       ) -> None:
    """Until ustack's side of the connection is CLOSED (after its TIME_WAIT, if any)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        states = world.ustack_states(ustack_ep, kernel_ep)
        if states and states[-1] == "CLOSED":
            break
        await asyncio.sleep(0.02)
    await world.sleep_rtts(2)  # the kernel's last transitions reach the sampler


async def _ustack_server(world: World, handler) -> tuple[int, asyncio.Future]:
    """A ustack server on port 7000 running `handler(reader, writer)` for one client;
    the future gives the client's endpoint (as ustack sees it)."""
    assert world.stack is not None
    loop = asyncio.get_running_loop()
    peer: asyncio.Future = loop.create_future()

    async def on_client(reader, writer) -> None:
        if not peer.done():
            peer.set_result(_ep(writer.get_extra_info("peername")))
        await handler(reader, writer)

    await world.stack.start_server(on_client, USTACK, 7000)
    return 7000, peer


# ---------------------------------------------------------------------- the labs


async def client_closes_first(w: World) -> Outcome:
    async def app(reader, writer) -> None:
        await reader.read()  # until the client's FIN
        await w.sleep_rtts(3)  # CLOSE_WAIT: the application has not closed yet
        writer.close()

    port, peer = await _ustack_server(w, app)
    reader, writer = await asyncio.open_connection(USTACK, port)
    kernel_ep = _ep(writer.get_extra_info("sockname"))
    writer.write(b"hello\n")
    await w.sleep_rtts(2)
    writer.close()  # the kernel closes first
    await _wait_closed(w, f"{USTACK}:{port}", kernel_ep)
    return Outcome(f"{USTACK}:{port}", kernel_ep, "CLOSED")


async def _http10(w: World, client_pause_rtts: float, drop_last_ack: bool = False
                  ) -> Outcome:
    """ustack answers one request and closes first (HTTP/1.0); the kernel client reads
    to EOF and closes `client_pause_rtts` later."""
    async def app(reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")
        writer.close()

    port, _ = await _ustack_server(w, app)
    if drop_last_ack:
        w.drop_once(pure_ack_after_fin(f"{USTACK}:{port}", w))
    reader, writer = await asyncio.open_connection(USTACK, port)
    kernel_ep = _ep(writer.get_extra_info("sockname"))
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    body = await reader.read()
    if client_pause_rtts:
        await w.sleep_rtts(client_pause_rtts)
    writer.close()
    await _wait_closed(w, f"{USTACK}:{port}", kernel_ep)
    out = Outcome(f"{USTACK}:{port}", kernel_ep, "CLOSED")
    out.notes.append(f"the kernel client read {len(body)} bytes, then EOF")
    return out


async def server_closes_first(w: World) -> Outcome:
    return await _http10(w, client_pause_rtts=5)


async def fin_ack(w: World) -> Outcome:
    # The kernel closes 20 ms after EOF: long enough for sock_diag to see CLOSE_WAIT,
    # well before its delayed ACK (at least TCP_DELACK_MIN, 40 ms) is due.
    out = await _http10(w, client_pause_rtts=0.5)
    evs = w.ustack_events.get(frozenset((out.ustack_ep, out.kernel_ep)), [])
    fw2 = [e for e in evs if e["new"] in ("FIN_WAIT_2", "TIME_WAIT")]
    if len(fw2) == 2 and fw2[0].get("seg") == fw2[1].get("seg"):
        out.notes.append("one segment (the kernel's FIN+ACK) took ustack from FIN_WAIT_1 "
                         "through FIN_WAIT_2 to TIME_WAIT: FIN_WAIT_2 lasted no time")
    return out


async def lost_last_ack(w: World) -> Outcome:
    out = await _http10(w, client_pause_rtts=5, drop_last_ack=True)
    fins = [s for s in w.segs if s.src == out.kernel_ep and "F" in s.flags]
    acks = [s for s in w.segs if s.src == out.ustack_ep and s.flags == "." and s.lost]
    evs = w.ustack_events.get(frozenset((out.ustack_ep, out.kernel_ep)), [])
    tw_end = next((e["t"] for e in evs if e["old"] == "TIME_WAIT"), None)
    out.notes.append(f"the kernel sent its FIN {len(fins)} times; ustack's last ACK "
                     f"lost {len(acks)} time(s)")
    if len(fins) >= 2 and tw_end is not None:
        out.notes.append(f"ustack's TIME_WAIT ended {tw_end - fins[-1].t:.2f} s after the "
                         f"retransmitted FIN (2MSL = {2 * MSL} s, restarted by it) and "
                         f"{tw_end - fins[0].t:.2f} s after the first one")
    return out


async def simultaneous_close(w: World) -> Outcome:
    loop = asyncio.get_running_loop()
    at = loop.time() + 3 * w.rtt  # both close at this instant: the FINs cross

    async def app(reader, writer) -> None:
        await asyncio.sleep(max(0.0, at - loop.time()))
        writer.close()
        await reader.read()

    port, _ = await _ustack_server(w, app)
    reader, writer = await asyncio.open_connection(USTACK, port)
    kernel_ep = _ep(writer.get_extra_info("sockname"))
    await asyncio.sleep(max(0.0, at - loop.time()))
    writer.close()
    await _wait_closed(w, f"{USTACK}:{port}", kernel_ep)
    return Outcome(f"{USTACK}:{port}", kernel_ep, "CLOSED")


async def half_close(w: World) -> Outcome:
    chunks = 4

    async def app(reader, writer) -> None:
        await reader.read()  # the request, then the client's FIN
        for i in range(chunks):  # CLOSE_WAIT: still sending
            writer.write(b"part %d\n" % i)
            await w.sleep_rtts(1)
        writer.close()

    port, _ = await _ustack_server(w, app)
    reader, writer = await asyncio.open_connection(USTACK, port)
    kernel_ep = _ep(writer.get_extra_info("sockname"))
    await w.sleep_rtts(1)  # ESTABLISHED for a while on both sides
    writer.write(b"send me the parts\n")
    writer.write_eof()  # shutdown(SHUT_WR): our FIN; we still read
    data = await reader.read()
    writer.close()
    await _wait_closed(w, f"{USTACK}:{port}", kernel_ep)
    out = Outcome(f"{USTACK}:{port}", kernel_ep, "CLOSED")
    out.notes.append(f"after its shutdown(SHUT_WR) the kernel client still received "
                     f"{data.count(b'part')} parts ({len(data)} bytes)")
    return out


async def close_wait_leak(w: World) -> Outcome:
    w.sysctl("net.ipv4.tcp_fin_timeout=1")  # the kernel forgets its orphan sooner
    held: list = []

    async def app(reader, writer) -> None:
        await reader.read()
        held.append(writer)  # ... and never closes it: the leak

    port, peer = await _ustack_server(w, app)
    reader, writer = await asyncio.open_connection(USTACK, port)
    kernel_ep = _ep(writer.get_extra_info("sockname"))
    await w.sleep_rtts(1)
    writer.write(b"bye\n")
    writer.close()
    await asyncio.sleep(2.5)  # past the kernel's tcp_fin_timeout
    assert w.stack is not None
    states = w.ustack_states(f"{USTACK}:{port}", kernel_ep)
    out = Outcome(f"{USTACK}:{port}", kernel_ep, "CLOSED")
    out.notes.append(f"2.5 s after the peer's FIN ustack is still in {states[-1]}: only "
                     "the application can end CLOSE_WAIT; the kernel dropped its orphaned "
                     "FIN_WAIT_2 after tcp_fin_timeout (1 s here)")
    for wr in held:  # the application finally closes: the peer has forgotten us
        wr.close()
    await _wait_closed(w, f"{USTACK}:{port}", kernel_ep)
    rst = [s for s in w.segs if s.src == kernel_ep and "R" in s.flags]
    out.notes.append(f"when it finally closed, the kernel answered its FIN with "
                     f"{'a RST' if rst else 'no RST'}")
    return out


async def _reset_lab(w: World, *, linger: bool) -> Outcome:
    seen: list[str] = []

    async def app(reader, writer) -> None:
        await w.sleep_rtts(3)
        if linger:
            await reader.readexactly(6)
            writer.transport.set_linger(True, 0)  # SO_LINGER {1, 0}
        # without linger: the request is still unread when we close
        writer.close()

    port, _ = await _ustack_server(w, app)
    reader, writer = await asyncio.open_connection(USTACK, port)
    kernel_ep = _ep(writer.get_extra_info("sockname"))
    writer.write(b"hello\n" if linger else b"hello\n" * 100)
    try:
        await reader.read()
        seen.append("EOF")
    except ConnectionResetError as exc:
        seen.append(f"{errno.errorcode.get(exc.errno or 0, exc.errno)}")
    writer.close()
    await _wait_closed(w, f"{USTACK}:{port}", kernel_ep)
    out = Outcome(f"{USTACK}:{port}", kernel_ep, "CLOSED")
    out.notes.append(f"the kernel's read() got {seen[0]}; no TIME_WAIT on either side")
    return out


async def linger_zero(w: World) -> Outcome:
    return await _reset_lab(w, linger=True)


async def unread_close(w: World) -> Outcome:
    return await _reset_lab(w, linger=False)


async def _kernel_server(port: int) -> asyncio.AbstractServer:
    """A kernel server that reads to EOF and then closes: the ustack client closes first.
    It closes 20 ms after EOF, so sock_diag sees its CLOSE_WAIT; its delayed ACK (40 ms
    at least, TCP_DELACK_MIN) is not due yet, so its FIN carries the ACK of ustack's."""
    async def on_client(reader, writer) -> None:
        await reader.read()
        await asyncio.sleep(0.02)
        writer.close()

    return await asyncio.start_server(on_client, KERNEL, port)


async def _client_round(w: World, port: int) -> str:
    assert w.stack is not None
    reader, writer = await w.stack.open_connection(KERNEL, port)
    ep = _ep(writer.get_extra_info("sockname"))
    await w.sleep_rtts(1)  # ESTABLISHED on both sides for a while
    writer.write(b"hi\n")
    writer.close()  # ustack closes first: TIME_WAIT on ustack
    await reader.read()
    return ep


async def port_exhaustion(w: World) -> Outcome:
    assert w.stack is not None
    server = await _kernel_server(8080)
    kernel_ep = f"{KERNEL}:8080"
    out = Outcome("", kernel_ep, "LISTEN")
    used = [await _client_round(w, 8080) for _ in range(4)]
    await w.sleep_rtts(4)
    out.notes.append(f"4 connections from {', '.join(u.split(':')[1] for u in used)} "
                     f"(ip_local_port_range 40000 40003); ustack holds "
                     f"{w.stack.time_wait_count} in TIME_WAIT")
    try:
        await w.stack.open_connection(KERNEL, 8080)
        out.notes.append("a 5th connect() succeeded (it should not have)")
    except OSError as exc:
        out.notes.append(f"a 5th connect() with tcp_tw_reuse=0: "
                         f"{errno.errorcode.get(exc.errno or 0)} ({exc.strerror})")
    w.stack.config.tcp_tw_reuse = 1
    await asyncio.sleep(0.25)  # past tcp_tw_reuse_delay (200 ms in this lab)
    ep = await _client_round(w, 8080)
    out.notes.append(f"with tcp_tw_reuse=1 the next connect() took port "
                     f"{ep.split(':')[1]} over from TIME_WAIT")
    out.ustack_ep = ep
    await _wait_closed(w, ep, kernel_ep)
    server.close()
    return out


async def syn_into_time_wait(w: World) -> Outcome:
    async def app(reader, writer) -> None:
        await reader.readuntil(b"\n")
        writer.write(b"bye\n")
        writer.close()  # ustack closes first: TIME_WAIT on ustack

    port, _ = await _ustack_server(w, app)
    kernel_port = 45000
    kernel_ep = f"{KERNEL}:{kernel_port}"
    for _ in range(2):
        reader, writer = await asyncio.open_connection(
            USTACK, port, local_addr=(KERNEL, kernel_port))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        writer.write(b"hello\n")
        await reader.read()
        await w.sleep_rtts(3)
        writer.close()
        await w.sleep_rtts(6)  # ustack in TIME_WAIT when the next SYN comes
    await _wait_closed(w, f"{USTACK}:{port}", kernel_ep)
    out = Outcome(f"{USTACK}:{port}", kernel_ep, "CLOSED")
    syns = [s for s in w.segs if s.src == kernel_ep and s.flags == "S"]
    out.notes.append(f"the kernel connected {len(syns)} times from port {kernel_port}; the "
                     "second SYN found ustack in TIME_WAIT and opened a new connection")
    return out


_E = "ESTABLISHED"
LABS: dict[str, Lab] = {lab.name: lab for lab in (
    Lab("client-close", "The client closes first: the four-way close",
        "RFC 9293 3.6 and Figure 13: the side that sends the first FIN goes FIN_WAIT_1, "
        "FIN_WAIT_2, TIME_WAIT; the other CLOSE_WAIT, LAST_ACK.",
        "The kernel client sends a line and closes. ustack acknowledges the FIN at once "
        "and sits in CLOSE_WAIT until its application closes, three round trips later. "
        "The kernel holds TIME_WAIT (Linux: 60 s), not ustack.",
        client_closes_first,
        ("SYN_RECEIVED", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED"),
        ("SYN_SENT", _E, "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT")),
    Lab("server-close", "The server closes first (HTTP/1.0): TIME_WAIT on the server",
        "RFC 9293 3.6: the active closer holds TIME_WAIT for 2MSL (RFC 9293 3.4.2); an "
        "HTTP/1.0 server closes after the response, so the server collects them.",
        "ustack answers a request and closes. The kernel client acknowledges the FIN "
        "(ustack: FIN_WAIT_2), reads to EOF and closes later; ustack then holds TIME_WAIT "
        "for 2MSL (2 s here, tcp_msl=1) before the connection is gone.",
        server_closes_first,
        ("SYN_RECEIVED", _E, "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"),
        ("SYN_SENT", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED")),
    Lab("fin-ack", "FIN+ACK: from FIN_WAIT_1 straight to TIME_WAIT",
        "RFC 9293 3.10.7.4 (FIN_WAIT_1: our FIN acknowledged by a segment that carries a "
        "FIN goes to TIME_WAIT); Linux tcp_fin() puts the receiver of a FIN in pingpong "
        "(delayed-ACK) mode, so an application that closes at once piggybacks the ACK.",
        "ustack closes first. The kernel client closes as soon as it reads EOF, before "
        "its delayed ACK of ustack's FIN was due, so one FIN+ACK answers both. ustack "
        "processes that segment as RFC 9293 3.10.7.4 and Linux tcp_rcv_state_process() "
        "do: the ACK first (FIN_WAIT_2), then the FIN (TIME_WAIT), so FIN_WAIT_2 lasts "
        "no time at all.",
        fin_ack,
        ("SYN_RECEIVED", _E, "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"),
        ("SYN_SENT", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED")),
    Lab("simultaneous", "Simultaneous close: CLOSING on both sides",
        "RFC 9293 3.6 and Figure 14: a FIN received in FIN_WAIT_1 (our FIN not yet "
        "acknowledged) goes to CLOSING; its ACK then to TIME_WAIT. Both sides hold it.",
        "Both applications close at the same instant; the FINs cross on the wire (the "
        "lab's wire delays each way by half a round trip). Each side receives a FIN "
        "while its own is unacknowledged.",
        simultaneous_close,
        ("SYN_RECEIVED", _E, "FIN_WAIT_1", "CLOSING", "TIME_WAIT", "CLOSED"),
        ("SYN_SENT", _E, "FIN_WAIT_1", "CLOSING", "TIME_WAIT")),
    Lab("lost-last-ack", "The last ACK is lost: LAST_ACK retransmits, TIME_WAIT answers",
        "RFC 9293 3.6 (why TIME_WAIT exists: to re-acknowledge a retransmitted FIN); "
        "RFC 9293 3.10.7.4 and Linux tcp_timewait_state_process(): a FIN in TIME_WAIT "
        "is acknowledged and restarts the 2MSL timer.",
        "ustack closes first and ends in TIME_WAIT; its final ACK of the kernel's FIN is "
        "lost on the wire. The kernel, in LAST_ACK, retransmits the FIN after its RTO; "
        "ustack, still in TIME_WAIT, acknowledges it again and restarts 2MSL.",
        lost_last_ack,
        ("SYN_RECEIVED", _E, "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"),
        ("SYN_SENT", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED")),
    Lab("half-close", "Half-close: shutdown(SHUT_WR), data still flowing back",
        "RFC 9293 3.6 (a FIN only ends one direction) and RFC 1122 4.2.2.13; Linux "
        "tcp_shutdown(). The closed side keeps receiving in FIN_WAIT_2.",
        "The kernel client sends its request and shuts down its sending side. ustack "
        "reads to EOF and then keeps sending its answer from CLOSE_WAIT, one part per "
        "round trip, while the kernel receives it in FIN_WAIT_2.",
        half_close,
        ("SYN_RECEIVED", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED"),
        ("SYN_SENT", _E, "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT")),
    Lab("close-wait-leak", "A CLOSE_WAIT leak: the application never closes",
        "RFC 9293 3.6: only the application's close() leaves CLOSE_WAIT; no timer ends "
        "it. Linux ends an orphaned FIN_WAIT_2 after tcp_fin_timeout (tcp_close()).",
        "The kernel client closes; ustack's application reads EOF and forgets the "
        "connection. ustack stays in CLOSE_WAIT; the kernel's orphaned FIN_WAIT_2 expires "
        "after tcp_fin_timeout. When the application finally closes, its FIN reaches a "
        "peer that no longer knows the connection, which answers RST.",
        close_wait_leak,
        ("SYN_RECEIVED", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED"),
        ("SYN_SENT", _E, "FIN_WAIT_1", "FIN_WAIT_2", "CLOSED")),
    Lab("linger0", "SO_LINGER 0: close() sends RST, no TIME_WAIT",
        "RFC 9293 3.10.4 (ABORT) as Linux tcp_close() does it with SO_LINGER {1, 0}: "
        "the connection is reset and freed at once.",
        "ustack's application sets SO_LINGER to {on, 0 s} and closes. A RST goes out "
        "instead of a FIN; the kernel's read() fails with ECONNRESET, and neither side "
        "keeps TIME_WAIT.",
        linger_zero,
        ("SYN_RECEIVED", _E, "CLOSED"),
        ("SYN_SENT", _E, "CLOSED")),
    Lab("unread-close", "close() with unread data: RST",
        "RFC 2525 2.17 and RFC 9293 3.10.4; Linux tcp_close(): data the application "
        "never read means the peer's data was lost, so the connection is reset "
        "(TcpExtTCPAbortOnClose).",
        "The kernel client sends 600 bytes; ustack's application closes without reading "
        "them. ustack sends a RST, not a FIN; the kernel's read() fails with ECONNRESET.",
        unread_close,
        ("SYN_RECEIVED", _E, "CLOSED"),
        ("SYN_SENT", _E, "CLOSED")),
    Lab("ports", "Port exhaustion, and tcp_tw_reuse letting a connect() through",
        "Linux __inet_hash_connect(): an ephemeral port whose four-tuple is in "
        "TIME_WAIT is taken only if tcp_tw_reuse allows (tcp_twsk_unique(): timestamps "
        "and tcp_tw_reuse_delay); none left is EADDRNOTAVAIL, before any SYN.",
        "ustack, as a client with ip_local_port_range narrowed to four ports, makes "
        "four connections and closes each first, so it holds four TIME_WAITs. The "
        "fifth connect() fails with EADDRNOTAVAIL. With tcp_tw_reuse=1 the next one "
        "takes a port over from TIME_WAIT: the ladder shows that four-tuple's two lives.",
        port_exhaustion,
        ("SYN_SENT", _E, "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED",
         "SYN_SENT", _E, "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"),
        ("SYN_RECEIVED", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED",
         "SYN_RECEIVED", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED"),
        settings=("ip_local_port_range=40000 40003", "tcp_tw_reuse=0",
                  "tcp_tw_reuse_delay=200")),
    Lab("rfc6191", "A SYN into TIME_WAIT, accepted (RFC 6191)",
        "RFC 6191 and Linux tcp_timewait_state_process(): a SYN for a four-tuple in "
        "TIME_WAIT whose timestamp is newer than the last one seen may open a new "
        "connection at once.",
        "ustack answers and closes first, holding TIME_WAIT. The kernel client connects "
        "again from the same port while ustack is still in TIME_WAIT; the SYN's newer "
        "timestamp lets ustack end TIME_WAIT early and accept the new connection.",
        syn_into_time_wait,
        ("SYN_RECEIVED", _E, "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED",
         "SYN_RECEIVED", _E, "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"),
        ("SYN_SENT", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED",
         "SYN_SENT", _E, "CLOSE_WAIT", "LAST_ACK", "CLOSED")),
)}
