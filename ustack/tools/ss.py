"""`ustack ss`: the connection table, like `ss -tan [-o]`.

Columns as ss prints them (State, Recv-Q, Send-Q, Local Address:Port, Peer Address:Port),
then, with -o, ss's `timer:(NAME,TIME,RETRANS)` (on = retransmission, persist,
keepalive, timewait), then the connection's age, an ustack extra. States and --state
filters are spelled as ss spells them. As with ss, the default shows connected sockets
without LISTEN, SYN-RECV and TIME-WAIT (ss's SS_CONN); -a shows everything, -l only
listeners.

With -i, each connection is followed by a line of its TCP info as `ss -ti` prints it
(iproute2 misc/ss.c tcp_stats_print(), in its order and units: rto, rtt, lastsnd ...
in ms, cwnd and ssthresh in segments, rates in bits per second); with -o too, the
negotiated options (ts, sack) lead that line, as they do for ss. With --json, the rows
get "info" (the same fields, keyed by the names ss prints: a "A/B" or "A,B" field is a
two-element list, a flag is true, rates are bits per second) and "tcp_info" (the raw
struct tcp_info, ustack/tcp/info.py).

A connection in CLOSE-WAIT longer than --close-wait-threshold (60 s) is flagged: the
peer has closed and we acknowledged, but the application never called close(). That
is almost always a bug in the application (a leaked socket), and such connections
pile up until the process runs out of descriptors.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import ssfilter as flt
from ..ctlproto import SS_FILTERS, SS_STATES
from .client import Control, ToolError, add_control_args, fail

# States are the ss spellings of the "ss" op's rows (ctlproto.SS_STATES): "ESTAB" ...
# ss's default (ss.c SS_CONN): every state but LISTEN, CLOSE, TIME-WAIT and SYN-RECV.
DEFAULT_STATES = frozenset(SS_STATES) - {"LISTEN", "UNCONN", "TIME-WAIT", "SYN-RECV"}
# Other spellings ss accepts (ss.c scan_state()), and the obvious ones it prints.
ALIASES = {"listen": "listening", "estab": "established", "syn-received": "syn-recv",
           "syn-rcv": "syn-recv", "close": "closed", "unconnected": "closed",
           "unconn": "closed"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ss", help="show connections, like ss -tan",
                       description="The daemon's connection table, like `ss -tan`.")
    add_control_args(p)
    p.add_argument("-a", "--all", action="store_true",
                   help="all states, including LISTEN, SYN-RECV and TIME-WAIT")
    p.add_argument("-l", "--listening", action="store_true", help="only listening sockets")
    p.add_argument("-o", "--options", action="store_true", help="show timer information")
    p.add_argument("-i", "--info", action="store_true",
                   help="show TCP information, as ss -ti (cwnd, rtt, retrans ...)")
    p.add_argument("--state", action="append", default=[], metavar="STATE",
                   help="only this state (repeatable), spelled as ss does: established, "
                        "syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, close-wait, "
                        "last-ack, closing, listening, closed, or all, connected, "
                        "synchronized, bucket, big")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--close-wait-threshold", type=float, default=60.0, metavar="SECONDS",
                   help="flag CLOSE-WAIT connections older than this (default: 60)")
    p.add_argument("filter", nargs="*", metavar="FILTER",
                   help="host ADDR, port N, ADDR:PORT (all must match)")
    p.set_defaults(func=run)


def ms_timer(seconds: float) -> str:
    """ss's print_ms_timer(): 200ms, 1.200ms, 59sec, 2min5sec, 12min."""
    timeout = int(round(seconds * 1000))
    secs, msecs = divmod(timeout, 1000)
    minutes, secs = divmod(secs, 60)
    out = ""
    if minutes:
        msecs = 0
        out += f"{minutes}min"
        if minutes > 9:
            secs = 0
    if secs:
        if secs > 9:
            msecs = 0
        out += f"{secs}{'.' if msecs else 'sec'}"
    if msecs:
        out += f"{msecs:03d}ms"
    return out or "0ms"


def sprint_bw(bps: float) -> str:
    """ss's sprint_bw() (without -n): 155G, 9.6M, 812k, in bits per second."""
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if bps >= limit:
            return f"{bps / limit:.3g}{suffix}"
    return f"{bps:g}"


def info_fields(ti: dict, options: bool = False) -> list[tuple[str, object, str]]:
    """The fields `ss -ti` prints for one struct tcp_info, in ss's order (iproute2
    misc/ss.c tcp_show_info() and tcp_stats_print()): (name, JSON value, text)."""
    out: list[tuple[str, object, str]] = []

    def add(name: str, value: object, text: str | None = None) -> None:
        out.append((name, value, name if text is None else text))

    opts = ti.get("options", 0)
    if options:  # ss sets these only with -o/-e (show_options)
        for bit, name in ((1, "ts"), (64, "usec_ts"), (2, "sack"), (8, "ecn"),
                          (16, "ecnseen"), (32, "fastopen")):
            if opts & bit:
                add(name, True)
    if ti.get("cong"):
        add("cong", ti["cong"], ti["cong"])
    if opts & 4:
        add("wscale", [ti["snd_wscale"], ti["rcv_wscale"]],
            f"wscale:{ti['snd_wscale']},{ti['rcv_wscale']}")
    if ti["rto"] and ti["rto"] != 3000000:
        add("rto", ti["rto"] / 1000, f"rto:{ti['rto'] / 1000:g}")
    if ti["backoff"]:
        add("backoff", ti["backoff"], f"backoff:{ti['backoff']}")
    if ti["rtt"]:
        rtt, var = ti["rtt"] / 1000, ti["rttvar"] / 1000
        add("rtt", [rtt, var], f"rtt:{rtt:g}/{var:g}")
    if ti["ato"]:
        add("ato", ti["ato"] / 1000, f"ato:{ti['ato'] / 1000:g}")
    for key, name in (("snd_mss", "mss"), ("pmtu", "pmtu"), ("rcv_mss", "rcvmss"),
                      ("advmss", "advmss"), ("snd_cwnd", "cwnd")):
        if ti[key]:
            add(name, ti[key], f"{name}:{ti[key]}")
    if 0 < ti["snd_ssthresh"] < 0xFFFF:
        add("ssthresh", ti["snd_ssthresh"], f"ssthresh:{ti['snd_ssthresh']}")
    for key in ("bytes_sent", "bytes_retrans", "bytes_acked", "bytes_received",
                "segs_out", "segs_in", "data_segs_out", "data_segs_in"):
        if ti[key]:
            add(key, ti[key], f"{key}:{ti[key]}")
    if ti["rtt"] and ti["snd_mss"] and ti["snd_cwnd"]:
        bps = ti["snd_cwnd"] * ti["snd_mss"] * 8_000_000 / ti["rtt"]
        add("send", bps, f"send {sprint_bw(bps)}bps")
    for key, name in (("last_data_sent", "lastsnd"), ("last_data_recv", "lastrcv"),
                      ("last_ack_recv", "lastack")):
        if ti[key]:
            add(name, ti[key], f"{name}:{ti[key]}")
    if ti["pacing_rate"] and ti["pacing_rate"] != (1 << 64) - 1:
        bps = ti["pacing_rate"] * 8
        text = f"pacing_rate {sprint_bw(bps)}bps"
        mx = ti["max_pacing_rate"]
        if mx and mx != (1 << 64) - 1:
            text += f"/{sprint_bw(mx * 8)}bps"
        add("pacing_rate", bps, text)
    if ti["delivery_rate"]:
        bps = ti["delivery_rate"] * 8
        add("delivery_rate", bps, f"delivery_rate {sprint_bw(bps)}bps")
    for key in ("delivered", "delivered_ce"):
        if ti[key]:
            add(key, ti[key], f"{key}:{ti[key]}")
    if ti["delivery_rate_app_limited"]:
        add("app_limited", True)
    if ti["busy_time"]:
        add("busy", ti["busy_time"] // 1000, f"busy:{ti['busy_time'] // 1000}ms")
    if ti["unacked"]:
        add("unacked", ti["unacked"], f"unacked:{ti['unacked']}")
    if ti["retrans"] or ti["total_retrans"]:
        add("retrans", [ti["retrans"], ti["total_retrans"]],
            f"retrans:{ti['retrans']}/{ti['total_retrans']}")
    for key in ("lost", "sacked", "dsack_dups", "fackets"):
        if ti[key]:
            add(key, ti[key], f"{key}:{ti[key]}")
    if ti["reordering"] != 3:
        add("reordering", ti["reordering"], f"reordering:{ti['reordering']}")
    if ti["reord_seen"]:
        add("reord_seen", ti["reord_seen"], f"reord_seen:{ti['reord_seen']}")
    if ti["rcv_rtt"]:
        add("rcv_rtt", ti["rcv_rtt"] / 1000, f"rcv_rtt:{ti['rcv_rtt'] / 1000:g}")
    for key in ("rcv_space", "rcv_ssthresh"):
        if ti[key]:
            add(key, ti[key], f"{key}:{ti[key]}")
    if ti["notsent_bytes"]:
        add("notsent", ti["notsent_bytes"], f"notsent:{ti['notsent_bytes']}")
    if ti["min_rtt"] and ti["min_rtt"] != 0xFFFFFFFF:
        add("minrtt", ti["min_rtt"] / 1000, f"minrtt:{ti['min_rtt'] / 1000:g}")
    for key in ("rcv_ooopack", "snd_wnd", "rcv_wnd", "rehash"):
        if ti[key]:
            add(key, ti[key], f"{key}:{ti[key]}")
    return out


def info_line(ti: dict, options: bool = False) -> str:
    """The second line `ss -ti` prints under a connection: a tab, then the fields."""
    return "\t" + "".join(" " + text for _, _, text in info_fields(ti, options))


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def states_wanted(args: argparse.Namespace) -> frozenset[str]:
    """The ss state names (ESTAB, TIME-WAIT ...) to show."""
    if args.state:
        wanted: set[str] = set()
        for name in args.state:
            key = ALIASES.get(name.lower(), name.lower())
            if key not in SS_FILTERS:
                raise ToolError(f"unknown state {name!r}; use one of: "
                                f"{', '.join(SS_FILTERS)}")
            wanted.update(SS_FILTERS[key])
        return frozenset(wanted)
    if args.listening:
        return frozenset({"LISTEN"})
    if args.all:
        return frozenset(SS_STATES)
    return DEFAULT_STATES


def select(rows: list[dict], states: frozenset[str], f: flt.Filter,
           threshold: float) -> list[dict]:
    out = []
    for row in rows:
        state = row["state"]
        if state not in states:
            continue
        if f and not f.matches(flt.split_endpoint(row["local"]), _peer(row["peer"])):
            continue
        row = dict(row)
        age = row.get("state_age")
        row["stale_close_wait"] = bool(state == "CLOSE-WAIT" and age is not None
                                       and age > threshold)
        out.append(row)
    return out


def _peer(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port) if port.isdigit() else -1


def render(rows: list[dict], options: bool, threshold: float, info: bool = False) -> str:
    header = ["State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port"]
    workers = any("worker" in r for r in rows)  # serve --workers N: which one owns it
    if workers:
        header.append("Worker")
    if options:
        header.append("Timer")
    header.append("Age")
    table = [header]
    notes = []
    for r in rows:
        line = [r["state"], str(r["recv_q"]), str(r["send_q"]), r["local"], r["peer"]]
        if workers:
            line.append(str(r.get("worker", "-")))
        if options:
            if r.get("timer_name"):
                line.append(f"timer:({r['timer_name']},{ms_timer(r['timer_left'])},"
                            f"{r['timer_retrans']})")
            else:
                line.append("")
        line.append(age_text(r.get("age")))
        if r.get("stale_close_wait"):
            line.append(f"<- CLOSE-WAIT for {age_text(r['state_age'])}")
            notes.append(r)
        table.append(line)
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(len(header))]
    lines = []
    for n, row in enumerate(table):
        cells = [c.ljust(widths[i]) if i < len(widths) else c for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        ti = rows[n - 1].get("tcp_info") if n and info else None
        if ti is not None:
            lines.append(info_line(ti, options))
    if notes:
        lines.append("")
        lines.append(
            f"{len(notes)} connection{'s' if len(notes) > 1 else ''} in CLOSE-WAIT for more "
            f"than {threshold:g} s: the peer closed and the application never called "
            "close() on its socket (a leak, almost always).")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        f = flt.parse(args.filter)
        states = states_wanted(args)
        with Control.from_args(args) as ctl:
            rep = ctl.request({"op": "ss", "info": True} if args.info else {"op": "ss"})
    except (ToolError, ValueError) as exc:
        return fail("ss", str(exc))
    listed_tw = sum(1 for r in rep["connections"] if r["state"] == "TIME-WAIT")
    rows = select(rep["connections"], states, f, args.close_wait_threshold)
    missing = rep.get("time_wait", listed_tw) - listed_tw
    if missing > 0 and any(r["state"] == "TIME-WAIT" for r in rows):
        print(f"ustack ss: {missing} more TIME-WAIT entries not listed (the daemon lists "
              f"the {listed_tw} oldest)", file=sys.stderr)
    listed_req = sum(1 for r in rep["connections"] if r["state"] == "SYN-RECV")
    missing = rep.get("syn_recv", listed_req) - listed_req
    if missing > 0 and any(r["state"] == "SYN-RECV" for r in rows):
        print(f"ustack ss: {missing} more SYN-RECV entries not listed (the daemon lists "
              f"{listed_req})", file=sys.stderr)
    if args.json:
        for row in rows:
            ti = row.get("tcp_info")
            if ti is not None and args.info:
                row["info"] = {name: value for name, value, _ in info_fields(ti, True)}
        json.dump({"address": rep.get("address"), "connections": rows}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(render(rows, args.options, args.close_wait_threshold, args.info))
    return 0
