"""Recordings of the sender's state over time: what `ustack plot` draws.

A recording samples a connection on every ACK it processes and every segment it sends,
and marks RTOs, tail loss probes, undo and changes of the congestion state (Linux's
ca_state). The core only calls `tcb.recorder.on_ack/on_send/on_event` when
`tcb.recorder` is set (one `if` per ACK and per segment while nothing records); the
`Recorder` here reads the TCB's state into a small dict and queues it. Writing (a file)
or keeping (a live recording read over the control socket) happens here, off the
core's path, in batches.

The file format, JSON lines (one object per line; documented in README.md, "Seeing the
sender: ss -i and ustack plot"):

  {"ev": "recording", "version": 1, "start": UNIX, "filter": "port 80"}
  {"ev": "conn", "c": ID, "local": "A:P", "peer": "A:P", "start": UNIX, "iss", "irs",
   "mss", "cc": "reno", "sack": bool, "ts": bool, "wscale": [snd, rcv] | null,
   "state": "ESTABLISHED"}
  {"ev": "tx", "c": ID, "t": S, "seq": REL, "len": N, "rtx": bool, STATE...}
  {"ev": "ack", "c": ID, "t": S, "ack": REL, "win": BYTES, "sack": [[REL, REL]...],
   STATE...}
  {"ev": "rto" | "tlp" | "undo", "c": ID, "t": S, STATE...}
  {"ev": "est", "c": ID, "t": S, "mss", "sack", "ts", "wscale"}   (the handshake done)
  {"ev": "ca", "c": ID, "t": S, "from": "Open", "to": "Recovery"}
  {"ev": "end", "c": ID, "t": S, "state": "TIME_WAIT"}
  {"ev": "dropped", "c": ID, "count": N}        (a live recording ran out of room)

STATE is "una", "nxt" (REL), "cwnd", "ssthresh" (bytes; null while infinite), "pipe"
(bytes in flight by the sender's estimate), "srtt", "rto" (seconds; srtt null before
the first sample) and "ca" (Open, Disorder, CWR, Recovery, Loss). REL is a sequence
number relative to the connection's ISS (mod 2^32: readers unwrap); "t" is seconds
since the connection's "start".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from typing import TYPE_CHECKING, TextIO

from .ssfilter import Filter
from .ssfilter import parse as parse_filter
from .tcp.events import StateChanged
from .tcp.info import ca_state, pipe_bytes
from .tcp.state import State

if TYPE_CHECKING:
    from .stack import StackShell
    from .tcp.tcb import Tcb

log = logging.getLogger("ustack.record")

VERSION = 1
MASK = 0xFFFFFFFF
FLUSH_EVERY = 0.2  # seconds between writes of a file recording
LIVE_MAX = 500_000  # samples a live recording keeps (then counts what it drops)
INFINITE = 1 << 30  # cc's "infinite" ssthresh (cc/base.py INFINITE_SSTHRESH)
_NEW = frozenset((State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED))
_GONE = frozenset((State.CLOSED, State.TIME_WAIT))
REDUCING = frozenset(("Recovery", "Loss", "CWR"))  # ca_states that lower cwnd


def _ep(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


class Recorder:
    """The per-TCB hook (`tcb.recorder`): samples once, hands the sample to every
    session recording this connection."""

    __slots__ = ("sinks", "t0", "iss", "last_ca", "open_cwnd")

    def __init__(self, tcb: Tcb, now: float) -> None:
        self.sinks: list[tuple[Session, int]] = []
        self.t0 = now
        self.iss = tcb.iss
        self.last_ca = ca_state(tcb)
        self.open_cwnd = tcb.cc.cwnd  # cwnd when last seen outside a reduction

    def _state(self, tcb: Tcb, ev: str, now: float) -> dict:
        iss = self.iss
        ssthresh = tcb.cc.ssthresh
        srtt = tcb.rtt.srtt
        return {"ev": ev, "t": round(now - self.t0, 6),
                "una": (tcb.snd_una - iss) & MASK, "nxt": (tcb.snd_nxt - iss) & MASK,
                "cwnd": tcb.cc.cwnd, "ssthresh": None if ssthresh >= INFINITE else ssthresh,
                "pipe": pipe_bytes(tcb), "srtt": None if srtt is None else round(srtt, 6),
                "rto": round(tcb.rtt.current(), 6), "ca": ca_state(tcb)}

    def _put(self, sample: dict) -> None:
        for session, cid in self.sinks:
            session.put(cid, sample)

    def _transitions(self, tcb: Tcb, now: float) -> None:
        ca = ca_state(tcb)
        last = self.last_ca
        cwnd = tcb.cc.cwnd
        if ca != last:
            self._put({"ev": "ca", "t": round(now - self.t0, 6), "from": last, "to": ca})
            self.last_ca = ca
            if last in REDUCING and ca not in REDUCING and cwnd >= self.open_cwnd:
                # A reduction that ends with cwnd back where it was before it began:
                # an undo (Linux tcp_undo_cwnd_reduction() restores prior_cwnd), where
                # an episode that ran its course leaves cwnd at the lower ssthresh.
                self._put(self._state(tcb, "undo", now))
        if ca not in REDUCING:
            self.open_cwnd = cwnd

    def on_ack(self, tcb: Tcb, seg, now: float) -> None:
        self._transitions(tcb, now)
        sample = self._state(tcb, "ack", now)
        iss = self.iss
        sample["ack"] = (seg.ack - iss) & MASK
        sample["win"] = tcb.snd_wnd
        if seg.sack:
            sample["sack"] = [[(a - iss) & MASK, (b - iss) & MASK] for a, b in seg.sack]
        self._put(sample)

    def on_send(self, tcb: Tcb, seq: int, n: int, rtx: bool, now: float) -> None:
        self._transitions(tcb, now)
        sample = self._state(tcb, "tx", now)
        sample["seq"] = (seq - self.iss) & MASK
        sample["len"] = n
        sample["rtx"] = rtx
        self._put(sample)

    def on_event(self, tcb: Tcb, ev: str, now: float) -> None:
        self._put(self._state(tcb, ev, now))
        self._transitions(tcb, now)


class Session:
    """One recording: the connections matching a filter, to a file or kept in memory."""

    def __init__(self, sid: int, flt: Filter, path: str | None, loop_now, unix_now,
                 limit: int = LIVE_MAX) -> None:
        self.id = sid
        self.filter = flt
        self.path = path
        self.limit = limit
        self._mono = loop_now
        self._unix = unix_now
        self._ids = itertools.count(1)
        self.started = unix_now()
        self.records: list[dict] = []  # queued for the file, or kept (live)
        self.kept = 0
        self.dropped: dict[int, int] = {}
        self.conns: dict[int, str] = {}  # id -> "local peer"
        self.samples = 0
        self.file: TextIO | None = None
        head = {"ev": "recording", "version": VERSION, "start": round(self.started, 6),
                "filter": str(flt)}
        if path is not None:
            self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - until stop
        self.records.append(head)

    def header(self, tcb: Tcb, cid: int, t0: float) -> dict:
        """The "conn" record; `t0` is the loop time its samples count from."""
        start = self._unix() - (self._mono() - t0)
        return {"ev": "conn", "c": cid, "local": _ep(tcb.local), "peer": _ep(tcb.remote),
                "start": round(start, 6), "iss": tcb.iss, "irs": tcb.irs, "mss": tcb.mss,
                "cc": tcb.cc.name, "sack": tcb.sack_ok, "ts": tcb.ts_ok,
                "wscale": [tcb.snd_wscale, tcb.rcv_wscale] if tcb.ws_ok else None,
                "state": tcb.state.name}

    def new_id(self) -> int:
        return next(self._ids)

    def put(self, cid: int, sample: dict) -> None:
        self.samples += 1
        if self.file is None:
            if self.kept >= self.limit:
                self.dropped[cid] = self.dropped.get(cid, 0) + 1
                return
            self.kept += 1
        rec = dict(sample)
        rec["c"] = cid
        self.records.append(rec)

    def flush(self) -> None:
        if self.file is None or not self.records:
            return
        self.file.write("".join(json.dumps(r, separators=(",", ":")) + "\n"
                                for r in self.records))
        self.file.flush()
        self.records.clear()

    def snapshot(self) -> list[dict]:
        """A live recording's records so far (a file recording: read the file)."""
        out = list(self.records)
        out.extend({"ev": "dropped", "c": c, "count": n} for c, n in self.dropped.items())
        return out

    def close(self) -> None:
        if self.file is not None:
            for cid, n in self.dropped.items():
                self.records.append({"ev": "dropped", "c": cid, "count": n})
            self.flush()
            self.file.close()
            self.file = None

    def describe(self) -> dict:
        return {"id": self.id, "file": self.path, "filter": str(self.filter),
                "connections": len(self.conns), "samples": self.samples}


class Recordings:
    """Every recording of one stack: attaches recorders to matching connections (new
    ones through the stack's state observers, existing ones at start) and writes the
    file recordings every FLUSH_EVERY seconds."""

    def __init__(self, stack: StackShell) -> None:
        self.stack = stack
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._flush_handle: asyncio.TimerHandle | None = None
        self._observing = False

    def start(self, filter_text: str | None = "", path: str | None = None) -> Session:
        """Record the connections matching `filter_text` (ss filter syntax; empty: all)
        to `path` (JSON lines) or, without one, in memory for snapshot()."""
        flt = parse_filter(filter_text or "")
        if path is not None:
            path = os.path.abspath(path)
            if any(s.path == path for s in self.sessions.values()):
                raise ValueError(f"already recording to {path}")
        stack = self.stack
        session = Session(next(self._ids), flt, path, stack.now, time.time)
        self.sessions[session.id] = session
        if not self._observing:
            stack.observers.append(self._observe)
            self._observing = True
        now = stack.now()
        for tcb in list(stack.table.est.values()):
            if tcb.state not in _GONE:
                self._attach(session, tcb, now)
        self._schedule()
        log.info("recording %d started: %s (%s)", session.id, path or "live", flt)
        return session

    def get(self, sid: int) -> Session:
        try:
            return self.sessions[sid]
        except KeyError:
            raise ValueError(f"no recording {sid}") from None

    def stop(self, sid: int | None = None) -> list[Session]:
        """Stop one recording, or all (None); returns those stopped."""
        ids = list(self.sessions) if sid is None else [self.get(sid).id]
        stopped = []
        for i in ids:
            session = self.sessions.pop(i)
            self._detach_session(session)
            session.close()
            stopped.append(session)
            log.info("recording %d stopped (%d samples)", i, session.samples)
        if not self.sessions:
            self._unobserve()
        return stopped

    def list(self) -> list[dict]:
        return [s.describe() for s in self.sessions.values()]

    def close(self) -> None:
        self.stop()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    # ------------------------------------------------------------------ internals

    def _unobserve(self) -> None:
        if self._observing:
            with contextlib.suppress(ValueError):
                self.stack.observers.remove(self._observe)
            self._observing = False

    def _matches(self, session: Session, tcb: Tcb) -> bool:
        f = session.filter
        return not f or f.matches(tcb.local, tcb.remote)

    def _attach(self, session: Session, tcb: Tcb, now: float) -> None:
        if not self._matches(session, tcb):
            return
        rec = tcb.recorder
        if rec is None:
            rec = tcb.recorder = Recorder(tcb, now)
        if any(s is session for s, _ in rec.sinks):
            return
        cid = session.new_id()
        session.conns[cid] = f"{_ep(tcb.local)} {_ep(tcb.remote)}"
        session.records.append(session.header(tcb, cid, rec.t0))
        rec.sinks.append((session, cid))

    def _detach_session(self, session: Session) -> None:
        for tcb in list(self.stack.table.est.values()):
            rec = tcb.recorder
            if rec is None:
                continue
            rec.sinks = [(s, c) for s, c in rec.sinks if s is not session]
            if not rec.sinks:
                tcb.recorder = None

    def _observe(self, tcb: Tcb, ev: StateChanged) -> None:
        now = self.stack.now()
        if ev.new in _GONE:
            rec = tcb.recorder
            if rec is not None:
                rec._put({"ev": "end", "t": round(now - rec.t0, 6), "state": ev.new.name})
                tcb.recorder = None
            return
        if ev.new == State.ESTABLISHED and tcb.recorder is not None:
            # What the handshake settled, for a header written before it did.
            rec = tcb.recorder
            rec._put({"ev": "est", "t": round(now - rec.t0, 6), "mss": tcb.mss,
                      "sack": tcb.sack_ok, "ts": tcb.ts_ok,
                      "wscale": [tcb.snd_wscale, tcb.rcv_wscale] if tcb.ws_ok else None})
        if ev.new in _NEW and ev.old in (State.CLOSED, State.LISTEN, State.SYN_SENT):
            for session in self.sessions.values():
                self._attach(session, tcb, now)

    def _schedule(self) -> None:
        if self._flush_handle is None and any(s.file for s in self.sessions.values()):
            self._flush_handle = self.stack.loop.call_later(FLUSH_EVERY, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        for session in self.sessions.values():
            try:
                session.flush()
            except OSError as exc:  # a full disk costs the recording, not the daemon
                log.warning("recording %d: %s; stopped", session.id, exc)
                session.file = None
        self._schedule()

