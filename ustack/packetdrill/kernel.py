"""`--kernel` mode: play a packetdrill script against the real Linux kernel, packetdrill's
own design, so that a script that fails on ustack is known to fail because of ustack,
not because of the script or of this project's runner.

Each script gets a network namespace of its own with a TUN device in it
(kernel_wire.py): the kernel is 10.77.0.2 on `tun0`, the script's host 10.77.0.1 beyond
it. Inbound script packets are written to the TUN, the kernel's packets are read from
it and held to the same rules as run.py (flags, relative seq/ack, win, the exact option
list, TS val/ecr mapping; see run.py's docstring), and the calls are real system calls
on kernel sockets in the namespace. Time is real: `time.monotonic()`, with
packetdrill's live-run rules (run.c): a relative time counts from when the event is
reached, except that consecutive inbound packets are anchored to each other's script
times; an event the runner reaches later than its time by more than the tolerance
fails, as in packetdrill's check_event_time(). On a loaded machine the 4 ms default
tolerance can be too tight: that is a timing failure, and the message says by how much.

Shell lines touch only the namespace: defaults.sh's and the script's sysctls are
applied with `ip netns exec NS sysctl -w` (net.ipv4/net.ipv6 only; host-wide ones such
as net.core.* are skipped), `tc` only on the test's own tun0; anything else is
unsupported. Needs root, /dev/net/tun and iproute2.
"""

from __future__ import annotations

import contextlib
import errno as E
import fcntl
import io
import os
import re
import select
import shlex
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..wire.tcp import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, ParseError, Segment
from . import kernel_wire as kw
from . import tcpinfo
from .run import _FLAGS as FLAGS
from .run import DEFAULTS, MASK, PEER_ISN, TOLERANCE, Failure, Unsupported, Verdict, map_ecr
from .run import _options_match as options_match
from .script import Code, Event, Flag, Packet, ScriptError, Shell, Syscall, parse

SERVER_PORT = 8080  # bind(fd, ..., ...) and connect(fd, ..., ...) in a script
REMOTE_PORT = 40000  # the script's port for the connections it opens
# How long past its time a call that should not block may take before it is declared
# blocked, and how long past a packet's window the runner still waits for a late one
# (so that the message says "late", not "nothing sent").
GRACE = 1.0
_ECN = {"noecn": 0, "ect1": 1, "ect0": 2, "ce": 3}

# Linux's values (include/uapi: asm-generic/socket.h, linux/tcp.h, linux/in.h,
# asm-generic/fcntl.h, asm-generic/sockios.h), the names scripts use.
CONSTANTS = {
    "SOL_SOCKET": 1, "SOL_TCP": 6, "IPPROTO_TCP": 6, "SOL_IP": 0, "IPPROTO_IP": 0,
    "SO_REUSEADDR": 2, "SO_TYPE": 3, "SO_ERROR": 4, "SO_SNDBUF": 7, "SO_RCVBUF": 8,
    "SO_KEEPALIVE": 9, "SO_LINGER": 13, "SO_REUSEPORT": 15, "SO_RCVLOWAT": 18,
    "SO_SNDBUF_FORCE": 32, "SO_RCVBUF_FORCE": 33, "SO_MAX_PACING_RATE": 47,
    "TCP_NODELAY": 1, "TCP_MAXSEG": 2, "TCP_CORK": 3, "TCP_KEEPIDLE": 4,
    "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 6, "TCP_SYNCNT": 7, "TCP_LINGER2": 8,
    "TCP_DEFER_ACCEPT": 9, "TCP_WINDOW_CLAMP": 10, "TCP_INFO": 11, "TCP_QUICKACK": 12,
    "TCP_CONGESTION": 13, "TCP_THIN_LINEAR_TIMEOUTS": 16, "TCP_USER_TIMEOUT": 18,
    "TCP_FASTOPEN": 23, "TCP_NOTSENT_LOWAT": 25, "TCP_INQ": 36,
    "IP_TOS": 1, "IP_TTL": 2, "IP_MTU_DISCOVER": 10, "IP_PMTUDISC_DONT": 0,
    "IP_PMTUDISC_WANT": 1, "IP_PMTUDISC_DO": 2, "IP_PMTUDISC_PROBE": 3,
    "SHUT_RD": 0, "SHUT_WR": 1, "SHUT_RDWR": 2,
    "O_RDONLY": 0, "O_WRONLY": 1, "O_RDWR": 2, "O_NONBLOCK": 0o4000,
    "F_GETFL": 3, "F_SETFL": 4,
    "MSG_PEEK": 2, "MSG_DONTWAIT": 0x40, "MSG_NOSIGNAL": 0x4000, "MSG_MORE": 0x8000,
    "SIOCINQ": 0x541B, "FIONREAD": 0x541B, "SIOCOUTQ": 0x5411, "SIOCOUTQNSD": 0x894B,
}
_SEND_FLAGS = {"0", "MSG_MORE", "MSG_DONTWAIT", "MSG_NOSIGNAL"}


class _Errno(Exception):
    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


@dataclass
class _Sock:
    sock: socket.socket
    nonblock: bool = False


@dataclass
class _Job:
    """A system call running in a thread of its own (as packetdrill's syscall thread)."""

    event: Event
    call: Syscall
    start: float  # script time the call began
    end: float | None  # script time a blocking call must return at
    done: bool = False
    value: int = 0
    err: int = 0
    at: float = 0.0  # script time it returned
    thread: threading.Thread | None = None


class _Blocked(BaseException):
    """Raised in the main thread by the watchdog of a call that should not block."""


def _run_inline(work: Callable[[], int], limit: float) -> tuple[int, int, bool]:
    """Run `work` in the main thread; (value, errno, blocked). If it is still in the
    kernel after `limit` seconds, SIGUSR2 interrupts the system call (Python's
    handlers are installed without SA_RESTART, so the call returns EINTR and the
    handler's exception ends it; PEP 475)."""
    state = {"fired": False, "finished": False}
    main = threading.main_thread().ident

    def handler(_signum: int, _frame: object) -> None:
        if state["fired"] and not state["finished"]:
            raise _Blocked

    def fire() -> None:
        state["fired"] = True
        signal.pthread_kill(main, signal.SIGUSR2)  # type: ignore[arg-type]

    old = signal.signal(signal.SIGUSR2, handler)
    timer = threading.Timer(limit, fire)
    timer.daemon = True
    timer.start()
    try:
        try:
            value = int(work())
            state["finished"] = True
            return value, 0, False
        except _Errno as exc:
            return -1, exc.errno, False
        except OSError as exc:
            return -1, exc.errno or 0, False
        except _Blocked:
            return -1, 0, True
    finally:
        state["finished"] = True
        timer.cancel()
        signal.signal(signal.SIGUSR2, old)


def _const(text: str) -> int:
    """`MSG_MORE`, `O_RDWR|O_NONBLOCK`, `4`, `0x10`."""
    total = 0
    for part in text.split("|"):
        part = part.strip()
        if part in CONSTANTS:
            total |= CONSTANTS[part]
        elif re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)", part):
            total |= int(part, 0)
        else:
            raise Unsupported(f"constant {part}")
    return total


def _optval(text: str, length: int) -> bytes:
    """A setsockopt value as the script writes it, in `length` bytes."""
    text = text.strip()
    m = re.fullmatch(r"\[\s*([^\]]+?)\s*\]", text) or re.fullmatch(r"(-?\d+)", text)
    if m:
        v = _const(m.group(1))
        fmt = {1: "=B", 2: "=H", 4: "=i", 8: "=q"}.get(length)
        if fmt is None:
            raise Unsupported(f"option length {length} for {text}")
        return struct.pack(fmt, v & 0xFF if length == 1 else v)
    m = re.fullmatch(r"\{\s*onoff\s*=\s*(\d+)\s*,\s*linger\s*=\s*(\d+)\s*\}", text)
    if m:
        return struct.pack("=ii", int(m.group(1)), int(m.group(2)))
    m = re.fullmatch(r'"([^"]*)"', text)
    if m:
        return m.group(1).encode()
    raise Unsupported(f"option value {text}")


def _flag_letters(flags: int) -> str:
    s = "".join(ch for bit, ch in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"),
                                   (ACK, "."), (ECE, "E"), (CWR, "W"), (URG, "U"))
                if flags & bit)
    return s or "-"


_ARITH = re.compile(r"\$\(\(([-+*/%() 0-9]+)\)\)")
_REDIRECT = re.compile(r"\s*\d?>>?\s*(?:&\d|\S+)")


def _expand(line: str) -> str:
    """Bash's `$((15*1024*1024))`, the only expansion defaults.sh uses."""
    return _ARITH.sub(lambda m: str(eval(m.group(1).replace("/", "//"),  # digits only
                                         {"__builtins__": {}})), line)


class KernelRunner:
    def __init__(self, path: str = "<script>", *, tolerance: float = TOLERANCE,
                 trace: bool = False) -> None:
        self.path = path
        # With `trace`: every packet both ways and every call, as lines, and after a
        # failure what the kernel sent in the next half second (what it did instead).
        self.trace: list[str] | None = [] if trace else None
        self.tolerance = tolerance
        self.ts_tick: float | None = None
        self.ns: kw.Namespace | None = None
        self.socks: dict[int, _Sock] = {}
        self.under_test: int | None = None  # packetdrill's socket_under_test
        self.t0: float | None = None
        self.prev_time = 0.0  # the previous event's script time
        self.prev_inbound = False
        self.inq: list[kw.Outbound] = []  # read from the TUN, not yet matched
        self.jobs: list[_Job] = []  # blocking calls in progress
        self.iss: int | None = None
        self.lport = SERVER_PORT
        self.peer_port = REMOTE_PORT
        self.ts_map: dict[int, int] = {}
        self.ts_base: tuple[int, int] | None = None
        self.py_env: dict = dict(tcpinfo.SYMBOLS)
        self.notes: list[str] = []
        self.cc: str | None = None  # TCP_CONGESTION for every socket (see _apply_sysctls)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)

    # ------------------------------------------------------------------ time

    def _now(self) -> float:
        """Script time now (seconds since the first timed event)."""
        assert self.t0 is not None
        return time.monotonic() - self.t0

    def _pump(self, until: float, stop: Callable[[], bool] | None = None) -> bool:
        """Read the TUN and collect finished calls until script time `until` or stop()."""
        assert self.ns is not None
        while True:
            self._collect()
            if stop is not None and stop():
                return True
            wait = until - self._now()
            if wait <= 0:
                return stop is not None and stop()
            r, _, _ = select.select([self.ns.fd, self._wake_r], [], [], wait)
            if self._wake_r in r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)

    def _collect(self) -> None:
        assert self.ns is not None
        while True:
            try:
                frame = os.read(self.ns.fd, kw.READ_SIZE)
            except BlockingIOError:
                break
            at = self._now()
            try:
                pkt = kw.parse_outbound(frame, at)
            except ParseError as exc:
                self.notes.append(f"unparsable packet from the kernel: {exc}")
                continue
            if pkt is not None:
                self.inq.append(pkt)
                if self.trace is not None:
                    self.trace.append(f"> {self._describe(pkt)}")
        for job in [j for j in self.jobs if j.done]:
            self.jobs.remove(job)
            self._check_job(job)

    def _event_time(self, ev: Event) -> tuple[float, float | None]:
        """The event's script time (and a window's or a blocking call's end), by
        packetdrill's adjust_relative_event_times()."""
        t = ev.time
        inbound = isinstance(ev.what, Packet) and ev.what.direction == "<"
        if not t.relative:
            offset = 0.0
        elif inbound and self.prev_inbound:
            offset = self.prev_time
        else:
            offset = self._now()
        start = offset + t.start
        end = None if t.end is None else offset + t.end if (t.relative or t.end_relative) \
            else t.end
        return start, end

    def _reach(self, ev: Event, at: float, what: str) -> None:
        """Wait for script time `at`. What the kernel sends meanwhile is queued and
        matched, with its own time, by the next outbound line (packetdrill's order: a
        packet that answers an injected one can be on the wire before a `+0` call
        the script lists first)."""
        self._pump(at)
        late = self._now() - at
        if late > self.tolerance:
            raise Failure(f"timing error: {what} due at {at:.6f} could only start at "
                          f"{at + late:.6f} (the runner was late; machine loaded?)")

    def _check_unmatched(self, last: float) -> None:
        """At the end: a packet sent while the script ran (before its last event) that
        no outbound line matched is one the script does not expect (run.py's rule, so
        that a script held against ustack is held to the same here); what comes with
        or after the last event is beyond the script, as in packetdrill."""
        self._collect()
        for p in self.inq:
            if p.at < last - self.tolerance:
                raise Failure(f"unexpected packet {self._describe(p)}: no outbound line "
                              f"matched it (packetdrill itself would not look)")

    # ------------------------------------------------------------------ packets

    def _describe(self, p: kw.Outbound) -> str:
        seg = p.seg
        base = seg.seq if seg.flags & SYN else self.iss or 0
        rel = (seg.seq - base) & MASK
        n = len(seg.payload)
        s = f"{_flag_letters(seg.flags)} {rel}:{(rel + n) & MASK}({n})"
        if seg.flags & ACK:
            s += f" ack {(seg.ack - PEER_ISN) & MASK}"
        s += f" win {seg.wnd}"
        if p.options:
            s += " <" + ",".join(p.options) + ">"
        if p.gso_size:
            s += f" (TSO, {p.gso_size}-byte segments)"
        return s + f" at {p.at:.6f}"

    @staticmethod
    def _pattern(pkt: Packet) -> str:
        s = f"{pkt.flags} {pkt.start}:{pkt.end}({pkt.end - pkt.start})"
        if pkt.ack is not None:
            s += f" ack {pkt.ack}"
        if pkt.win is not None:
            s += f" win {pkt.win}"
        if pkt.options is not None:
            s += " <" + ",".join(pkt.options) + ">"
        return s

    def _map_ecr(self, ecr: int) -> int:
        return map_ecr(self.ts_map, self.ts_base, ecr)

    def _inbound(self, ev: Event, pkt: Packet) -> None:
        assert self.ns is not None
        start, _ = self._event_time(ev)
        self._reach(ev, start, "inbound packet")
        flags = 0
        for ch in pkt.flags:
            if ch != "-":
                flags |= FLAGS[ch]
        if pkt.ack is not None:
            flags |= ACK
        seg = Segment(self.peer_port, self.lport, (PEER_ISN + pkt.start) & MASK,
                      ((self.iss or 0) + pkt.ack) & MASK if pkt.ack is not None else 0,
                      flags, pkt.win if pkt.win is not None else 0,
                      b"\0" * (pkt.end - pkt.start))
        try:
            opts = kw.encode_options(pkt.options or [], self._map_ecr, self.iss or 0)
        except ValueError as exc:
            raise Unsupported(f"inbound option {exc}") from None
        tos = 0
        if pkt.ecn is not None:
            if pkt.ecn not in _ECN:
                raise Unsupported(f"inbound ECN codepoint [{pkt.ecn}]")
            tos = _ECN[pkt.ecn]
        if pkt.tos is not None:
            raise Unsupported(f"inbound IP fields ({pkt.tos})")
        os.write(self.ns.fd, kw.build_inbound(seg, opts, tos))
        if self.trace is not None:
            self.trace.append(f"< {ev.text.strip()}   (at {self._now():.6f})")
        self.prev_time, self.prev_inbound = start, True

    def _outbound(self, ev: Event, pkt: Packet) -> None:
        start, end = self._event_time(ev)
        if ev.time.any:
            lo, hi = None, self._now() + 10.0
        else:
            lo, hi = start - self.tolerance, (end if end is not None else start) + self.tolerance
        self._pump(hi + GRACE, stop=lambda: bool(self.inq))
        if not self.inq:
            raise Failure(f"expected {self._pattern(pkt)} at {start:.6f}, but nothing was "
                          f"sent (waited until {hi + GRACE:.6f})")
        p = self.inq.pop(0)
        seg = p.seg
        if seg.flags & SYN:
            self.iss = seg.seq
            if not seg.flags & ACK:  # our own SYN: the connection's ports
                self.lport, self.peer_port = seg.sport, seg.dport
        got = self._describe(p)
        if lo is not None and not lo <= p.at <= hi:
            window = f"{start:.6f}" + (f"~{end:.6f}" if end is not None else "")
            raise Failure(f"timing error: expected {self._pattern(pkt)} at {window} "
                          f"(tolerance {self.tolerance * 1e3:g} ms), got {got}")
        want = 0
        for ch in pkt.flags:
            if ch != "-":
                want |= FLAGS[ch]
        if pkt.ack is not None:
            want |= ACK
        if seg.flags != want:
            raise Failure(f"expected {self._pattern(pkt)}, got {got} (flags)")
        rel = (seg.seq - (self.iss or 0)) & MASK
        if (rel, (rel + len(seg.payload)) & MASK) != (pkt.start, pkt.end):
            raise Failure(f"expected {self._pattern(pkt)}, got {got} (sequence numbers)")
        if pkt.ack is not None and (seg.ack - PEER_ISN) & MASK != pkt.ack:
            raise Failure(f"expected {self._pattern(pkt)}, got {got} (ack)")
        if pkt.win is not None and seg.wnd != pkt.win:
            raise Failure(f"expected {self._pattern(pkt)}, got {got} (window {seg.wnd})")
        if pkt.ecn is not None:
            have = p.tos & 3
            ok = have in (1, 2) if pkt.ecn == "ect01" else _ECN.get(pkt.ecn) == have
            if pkt.ecn not in _ECN and pkt.ecn != "ect01":
                raise Unsupported(f"outbound ECN codepoint [{pkt.ecn}]")
            if not ok:
                raise Failure(f"expected [{pkt.ecn}], got ECN codepoint {have} in {got}")
        if pkt.tos is not None:
            raise Unsupported(f"outbound IP fields ({pkt.tos})")
        if seg.ts is not None:
            for opt in pkt.options or []:
                w = opt.split()
                if w[0] == "TS" and len(w) > 2 and w[2] != "*":
                    self.ts_map[int(w[2])] = seg.ts[0]
                    if self.ts_base is None:
                        self.ts_base = (int(w[2]), seg.ts[0])
        if pkt.options is not None and pkt.options != ["..."]:
            if not options_match(pkt.options, p.options, self):  # type: ignore[arg-type]
                raise Failure(f"expected <{','.join(pkt.options)}>, got "
                              f"<{','.join(p.options)}> in {got} (options)")
        self.prev_time, self.prev_inbound = start, False

    # ------------------------------------------------------------------ calls

    def _sock(self, arg: str) -> _Sock:
        try:
            fd = int(arg)
        except ValueError:
            raise Unsupported(f"file descriptor {arg!r}") from None
        s = self.socks.get(fd)
        if s is None:
            raise _Errno(E.EBADF)
        return s

    def _syscall(self, ev: Event, call: Syscall) -> None:
        start, end = self._event_time(ev)
        self._reach(ev, start, f"{call.name}() call")
        self.prev_time, self.prev_inbound = start, False
        fn = getattr(self, f"_sys_{call.name}", None)
        if fn is None:
            raise Unsupported(f"system call {call.name}()")
        job = _Job(ev, call, start, end if call.blocking_end else None)
        try:
            work = fn(call)
        except (_Errno, OSError) as exc:
            job.value, job.err, job.at, job.done = -1, exc.errno or 0, self._now(), True
            self._check_job(job)
            return
        if not callable(work):  # done at once, in this thread
            job.value, job.at, job.done = int(work), self._now(), True
            self._check_job(job)
            return

        def body() -> None:
            try:
                job.value = int(work())
            except _Errno as exc:
                job.value, job.err = -1, exc.errno
            except OSError as exc:
                job.value, job.err = -1, exc.errno or 0
            finally:
                job.at = self._now()
                job.done = True
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")

        if job.end is None and threading.current_thread() is threading.main_thread():
            # A call that should not block runs here: a thread of its own would wait
            # for the scheduler to wake it, milliseconds on a loaded machine, which
            # shows in the time of what it sends (a FIN's TSval, say).
            job.value, job.err, blocked = _run_inline(work, self.tolerance + GRACE)
            job.at, job.done = self._now(), True
            if blocked:
                raise Failure(f"{call.name}() blocked (still running "
                              f"{self.tolerance + GRACE:g} s after {start:.6f}); the script "
                              f"gives it no `...` end time")
            self._check_job(job)
            return
        job.thread = threading.Thread(target=body, daemon=True,
                                      name=f"pd-{call.name}-{ev.line}")
        job.thread.start()
        if job.end is not None:
            self.jobs.append(job)  # checked when it returns (_collect)
            return
        self._pump(start + self.tolerance + GRACE, stop=lambda: job.done)
        if not job.done:
            raise Failure(f"{call.name}() blocked (still running {self.tolerance + GRACE:g} s "
                          f"after {start:.6f}); the script gives it no `...` end time")
        self._check_job(job)

    def _check_job(self, job: _Job) -> None:
        call = job.call
        if self.trace is not None:
            self.trace.append(f"  {call.name}() = {job.value}"
                              f"{' ' + E.errorcode.get(job.err, str(job.err)) if job.err else ''}"
                              f" (line {job.event.line}, {job.start:.6f}..{job.at:.6f})")
        # Only a blocking call's return is timed (packetdrill's system_call_thread());
        # one without `...` runs to its end wherever the scheduler puts it.
        due = job.end if job.end is not None else job.start
        if job.end is not None and abs(job.at - due) > self.tolerance + 1e-9:
            raise Failure(f"timing error: line {job.event.line}: {call.name}() returned at "
                          f"{job.at:.6f}, expected at {due:.6f}")
        want = call.result
        if want == "...":
            return
        try:
            want_v = _const(want)
        except Unsupported:
            raise Unsupported(f"result {want!r}") from None
        got = f"{job.value}" + (f" {E.errorcode.get(job.err, job.err)}"
                                if job.value == -1 else "")
        if job.value != want_v:
            raise Failure(f"line {job.event.line}: {call.name}() returned {got}, expected "
                          f"{want}{' ' + call.errno if call.errno else ''}")
        if want_v == -1 and call.errno and E.errorcode.get(job.err) != call.errno:
            raise Failure(f"line {job.event.line}: {call.name}() failed with {got}, "
                          f"expected {call.errno}")

    def _new_fd(self, call: Syscall, sock: socket.socket) -> int:
        try:
            fd = int(call.result)
        except ValueError:
            raise Unsupported(f"{call.name}() result {call.result!r}") from None
        if fd < 0:
            sock.close()
            raise Failure(f"{call.name}() succeeded, the script expects {call.result}")
        self.socks[fd] = _Sock(sock)
        self.under_test = fd
        return fd

    def _sys_socket(self, call: Syscall):
        if len(call.args) < 3 or not call.args[1].startswith("SOCK_STREAM"):
            raise Unsupported(f"socket({', '.join(call.args)})")
        kind = _const(call.args[1].replace("SOCK_STREAM", "1").replace("SOCK_NONBLOCK",
                                                                        "0o4000"))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        if self.cc is not None:
            sock.setsockopt(socket.IPPROTO_TCP, CONSTANTS["TCP_CONGESTION"], self.cc.encode())
        fd = self._new_fd(call, sock)
        if kind & os.O_NONBLOCK:
            os.set_blocking(sock.fileno(), False)
            self.socks[fd].nonblock = True
        return fd

    def _sys_bind(self, call: Syscall):
        s = self._sock(call.args[0])
        s.sock.bind((kw.LOCAL, SERVER_PORT))
        self.lport = SERVER_PORT
        return 0

    def _sys_listen(self, call: Syscall):
        s = self._sock(call.args[0])
        s.sock.listen(int(call.args[1]))
        return 0

    def _sys_accept(self, call: Syscall):
        s = self._sock(call.args[0])

        def work() -> int:
            conn, addr = s.sock.accept()
            self.peer_port = addr[1]
            return self._new_fd(call, conn)
        return work

    def _sys_connect(self, call: Syscall):
        s = self._sock(call.args[0])
        self.peer_port = SERVER_PORT

        def work() -> int:
            err = s.sock.connect_ex((kw.REMOTE, SERVER_PORT))
            if err:
                raise _Errno(err)
            return 0
        if s.nonblock:
            return work()  # EINPROGRESS at once
        return work

    def _sys_write(self, call: Syscall):
        s, n = self._sock(call.args[0]), int(call.args[2])
        return lambda: os.write(s.sock.fileno(), bytes(n))

    def _sys_send(self, call: Syscall):
        s, n = self._sock(call.args[0]), int(call.args[2])
        flags = self._send_flags(call.args[3] if len(call.args) > 3 else "0")
        return lambda: s.sock.send(bytes(n), flags)

    def _sys_sendmsg(self, call: Syscall):
        s = self._sock(call.args[0])
        lens = [int(x) for x in re.findall(r"\{\s*\.\.\.\s*,\s*(\d+)\s*\}", call.args[1])]
        if not lens or "msg_control" in call.args[1]:
            raise Unsupported(f"sendmsg message {call.args[1]!r}")
        flags = self._send_flags(call.args[2] if len(call.args) > 2 else "0")
        return lambda: s.sock.sendmsg([bytes(n) for n in lens], [], flags)

    @staticmethod
    def _send_flags(text: str) -> int:
        names = {f.strip() for f in text.split("|")}
        if names - _SEND_FLAGS:
            raise Unsupported(f"send flags {text}")
        return _const(text)

    def _sys_read(self, call: Syscall):
        s, n = self._sock(call.args[0]), int(call.args[2])
        return lambda: len(os.read(s.sock.fileno(), n))

    def _sys_recv(self, call: Syscall):
        s, n = self._sock(call.args[0]), int(call.args[2])
        flags = _const(call.args[3]) if len(call.args) > 3 else 0
        return lambda: len(s.sock.recv(n, flags))

    def _sys_shutdown(self, call: Syscall):
        s = self._sock(call.args[0])
        how = _const(call.args[1])

        def work() -> int:
            s.sock.shutdown(how)
            return 0
        return work

    def _sys_close(self, call: Syscall):
        s = self._sock(call.args[0])
        del self.socks[int(call.args[0])]

        def work() -> int:
            s.sock.close()  # may linger (SO_LINGER): in the call's thread
            return 0
        return work

    def _sys_setsockopt(self, call: Syscall):
        s = self._sock(call.args[0])
        level, name = _const(call.args[1]), _const(call.args[2])
        length = int(call.args[4]) if len(call.args) > 4 else 4
        value = _optval(call.args[3], length)
        s.sock.setsockopt(level, name, value)
        return 0

    def _sys_getsockopt(self, call: Syscall):
        s = self._sock(call.args[0])
        level, name = _const(call.args[1]), _const(call.args[2])
        if level == CONSTANTS["IPPROTO_TCP"] and name == CONSTANTS["TCP_INFO"]:
            raise Unsupported("getsockopt TCP_INFO with a struct literal")
        m = re.fullmatch(r"\[\s*(\d+)\s*\]", call.args[4].strip()) if len(call.args) > 4 \
            else None
        length = int(m.group(1)) if m else 4
        raw = s.sock.getsockopt(level, name, length)
        got = int.from_bytes(raw[:4], "little", signed=True) if len(raw) >= 4 else \
            int.from_bytes(raw, "little")
        wm = re.fullmatch(r"\[\s*([^\]]+?)\s*\]", call.args[3].strip())
        if wm and wm.group(1) != "...":
            want = _const(wm.group(1))
            if got != want:
                raise Failure(f"getsockopt {call.args[2]} = {got}, expected {want}")
        return 0

    def _sys_fcntl(self, call: Syscall):
        s = self._sock(call.args[0])
        cmd = _const(call.args[1])
        if cmd == CONSTANTS["F_SETFL"]:
            flags = _const(call.args[2])
            fcntl.fcntl(s.sock.fileno(), fcntl.F_SETFL, flags)
            s.nonblock = bool(flags & os.O_NONBLOCK)
            return 0
        if cmd == CONSTANTS["F_GETFL"]:
            return fcntl.fcntl(s.sock.fileno(), fcntl.F_GETFL) & ~os.O_LARGEFILE
        raise Unsupported(f"fcntl {call.args[1]}")

    def _sys_ioctl(self, call: Syscall):
        s = self._sock(call.args[0])
        req = _const(call.args[1])
        if req not in (CONSTANTS["SIOCINQ"], CONSTANTS["SIOCOUTQ"], CONSTANTS["SIOCOUTQNSD"]):
            raise Unsupported(f"ioctl {call.args[1]}")
        (got,) = struct.unpack("i", fcntl.ioctl(s.sock.fileno(), req, struct.pack("i", 0)))
        wm = re.fullmatch(r"\[\s*(-?\d+)\s*\]", call.args[2].strip())
        if wm and got != int(wm.group(1)):
            raise Failure(f"ioctl {call.args[1]} = {got}, expected {wm.group(1)}")
        return 0

    # ------------------------------------------------------------------ Python blocks

    def _code(self, ev: Event, code: Code) -> None:
        start, _ = self._event_time(ev)
        self._reach(ev, start, "%{ }% block")
        self.prev_time, self.prev_inbound = start, False
        s = self.socks.get(self.under_test) if self.under_test is not None else None
        if s is None:
            raise Unsupported("a %{ }% block without a socket")
        try:
            self.py_env.update(tcpinfo.read(s.sock))
        except OSError as exc:
            raise Failure(f"getsockopt(TCP_INFO): {exc.strerror}") from None
        src = code.source.replace("\\\n", "\n")
        src = "\n".join(line.strip() for line in src.splitlines())
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                # The script's own Python, one namespace for the whole script (a block
                # may define a name a later one uses, as packetdrill's code.c file).
                exec(compile(src, f"<%{{ }}% line {ev.line}>", "exec"), self.py_env)
        except AssertionError as exc:
            raise Failure(f"Python assertion failed: {exc}") from None
        except NameError as exc:
            raise Unsupported(f"TCP_INFO field: {exc}") from None
        except Exception as exc:  # the script's code is at fault, not the kernel
            raise Unsupported(f"Python block raised {exc!r}") from None
        if out.getvalue().strip():
            self.notes.append(f"line {ev.line} printed {out.getvalue().strip()!r}")

    # ------------------------------------------------------------------ shell and flags

    def _flag(self, f: Flag) -> None:
        if f.name == "tolerance_usecs":
            self.tolerance = int(f.value) / 1e6
        elif f.name == "tcp_ts_tick_usecs":
            self.ts_tick = int(f.value) / 1e6
        elif f.name == "ip_version" and f.value == "ipv4":
            pass
        else:
            raise Unsupported(f"option --{f.name}")

    def _shell(self, cmd: str, defaults: bool = False) -> None:
        """A backtick command, within the namespace. `defaults`: a line of defaults.sh,
        whose failures bash ignores (no `set -e`), so they are notes."""
        pending: list[str] = []
        for raw in _expand(cmd.replace("\\\n", " ")).splitlines():
            line = _REDIRECT.sub("", raw)
            for part in re.split(r";|&&|\|\|", line):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:
                    raise Unsupported(f"shell command {part.strip()!r}") from None
                if not words:
                    continue
                if words[0] == "sysctl":
                    pending += self._sysctl_words(words, part)
                    continue
                self._apply_sysctls(pending, defaults)
                pending = []
                self._command(words, part.strip(), defaults)
        self._apply_sysctls(pending, defaults)

    def _sysctl_words(self, words: list[str], line: str) -> list[str]:
        out = []
        for w in words[1:]:
            if w.startswith("-"):
                if set(w[1:]) - set("qwe"):
                    raise Unsupported(f"sysctl option {w} in {line.strip()!r}")
                continue
            if "=" not in w:
                raise Unsupported(f"shell: {line.strip()!r} (reading a sysctl)")
            out.append(("-e " if "-e" in words else "") + w)
        return out

    def _apply_sysctls(self, pairs: list[str], defaults: bool) -> None:
        assert self.ns is not None
        for item in pairs:
            ignore_missing = item.startswith("-e ")
            item = item.removeprefix("-e ")
            key = item.partition("=")[0].replace("/", ".")
            if not key.startswith(("net.ipv4.", "net.ipv6.")):
                # net.core.* and the like are the host's (or have no per-namespace
                # copy): never touched.
                self.notes.append(f"skipped host-wide sysctl {key}")
                continue
            value = item.partition("=")[2]
            r = self.ns.exec("sysctl", "-w", f"{key}={value}", check=False)
            if r.returncode != 0 and key == "net.ipv4.tcp_congestion_control" \
                    and "not permitted" in r.stderr:
                # Outside the initial namespace only the host's allowed algorithms may
                # be the default (tcp_set_default_congestion_control()); a socket may
                # choose any with CAP_NET_ADMIN (tcp_set_congestion_control()), and a
                # listener's choice passes to its children (tcp_ca_openreq_child()).
                self.cc = value
                self.notes.append(f"congestion control {value} set per socket "
                                  f"(TCP_CONGESTION): the host restricts it in namespaces")
                continue
            if r.returncode != 0:
                msg = r.stderr.strip() or f"exit status {r.returncode}"
                if defaults or ignore_missing:
                    self.notes.append(f"defaults.sh: {msg}" if defaults else msg)
                else:
                    raise Unsupported(f"sysctl {item}: {msg}")

    def _command(self, words: list[str], line: str, defaults: bool) -> None:
        assert self.ns is not None
        name = os.path.basename(words[0])
        if name == "defaults.sh":
            path = os.path.join(os.path.dirname(os.path.abspath(self.path)), words[0])
            if os.path.exists(path):
                with open(path) as f:
                    self._shell(f.read(), defaults=True)
            else:
                self.notes.append(f"{words[0]} not found: run.py's copy of its sysctls")
                self._apply_sysctls([f"net.ipv4.{k}={v}" for k, v in DEFAULTS.items()], True)
                self._command(["tc", "qdisc", "add", "dev", kw.DEVICE, "root", "pfifo"],
                              "tc", True)
        elif name == "set_sysctls.py":
            pairs = []
            for w in words[1:]:
                k, sep, v = w.partition("=")
                if not sep or not k.startswith("/proc/sys/"):
                    raise Unsupported(f"shell command {line!r}")
                pairs.append(f"{k.removeprefix('/proc/sys/').replace('/', '.')}={v}")
            self._apply_sysctls(pairs, defaults)
        elif name.startswith("sysctl_restore_"):
            pass  # the namespace and its sysctls are deleted after the script
        elif words[:2] == ["ip", "tcp_metrics"]:
            pass  # a fresh namespace has no cached metrics to flush
        elif name == "tc":
            if "dev" not in words or words[words.index("dev") + 1:][:1] != [kw.DEVICE]:
                raise Unsupported(f"tc on another device than {kw.DEVICE}: {line!r}")
            r = self.ns.exec(*words, check=False)
            if r.returncode != 0 and not (defaults or words[2:3] in (["del"], ["delete"])):
                raise Unsupported(f"{line!r} failed: {r.stderr.strip()}")
        elif name == "ethtool" and words[1:3] == ["-K", kw.DEVICE]:
            feats = dict(zip(words[3::2], words[4::2], strict=False))
            if set(feats) - {"tso", "gso"}:
                raise Unsupported(f"ethtool features {line!r}")
            # No ethtool here: TUNSETOFFLOAD without TSO takes the device's TSO away,
            # so the kernel segments before the device (what `tso off` does).
            off = "off" in feats.values()
            self.ns.set_offload(kw.TUN_F_CSUM if off else kw.OFFLOADS)
        else:
            raise Unsupported(f"shell command {line!r}")

    # ------------------------------------------------------------------ the script

    def _event(self, ev: Event) -> None:
        w = ev.what
        if isinstance(w, Flag):
            self._flag(w)
            return
        if self.t0 is None and not isinstance(w, Shell):
            self.t0 = time.monotonic()
        if isinstance(w, Shell):
            self._shell(w.command)
        elif isinstance(w, Packet) and w.direction == ">":
            self._outbound(ev, w)
        elif ev.time.any:
            raise Unsupported("`*` time on an inbound packet or a call")
        elif isinstance(w, Packet):
            self._inbound(ev, w)
        elif isinstance(w, Syscall):
            self._syscall(ev, w)
        elif isinstance(w, Code):
            self._code(ev, w)

    def run(self, text: str) -> Verdict:
        try:
            events = parse(text)
        except ScriptError as exc:
            return Verdict(self.path, "error", str(exc), exc.line)
        ev = None
        try:
            self.ns = kw.Namespace()
            for ev in events:
                self._event(ev)
            for job in list(self.jobs):
                due = (job.end or job.start) + self.tolerance + GRACE
                self._pump(due, stop=lambda job=job: job not in self.jobs)
                if job in self.jobs:
                    raise Failure(f"line {job.event.line}: {job.call.name}() never returned")
            self._check_unmatched(self.prev_time)
        except Failure as exc:
            if self.trace is not None and self.ns is not None:
                with contextlib.suppress(Failure, Unsupported):
                    self._pump(self._now() + 0.5)
            return Verdict(self.path, "fail", str(exc), ev.line if ev else 0)
        except Unsupported as exc:
            return Verdict(self.path, "unsupported", str(exc), ev.line if ev else 0)
        except kw.WireError as exc:
            return Verdict(self.path, "error", f"kernel mode cannot run: {exc}")
        finally:
            self.close()
        return Verdict(self.path, "pass")

    def close(self) -> None:
        for s in self.socks.values():
            with contextlib.suppress(OSError):
                s.sock.shutdown(socket.SHUT_RDWR)  # wakes a call still blocked in it
            s.sock.close()
        self.socks.clear()
        for job in self.jobs:
            if job.thread is not None:
                job.thread.join(timeout=1.0)
        if self.ns is not None:
            self.ns.close()
            self.ns = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def run_kernel(text: str, path: str = "<script>", tolerance: float = TOLERANCE) -> Verdict:
    """Play the script against this machine's kernel; the verdict as run.py gives it."""
    return KernelRunner(path, tolerance=tolerance).run(text)


def run_kernel_file(path: str, tolerance: float = TOLERANCE) -> Verdict:
    with open(path) as f:
        return run_kernel(f.read(), path, tolerance)
