"""packetdrill's script language, parsed into events (no execution here).

A script is a sequence of lines, each with a time and one event:

    0     socket(..., SOCK_STREAM, IPPROTO_TCP) = 3       a system call and its result
    +0    < S 0:0(0) win 32792 <mss 1000,sackOK,nop,wscale 7>   a packet to inject
    +0    > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>  a packet to expect
    +.1~+.2 > . 1:1(0) ack 1                            any time in that window
    +0...0.2 read(4, ..., 1000) = 1000                  a call that blocks till 0.2 s
    `sysctl -q net.ipv4.tcp_sack=0`                    a shell command (no time)
    +0 %{ assert tcpi_snd_cwnd == 10 }%                 Python on the socket's TCP_INFO

Times: `0.1` is absolute (seconds since the script started), `+0.1` relative to the
previous event's start, `*` any time (outbound only). Comments run from `//` to the end
of the line, and `/* ... */` may span lines. This module follows the grammar of
packetdrill's parser.y as far as the TCP scripts of gtests/net use it; what it does not
know is a ScriptError naming the line, never a silent skip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class ScriptError(ValueError):
    """The script cannot be parsed (or uses a construct this runner does not have)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class Time:
    """When an event happens: `start` (relative to the previous event when `relative`),
    and for a window `a~b` or a blocking call `a...b` its end (`end_relative` likewise).
    `any` is packetdrill's `*`."""

    start: float = 0.0
    relative: bool = False
    end: float | None = None
    end_relative: bool = False
    any: bool = False


@dataclass(slots=True)
class Packet:
    direction: str  # "<" inbound (the script sends it), ">" outbound (the stack must)
    flags: str  # packetdrill's letters: S F R P . E W U
    start: int
    end: int
    ack: int | None = None
    win: int | None = None
    options: list[str] | None = None  # None: not given; ["..."]: any
    ecn: str | None = None  # [ect0] [ect1] [ce] [noecn] [ect01]
    tos: str | None = None


@dataclass(slots=True)
class Syscall:
    name: str
    args: list[str]
    result: str  # the expected return value as written ("0", "-1", "1000", "4")
    errno: str | None = None  # "EAGAIN" in "= -1 EAGAIN (...)"
    blocking_end: bool = False  # the time has an end: the call blocks until then


@dataclass(slots=True)
class Shell:
    command: str


@dataclass(slots=True)
class Flag:
    """A command-line option written into the script (`--tolerance_usecs=10000`)."""

    name: str
    value: str


@dataclass(slots=True)
class Code:
    source: str


@dataclass(slots=True)
class Event:
    line: int
    time: Time
    what: Packet | Syscall | Shell | Code | Flag
    text: str = field(default="")


_NUM = r"[0-9]*\.?[0-9]+"
_TIME_RE = re.compile(
    rf"^(?P<any>\*)|^(?P<rel>\+)?(?P<start>{_NUM})"
    rf"(?:\s*(?P<sep>~|\.\.\.)\s*(?P<erel>\+)?(?P<end>{_NUM}))?")
_PKT_RE = re.compile(
    r"^(?P<dir>[<>])\s*(?:\[(?P<ecn>[a-z0-9]+)\]\s*)?(?P<flags>[SFRPUEW.]+|-)\s+"
    r"(?P<start>\d+):(?P<end>\d+)\((?P<len>\d+)\)"
    r"(?:\s+ack\s+(?P<ack>\d+))?(?:\s+win\s+(?P<win>\d+))?"
    r"\s*(?:<(?P<opts>[^>]*)>)?\s*(?:\((?P<tos>[^)]*)\))?\s*$")
_CALL_RE = re.compile(r"^(?P<name>[a-z_0-9]+)\((?P<args>.*)\)\s*=\s*(?P<result>.*)$", re.S)


def _strip_comments(text: str) -> str:
    """Remove /* */ (keeping line breaks) and // comments, but not inside backticks
    or %{ }% blocks."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("%{", i):
            j = text.find("}%", i)
            j = n if j < 0 else j + 2
            out.append(text[i:j])
            i = j
        elif text[i] == "`":
            j = text.find("`", i + 1)
            j = n if j < 0 else j + 1
            out.append(text[i:j])
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def split_args(text: str) -> list[str]:
    """Split a call's arguments at top-level commas ([...], {...}, (...) nest)."""
    args, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        args.append("".join(cur).strip())
    return args


def _parse_time(line: int, text: str) -> tuple[Time, str]:
    m = _TIME_RE.match(text)
    if not m or not m.group(0):
        raise ScriptError(line, f"expected a time at the start of {text.strip()!r}")
    rest = text[m.end():]
    if m["any"]:
        return Time(any=True), rest
    end = None if m["end"] is None else float(m["end"])
    t = Time(float(m["start"]), bool(m["rel"]), end, bool(m["erel"]))
    if m["sep"] == "...":
        rest = "\x00" + rest  # marks a blocking call
    return t, rest


def _parse_packet(line: int, text: str) -> Packet:
    m = _PKT_RE.match(text.strip())
    if not m:
        raise ScriptError(line, f"cannot parse the packet {text.strip()!r}")
    start, end, length = int(m["start"]), int(m["end"]), int(m["len"])
    if end - start != length:
        raise ScriptError(line, f"{text.strip()!r}: end - start is not the length")
    opts = None
    if m["opts"] is not None:
        opts = [o.strip() for o in m["opts"].split(",") if o.strip()]
    return Packet(m["dir"], m["flags"], start, end,
                  None if m["ack"] is None else int(m["ack"]),
                  None if m["win"] is None else int(m["win"]), opts, m["ecn"], m["tos"])


def _parse_call(line: int, text: str, blocking: bool) -> Syscall:
    m = _CALL_RE.match(text.strip())
    if not m:
        raise ScriptError(line, f"cannot parse the call {text.strip()!r}")
    result = m["result"].strip()
    errno = None
    rm = re.match(r"^(-?\w+)(?:\s+(E[A-Z0-9]+))?(?:\s*\(.*\))?\s*$", result)
    if not rm:
        raise ScriptError(line, f"cannot parse the result {result!r}")
    result, errno = rm.group(1), rm.group(2)
    return Syscall(m["name"], split_args(m["args"]), result, errno, blocking)


def _call_complete(text: str) -> bool:
    """The call's parentheses have closed and its `= result` follows."""
    depth = 0
    for j, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return "=" in text[j + 1:]
    return False


def parse(text: str) -> list[Event]:
    """The events of a script, in order."""
    text = _strip_comments(text)
    events: list[Event] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        raw = lines[i]
        lineno = i + 1
        i += 1
        s = raw.strip()
        if not s:
            continue
        if s.startswith("--"):
            name, _, value = s[2:].partition("=")
            events.append(Event(lineno, Time(relative=True), Flag(name.strip(), value.strip()), s))
            continue
        if s.startswith("`"):
            cmd = s
            while not (len(cmd) > 1 and cmd.endswith("`")) and i < len(lines):
                cmd += "\n" + lines[i].strip()
                i += 1
            events.append(Event(lineno, Time(relative=True), Shell(cmd.strip("`").strip()), s))
            continue
        time, rest = _parse_time(lineno, s)
        blocking = rest.startswith("\x00")
        rest = rest.lstrip("\x00").strip()
        if rest.startswith("`"):
            cmd = rest
            while not (len(cmd) > 1 and cmd.endswith("`")) and i < len(lines):
                cmd += "\n" + lines[i].strip()
                i += 1
            events.append(Event(lineno, time, Shell(cmd.strip("`").strip()), s))
            continue
        if rest.startswith("%{"):
            code = rest
            while "}%" not in code and i < len(lines):
                code += "\n" + lines[i]
                i += 1
            body = code[2:code.rfind("}%")]
            events.append(Event(lineno, time, Code(body), s))
            continue
        if rest.startswith(("<", ">")):
            events.append(Event(lineno, time, _parse_packet(lineno, rest), s))
            continue
        # A call may continue over several lines until its parentheses balance and the
        # result is given.
        call = rest
        while not _call_complete(call) and i < len(lines):
            call += " " + lines[i].strip()
            i += 1
        events.append(Event(lineno, time, _parse_call(lineno, call, blocking), s))
    return events
