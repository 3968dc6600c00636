"""The imperative shell: frames in and out of a device, the core in between.

Per arriving frame: validate the IPv4 header, slice the four-tuple key, verify the TCP
checksum, parse, and hand the segment to the table. Everything the core wants to send
is built and written once per loop iteration (`_flush`), the same place where core
events are delivered to transports and the single timer is re-armed (aioquic's
`transmit()` pattern). The clock is `loop.time()`, passed in; the core never reads it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from typing import Protocol, TypeVar

from . import eventlog
from .config import Config
from .impair import Impairment
from .stats import Stats
from .table import Listener, TcpTable
from .tcp import mem as tcp_mem
from .tcp.context import Context
from .tcp.events import Cause, StateChanged
from .tcp.state import State
from .tcp.tcb import Tcb
from .wire import vnet
from .wire.checksum import mod_ffff, ones_sum
from .wire.ip import (
    PROTO_ICMP,
    PROTO_TCP,
    build_icmp_echo_reply,
    build_ipv4,
    header_ok,
    ip_to_bytes,
)
from .wire.tcp import (
    ACK,
    RST,
    SYN,
    OptionError,
    ParseError,
    build_tcp_ipv4,
    build_tcp_ipv4_head,
    parse_tcp,
    tcp_checksum_filled,
)

# A TCB in these states has left the table (table.py _on_state): no segment reaches it.
GONE = frozenset((State.CLOSED, State.TIME_WAIT))

log = logging.getLogger("ustack")


def default_tcp_mem() -> tuple[int, int, int]:
    """Linux tcp_init_mem(): L = max(128, buffer pages / 16), {3/4 L, L, 3/2 L}; the
    machine's physical pages stand in for nr_free_buffer_pages()."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4096
    except (ValueError, OSError, AttributeError):
        pages = 1 << 20
    low = max(128, pages // 16)
    return (low * 3 // 4, low, low * 3 // 2)
T = TypeVar("T")


class Device(Protocol):
    """Frames out. A device may also have `mtu` (default 1500) and `tso`: True when it
    takes `write_parts(hdr, head, payload)`, one packet behind a virtio-net header
    `hdr` (ustack.wire.vnet), and completes partial checksums and cuts super-segments
    (io.tun.TunDevice)."""

    def write(self, frame: bytes) -> None: ...


Tap = Callable[[str, bytes], None]  # ("in" | "out", frame)


class ConnectionOwner(Protocol):
    """What the shell calls on the owner of a connection (ustack.aio's transport).

    The shell defines this interface and the layer above implements it, so the shell
    never imports that layer (dependencies run one way: aio -> stack -> table -> tcp)."""

    def core_events(self, events: list) -> None:
        """The core's events for this connection, in order, delivered from _flush."""


class ListenerOwner(Protocol):
    """What the shell calls on the owner of a listener (ustack.aio's server)."""

    def accept_ready(self) -> None:
        """The listener's accept queue holds connections to take (and adopt)."""


class StackShell:
    """One IPv4 address, its TCP table, and the glue to a device and to the loop.

    The asyncio API (streams, transports, servers) is `ustack.aio.Stack`, a subclass."""

    def __init__(self, address: str = "10.77.0.2", *, config: Config | None = None,
                 stats: Stats | None = None, loop: asyncio.AbstractEventLoop | None = None,
                 secret: bytes | None = None) -> None:
        self.address = address.split("/")[0]
        self.addr_bytes = ip_to_bytes(self.address)
        self.loop = loop or asyncio.get_event_loop()
        self.ctx = Context(config, stats, secret=secret)
        self.config = self.ctx.config
        if self.config.tcp_mem is None:
            self.config.tcp_mem = default_tcp_mem()
        self.stats = self.ctx.stats
        self.table = TcpTable(self.ctx, self._on_tcb_event)
        self.device: Device | None = None
        self.taps: list[Tap] = []
        self.impair: Impairment | None = None  # see set_impairment()
        # Hooks for the layers around the core: an impairment layer (ingress/egress
        # filters), pcap taps, and state-change observers (trace, event log).
        self.observers: list[Callable[[Tcb, StateChanged], None]] = []
        self._pending: list[tuple[Tcb, list]] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._ident = 0
        self._closed = False
        self._tso = False  # TCP frames go out with partial checksums, maybe super-sized
        # `ustack serve --max-connections`: TCBs (any state but TIME_WAIT) beyond which
        # a SYN for a new connection is dropped; 0 is no limit.
        self.max_connections = 0

    # ------------------------------------------------------------------ device side

    def attach(self, device: Device) -> None:
        self.device = device
        self._link_changed()

    def _link_changed(self) -> None:
        # Offloads only straight to the device: the impairment layer works on wire
        # packets (it drops, corrupts and reorders what a real link would carry).
        dev = self.device
        self._tso = bool(getattr(dev, "tso", False)) and self.impair is None
        mtu = getattr(dev, "mtu", 1500)
        # 64 KB per packet less the IP header and the largest TCP header (Linux
        # sk_gso_max_size: the device's 65536 less MAX_TCP_HEADER + 1).
        self.ctx.set_link(mtu, 65535 - 20 - 60 if self._tso else 0)

    def now(self) -> float:
        return self.loop.time()

    def set_impairment(self, impairment: Impairment | None) -> None:
        """Put an impairment layer (ustack.impair) between the device and the stack, both
        directions; None removes it. Taps see what the stack itself receives and sends."""
        if self.impair is not None:
            self.impair.close()
        if impairment is not None:
            impairment.bind(self.loop, functools.partial(self.receive, impaired=True),
                            self._device_write)
        self.impair = impairment
        self._link_changed()

    def receive(self, frame: bytes, impaired: bool = False, csum_ok: bool = False,
                gso: int = 0) -> None:
        """One IPv4 frame from the device. Never raises: bad input is counted and dropped.

        `csum_ok`: the device vouches for the TCP checksum (a virtio-net header with
        NEEDS_CSUM or DATA_VALID), so it is not summed here. `gso`: the segment size of
        a super-segment (the frame is one TCP segment of up to 64 KB all the same)."""
        if type(frame) is memoryview and (self.impair is not None or self.taps):
            frame = bytes(frame)  # they keep or change it: give them their own
        if self.impair is not None and not impaired:
            self.impair.inbound.send(frame)  # comes back here, impaired=True, maybe later
            return
        for tap in self.taps:
            tap("in", frame)
        stats = self.stats
        n = len(frame)
        if n and frame[0] >> 4 == 6:
            return  # IPv6 (e.g. the kernel's router solicitations): not ours, not counted
        stats["IpInReceives"] += 1
        if n < 20 or frame[0] >> 4 != 4:
            stats["IpInHdrErrors"] += 1
            return
        ihl = (frame[0] & 15) * 4
        total = (frame[2] << 8) | frame[3]
        if ihl < 20 or total < ihl or total > n or not header_ok(frame, ihl):
            stats["IpInHdrErrors"] += 1
            return
        if frame[16:20] != self.addr_bytes:
            stats["IpInAddrErrors"] += 1
            return
        first = frame[12]
        if first == 0 or first == 127 or first >= 224 or frame[12:16] == self.addr_bytes:
            # A martian source (RFC 1122 3.2.1.3: 0/8, loopback, multicast, class E and
            # broadcast; or our own address) must never get an answer, least of all a
            # RST: Linux drops these in ip_route_input_slow().
            stats["IpInAddrErrors"] += 1
            return
        if (frame[6] & 0x3F) or frame[7]:
            stats["IpReasmFails"] += 1  # fragments: ustack does not reassemble
            return
        proto = frame[9]
        if proto == PROTO_TCP:
            self._tcp_input(frame, ihl, total, csum_ok, gso)
        elif proto == PROTO_ICMP:
            self._icmp_input(frame, ihl, total)
        else:
            stats["IpInUnknownProtos"] += 1
            return
        self._kick()

    def _tcp_input(self, frame: bytes, ihl: int, total: int, csum_ok: bool = False,
                   gso: int = 0) -> None:
        stats = self.stats
        stats["IpInDelivers"] += 1
        tcp_len = total - ihl
        if tcp_len < 20:
            stats["TcpInErrs"] += 1
            return
        if not csum_ok:
            # RFC 9293 3.1: checksum over the pseudo-header (addresses, protocol,
            # length). The one's-complement sum is the big-endian integer modulo
            # 0xFFFF (checksum.py); it verifies when that is 0 (a sum of 0xFFFF). A
            # memoryview: no copy of the segment just to sum it.
            seg_int = int.from_bytes(memoryview(frame)[ihl:total], "big")
            if tcp_len & 1:
                seg_int <<= 8
            if mod_ffff(int.from_bytes(frame[12:20], "big") + PROTO_TCP + tcp_len + seg_int,
                        tcp_len + 1):
                stats["TcpInCsumErrors"] += 1
                stats["TcpInErrs"] += 1
                return
        # The demux key, sliced straight from the header: with a 20-byte IP header the
        # addresses and ports are contiguous. Measured by benchmarks/bench_wire.py: the
        # slice 43 ns, our struct-based parse_tcp 1.2 us, a full dpkt.ip.IP parse 5.3 us,
        # so the hot path slices and unpacks with struct and leaves dpkt to the tools.
        key = frame[12:24] if ihl == 20 else bytes(frame[12:20]) + frame[ihl:ihl + 4]
        if type(key) is memoryview:
            key = bytes(key)  # the table keeps keys: never a view pinning the frame
        try:
            seg = parse_tcp(frame, ihl, total)
        except ParseError as exc:
            stats["TcpInErrs"] += 1
            if isinstance(exc, OptionError):  # a bad data offset is no bad option
                stats["TcpExtTCPBadOptions"] += 1
            return
        if gso and len(seg.payload) > gso:
            seg.gso = gso
        ecn = frame[1] & 3  # the ECN field (RFC 3168 5); Linux counts it in ip_rcv_core()
        if ecn:
            seg.ecn = ecn
            n = -(-len(seg.payload) // seg.gso) if seg.gso else 1
            if ecn == 3:
                stats["IpExtInCEPkts"] += n
            elif ecn == 2:
                stats["IpExtInECT0Pkts"] += n
            else:
                stats["IpExtInECT1Pkts"] += n
        # One per segment as it came in: a super-segment is one (LINUX-SPEC-2 item 211).
        stats["TcpInSegs"] += 1
        if (self.max_connections and seg.flags & (SYN | ACK | RST) == SYN
                and len(self.table.est) >= self.max_connections
                and key not in self.table.est):
            # A new connection over the daemon's limit: dropped as a full listen queue
            # drops it (the peer retransmits its SYN), counted apart as well.
            stats["UstackMaxConnDrops"] += 1
            stats["TcpExtListenDrops"] += 1
            return
        self.table.input(key, seg, self.loop.time())

    def _icmp_input(self, frame: bytes, ihl: int, total: int) -> None:
        stats = self.stats
        stats["IcmpInMsgs"] += 1
        msg = frame[ihl:total]
        if len(msg) < 8 or ones_sum(msg) != 0xFFFF:
            stats["IcmpInErrors"] += 1
            return
        if msg[0] == 8 and msg[1] == 0:  # echo request (RFC 792)
            stats["IcmpInEchos"] += 1
            stats["IcmpOutMsgs"] += 1
            stats["IcmpOutEchoReps"] += 1
            self._write(build_ipv4(self.addr_bytes, bytes(frame[12:16]), PROTO_ICMP,
                                   build_icmp_echo_reply(msg), self._next_ident()))

    def _next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def _write(self, frame: bytes) -> None:
        for tap in self.taps:
            tap("out", frame)
        self.stats["IpOutRequests"] += 1
        if self.impair is not None:
            self.impair.outbound.send(frame)
        elif self.device is not None:
            self.device.write(frame)

    def _write_offloaded(self, out: list) -> None:
        """TCP frames with partial checksums that the kernel completes, super-segments
        with the segment size it cuts them to (LINUX-SPEC-2 item 210). Taps see the
        frame as it will be delivered: the same packet, its checksum filled in."""
        device = self.device
        if device is None:
            return
        stats = self.stats
        taps = self.taps
        partial = vnet.partial_tcp
        write = device.write_parts  # type: ignore[attr-defined]
        for src, dst, seg in out:
            head = build_tcp_ipv4_head(seg, src, dst, self._next_ident())
            if taps:
                full = tcp_checksum_filled(head + seg.payload)
                for tap in taps:
                    tap("out", full)
            stats["IpOutRequests"] += 1
            write(partial(20, len(head), seg.gso), head, seg.payload)

    def _device_write(self, frame: bytes) -> None:
        if self.device is not None:
            self.device.write(frame)

    # ------------------------------------------------------------------ the loop side

    def _on_tcb_event(self, tcb: Tcb) -> None:
        # Called from inside the table; delivery waits for _flush so that protocol
        # callbacks never re-enter the core while it is processing a segment.
        self._pending.append((tcb, tcb.events[:]))
        if self.observers:
            for ev in tcb.events:
                # Only state changes: the per-segment events (data, send space) would
                # cost every observer a call per packet for nothing.
                if type(ev) is StateChanged:
                    for obs in self.observers:
                        obs(tcb, ev)
        self._kick()

    def _kick(self) -> None:
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        table = self.table
        mem = self.ctx.mem
        now = self.loop.time()
        if mem.due(now):  # tcp_mem: the queues' sum, at most every 100 ms (tcp/mem.py)
            mem.sample(tcp_mem.usage(table.est.values()), self.config.tcp_mem, now,
                       self.stats)
        for _ in range(64):  # event delivery may cause more events; bounded, never a hang
            if not self._pending:
                if not self.ctx.output_due:
                    break
                # The batch's deferred output (Tcb.output_soon()); the events it makes
                # are delivered in the next round.
                self._send(table.transmit(self.loop.time()))
                continue
            batch, self._pending = self._pending, []
            for tcb, events in batch:
                owner = tcb.owner
                if owner is None and tcb.listener is not None:
                    server: ListenerOwner | None = tcb.listener.owner
                    if server is not None:
                        server.accept_ready()
                    owner = tcb.owner
                if owner is not None:
                    try:
                        owner.core_events(events)
                    except Exception:  # an application bug must not kill the stack
                        log.exception("error delivering events to %r", owner)
                elif tcb.state in GONE:
                    # No owner will ever read it: break its cycles now (Tcb.release;
                    # an owned TCB is released by its transport, ustack/aio.py).
                    tcb.release()
        notices = self.ctx.notices
        while notices:
            eventlog.notice(notices.popleft())
        self._send(table.transmit(self.loop.time()))
        if self._pending or self.ctx.output_due:
            self._kick()
        self._arm_timer()

    def _send(self, out: list) -> None:
        if not out:
            return
        if self._tso:
            self._write_offloaded(out)
        else:
            for src, dst, seg in out:
                self._write(build_tcp_ipv4(seg, src, dst, self._next_ident()))

    def _arm_timer(self) -> None:
        at = self.table.next_deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None and not self._closed:
            self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.table.handle_timers(self.loop.time())
        self._flush()

    def call(self, tcb: Tcb, fn: Callable[..., T], *args: object) -> T:
        """Run a user call on a TCB and schedule the transmission it causes."""
        try:
            return self.table.call(tcb, self.loop.time(), fn, *args)
        finally:
            self._kick()

    # ------------------------------------------------------------------ owners

    def adopt(self, tcb: Tcb, owner: ConnectionOwner) -> None:
        """Make `owner` the receiver of this connection's events (core_events)."""
        tcb.owner = owner

    def kick(self) -> None:
        """Schedule a flush: transmit what user calls queued, re-arm the timer."""
        self._kick()

    # ------------------------------------------------------------------ opens

    def listen(self, host: str, port: int, backlog: int, owner: ListenerOwner) -> Listener:
        """A passive open; `owner.accept_ready()` hears of connections to accept."""
        return self.table.listen(host, port, backlog, owner=owner)

    def accept(self, listener: Listener) -> Tcb | None:
        """The next established connection of `listener`'s accept queue, if any."""
        return self.table.accept(listener)

    def unlisten(self, listener: Listener) -> None:
        self.table.unlisten(listener, self.loop.time())
        self._kick()

    def connect(self, host: str, port: int, owner: ConnectionOwner | None = None,
                local_port: int | None = None,
                prepare: Callable[[Tcb], None] | None = None) -> Tcb:
        """An active open from this stack's address (SYN sent at the next flush);
        `prepare(tcb)` runs before the SYN is made (socket options set before connect)."""
        tcb = self.table.connect(self.address, host, port, self.loop.time(), owner=owner,
                                 lport=local_port, prepare=prepare)
        self._kick()
        return tcb

    def abort_all(self) -> None:
        """Reset every connection (shutdown): owners abort their own, so they hear of
        it; connections not yet accepted are aborted here."""
        for tcb in self.table.connections():
            owner = tcb.owner
            if owner is not None:
                # A reset, whatever abort() means to the owner (aio: kernel-like close).
                getattr(owner, "reset", owner.abort)()
            else:
                self.call(tcb, tcb.abort, self.loop.time())

    # ------------------------------------------------------------------ views

    def rows(self, tw_limit: int | None = None) -> list[dict]:
        """One dict per connection, listener and TIME_WAIT record (table.rows())."""
        return self.table.rows(self.loop.time(), tw_limit)

    @property
    def time_wait_count(self) -> int:
        return len(self.table.tw)

    def on_time_wait_gone(self, hook: Callable[[bytes, Cause], None]) -> None:
        """Call `hook(key, cause)` whenever a TIME_WAIT record leaves the table (no TCB
        exists to report a StateChanged for it)."""
        self.table.tw.gone_hooks.append(hook)

    def off_time_wait_gone(self, hook: Callable[[bytes, Cause], None]) -> None:
        if hook in self.table.tw.gone_hooks:
            self.table.tw.gone_hooks.remove(hook)

    @property
    def syn_recv_count(self) -> int:
        """Request records (half-open connections, reqsock.py), listed or not."""
        return len(self.table.reqs)

    def status(self) -> dict:
        return {"address": self.address, "connections": self.rows(),
                "stats": dict(self.stats), "time_wait": self.time_wait_count}

    def close(self) -> None:
        self._closed = True
        if self.impair is not None:
            self.impair.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
