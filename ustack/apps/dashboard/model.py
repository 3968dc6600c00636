"""What the dashboard shows, gathered inside the daemon: bounded in memory and per request.

`Dashboard` watches one stack. Once a second it takes a sample: connections per state
(one pass over the live TCBs; TIME-WAIT is the record count, no pass) and the counters,
and keeps the last `history` samples in a ring, so a page opened now shows the minutes
before it. Between samples it keeps, from the stack's hooks:

- when each CLOSE-WAIT connection entered that state (its age; older than
  `close_wait_warn` seconds is flagged as a probable leak: Linux has no CLOSE_WAIT
  timeout, the connection stays until the application calls close());
- per destination (remote address and port), how many ports of ip_local_port_range are
  held by TIME-WAIT records: counted as records come (a state change to TIME_WAIT that
  left a record in the table) and go (the table's gone-hook), never by scanning the
  table, which may hold a million records.

`summary()` is what the page polls: the ring, rates, TIME-WAIT costs, leaks and one page
of the connection table (`page()`), each part bounded whatever the table holds.
"""

from __future__ import annotations

import itertools
import os
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...config import Config
from ...ssfilter import Filter
from ...tcp.context import Context
from ...tcp.state import State
from ...tcp.timewait import TimeWaitTable
from ...wire.ip import ip_to_bytes, ip_to_str
from .ladders import Ladders

if TYPE_CHECKING:
    from ...aio import Stack
    from ...tcp.events import Cause, StateChanged
    from ...tcp.tcb import Tcb

# The chart's series, in the order of the close path (ss names).
CHART_STATES = ("ESTAB", "SYN-RECV", "SYN-SENT", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSING",
                "CLOSE-WAIT", "LAST-ACK", "TIME-WAIT")
HISTORY = 300  # samples (seconds) kept in the ring: five minutes, 2MSL with tcp_msl=60 twice
CLOSE_WAIT_WARN = 60.0  # seconds; see the module docstring
PAGE_MAX = 200  # table rows per page at most
LEAKS_MAX = 50  # flagged CLOSE-WAIT connections listed (oldest first); the rest counted
DESTS_MAX = 10  # destinations listed in the port-use panel (most TIME-WAIT first)
TW_SCAN = 50_000  # TIME-WAIT records a filtered page request decodes, at most (~15 ms)
RATE_WINDOW = 10  # seconds: the rates are over the last sample and over this window
TW_PROBE = 2000  # scratch records inserted at start-up to measure one record's bytes
# nstat's groups (the MIB a counter belongs to), longest prefix first.
GROUPS = ("TcpExt", "IpExt", "IcmpMsg", "Icmp", "UdpLite", "Udp", "Tcp", "Ip", "Ustack")
# The order nstat prints them in (/proc/net/snmp, then /proc/net/netstat), ustack's last.
GROUP_ORDER = ("Ip", "Icmp", "IcmpMsg", "Tcp", "Udp", "UdpLite", "TcpExt", "IpExt", "Ustack")


def group_of(name: str) -> str:
    return next((g for g in GROUPS if name.startswith(g)), "Other")


def measure_tw_record(n: int = TW_PROBE) -> int:
    """Bytes one TIME-WAIT record holds, measured: tracemalloc's traced memory across `n`
    insert() calls into a scratch TimeWaitTable, divided by n. That is the 12-byte key
    (a bytes object of its own, as the demux slices one from each frame), the packed
    record (a bytes object), the dict slot (growth amortised) and the reference in the
    expiry bucket. The scratch table has its own Context, so no real counter moves."""
    table = TimeWaitTable(Context(Config(tcp_max_tw_buckets=n + 1)))
    keys = [os.urandom(12) for _ in range(n)]  # allocated before tracing: see below
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            table.insert(key, snd_nxt=1, rcv_nxt=1, ts_recent=0, ts_recent_stamp=0.0,
                         ts_offset=0, wnd=65535, wscale=7, has_ts=False, now=100.0)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        if started:
            tracemalloc.stop()
    # The keys were made outside the traced span; a real record's key is its own object
    # too, so its size is added (sys.getsizeof would say the same: 45 bytes on 64-bit).
    return round((after - before) / n) + keys[0].__sizeof__()


@dataclass(slots=True)
class Sample:
    t: float  # wall clock (time.time()), what the browser's chart shows
    states: dict[str, int]
    counters: dict[str, int]


def conn_id(local: str, peer: str) -> str:
    """A URL-safe name of a connection: `10.77.0.2:80-10.77.0.1:43120`."""
    return f"{local}-{peer}"


def parse_conn_id(text: str) -> tuple[str, str] | None:
    local, sep, peer = text.partition("-")
    if not sep or local.count(":") != 1 or peer.count(":") != 1:
        return None
    return local, peer


def key_matcher(flt: Filter) -> Callable[[bytes], bool]:
    """`flt.matches` on a demux key's bytes, without decoding it (the key: remote
    address, local address, remote port, local port; table.make_key())."""
    terms = [(ip_to_bytes(t.host) if t.host is not None else None,
              t.port.to_bytes(2, "big") if t.port is not None else None) for t in flt.terms]

    def match(key: bytes) -> bool:
        for h, p in terms:
            if not ((h is None or key[0:4] == h) and (p is None or key[8:10] == p)
                    or (h is None or key[4:8] == h) and (p is None or key[10:12] == p)):
                return False
        return True
    return match


def _ep(key: bytes, local: bool) -> str:
    if local:
        return f"{ip_to_str(key[4:8])}:{(key[10] << 8) | key[11]}"
    return f"{ip_to_str(key[0:4])}:{(key[8] << 8) | key[9]}"


class Dashboard:
    """The daemon side of the dashboard (see the module docstring)."""

    def __init__(self, stack: Stack, *, close_wait_warn: float = CLOSE_WAIT_WARN,
                 history: int = HISTORY, clock: Callable[[], float] = time.time) -> None:
        self.stack = stack
        self.close_wait_warn = close_wait_warn
        self.clock = clock
        self.samples: deque[Sample] = deque(maxlen=history)
        self.tw_record_bytes = measure_tw_record()
        # (local, peer) -> stack.now() when it entered CLOSE-WAIT.
        self.close_wait: dict[tuple[str, str], float] = {}
        # (remote ip, remote port) -> TIME-WAIT records whose local port is ephemeral.
        self.tw_ports: Counter[tuple[str, int]] = Counter()
        self._timer = None
        self.ladders = Ladders(stack)
        for key in stack.table.tw.records:  # records older than us (none under `serve`)
            self._tw_added(key)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Hook into the stack and sample now and once a second from here on."""
        self.stack.observers.append(self._observe)
        self.stack.on_time_wait_gone(self._tw_gone)
        self._tick()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._observe in self.stack.observers:
            self.stack.observers.remove(self._observe)
        self.stack.off_time_wait_gone(self._tw_gone)
        self.ladders.close()

    def _tick(self) -> None:
        self.sample()
        self.ladders.expire()
        loop = self.stack.loop
        # On the next whole second, so samples line up with the chart's time axis.
        now = self.clock()
        self._timer = loop.call_later(1.0 - now % 1.0 or 1.0, self._tick)

    # ------------------------------------------------------------------ hooks

    def _observe(self, tcb: Tcb, ev: StateChanged) -> None:
        key = (f"{tcb.local[0]}:{tcb.local[1]}", f"{tcb.remote[0]}:{tcb.remote[1]}")
        if ev.new == State.CLOSE_WAIT:
            self.close_wait[key] = self.stack.now()
        elif ev.old == State.CLOSE_WAIT:
            self.close_wait.pop(key, None)
        # The table moved the TCB into a record before observers run (stack.py); on
        # TIME_WAIT bucket overflow there is no record, and nothing to count.
        if ev.new == State.TIME_WAIT and tcb.key in self.stack.table.tw.records:
            self._tw_added(tcb.key)
        self.ladders.state(tcb, ev)

    def _ephemeral(self, key: bytes) -> bool:
        lo, hi = self.stack.config.ip_local_port_range
        return lo <= ((key[10] << 8) | key[11]) <= hi

    def _tw_added(self, key: bytes) -> None:
        if self._ephemeral(key):
            self.tw_ports[(ip_to_str(key[0:4]), (key[8] << 8) | key[9])] += 1

    def _tw_gone(self, key: bytes, cause: Cause) -> None:
        if self._ephemeral(key):
            dest = (ip_to_str(key[0:4]), (key[8] << 8) | key[9])
            left = self.tw_ports.get(dest, 0) - 1
            if left > 0:
                self.tw_ports[dest] = left
            else:
                self.tw_ports.pop(dest, None)
        self.ladders.tw_gone(key, cause)

    # ------------------------------------------------------------------ samples

    def counts(self) -> dict[str, int]:
        """Connections per state now: one pass over the live TCBs, TIME-WAIT counted."""
        counts = Counter(tcb.state.ss_name for tcb in self.stack.table.est.values())
        states = {name: counts.get(name, 0) for name in CHART_STATES}
        states["TIME-WAIT"] = len(self.stack.table.tw)
        return states

    def sample(self) -> Sample:
        s = Sample(round(self.clock(), 3), self.counts(), dict(self.stack.stats))
        self.samples.append(s)
        return s

    def history(self) -> dict:
        """The ring as columns, the layout uPlot takes: times, then one list per state."""
        samples = list(self.samples)
        return {"t": [s.t for s in samples],
                "states": {name: [s.states[name] for s in samples] for name in CHART_STATES}}

    def rates(self) -> list[dict]:
        """Counters with their rate per second over the last sample and over the last
        RATE_WINDOW seconds; the ones that moved in the window first (fastest first),
        then the others that are not zero, by group. TcpCurrEstab is a gauge: its value."""
        samples = self.samples
        if not samples:
            return []
        last = samples[-1]
        prev = samples[-2] if len(samples) > 1 else None
        base = samples[max(0, len(samples) - 1 - RATE_WINDOW)]
        span = last.t - base.t
        out = []
        for name, value in last.counters.items():
            if name == "TcpCurrEstab":
                rate = rate_w = 0.0
            else:
                dt = last.t - prev.t if prev is not None else 0.0
                rate = (value - prev.counters.get(name, 0)) / dt if dt > 0 else 0.0
                rate_w = (value - base.counters.get(name, 0)) / span if span > 0 else 0.0
            if not value and not rate_w:
                continue
            out.append({"name": name, "group": group_of(name), "value": value,
                        "rate": round(rate, 2), "rate_window": round(rate_w, 2),
                        "moved": rate_w != 0.0})
        out.sort(key=lambda c: (not c["moved"], -abs(c["rate_window"]),
                                GROUP_ORDER.index(c["group"]) if c["group"] in GROUP_ORDER
                                else 99,
                                c["name"]))
        return out

    # ------------------------------------------------------------------ costs

    def time_wait(self) -> dict:
        """TIME-WAIT costs: records, the bytes they hold, ephemeral ports per destination."""
        stack = self.stack
        cfg = stack.config
        lo, hi = cfg.ip_local_port_range
        n = len(stack.table.tw)
        # Live connections on ephemeral ports, per destination: they hold a port too.
        est: Counter[tuple[str, int]] = Counter()
        for tcb in stack.table.est.values():
            if lo <= tcb.local[1] <= hi:
                est[tcb.remote] += 1
        listeners = sum(1 for p in stack.table.listeners if lo <= p <= hi)
        size = hi - lo + 1
        dests = []
        for (ip, port), tw in self.tw_ports.most_common(DESTS_MAX):
            live = est.get((ip, port), 0)
            free = max(size - tw - live - listeners, 0)
            dests.append({"dest": f"{ip}:{port}", "time_wait": tw, "live": live,
                          "free": free, "used_pct": round(100 * (size - free) / size, 2)})
        return {"records": n, "record_bytes": self.tw_record_bytes,
                "bytes": n * self.tw_record_bytes, "max_buckets": cfg.tcp_max_tw_buckets,
                "tcp_msl": cfg.tcp_msl, "tcp_tw_reuse": cfg.tcp_tw_reuse,
                "port_range": [lo, hi], "port_range_size": size,
                "destinations": dests, "destinations_total": len(self.tw_ports)}

    def leaks(self) -> dict:
        """CLOSE-WAIT connections older than the threshold, oldest first."""
        now = self.stack.now()
        old = [(now - since, local, peer) for (local, peer), since in self.close_wait.items()
               if now - since >= self.close_wait_warn]
        old.sort(reverse=True)
        return {"threshold": self.close_wait_warn, "count": len(old),
                "close_wait": len(self.close_wait),
                "flagged": [{"id": conn_id(local, peer), "local": local, "peer": peer,
                             "age": round(age, 1)} for age, local, peer in old[:LEAKS_MAX]]}

    # ------------------------------------------------------------------ table

    def page(self, flt: Filter, states: frozenset[str] | None, offset: int, limit: int
             ) -> dict:
        """One page of the connection table: rows `offset`..`offset+limit` of those that
        match the filter and the states (None: all). The matches are counted while the
        page is taken; TIME-WAIT records are looked at up to TW_SCAN when a filter or a
        state set needs each one decoded (`scanned` says how many were)."""
        limit = max(1, min(limit, PAGE_MAX))
        offset = max(0, offset)
        now = self.stack.now()
        rows: list[dict] = []
        total = 0

        def take(make: Callable[[], dict]) -> None:
            nonlocal total
            if offset <= total < offset + limit:
                rows.append(make())
            total += 1

        table = self.stack.table
        want = (lambda s: True) if states is None else states.__contains__
        if want("LISTEN"):
            for lst in table.listeners.values():
                local = (ip_to_str(lst.ip), lst.port)
                if flt.matches(local, ("0.0.0.0", 0)):
                    take(lambda lst=lst, local=local: {
                        "state": "LISTEN", "local": f"{local[0]}:{local[1]}",
                        "peer": "0.0.0.0:*", "recv_q": len(lst.accept_queue),
                        "send_q": lst.backlog, "timer": "", "age": None, "id": None})
        for tcb in table.est.values():
            name = tcb.state.ss_name
            if want(name) and flt.matches(tcb.local, tcb.remote):
                take(lambda tcb=tcb, name=name: self._tcb_row(tcb, name, now))
        tw = table.tw
        scanned = len(tw)  # looked at, or left out by the state set without a look
        if want("TIME-WAIT"):
            if not flt:
                # No filter: the count is known, the page is a slice.
                start = max(0, offset - total)
                if total + len(tw) > offset and len(rows) < limit:
                    for key in itertools.islice(tw.records, start, start + limit - len(rows)):
                        rows.append(self._tw_row(key, now))
                total += len(tw)
            else:
                scanned = 0
                match = key_matcher(flt)
                for key in itertools.islice(tw.records, TW_SCAN):
                    scanned += 1
                    if match(key):
                        take(lambda key=key: self._tw_row(key, now))
        return {"rows": rows, "total": total, "offset": offset, "limit": limit,
                "filter": str(flt) if flt else "", "tw_scanned": scanned,
                "tw_records": len(tw)}

    def _tcb_row(self, tcb: Tcb, name: str, now: float) -> dict:
        t = tcb.timer_info(now)
        local = f"{tcb.local[0]}:{tcb.local[1]}"
        peer = f"{tcb.remote[0]}:{tcb.remote[1]}"
        since = self.close_wait.get((local, peer)) if name == "CLOSE-WAIT" else None
        return {"state": name, "local": local, "peer": peer,
                "recv_q": tcb.recv_queue, "send_q": tcb.send_queue,
                "timer": f"{t[0]},{t[1]:.3f}s,{t[2]}" if t else "",
                "age": round(now - tcb.created, 3),
                "state_age": round(now - since, 1) if since is not None else None,
                "id": conn_id(local, peer)}

    def _tw_row(self, key: bytes, now: float) -> dict:
        r = self.stack.table.tw.get(key)
        local, peer = _ep(key, True), _ep(key, False)
        return {"state": "TIME-WAIT", "local": local, "peer": peer, "recv_q": 0, "send_q": 0,
                "timer": f"timewait,{r.remaining(now):.3f}s,0" if r else "",
                "age": round(r.age(now), 3) if r else None, "id": conn_id(local, peer)}

    # ------------------------------------------------------------------ the poll

    def summary(self, flt: Filter, states: frozenset[str] | None, offset: int = 0,
                limit: int = 50, since: float | None = None) -> dict:
        """Everything the page shows, in one bounded frame. `since`: only samples newer
        than this time (the page has the older ones)."""
        hist = self.history()
        if since is not None:
            i = next((i for i, t in enumerate(hist["t"]) if t > since), len(hist["t"]))
            hist = {"t": hist["t"][i:], "states": {k: v[i:] for k, v in hist["states"].items()}}
        return {"now": round(self.clock(), 3), "address": self.stack.address,
                "states": self.counts(), "history": hist, "history_max": self.samples.maxlen,
                "counters": self.rates(), "time_wait": self.time_wait(),
                "leaks": self.leaks(), "table": self.page(flt, states, offset, limit),
                "ladders": self.ladders.watched()}
