"""The target a script runs against: ustack's sans-IO core (a TcpTable) on a virtual
clock, with the script's system calls mapped onto the core's user calls.

Why the core and not the asyncio API: packetdrill's verdicts are about time (a segment
must leave at +0.2 s, within 4 ms), and only a virtual clock makes those exact and
repeatable on a loaded machine. The asyncio API is a thin shell over these same calls
(`Tcb.send`, `recv`, `shutdown`, `close`, `TcpTable.listen`/`connect`, the socket
options of ustack/sockopt.py), and tests/test_dropin_*.py hold it against kernel
asyncio separately.

The script's local host is ustack at 10.77.0.2 (server sockets bind port 8080, as
packetdrill's do), the remote host 10.77.0.1 (port 40000; a client socket connects to
its port 8080). Nothing here touches a network.
"""

from __future__ import annotations

import errno as E
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config
from ..table import Listener, TcpTable, make_key
from ..tcp.context import Context
from ..tcp.state import State
from ..tcp.tcb import Tcb
from ..wire.ip import ip_to_bytes
from ..wire.tcp import Segment

LOCAL = "10.77.0.2"
REMOTE = "10.77.0.1"
LOCAL_PORT = 8080  # bind(fd, ..., ...) in a script
REMOTE_PORT = 40000  # the script's remote port for inbound connections
START = 100.0  # the virtual clock at script time 0


@dataclass
class Sock:
    """One file descriptor of the script."""

    fd: int
    nonblock: bool = False
    bound: bool = False
    listener: Listener | None = None
    tcb: Tcb | None = None
    options: list[tuple[int, int, object]] = field(default_factory=list)  # before a TCB
    rd_shut: bool = False
    closed: bool = False


class CoreTarget:
    """A TcpTable on a virtual clock, seen from the wire (segments in and out) and from
    the application (the calls)."""

    def __init__(self, config: Config) -> None:
        self.ctx = Context(config, secret=b"packetdrill-key!", seed=1)
        # packetdrill's TUN device has TSO and GSO on (its netdev.c), so the kernel's
        # packets reach a script as super-segments ("P. 1:10001(10000)"): the core
        # builds the same with the size goal of a TSO device (ustack's offload mode).
        self.ctx.set_link(1500, 65535 - 20 - 60)
        self.table = TcpTable(self.ctx, lambda tcb: None)
        self.now = START
        self.out: list[tuple[float, Segment]] = []  # sent, not yet matched

    # ------------------------------------------------------------------ the clock

    def drain(self) -> None:
        for _src, _dst, seg in self.table.transmit(self.now):
            self.out.append((self.now, seg))

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run the clock to `end`, each timer at its own deadline, halting as soon as
        stop() is true (the clock then stays where it became true)."""
        while True:
            if stop is not None and stop():
                return True
            d = self.table.next_deadline()
            if d is None or d > end:
                break
            self.now = max(self.now, d)
            self.table.handle_timers(self.now)
            self.drain()
        self.now = max(self.now, end)
        self.table.handle_timers(self.now)
        self.drain()
        return stop is not None and stop()

    # ------------------------------------------------------------------ the wire

    def key(self, lport: int, rport: int) -> bytes:
        return make_key(ip_to_bytes(REMOTE), ip_to_bytes(LOCAL), rport, lport)

    def inject(self, seg: Segment) -> None:
        self.table.input(self.key(seg.dport, seg.sport), seg, self.now)
        self.drain()

    # ------------------------------------------------------------------ calls

    def call(self, tcb: Tcb, fn: Callable, *args: object) -> object:
        r = self.table.call(tcb, self.now, fn, *args)
        self.drain()
        return r

    def listen(self, sock: Sock, backlog: int, apply: Callable[[Tcb], None]) -> None:
        lst = self.table.listen(LOCAL, LOCAL_PORT, backlog)
        lst.inherit = apply
        sock.listener = lst

    def connect(self, sock: Sock, apply: Callable[[Tcb], None]) -> Tcb:
        lport = LOCAL_PORT if sock.bound else None
        tcb = self.table.connect(LOCAL, REMOTE, LOCAL_PORT, self.now, lport=lport,
                                 prepare=apply)
        self.drain()
        return tcb

    def close_listener(self, lst: Listener) -> None:
        self.table.close_listener(lst, self.now) if hasattr(self.table, "close_listener") \
            else self.table.unlisten(lst, self.now)
        self.drain()

    @staticmethod
    def error_of(tcb: Tcb) -> int:
        return tcb.error or 0

    @staticmethod
    def established(tcb: Tcb) -> bool:
        return tcb.state not in (State.SYN_SENT, State.SYN_RECEIVED, State.CLOSED)

    @staticmethod
    def dead(tcb: Tcb) -> bool:
        return tcb.state == State.CLOSED


__all__ = ["E", "LOCAL", "LOCAL_PORT", "REMOTE", "REMOTE_PORT", "START", "CoreTarget", "Sock"]
