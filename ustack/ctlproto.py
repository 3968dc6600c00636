"""The control socket's protocol: what a client and the daemon say to each other.

This module is the contract between the daemon's server (ustack/control.py) and its
clients (ustack/tools/, or anything else that speaks newline-delimited JSON over a Unix
socket). It holds message shapes, constants and plain strings only, and imports nothing
from the core: a client can use it without loading the stack.

Where: `/run/ustack/NAME.sock` (NAME = the TUN interface) unless `serve --control PATH`.
The socket is created mode 0600 (under umask 0177, so there is no moment when it is
wider), and a peer whose SO_PEERCRED uid is neither the daemon's nor root's is turned
away as well: another user gets "permission denied".

Protocol (version 1). A client sends one JSON object per line; every request has an
"op". The daemon answers each with one JSON object on one line: {"ok": true, ...} or
{"ok": false, "error": "message"}. A malformed line (bad JSON, not an object, unknown
op, wrong field types) gets an error reply and the connection stays usable; a line
longer than 64 KiB gets an error reply and the connection is closed. Several requests
may be sent on one connection, except after "trace" and "connect", which turn the
connection into a stream.

  {"op": "ping"}                -> {"ok", "version", "name", "address", "pid"}
  {"op": "status"}              -> Stack.status(): connections, stats, time_wait count
  {"op": "ss"}                  -> {"ok", "now", "address", "connections": [row, ...],
                                    "time_wait": count}; at most table.TW_ROWS rows are
                                    TIME-WAIT, "time_wait" is the true count
        row: state (ss spelling: ESTAB, TIME-WAIT ...), local, peer, recv_q, send_q,
        timer ("" or "on,0.200s,0" as in table.rows), timer_name, timer_left,
        timer_retrans, age (s since the connection began), state_age (s in this state)
        With "info": true, each connection (not LISTEN or TIME-WAIT) also has
        "tcp_info": Linux's struct tcp_info as ustack.tcp.info.TcpInfo fields (Linux's
        names without tcpi_, Linux's units: rto/rtt in us, cwnd in segments) + "cong".
  {"op": "record", "action": "start", "filter": "port 80", "file": "/abs/rec.jsonl"}
        -> {"ok", "id", "recordings": [{"id", "file", "filter", "connections",
            "samples"}]}: record the sender state of matching connections (live and
            future) to the file, or, without "file", in memory for "snapshot".
  {"op": "record", "action": "stop", "id": N}   -> {"ok", "stopped": [...]}; no id: all
  {"op": "record", "action": "snapshot", "id": N} -> {"ok", "records": [record, ...]}
        the records of a live (in-memory) recording so far, in the file format of
        ustack/record.py.
  {"op": "record", "action": "list"}            -> {"ok", "recordings": [...]}
  {"op": "nstat", "client": "NAME", "reset": false, "update": true}
        -> {"ok", "counters": {absolute}, "delta": {since this client's last call},
            "interval": seconds or null, "first": bool}
        History is kept in the daemon per client name (nstat keeps it per user in a
        file). The first call, and a call with "reset", report absolute values as
        deltas. "update": false leaves the history alone (nstat -s).
  {"op": "capture", "action": "start" | "stop" | "list", "file": "/abs/path.pcap"}
        -> {"ok", "captures": [{"file", "frames"}]}; stop without "file" stops all.
  {"op": "trace", "filter": "port 80", "segments": false}
        -> {"ok", "filter"}, then one JSON object per line until the client closes:
           {"type": "state", "t": unix time, "local", "peer", "passive", "old", "new",
            "cause", "cause_raw", "errno"}   for every state change of a matching
                connection (passive: the peer opened it), seq/ack in "cause" relative
                to the ISNs, TIME_WAIT -> CLOSED when the record goes;
           {"type": "segment", "t", "dir": "in" | "out", "src", "dst", "flags", "seq",
            "ack", "len", "win"}    for every TCP segment, if "segments" was true;
           {"type": "dropped", "count"}   when the client read too slowly.
  {"op": "connect", "host", "port", "linger": null | seconds, "nodelay": false}
        -> {"ok", "local", "peer"} once the handshake is done, or {"ok": false,
           "error", "errno"}. Then the connection carries the TCP stream:
           client -> daemon: raw bytes; the client's shutdown(SHUT_WR) ends the input
             and the daemon half-closes (FIN), or with linger 0 aborts (RST), or with
             linger N > 0 closes with SO_LINGER N.
           daemon -> client: frames of 1 type byte + 4-byte big-endian length + payload:
             b"D" data, b"E" end of stream (the peer's FIN), b"X" the end: a JSON
             payload {"clean": bool, "errno": int, "error": str, "state": str}, after
             which the daemon closes the socket.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

VERSION = 1
RUN_DIR = "/run/ustack"
MAX_LINE = 64 * 1024  # longest request line; longer gets an error and the connection closes

# "connect" stream, daemon -> client: 1 type byte + 4-byte big-endian length + payload.
FRAME = struct.Struct("!cI")
F_DATA, F_EOF, F_EXIT = b"D", b"E", b"X"

# The state names the protocol uses ("old"/"new" in trace events, "state" in a connect
# exit): RFC 9293's eleven states in its order, spelled as ustack.tcp.state.State's names.
STATES = ("CLOSED", "LISTEN", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1",
          "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT")

# The "state" of an "ss" row, as `ss -tan` prints it (iproute2 ss.c sstate_name[]).
SS_NAMES = {
    "CLOSED": "UNCONN", "LISTEN": "LISTEN", "SYN_SENT": "SYN-SENT",
    "SYN_RECEIVED": "SYN-RECV", "ESTABLISHED": "ESTAB", "FIN_WAIT_1": "FIN-WAIT-1",
    "FIN_WAIT_2": "FIN-WAIT-2", "CLOSE_WAIT": "CLOSE-WAIT", "CLOSING": "CLOSING",
    "LAST_ACK": "LAST-ACK", "TIME_WAIT": "TIME-WAIT",
}
SS_STATES = tuple(SS_NAMES[s] for s in STATES)


def _ss(*names: str) -> frozenset[str]:
    return frozenset(SS_NAMES[n] for n in names)


def _ss_but(*names: str) -> frozenset[str]:
    return frozenset(SS_STATES) - _ss(*names)


# `ss --state` filter names, as ss spells them (ss.c scan_state()) -> ss state names.
SS_FILTERS: dict[str, frozenset[str]] = {
    "established": _ss("ESTABLISHED"), "syn-sent": _ss("SYN_SENT"),
    "syn-recv": _ss("SYN_RECEIVED"), "fin-wait-1": _ss("FIN_WAIT_1"),
    "fin-wait-2": _ss("FIN_WAIT_2"), "time-wait": _ss("TIME_WAIT"),
    "closed": _ss("CLOSED"), "close-wait": _ss("CLOSE_WAIT"),
    "last-ack": _ss("LAST_ACK"), "listening": _ss("LISTEN"), "closing": _ss("CLOSING"),
    "all": frozenset(SS_STATES),
    "connected": _ss_but("LISTEN", "CLOSED"),
    "synchronized": _ss_but("LISTEN", "CLOSED", "SYN_SENT"),
    "bucket": _ss("SYN_RECEIVED", "TIME_WAIT"),
    "big": _ss_but("SYN_RECEIVED", "TIME_WAIT"),
}


class ControlError(Exception):
    """No usable control socket: none found, several to choose from, or (in the daemon)
    the socket cannot be created (path in use, not a socket ...)."""


def default_path(name: str) -> str:
    return f"{RUN_DIR}/{name}.sock"


def resolve_path(control: str | None, name: str | None = None) -> str:
    """The control socket a client should use: --control, else $USTACK_CONTROL, else
    NAME's, else the only one in RUN_DIR."""
    if control:
        return control
    env = os.environ.get("USTACK_CONTROL")
    if env:
        return env
    if name:
        return default_path(name)
    try:
        socks = sorted(p for p in Path(RUN_DIR).glob("*.sock"))
    except OSError:
        socks = []
    if len(socks) == 1:
        return str(socks[0])
    if not socks:
        raise ControlError(f"no control socket in {RUN_DIR}: is `ustack serve` running? "
                           "(or give --control PATH)")
    names = ", ".join(p.stem for p in socks)
    raise ControlError(f"several daemons are running ({names}): pick one with --control PATH")
