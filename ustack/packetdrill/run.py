"""Run a packetdrill script against ustack's core (core.py) and give a verdict.

packetdrill's rules, as its documentation and run.c / run_packet.c apply them:
- Times: an event runs at its time; `+t` is relative to the previous event's start
  (so the lines after a blocking call count from when it began). An outbound packet
  must leave within `tolerance` of its time (`--tolerance_usecs`, 4000 by default);
  `a~b` accepts any time in the window; `*` any time at all.
- Sequence numbers are relative: inbound ones to the script's own ISN (0), `ack` to
  the stack's ISS; outbound the other way round. SACK blocks likewise.
- An outbound packet is checked for its flags, sequence range, `ack`, `win` and, when
  the script gives a list, its options exactly and in order (`<...>`: any). TS values
  are mapped: the stack's TSval is learned from its packets and a script TSecr that
  echoes a script TSval is translated to the stack's own (run_packet.c
  find_tcp_timestamp / set_tcp_timestamp); TSvals themselves are checked only with
  `--tcp_ts_tick_usecs`, as packetdrill does.
- A packet the stack sends that the script does not expect at that point fails it.
- A call's return value and errno must be as written; a blocking call (`a...b`) must
  return at b within the tolerance; any other call must not block.

Verdicts: "pass", "fail: ..." (ustack behaved differently), "unsupported: ..." (the
script uses something this runner or ustack does not have: never counted as a pass or
a fail), "error: ..." (the script cannot be parsed).
"""

from __future__ import annotations

import errno as E
import os
import re
import shlex
import socket
from dataclasses import dataclass, field

from .. import sockopt as so
from ..config import KNOBS, Config, ConfigError, apply_settings
from ..tcp.state import State
from ..tcp.tcb import Tcb
from ..wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    OPT_MSS,
    OPT_NOP,
    OPT_SACK,
    OPT_SACK_PERM,
    OPT_TS,
    OPT_WSCALE,
    PSH,
    RST,
    SYN,
    URG,
    Segment,
    encode_options,
    format_segment,
)
from .core import LOCAL_PORT, REMOTE_PORT, START, CoreTarget, Sock
from .script import Code, Event, Flag, Packet, ScriptError, Shell, Syscall, Time, parse

MASK = 0xFFFFFFFF
PEER_ISN = 0  # the script's sequence numbers are its own absolute ones, ISN 0
TOLERANCE = 0.004
_FLAGS = {"S": SYN, "F": FIN, "R": RST, "P": PSH, ".": ACK, "U": URG, "E": ECE, "W": CWR}

# gtests/net/common/defaults.sh, as far as ustack has the knobs. The rest of that file
# (pacing ratios, fastopen, tso_win_divisor, tcp_metrics, qdiscs) configures what
# ustack does not have and does not change what ustack sends.
DEFAULTS = {
    "tcp_rmem": "4096 540000 15728640", "tcp_wmem": "4096 262144 4194304",
    "tcp_timestamps": "1", "tcp_syn_retries": "5", "tcp_synack_retries": "5",
    "tcp_frto": "2", "tcp_sack": "1", "tcp_dsack": "1", "tcp_reordering": "3",
    "tcp_congestion_control": "cubic", "tcp_slow_start_after_idle": "0",
    "tcp_early_retrans": "4", "tcp_recovery": "1", "tcp_ecn": "0", "tcp_syncookies": "1",
}
# sysctls a script may set that change nothing ustack does (it has no such machinery).
IGNORED_SYSCTLS = {"tcp_fack", "tcp_tso_win_divisor", "tcp_min_tso_segs", "tcp_pacing_ss_ratio",
                   "tcp_pacing_ca_ratio", "tcp_fastopen", "tcp_fastopen_key",
                   "tcp_ecn_option", "tcp_notsent_lowat"}
TCP_CA = {"Open": 0, "Disorder": 1, "CWR": 2, "Recovery": 3, "Loss": 4}


class Failure(Exception):
    """The stack did something other than the script says."""


class Unsupported(Exception):
    """The script needs something this runner or ustack does not have."""


@dataclass
class Verdict:
    path: str
    status: str  # pass | fail | unsupported | error
    detail: str = ""
    line: int = 0

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.status}{where}{': ' + self.detail if self.detail else ''}"


@dataclass
class _Pending:
    """A blocking call in progress."""

    event: Event
    call: Syscall
    sock: Sock
    started: float
    end: float
    done: object = None  # a function returning (finished, result, errno)
    state: dict = field(default_factory=dict)


class Runner:
    def __init__(self, *, tolerance: float = TOLERANCE, settings: list[str] | None = None
                 ) -> None:
        self.tolerance = tolerance
        self.ts_tick: float | None = None
        self.settings = list(settings or [])
        self.target: CoreTarget | None = None
        self.socks: dict[int, Sock] = {}
        self.last_start = START
        self.iss: int | None = None
        self.peer_port = REMOTE_PORT
        self.lport = LOCAL_PORT
        self.ts_map: dict[int, int] = {}  # script TSval -> the stack's
        self.ts_base: tuple[int, int] | None = None  # (script, stack) of the first seen
        self.pending: list[_Pending] = []
        self.last_fd: int | None = None
        self.notes: list[str] = []
        self.gso_off = False  # `ethtool -K tun0 tso off gso off`
        self.py_env: dict = {}  # the %{ }% blocks' namespace

    # ------------------------------------------------------------------ set-up

    def _config(self) -> Config:
        try:
            return apply_settings(Config(), self.settings)
        except ConfigError as exc:
            raise Unsupported(str(exc)) from None

    def _t(self) -> CoreTarget:
        if self.target is None:
            self.target = CoreTarget(self._config())
            if self.gso_off:
                self.target.ctx.set_link(1500, 0)
        return self.target

    def _sysctl(self, key: str, value: str) -> None:
        key = key.removeprefix("net.ipv4.")
        if key in IGNORED_SYSCTLS:
            return
        if key not in KNOBS:
            raise Unsupported(f"sysctl {key}: ustack has no such knob")
        if self.target is not None:
            try:
                apply_settings(self.target.ctx.config, [f"{key}={value}"])
            except ConfigError as exc:
                raise Unsupported(str(exc)) from None
        else:
            try:
                apply_settings(Config(), [*self.settings, f"{key}={value}"])
            except ConfigError as exc:
                raise Unsupported(str(exc)) from None
            self.settings.append(f"{key}={value}")

    def _shell(self, cmd: str) -> None:
        for line in cmd.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.fullmatch(r"echo\s+(\S+)\s*>\s*/sys/module/tcp_cubic/parameters/(\w+)", line)
            if m:
                self._sysctl(f"cubic_{m.group(2)}", m.group(1))
                continue
            if not line:
                continue
            try:
                words = shlex.split(line)
            except ValueError:
                raise Unsupported(f"shell command {line!r}") from None
            if words[0].endswith("common/defaults.sh"):
                for k, v in DEFAULTS.items():
                    if k in KNOBS:
                        try:
                            self._sysctl(k, v)
                        except Unsupported:
                            self.notes.append(f"defaults.sh: {k}={v} not available")
            elif words[0] == "sysctl":
                for w in words[1:]:
                    if w.startswith("-"):
                        continue
                    k, sep, v = w.partition("=")
                    if not sep:
                        raise Unsupported(f"shell: {line!r} (reading a sysctl)")
                    self._sysctl(k, v.strip('"'))
            elif words[0].endswith("common/set_sysctls.py"):
                for w in words[1:]:
                    k, _, v = w.partition("=")
                    self._sysctl(k.removeprefix("/proc/sys/net/ipv4/").replace("/", "."), v)
            elif words[:3] == ["ethtool", "-K", "tun0"] and set(words[3:]) <= {
                    "tso", "gso", "off"}:
                # packetdrill's device without offloads: one wire segment per packet.
                self.gso_off = True
                if self.target is not None:
                    self.target.ctx.set_link(1500, 0)
            elif words[:2] == ["ip", "tcp_metrics"]:
                continue  # ustack keeps no per-destination metrics
            elif words[0] == "tc" and "fq" in words and "pfifo" not in words:
                continue  # a pacing qdisc: ustack does not pace; what it sends is the same
            else:
                raise Unsupported(f"shell command {line!r}")

    def _flag(self, f: Flag) -> None:
        if f.name == "tolerance_usecs":
            self.tolerance = int(f.value) / 1e6
        elif f.name == "tcp_ts_tick_usecs":
            self.ts_tick = int(f.value) / 1e6
        elif f.name in ("ip_version",) and f.value in ("ipv4",):
            pass
        else:
            raise Unsupported(f"option --{f.name}")

    # ------------------------------------------------------------------ time

    def _when(self, t: Time) -> tuple[float | None, float | None]:
        """The event's start, and the end of its window or blocking call."""
        if t.any:
            return None, None
        start = self.last_start + t.start if t.relative else START + t.start
        end = None
        if t.end is not None:
            # packetdrill (parser.y): in `+a...b` and `+a~b` both ends count from the
            # previous event; in `a...b` both are absolute.
            end = self.last_start + t.end if t.relative or t.end_relative else START + t.end
        return start, end

    def _advance(self, to: float) -> None:
        t = self._t()
        if to < t.now - 1e-9:
            raise Failure(f"the script's time {to - START:.6f} is before the last event "
                          f"({t.now - START:.6f})")
        t.run_until(to, stop=lambda: self._poll_pending() or bool(t.out))
        self._check_nothing_sent()

    def _poll_pending(self) -> bool:
        """Finish the blocking calls that can return now (their time is checked at
        the clock's current value); never stops the clock by itself."""
        for p in list(self.pending):
            r = p.done()  # type: ignore[operator]
            if r is not None:
                self.pending.remove(p)
                self._finish(p, *r)
        return False

    def _check_nothing_sent(self) -> None:
        t = self._t()
        self._poll_pending()
        if t.out:
            at, seg = t.out[0]
            raise Failure(f"unexpected packet at {at - START:.6f}: {self._describe(seg)}")

    # ------------------------------------------------------------------ packets

    def _describe(self, seg: Segment) -> str:
        return format_segment(seg, self.iss or 0, PEER_ISN)

    def _inbound(self, pkt: Packet, line: int) -> None:
        t = self._t()
        flags = 0
        for ch in pkt.flags:
            if ch != "-":
                flags |= _FLAGS[ch]
        seq = (PEER_ISN + pkt.start) & MASK
        ack = ((self.iss or 0) + pkt.ack) & MASK if pkt.ack is not None else 0
        if pkt.ack is not None:
            flags |= ACK
        seg = Segment(self.peer_port, self.lport, seq, ack, flags,
                      pkt.win if pkt.win is not None else 0, b"\0" * (pkt.end - pkt.start))
        for opt in pkt.options or []:
            w = opt.split()
            if w[0] == "mss":
                seg.mss = int(w[1])
            elif w[0] == "sackOK":
                seg.sack_perm = True
            elif w[0] == "wscale":
                seg.wscale = int(w[1])
            elif w[0] == "TS":
                val, ecr = int(w[2]), int(w[4])
                seg.ts = (val, self._map_ecr(ecr))
            elif w[0] == "sack":
                base = self.iss or 0
                seg.sack = tuple(((base + int(a)) & MASK, (base + int(b)) & MASK)
                                 for a, b in (blk.split(":") for blk in w[1:]))
            elif w[0] in ("nop", "eol"):
                pass
            else:
                raise Unsupported(f"inbound option {opt!r}")
        if pkt.ecn is not None:
            ecn = {"noecn": 0, "ect1": 1, "ect0": 2, "ce": 3}.get(pkt.ecn)
            if ecn is None or not hasattr(seg, "ecn"):
                raise Unsupported(f"inbound ECN codepoint [{pkt.ecn}]")
            seg.ecn = ecn  # type: ignore[attr-defined]
        t.inject(seg)
        self._poll_pending()

    def _map_ecr(self, ecr: int) -> int:
        return map_ecr(self.ts_map, self.ts_base, ecr)

    def _outbound(self, pkt: Packet, start: float | None, end: float | None) -> None:
        t = self._t()
        tol = self.tolerance
        latest = (end if end is not None else start) if start is not None else None
        if not t.out:
            limit = (latest + tol) if latest is not None else t.now + 600
            t.run_until(limit, stop=lambda: self._poll_pending() or bool(t.out))
        if not t.out:
            raise Failure(f"expected {self._pattern(pkt)} at "
                          f"{(latest or t.now) - START:.6f}, but nothing was sent")
        at, seg = t.out.pop(0)
        got = f"{self._describe(seg)} at {at - START:.6f}"
        if start is not None:
            lo = start - tol
            hi = (end if end is not None else start) + tol
            if not lo - 1e-9 <= at <= hi + 1e-9:
                raise Failure(f"expected {self._pattern(pkt)} at {start - START:.6f}"
                              f"{'~' + format(end - START, '.6f') if end else ''}, "
                              f"got {got}")
        want = 0
        for ch in pkt.flags:
            want |= _FLAGS[ch]
        if pkt.ack is not None:
            want |= ACK
        if seg.flags & SYN and self.iss is None:
            self.iss = seg.seq
        base = self.iss or 0
        if seg.flags != want:
            raise Failure(f"expected {self._pattern(pkt)}, got {got} (flags)")
        rel = (seg.seq - base) & MASK
        if (rel, rel + len(seg.payload)) != (pkt.start, pkt.end):
            raise Failure(f"expected {self._pattern(pkt)}, got {got} (sequence numbers)")
        if pkt.ack is not None and (seg.ack - PEER_ISN) & MASK != pkt.ack:
            raise Failure(f"expected {self._pattern(pkt)}, got {got} (ack)")
        if pkt.win is not None and seg.wnd != pkt.win:
            raise Failure(f"expected {self._pattern(pkt)}, got {got} (window {seg.wnd})")
        if pkt.ecn is not None:
            have = getattr(seg, "ecn", None)
            if have is None:
                raise Unsupported(f"outbound ECN codepoint [{pkt.ecn}]")
            want_ecn = {"noecn": 0, "ect1": 1, "ect0": 2, "ce": 3, "ect01": -1}[pkt.ecn]
            if want_ecn >= 0 and have != want_ecn:
                raise Failure(f"expected [{pkt.ecn}], got ECN codepoint {have} in {got}")
        if seg.ts is not None:
            self._learn_ts(pkt, seg)
        if pkt.options is not None and pkt.options != ["..."]:
            have_opts = wire_options(seg, PEER_ISN)
            if not _options_match(pkt.options, have_opts, self):
                raise Failure(f"expected <{','.join(pkt.options)}>, got "
                              f"<{','.join(have_opts)}> in {got} (options)")
        self.last_start = at if start is None else start

    def _learn_ts(self, pkt: Packet, seg: Segment) -> None:
        for opt in pkt.options or []:
            w = opt.split()
            if w[0] == "TS" and w[2] != "*":
                script_val = int(w[2])
                self.ts_map[script_val] = seg.ts[0]  # type: ignore[index]
                if self.ts_base is None:
                    self.ts_base = (script_val, seg.ts[0])  # type: ignore[index]

    @staticmethod
    def _pattern(pkt: Packet) -> str:
        s = f"{pkt.flags} {pkt.start}:{pkt.end}({pkt.end - pkt.start})"
        if pkt.ack is not None:
            s += f" ack {pkt.ack}"
        if pkt.win is not None:
            s += f" win {pkt.win}"
        return s

    # ------------------------------------------------------------------ calls

    def _sock(self, arg: str) -> Sock:
        try:
            fd = int(arg)
        except ValueError:
            raise Unsupported(f"file descriptor {arg!r}") from None
        s = self.socks.get(fd)
        if s is None or s.closed:
            raise _Errno(E.EBADF)
        self.last_fd = fd
        return s

    def _apply(self, sock: Sock) -> callable:
        def apply(tcb: Tcb) -> None:
            for level, name, value in sock.options:
                so.setsockopt(tcb, level, name, value, self._t().now)
        return apply

    def _syscall(self, ev: Event, call: Syscall, start: float, end: float | None) -> None:
        t = self._t()
        fn = getattr(self, f"_sys_{call.name}", None)
        if fn is None:
            raise Unsupported(f"system call {call.name}()")
        try:
            r = fn(call)
        except _Errno as exc:
            r = (-1, exc.errno)
        except OSError as exc:
            r = (-1, exc.errno or 0)
        if isinstance(r, _Block):
            p = _Pending(ev, call, r.sock, start, end if end is not None else start,
                         r.done)
            first = p.done()  # type: ignore[operator]
            if first is not None:
                self._finish(p, *first)
            else:
                self.pending.append(p)
            return
        value, err = r if isinstance(r, tuple) else (r, 0)
        self._check_result(call, value, err)
        if end is not None and end > start + self.tolerance:
            raise Failure(f"{call.name}() returned at {t.now - START:.6f}, the script "
                          f"says it blocks until {end - START:.6f}")

    def _finish(self, p: _Pending, value: int, err: int) -> None:
        now = self._t().now
        if abs(now - p.end) > self.tolerance + 1e-9:
            raise Failure(f"line {p.event.line}: {p.call.name}() returned {value} at "
                          f"{now - START:.6f}, expected at {p.end - START:.6f}")
        self._check_result(p.call, value, err)

    def _check_result(self, call: Syscall, value: int, err: int) -> None:
        want = call.result
        if want == "...":
            return
        try:
            want_v = int(want, 0)
        except ValueError:
            raise Unsupported(f"result {want!r}") from None
        got = f"{value}" + (f" {E.errorcode.get(err, err)}" if value == -1 else "")
        if value != want_v:
            raise Failure(f"{call.name}() returned {got}, expected {want}"
                          f"{' ' + call.errno if call.errno else ''}")
        if want_v == -1 and call.errno and E.errorcode.get(err) != call.errno:
            raise Failure(f"{call.name}() failed with {got}, expected {call.errno}")

    # the calls --------------------------------------------------------------

    def _new_fd(self, call: Syscall) -> int:
        """The script names its descriptors by the results it expects (packetdrill maps
        them onto the real ones), so the fd is the one the script wrote."""
        try:
            fd = int(call.result)
        except ValueError:
            fd = 3
        if fd < 0 or (fd in self.socks and not self.socks[fd].closed):
            fd = max(self.socks, default=2) + 1
        return fd

    def _sys_socket(self, call: Syscall) -> int:
        if len(call.args) < 2 or call.args[1] != "SOCK_STREAM":
            raise Unsupported(f"socket({', '.join(call.args)})")
        fd = self._new_fd(call)
        self.socks[fd] = Sock(fd)
        self._t()
        return fd

    def _sys_bind(self, call: Syscall) -> int:
        s = self._sock(call.args[0])
        s.bound = True
        return 0

    def _sys_listen(self, call: Syscall) -> int:
        s = self._sock(call.args[0])
        self._t().listen(s, int(call.args[1]), self._apply(s))
        return 0

    def _sys_fcntl(self, call: Syscall) -> int:
        s = self._sock(call.args[0])
        if call.args[1] == "F_SETFL":
            s.nonblock = "O_NONBLOCK" in call.args[2]
            return 0
        if call.args[1] == "F_GETFL":
            return (os.O_RDWR | (os.O_NONBLOCK if s.nonblock else 0))
        raise Unsupported(f"fcntl {call.args[1]}")

    def _sys_accept(self, call: Syscall):
        s = self._sock(call.args[0])
        if s.listener is None:
            raise _Errno(E.EINVAL)
        lst = s.listener

        def done():
            if lst.accept_queue:
                tcb = lst.accept_queue.pop(0)
                fd = self._new_fd(call)
                self.socks[fd] = Sock(fd, tcb=tcb)
                self.last_fd = fd
                self.peer_port = tcb.remote[1]
                return fd, 0
            return None

        if s.nonblock and not lst.accept_queue:
            raise _Errno(E.EAGAIN)
        return _Block(s, done)

    def _sys_connect(self, call: Syscall):
        s = self._sock(call.args[0])
        t = self._t()
        if s.tcb is not None:
            if t.established(s.tcb):
                raise _Errno(E.EISCONN)
            raise _Errno(E.EALREADY)
        s.tcb = t.connect(s, self._apply(s))
        self.lport = s.tcb.local[1]
        self.peer_port = s.tcb.remote[1]
        tcb = s.tcb
        if s.nonblock:
            raise _Errno(E.EINPROGRESS)

        def done():
            if t.established(tcb):
                return 0, 0
            if t.dead(tcb):
                return -1, t.error_of(tcb) or E.ECONNREFUSED
            return None
        return _Block(s, done)

    def _conn(self, s: Sock) -> Tcb:
        if s.tcb is None:
            raise _Errno(E.ENOTCONN)
        return s.tcb

    def _write(self, call: Syscall, n: int, more: bool = False):
        s = self._sock(call.args[0])
        tcb = self._conn(s)
        t = self._t()
        state = {"left": n, "sent": 0}

        def attempt():
            if tcb.state == State.CLOSED or tcb.error:
                if state["sent"]:
                    return state["sent"], 0
                err = tcb.error or E.EPIPE
                tcb.error = 0 if err != E.EPIPE else tcb.error
                return -1, err
            if not tcb.state.can_send or tcb.fin_sent:
                return -1, E.EPIPE  # after shutdown(SHUT_WR) or the connection's end
            room = tcb.snd_cap - tcb.send_queue
            if state["sent"] and room < tcb.send_queue // 2:
                return None  # sk_stream_wspace() < sk_stream_min_wspace(): still asleep
            k = min(room, state["left"])
            if k <= 0:
                k = 0
            elif more:
                k = t.call(tcb, tcb.send, b"\0" * k, t.now, more)
            else:
                k = t.call(tcb, tcb.send, b"\0" * k, t.now)
            state["left"] -= k
            state["sent"] += k
            if state["left"] == 0:
                return state["sent"], 0
            if s.nonblock:
                return (state["sent"], 0) if state["sent"] else (-1, E.EAGAIN)
            return None

        first = attempt()
        if first is not None:
            return first
        return _Block(s, attempt)

    def _sys_write(self, call: Syscall):
        return self._write(call, int(call.args[2]))

    def _sys_send(self, call: Syscall):
        flags = call.args[3] if len(call.args) > 3 else "0"
        return self._write(call, int(call.args[2]), more=self._msg_flags(flags))

    def _sys_sendmsg(self, call: Syscall):
        lens = [int(x) for x in re.findall(r"\{\s*\.\.\.\s*,\s*(\d+)\s*\}", call.args[1])]
        if not lens:
            raise Unsupported(f"sendmsg message {call.args[1]!r}")
        flags = call.args[2] if len(call.args) > 2 else "0"
        return self._write(call, sum(lens), more=self._msg_flags(flags))

    @staticmethod
    def _msg_flags(text: str) -> bool:
        names = {f.strip() for f in text.split("|")}
        unknown = names - {"0", "MSG_MORE", "MSG_DONTWAIT"}
        if unknown:
            raise Unsupported(f"send flags {text}")
        return "MSG_MORE" in names

    def _sys_read(self, call: Syscall):
        s = self._sock(call.args[0])
        tcb = self._conn(s)
        t = self._t()
        n = int(call.args[2])

        def attempt():
            # After shutdown(SHUT_RD) Linux still reads what is queued (tcp_recvmsg()
            # checks RCV_SHUTDOWN only when nothing is), then 0.
            if tcb.recv_queue:
                return len(t.call(tcb, tcb.recv, n, t.now)), 0
            if s.rd_shut:
                return 0, 0
            if tcb.error:
                err, tcb.error = tcb.error, 0
                return -1, err
            if tcb.fin_received or tcb.state == State.CLOSED:
                return 0, 0
            if s.nonblock:
                return -1, E.EAGAIN
            return None

        first = attempt()
        if first is not None:
            return first
        return _Block(s, attempt)

    _sys_recv = _sys_read

    def _sys_shutdown(self, call: Syscall) -> int:
        s = self._sock(call.args[0])
        how = call.args[1]
        if how in ("SHUT_RD", "SHUT_RDWR"):
            s.rd_shut = True
        if how in ("SHUT_WR", "SHUT_RDWR"):
            tcb = self._conn(s)
            t = self._t()
            t.call(tcb, tcb.shutdown, t.now)
        return 0

    def _sys_close(self, call: Syscall) -> int:
        s = self._sock(call.args[0])
        t = self._t()
        s.closed = True
        if s.listener is not None:
            t.close_listener(s.listener)
        elif s.tcb is not None:
            unread = s.tcb.recv_queue
            t.call(s.tcb, s.tcb.close, t.now, unread)
        return 0

    def _sys_ioctl(self, call: Syscall) -> int:
        """SIOCINQ (bytes readable), SIOCOUTQ (bytes not yet acknowledged) and
        SIOCOUTQNSD (not yet sent), as Linux's tcp_ioctl() answers them."""
        s = self._sock(call.args[0])
        tcb = self._conn(s)
        what = call.args[1].strip()
        if what == "SIOCINQ":
            got = tcb.recv_queue
        elif what == "SIOCOUTQ":
            got = tcb.send_queue
        elif what == "SIOCOUTQNSD":
            got = tcb.unsent()
        else:
            raise Unsupported(f"ioctl {what}")
        want = _value(call.args[2])
        if got != want:
            raise Failure(f"ioctl {what} = {got}, expected {want}")
        return 0

    def _sys_setsockopt(self, call: Syscall) -> int:
        s = self._sock(call.args[0])
        level, name = _const(call.args[1]), _const(call.args[2])
        value = _value(call.args[3])
        if s.tcb is None:
            # Before connect()/listen(): remembered, applied to the TCB (and to each
            # child of a listener) before its first segment; validated now.
            s.options.append((level, name, value))
            return 0
        t = self._t()
        t.call(s.tcb, so.setsockopt, s.tcb, level, name, value, t.now)
        return 0

    def _sys_getsockopt(self, call: Syscall) -> int:
        s = self._sock(call.args[0])
        level, name = _const(call.args[1]), _const(call.args[2])
        if name == socket.TCP_INFO and level == socket.IPPROTO_TCP:
            raise Unsupported("getsockopt TCP_INFO with a struct literal")
        if s.tcb is None:
            if (level, name) != (socket.IPPROTO_TCP, so.TCP_MAXSEG):
                raise Unsupported(f"getsockopt {call.args[2]} before a connection exists")
            # do_tcp_getsockopt(): user_mss before a connection, else TCP_MSS_DEFAULT.
            got = next((int(v) for lv, nm, v in reversed(s.options)
                        if (lv, nm) == (level, name) and isinstance(v, int) and v),
                       so.TCP_MSS_DEFAULT)
        else:
            got = so.getsockopt(s.tcb, level, name, 0, self._t().now)
        want = _value(call.args[3])
        if isinstance(want, int) and got != want:
            raise Failure(f"getsockopt {call.args[2]} = {got}, expected {want}")
        return 0

    # ------------------------------------------------------------------ Python blocks

    def _code(self, code: Code) -> None:
        fd = self.last_fd
        s = self.socks.get(fd) if fd is not None else None
        if s is None or s.tcb is None:
            raise Unsupported("a %{ }% block without a connected socket")
        # One namespace for the whole script, as packetdrill's: a block may define a
        # name (TCP_INFINITE_SSTHRESH) that a later one uses.
        env = self.py_env
        env.update(tcp_info_vars(s.tcb, self._t().now))
        env.update({f"TCP_CA_{k}": v for k, v in TCP_CA.items()})
        src = code.source.replace("\\\n", "\n")
        src = "\n".join(line.strip() for line in src.splitlines())
        try:
            exec(compile(src, "<%{ }%>", "exec"), env)  # the script's own Python
        except AssertionError as exc:
            raise Failure(f"Python assertion failed: {exc}") from None
        except NameError as exc:
            raise Unsupported(f"TCP_INFO field: {exc}") from None

    # ------------------------------------------------------------------ the script

    def run(self, text: str, path: str = "<script>") -> Verdict:
        try:
            events = parse(text)
        except ScriptError as exc:
            return Verdict(path, "error", str(exc), exc.line)
        ev = None
        try:
            for ev in events:
                self._event(ev)
            t = self._t()
            for p in list(self.pending):
                t.run_until(p.end + self.tolerance,
                            stop=lambda p=p: self._poll_pending() or p not in self.pending)
                if p in self.pending:
                    raise Failure(f"line {p.event.line}: {p.call.name}() never returned")
        except Failure as exc:
            return Verdict(path, "fail", str(exc), ev.line if ev else 0)
        except Unsupported as exc:
            return Verdict(path, "unsupported", str(exc), ev.line if ev else 0)
        return Verdict(path, "pass")

    def _event(self, ev: Event) -> None:
        w = ev.what
        if isinstance(w, Flag):
            self._flag(w)
            return
        if isinstance(w, Shell):
            self._shell(w.command)
            return
        start, end = self._when(ev.time)
        if isinstance(w, Packet) and w.direction == ">":
            self._outbound(w, start, end if not isinstance(w, Syscall) else None)
            return
        if start is None:
            raise Unsupported("`*` time on an inbound packet or a call")
        self._advance(start)
        self.last_start = start
        if isinstance(w, Packet):
            self._inbound(w, ev.line)
        elif isinstance(w, Syscall):
            self._syscall(ev, w, start, end)
        elif isinstance(w, Code):
            self._code(w)


class _Errno(Exception):
    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


@dataclass
class _Block:
    sock: Sock
    done: object


def _const(name: str) -> int:
    name = name.strip()
    alias = {"SOL_TCP": "IPPROTO_TCP", "SOL_IP": "IPPROTO_IP"}.get(name, name)
    v = getattr(so, alias, None)
    if v is None:
        v = getattr(socket, alias, None)
    if not isinstance(v, int):
        raise Unsupported(f"constant {name}")
    return v


def _value(text: str) -> int | bytes:
    text = text.strip()
    m = re.fullmatch(r"\[\s*(-?\d+)\s*\]", text)
    if m:
        return int(m.group(1))
    m = re.fullmatch(r"\[\s*([A-Z][A-Z0-9_]*)\s*\]", text)  # [IP_PMTUDISC_DONT]
    if m:
        return _const(m.group(1))
    m = re.fullmatch(r"\{\s*onoff\s*=\s*(\d+)\s*,\s*linger\s*=\s*(\d+)\s*\}", text)
    if m:
        import struct
        return struct.pack("ii", int(m.group(1)), int(m.group(2)))
    m = re.fullmatch(r'"([^"]*)"', text)
    if m:
        return m.group(1).encode()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    raise Unsupported(f"option value {text}")


def map_ecr(ts_map: dict[int, int], ts_base: tuple[int, int] | None, ecr: int) -> int:
    """A script's TSecr in the stack's clock: the stack's TSval for a script TSval seen
    on an outbound line, else by the offset of the first one (run_packet.c)."""
    if ecr == 0:
        return 0
    if ecr in ts_map:
        return ts_map[ecr]
    if ts_base is not None:
        return (ts_base[1] + ecr - ts_base[0]) & MASK
    return ecr


def wire_options(seg: Segment, sack_base: int = 0) -> list[str]:
    """The options of `seg` as they are on the wire, in packetdrill's words and order."""
    if not (seg.mss is not None or seg.ts is not None or seg.sack or seg.sack_perm
            or seg.wscale is not None):
        return []
    raw, i, out = encode_options(seg), 0, []
    while i < len(raw):
        kind = raw[i]
        if kind == OPT_NOP:
            out.append("nop")
            i += 1
            continue
        length = raw[i + 1]
        body = raw[i + 2:i + length]
        if kind == OPT_MSS:
            out.append(f"mss {int.from_bytes(body, 'big')}")
        elif kind == OPT_SACK_PERM:
            out.append("sackOK")
        elif kind == OPT_TS:
            out.append(f"TS val {int.from_bytes(body[:4], 'big')} "
                       f"ecr {int.from_bytes(body[4:], 'big')}")
        elif kind == OPT_WSCALE:
            out.append(f"wscale {body[0]}")
        elif kind == OPT_SACK:
            edges = [(int.from_bytes(body[j:j + 4], "big") - sack_base) & MASK
                     for j in range(0, len(body), 4)]
            out.append("sack " + " ".join(f"{a}:{b}" for a, b in zip(edges[::2], edges[1::2],
                                                                    strict=True)))
        else:
            out.append(f"kind {kind}")
        i += length
    return out


def _options_match(want: list[str], have: list[str], runner: Runner) -> bool:
    if len(want) != len(have):
        return False
    for w, h in zip(want, have, strict=True):
        ws, hs = w.split(), h.split()
        if ws[0] == "TS" and hs[0] == "TS":
            # TSval: the stack's clock (checked only with --tcp_ts_tick_usecs); TSecr:
            # the script's TSval it echoes.
            if ws[4] != "*" and int(ws[4]) != int(hs[4]):
                return False
            if runner.ts_tick is not None and ws[2] != "*" and runner.ts_base is not None:
                want_val = runner.ts_base[1] + round(int(ws[2]) - runner.ts_base[0])
                slack = max(2, round(runner.tolerance / runner.ts_tick) + 1)
                if abs(int(hs[2]) - want_val) > slack:
                    return False
            continue
        if len(ws) != len(hs) or any(a not in ("*", b) for a, b in zip(ws, hs, strict=True)):
            return False
    return True


def tcp_info_vars(tcb: Tcb, now: float) -> dict[str, int]:
    """The tcpi_* names of Linux's struct tcp_info for a %{ }% block."""
    try:
        from ..tcp.info import tcp_info  # type: ignore[import-not-found]
    except ImportError:
        tcp_info = None
    if tcp_info is not None:
        info = tcp_info(tcb, now)
        names = getattr(info, "__dataclass_fields__", None) or vars(info)
        return {(n if n.startswith("tcpi_") else "tcpi_" + n): getattr(info, n)
                for n in names}
    mss = max(tcb.mss, 1)
    rec = tcb.recovery
    ssthresh = tcb.cc.ssthresh
    return {
        "tcpi_snd_cwnd": tcb.cc.cwnd // mss,
        "tcpi_snd_ssthresh": 0x7FFFFFFF if ssthresh >= 1 << 30 else ssthresh // mss,
        "tcpi_snd_mss": tcb.mss, "tcpi_advmss": tcb.adv_mss(),
        "tcpi_unacked": -(-tcb.in_flight // mss),
        "tcpi_ca_state": TCP_CA.get(getattr(rec, "ca_state", "Open"), 0),
        "tcpi_lost": getattr(rec, "lost_out", 0), "tcpi_sacked": getattr(rec, "sacked_out", 0),
        "tcpi_retrans": getattr(rec, "retrans_out", 0),
        "tcpi_reordering": getattr(rec, "reordering", 3),
        "tcpi_probes": getattr(tcb, "probes", 0), "tcpi_backoff": getattr(tcb, "backoff", 0),
    }


def run_file(path: str, **kw) -> Verdict:
    with open(path) as f:
        text = f.read()
    return Runner(**kw).run(text, path)
