"""The daemon's control socket: a Unix socket speaking newline-delimited JSON.

Where: `/run/ustack/NAME.sock` (NAME = the TUN interface) unless `serve --control PATH`.
The socket is created mode 0600 (under umask 0177, so there is no moment when it is
wider), and a peer whose SO_PEERCRED uid is neither the daemon's nor root's is turned
away as well: another user gets "permission denied".

The protocol (requests, replies, streams) is defined in ustack/ctlproto.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .ctlproto import F_DATA, F_EOF, F_EXIT, FRAME, MAX_LINE, VERSION, ControlError
from .ssfilter import Filter
from .ssfilter import parse as parse_filter
from .tcp.events import Cause, StateChanged
from .tcp.info import tcp_info
from .tcp.state import State
from .tcp.tcb import Tcb
from .wire.ip import ip_to_bytes, ip_to_str
from .wire.tcp import ParseError, flag_string, parse_tcp

if TYPE_CHECKING:
    from .aio import Stack
    from .pcap import Captures
    from .record import Recordings

log = logging.getLogger("ustack.control")

TRACE_QUEUE = 10000  # events buffered per trace client before we start dropping
NSTAT_CLIENTS = 64  # nstat histories kept (least recently used goes first)
GAUGES = ("TcpCurrEstab",)  # reported as current values, never as differences
PASSIVE_MAX = 1 << 20  # who-opened-it entries kept for the trace (oldest go first)
# Control clients served at once; each holds a task, a reader and at most one reply or
# TRACE_QUEUE events, so this bounds what slow or stuck clients can hold.
MAX_CLIENTS = 64


class RequestError(Exception):
    """A bad request: the message goes back to the client, the connection lives on."""


def _field(req: dict, name: str, kind: type | tuple[type, ...], default=None,
           required: bool = False):
    if name not in req or req[name] is None:
        if required:
            raise RequestError(f"missing field {name!r}")
        return default
    value = req[name]
    # bool is an int subclass; a port of `true` is a client bug worth naming.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RequestError(f"field {name!r} has the wrong type")
    if not isinstance(value, kind):
        raise RequestError(f"field {name!r} has the wrong type")
    return value


def relative_cause(tcb: Tcb, cause: Cause) -> str:
    """A cause with seq and ack relative to the peer's and our ISN, without window and
    options ("on F. seq 812 ack 1"), tcpdump style. The peer's ISN is only known once
    its SYN arrived."""
    irs_known = tcb.irs != 0 or tcb.rcv_nxt != 0
    return cause.format(tcb.irs if irs_known else 0, tcb.iss, brief=True)


def _ep(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


class _Subscriber:
    """One trace client: a bounded queue and a wake-up event."""

    def __init__(self, flt: Filter, segments: bool) -> None:
        self.filter = flt
        self.segments = segments
        self.queue: deque[dict] = deque()
        self.dropped = 0
        self.wake = asyncio.Event()

    def put(self, item: dict) -> None:
        if len(self.queue) >= TRACE_QUEUE:
            self.dropped += 1
        else:
            self.queue.append(item)
        self.wake.set()


class ControlServer:
    """The server side. `await start()`, later `close()`; the stack runs meanwhile."""

    def __init__(self, stack: Stack, path: str | os.PathLike, *, name: str = "ustack",
                 captures: Captures | None = None,
                 recordings: Recordings | None = None) -> None:
        from .pcap import Captures  # dpkt: the daemon needs it, the clients do not
        from .record import Recordings

        self.stack = stack
        self.path = str(path)
        self.name = name
        self.captures: Captures = captures or Captures(stack)
        self._own_recordings = recordings is None
        self.recordings: Recordings = recordings or Recordings(stack)
        self.started = time.time()
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._tasks: set[asyncio.Task] = set()
        self._subs: list[_Subscriber] = []
        self._tap_installed = False
        # (local, peer) -> monotonic time the connection entered its current state.
        self._since: dict[tuple[str, str], float] = {}
        # (local, peer) -> True if the peer opened the connection, kept through TIME_WAIT
        # so the trace can say who the client was when the record goes.
        self._passive: dict[tuple[str, str], bool] = {}
        self._nstat: dict[str, tuple[dict[str, int], float]] = {}
        self.group: int | None = None  # share_with_group()
        self._ops: dict[str, Callable] = {
            "ping": self._op_ping, "status": self._op_status, "ss": self._op_ss,
            "nstat": self._op_nstat, "capture": self._op_capture,
            "record": self._op_record,
        }
        self._stream_ops = {"trace": self._op_trace, "connect": self._op_connect}
        stack.observers.append(self._observe)
        stack.on_time_wait_gone(self._tw_gone)

    # ------------------------------------------------------------------ socket

    async def start(self) -> None:
        sock = self._bind()
        self._server = await asyncio.start_unix_server(self._handle, sock=sock,
                                                       limit=MAX_LINE)
        log.info("control socket %s", self.path)

    def _bind(self) -> socket.socket:
        path = self.path
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise ControlError(f"control socket {path}: exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # left behind by a daemon that died
            except OSError as exc:
                raise ControlError(f"control socket {path}: {exc.strerror}") from None
            else:
                raise ControlError(f"control socket {path} is in use by another daemon")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600; no window with wider permissions
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ControlError(f"control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._inode = os.stat(path).st_ino
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._inode = None
        if self._observe in self.stack.observers:
            self.stack.observers.remove(self._observe)
        self.stack.off_time_wait_gone(self._tw_gone)
        self._remove_tap()
        if self._own_recordings:
            self.recordings.close()

    def share_with_group(self, gid: int) -> None:
        """`ustack serve --group`: the socket becomes root:GROUP 0660 and members of the
        group are let in, besides root and the daemon's own user (before privileges
        are dropped, while we may still chown)."""
        os.chown(self.path, 0, gid)
        os.chmod(self.path, 0o660)
        self.group = gid

    # ------------------------------------------------------------------ requests

    def _peer_allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        if sock is None:
            return True
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        except OSError:
            return False
        pid, uid, gid = struct.unpack("3i", creds)
        if uid in (0, os.geteuid()):
            return True
        return self.group is not None and (gid == self.group
                                           or self.group in _groups_of(pid))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if not self._peer_allowed(writer):
                await self._send(writer, {"ok": False, "error": "permission denied"})
                return
            if len(self._tasks) > MAX_CLIENTS:
                await asyncio.wait_for(self._send(writer, {
                    "ok": False, "error": f"too many control clients ({MAX_CLIENTS})"}), 5)
                return
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._send(writer, {"ok": False,
                                              "error": f"request longer than {MAX_LINE} bytes"})
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    req = json.loads(line)
                except (ValueError, UnicodeDecodeError) as exc:
                    await self._send(writer, {"ok": False, "error": f"bad JSON: {exc}"})
                    continue
                if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                    await self._send(writer, {"ok": False,
                                              "error": 'a request is a JSON object with an "op"'})
                    continue
                op = req["op"]
                stream = self._stream_ops.get(op)
                if stream is not None:
                    try:
                        await stream(req, reader, writer)
                    except RequestError as exc:
                        # Refused before the stream began: the line protocol goes on.
                        await self._send(writer, {"ok": False, "error": str(exc)})
                        continue
                    return
                handler = self._ops.get(op)
                if handler is None:
                    ops = ", ".join(sorted([*self._ops, *self._stream_ops]))
                    reply = {"ok": False, "error": f"unknown op {op!r} (ops: {ops})"}
                else:
                    try:
                        reply = {"ok": True, **handler(req)}
                    except RequestError as exc:
                        reply = {"ok": False, "error": str(exc)}
                    except Exception as exc:  # a bug must cost one request, not the daemon
                        log.exception("control request %r failed", op)
                        reply = {"ok": False, "error": f"internal error: {exc!r}"}
                await self._send(writer, reply)
        except (ConnectionError, OSError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # the daemon is shutting down
        except TimeoutError:
            pass  # a refused client that does not read its refusal
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj: dict) -> None:
        writer.write(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")
        await writer.drain()

    # ------------------------------------------------------------------ simple ops

    def _op_ping(self, req: dict) -> dict:
        return {"version": VERSION, "name": self.name, "address": self.stack.address,
                "pid": os.getpid(), "uptime": round(time.time() - self.started, 3)}

    def _op_status(self, req: dict) -> dict:
        st = self.stack.status()
        st["name"] = self.name
        st["captures"] = self.captures.list()
        return st

    def _op_ss(self, req: dict) -> dict:
        now = self.stack.now()
        rows = self.stack.rows()
        since = self._since
        for row in rows:
            name, left, retrans = "", None, None
            if row.get("timer"):
                parts = row["timer"].split(",")
                if len(parts) == 3:
                    name = parts[0]
                    left = float(parts[1].rstrip("s"))
                    retrans = int(parts[2])
            row["timer_name"], row["timer_left"], row["timer_retrans"] = name, left, retrans
            entered = since.get((row["local"], row["peer"]))
            if row["state"] == "TIME-WAIT" or entered is None:
                row["state_age"] = row.get("age")
            else:
                row["state_age"] = round(now - entered, 3)
        if _field(req, "info", bool, False):
            self._add_info(rows, now)
        return {"now": time.time(), "address": self.stack.address, "connections": rows,
                "time_wait": self.stack.time_wait_count,
                "syn_recv": self.stack.syn_recv_count}

    def _add_info(self, rows: list[dict], now: float) -> None:
        """`ss -i`: each connection's TCP_INFO (tcp/info.py), under Linux's field names."""
        tcbs = {(_ep(t.local), _ep(t.remote)): t for t in self.stack.table.est.values()}
        for row in rows:
            tcb = tcbs.get((row["local"], row["peer"]))
            if tcb is not None and row["state"] not in ("LISTEN", "TIME-WAIT"):
                row["tcp_info"] = tcp_info(tcb, now).as_dict()

    def _op_record(self, req: dict) -> dict:
        action = _field(req, "action", str, required=True)
        rec = self.recordings
        try:
            if action == "start":
                file = _field(req, "file", str)
                if file is not None and not os.path.isabs(file):
                    raise RequestError("record file must be an absolute path")
                session = rec.start(_field(req, "filter", str, ""), file)
                return {"id": session.id, "recordings": rec.list()}
            if action == "stop":
                stopped = rec.stop(_field(req, "id", int))
                return {"stopped": [s.describe() for s in stopped],
                        "recordings": rec.list()}
            if action == "snapshot":
                session = rec.get(_field(req, "id", int, required=True))
                if session.path is not None:
                    raise RequestError(f"recording {session.id} goes to {session.path}: "
                                       "read that file")
                return {"id": session.id, "records": session.snapshot()}
            if action != "list":
                raise RequestError(f"unknown record action {action!r} "
                                   "(start, stop, snapshot, list)")
        except OSError as exc:
            raise RequestError(f"cannot record: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return {"recordings": rec.list()}

    def _op_nstat(self, req: dict) -> dict:
        client = _field(req, "client", str, "default")
        reset = _field(req, "reset", bool, False)
        update = _field(req, "update", bool, True)
        cur = dict(self.stack.stats)
        now = time.time()
        hist = None if reset else self._nstat.get(client)
        if hist is None:
            delta = dict(cur)
            interval = None
        else:
            base, then = hist
            delta = {k: v if k in GAUGES else v - base.get(k, 0) for k, v in cur.items()}
            interval = round(now - then, 3)
        if update:
            self._nstat.pop(client, None)
            self._nstat[client] = (cur, now)
            while len(self._nstat) > NSTAT_CLIENTS:
                self._nstat.pop(next(iter(self._nstat)))
        return {"counters": cur, "delta": delta, "interval": interval, "first": hist is None}

    def _op_capture(self, req: dict) -> dict:
        action = _field(req, "action", str, required=True)
        file = _field(req, "file", str)
        if file is not None and not os.path.isabs(file):
            raise RequestError("capture file must be an absolute path")
        try:
            if action == "start":
                if file is None:
                    raise RequestError("capture start needs a file")
                self.captures.start(file)
            elif action == "stop":
                stopped = self.captures.stop(file)
                return {"stopped": [{"file": str(t.path), "frames": t.frames} for t in stopped],
                        "captures": self.captures.list()}
            elif action != "list":
                raise RequestError(f"unknown capture action {action!r} (start, stop, list)")
        except OSError as exc:
            raise RequestError(f"cannot capture to {file}: {exc.strerror}") from None
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return {"captures": self.captures.list()}

    # ------------------------------------------------------------------ observers

    def _observe(self, tcb: Tcb, ev: StateChanged) -> None:
        now = self.stack.now()
        local, peer = _ep(tcb.local), _ep(tcb.remote)
        passive = tcb.listener is not None
        if ev.new in (State.CLOSED, State.TIME_WAIT):
            self._since.pop((local, peer), None)
        else:
            self._since[(local, peer)] = now
        if ev.new == State.CLOSED:
            self._passive.pop((local, peer), None)
        elif (local, peer) not in self._passive:
            self._passive[(local, peer)] = passive
            while len(self._passive) > PASSIVE_MAX:  # bounded, oldest first
                self._passive.pop(next(iter(self._passive)))
        if not self._subs:
            return
        item = None
        for sub in self._subs:
            if not sub.filter.matches(tcb.local, tcb.remote):
                continue
            if item is None:
                item = {"type": "state", "t": time.time(), "local": local, "peer": peer,
                        "passive": passive, "old": ev.old.name, "new": ev.new.name,
                        "cause": relative_cause(tcb, ev.cause), "cause_raw": str(ev.cause),
                        "errno": tcb.error if ev.new == State.CLOSED else 0}
            sub.put(item)

    def _tw_gone(self, key: bytes, cause: Cause) -> None:
        local = (ip_to_str(key[4:8]), (key[10] << 8) | key[11])
        peer = (ip_to_str(key[0:4]), (key[8] << 8) | key[9])
        passive = self._passive.pop((_ep(local), _ep(peer)), False)
        if not self._subs:
            return
        item = {"type": "state", "t": time.time(), "local": _ep(local), "peer": _ep(peer),
                "passive": passive, "old": "TIME_WAIT", "new": "CLOSED",
                "cause": cause.format(brief=True), "cause_raw": str(cause), "errno": 0}
        for sub in self._subs:
            if sub.filter.matches(local, peer):
                sub.put(item)

    def _tap(self, direction: str, frame: bytes) -> None:
        """Segments for trace clients that asked for them."""
        if len(frame) < 20 or frame[0] >> 4 != 4 or frame[9] != 6:
            return
        ihl = (frame[0] & 15) * 4
        total = min((frame[2] << 8) | frame[3], len(frame))
        try:
            seg = parse_tcp(frame, ihl, total)
        except ParseError:
            return
        src = (ip_to_str(frame[12:16]), seg.sport)
        dst = (ip_to_str(frame[16:20]), seg.dport)
        item = None
        for sub in self._subs:
            if not sub.segments or not sub.filter.matches(src, dst):
                continue
            if item is None:
                item = {"type": "segment", "t": time.time(), "dir": direction,
                        "src": _ep(src), "dst": _ep(dst), "flags": flag_string(seg.flags),
                        "seq": seg.seq, "ack": seg.ack, "len": len(seg.payload),
                        "win": seg.wnd}
            sub.put(item)

    def _remove_tap(self) -> None:
        if self._tap_installed:
            with contextlib.suppress(ValueError):
                self.stack.taps.remove(self._tap)
            self._tap_installed = False

    # ------------------------------------------------------------------ trace

    async def _op_trace(self, req: dict, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        text = _field(req, "filter", str, "")
        try:
            flt = parse_filter(text)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        sub = _Subscriber(flt, _field(req, "segments", bool, False))
        # Subscribed before the reply: a client that acts on "ok" (`ustack trace` prints
        # "tracing ..." then) must not miss an event of the next loop iteration.
        self._subs.append(sub)
        if sub.segments and not self._tap_installed:
            self.stack.taps.append(self._tap)
            self._tap_installed = True
        eof = None
        try:
            await self._send(writer, {"ok": True, "filter": str(flt)})
            # The client says nothing more; its EOF (or a broken pipe) ends the
            # subscription.
            eof = asyncio.ensure_future(_until_eof(reader))
            while not eof.done():
                waiter = asyncio.ensure_future(sub.wake.wait())
                await asyncio.wait({waiter, eof}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                sub.wake.clear()
                if sub.dropped:
                    writer.write(json.dumps({"type": "dropped", "count": sub.dropped}).encode()
                                 + b"\n")
                    sub.dropped = 0
                q = sub.queue
                while q:
                    chunk = []
                    for _ in range(min(len(q), 256)):
                        chunk.append(json.dumps(q.popleft(), separators=(",", ":")))
                    writer.write(("\n".join(chunk) + "\n").encode())
                    await writer.drain()
        finally:
            if eof is not None:
                eof.cancel()
            self._subs.remove(sub)
            if not any(s.segments for s in self._subs):
                self._remove_tap()

    # ------------------------------------------------------------------ connect

    async def _op_connect(self, req: dict, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        host = _field(req, "host", str, required=True)
        port = _field(req, "port", int, required=True)
        linger = _field(req, "linger", (int, float))
        nodelay = _field(req, "nodelay", bool, False)
        if not 0 < port <= 65535:
            raise RequestError(f"bad port {port}")
        if linger is not None and linger < 0:
            raise RequestError("linger must be >= 0 seconds")
        try:
            ip_to_bytes(host)  # the stack's own parser: what it accepts, connect() does
        except OSError:
            raise RequestError(f"bad IPv4 address {host!r}") from None
        from .aio import create_connection

        proto = _Relay(writer)
        try:
            transport, _ = await create_connection(self.stack, lambda: proto, host, port)
        except OSError as exc:
            await self._send(writer, {"ok": False, "errno": exc.errno or 0,
                                      "error": exc.strerror or str(exc)})
            return
        tcb = transport.get_extra_info("ustack_tcb")
        # Nagle unless --nodelay: asyncio's transports (and so ustack's) start with
        # TCP_NODELAY on; `ustack connect` keeps its own default.
        transport.set_nodelay(bool(nodelay))
        if linger is not None:
            transport.set_linger(True, int(linger))
        await self._send(writer, {"ok": True, "local": _ep(tcb.local), "peer": _ep(tcb.remote)})
        pump = asyncio.ensure_future(self._pump(reader, transport, proto, linger))
        try:
            await proto.done
        finally:
            pump.cancel()
            if not transport.is_closing():
                transport.close()  # the client went away: close like a process exiting
        err = tcb.error
        message = os.strerror(err) if err else ""
        if proto.aborted:
            clean = True  # --linger 0: the RST was the point
        elif err:
            clean = False
        else:
            # Clean: our FIN acknowledged and the peer's received; with SO_LINGER N we
            # stopped reading at close(), so our acknowledged FIN is enough.
            fin_acked = tcb.fin_acked
            clean = fin_acked and (tcb.fin_received or bool(linger))
            if not clean:
                message = ("SO_LINGER timeout: connection reset" if linger and not fin_acked
                           else "connection ended without both FINs")
        result = {"clean": clean, "errno": err, "error": message, "state": tcb.state.name}
        with contextlib.suppress(ConnectionError, OSError):
            payload = json.dumps(result).encode()
            writer.write(FRAME.pack(F_EXIT, len(payload)) + payload)
            await writer.drain()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, transport, proto: _Relay,
                    linger: float | None) -> None:
        """Client bytes into the TCP connection; the client's EOF ends our side."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if transport.is_closing():
                    return
                await proto.writable.wait()
                try:
                    transport.write(data)
                except OSError:
                    return  # the connection died; proto.done reports how
        except (ConnectionError, OSError):
            pass  # the client vanished: fall through and close our side
        if transport.is_closing():
            return
        if linger == 0:
            proto.aborted = True
            transport.close()  # SO_LINGER {1, 0}: RST, no FIN, no TIME_WAIT
        elif linger:
            transport.close()  # SO_LINGER {1, N}: close(), RST if not acked within N s
        else:
            transport.write_eof()  # shutdown(SHUT_WR): FIN, keep reading


def _groups_of(pid: int) -> set[int]:
    """The supplementary groups of process `pid` (SO_PEERCRED has only the primary)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


async def _until_eof(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(65536):
            pass


class _Relay(asyncio.Protocol):
    """TCP connection -> control client frames, with flow control both ways."""

    def __init__(self, out: asyncio.StreamWriter) -> None:
        self.out = out
        self.transport = None
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self.aborted = False
        self._paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def _frame(self, kind: bytes, payload: bytes = b"") -> None:
        if self.out.is_closing():
            return
        self.out.write(FRAME.pack(kind, len(payload)) + payload)

    def data_received(self, data: bytes) -> None:
        self._frame(F_DATA, data)
        # The control client reads slowly: stop reading TCP so its window closes.
        if not self._paused and self.out.transport.get_write_buffer_size() > 256 * 1024:
            self._paused = True
            self.transport.pause_reading()
            asyncio.ensure_future(self._resume_after_drain())

    async def _resume_after_drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.out.drain()
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self._frame(F_EOF)
        return True  # half-open: we may still send until the client's input ends

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if not self.done.done():
            self.done.set_result(exc)
