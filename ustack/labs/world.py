"""A lab's world: a throwaway network namespace holding a TUN device, a ustack Stack on
it and the kernel as its peer, all in this one process, with both sides watched.

    kernel sockets (10.77.0.1) ── lab0 (TUN) ── the lab wire ── ustack Stack (10.77.0.2)

- The namespace is created with `ip netns add` and the process's (single) thread enters
  it with setns(2); kernel sockets opened from then on, the TUN device and `sysctl`s
  written through `ip netns exec` live there, so nothing reaches the host's network.
  On the way out the thread goes home and the namespace is deleted, also on failure.
- The lab wire sits where ustack's impairment layer sits (Stack.set_impairment(): the
  same `inbound`/`outbound` interface): it delays each direction by half the round trip
  so every state lasts long enough to be seen, and can lose chosen segments (the lost
  last ACK). It records every segment at the TUN, where the kernel sends and receives.
- ustack's states come from its own state events (Stack.observers, and the TIME_WAIT
  table's hook for the end of 2MSL). The kernel's come from the kernel itself: a
  NETLINK_SOCK_DIAG dump (sockdiag.py, what `ss` reads) every millisecond.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from ..aio import Stack
from ..config import Config, apply_settings
from ..io.tun import TunDevice
from ..tcp.events import StateChanged
from ..tools import ladder as lad
from ..wire.ip import ip_to_str
from ..wire.tcp import FIN, ParseError, flag_string, parse_tcp
from .sockdiag import SockDiag

USTACK = "10.77.0.2"
KERNEL = "10.77.0.1"
CLONE_NEWNET = 0x40000000
SAMPLE_EVERY = 0.001  # s between sock_diag dumps


class LabError(Exception):
    """The lab cannot run here (not root, no TUN, no `ip`): the message says why."""


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Namespace:
    """`ip netns add` on entry, the calling thread moved in; home and deleted on exit."""

    def __init__(self) -> None:
        self.name = f"ustk-lab-{secrets.token_hex(3)}"
        self._home: int | None = None

    def __enter__(self) -> Namespace:
        if os.geteuid() != 0:
            raise LabError("labs need root (a network namespace and a TUN device)")
        if not os.path.exists("/dev/net/tun"):
            raise LabError("labs need /dev/net/tun")
        try:
            subprocess.run(["ip", "netns", "add", self.name], check=True,
                           capture_output=True, text=True)
        except FileNotFoundError:
            raise LabError("labs need the ip command (iproute2)") from None
        except subprocess.CalledProcessError as exc:
            raise LabError(f"ip netns add {self.name}: {exc.stderr.strip()}") from None
        try:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            self.sysctl("net.ipv4.ip_forward=0")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def sysctl(self, setting: str) -> None:
        """Set a kernel knob of this namespace only (`ip netns exec` names it)."""
        subprocess.run(["ip", "netns", "exec", self.name, "sysctl", "-q", "-w", setting],
                       check=True, capture_output=True)

    def __exit__(self, *exc: object) -> None:
        if self._home is not None:
            try:
                _setns(self._home)
            finally:
                os.close(self._home)
                self._home = None
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


@dataclass
class _Pending:
    at: float
    frame: bytes


class LabWire:
    """Delay both ways and lose chosen segments, between the Stack and the TUN; the
    interface of ustack.impair.Impairment, so Stack.set_impairment() takes it."""

    def __init__(self, world: World, one_way: float) -> None:
        self.world = world
        self.one_way = one_way
        self.inbound = _Direction(self, "in")
        self.outbound = _Direction(self, "out")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver_in: Callable[[bytes], None] | None = None
        self._write_out: Callable[[bytes], None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop, deliver_in: Callable[[bytes], None],
             write_out: Callable[[bytes], None]) -> None:
        self._loop = loop
        self._deliver_in = deliver_in
        self._write_out = write_out

    def close(self) -> None:
        for d in (self.inbound, self.outbound):
            for h in d.handles:
                h.cancel()
            d.handles.clear()


class _Direction:
    def __init__(self, wire: LabWire, name: str) -> None:
        self.wire = wire
        self.name = name
        self.handles: set[asyncio.TimerHandle] = set()

    def send(self, frame: bytes) -> None:
        w = self.wire
        loop = w._loop
        assert loop is not None
        frame = bytes(frame)
        if self.name == "in":
            # Read from the TUN now: the kernel sent it now.
            seg = w.world._record(frame, "in", loop.time())
            target = w._deliver_in
        else:
            seg = None
            target = w._write_out

        def deliver() -> None:
            self.handles.discard(handle)
            if self.name == "out":
                s = w.world._record(frame, "out", loop.time())
                if s is not None and w.world._should_drop(s):
                    s.lost = True
                    return
            assert target is not None
            target(frame)

        del seg
        handle = loop.call_later(w.one_way, deliver)
        self.handles.add(handle)


@dataclass
class Observed:
    """One side's states over time: (time, state), starting with the initial one."""

    states: list[tuple[float, str]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [s for _, s in self.states]


class World:
    """The namespace, the TUN, the Stack, the wire and the watchers of one lab run."""

    def __init__(self, *, settings: list[str] | None = None, rtt: float = 0.04) -> None:
        self.config = apply_settings(Config(), ["tcp_msl=1", *(settings or [])])
        self.rtt = rtt
        self.ns = Namespace()
        self.segs: list[lad.Seg] = []
        self.ustack_events: dict[frozenset, list[dict]] = {}
        self.kernel_states: dict[frozenset, Observed] = {}
        self._drops: list[Callable[[lad.Seg], bool]] = []
        self.stack: Stack | None = None
        self.device: TunDevice | None = None
        self._diag: SockDiag | None = None
        self._sampler: asyncio.Task | None = None
        self.notes: list[str] = []

    # ------------------------------------------------------------------ set-up

    async def __aenter__(self) -> World:
        self.ns.__enter__()
        try:
            loop = asyncio.get_running_loop()
            self.device = TunDevice("lab0", f"{KERNEL}/24")
            self.stack = Stack(USTACK, config=self.config, loop=loop)
            self.stack.attach(self.device)
            self.stack.set_impairment(LabWire(self, self.rtt / 2))
            self.stack.observers.append(self._on_state)
            self.stack.on_time_wait_gone(self._on_tw_gone)
            self.device.start(loop, self.stack.receive)
            self._diag = SockDiag()
            self._sampler = asyncio.create_task(self._sample())
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            try:
                await self._sampler
            except asyncio.CancelledError:
                pass
        if self.stack is not None:
            self.stack.abort_all()
            await asyncio.sleep(0)
            self.stack.close()
        if self.device is not None:
            self.device.close()
        if self._diag is not None:
            self._diag.close()
        self.ns.__exit__()

    def sysctl(self, setting: str) -> None:
        self.ns.sysctl(setting)

    def drop_once(self, match: Callable[[lad.Seg], bool]) -> None:
        """Lose the next segment ustack sends that `match`es (once)."""
        self._drops.append(match)

    async def sleep_rtts(self, n: float) -> None:
        await asyncio.sleep(n * self.rtt)

    # ------------------------------------------------------------------ watchers

    def _record(self, frame: bytes, direction: str, t: float) -> lad.Seg | None:
        if len(frame) < 40 or frame[9] != 6:
            return None
        ihl = (frame[0] & 15) * 4
        total = (frame[2] << 8) | frame[3]
        try:
            s = parse_tcp(frame, ihl, total)
        except ParseError:
            return None
        src = f"{ip_to_str(frame[12:16])}:{s.sport}"
        dst = f"{ip_to_str(frame[16:20])}:{s.dport}"
        seg = lad.Seg(t, src, dst, flag_string(s.flags), s.seq, s.ack, len(s.payload), s.wnd)
        self.segs.append(seg)
        return seg

    def _should_drop(self, seg: lad.Seg) -> bool:
        for i, match in enumerate(self._drops):
            if match(seg):
                del self._drops[i]
                return True
        return False

    def _on_state(self, tcb, ev: StateChanged) -> None:
        assert self.stack is not None
        local = f"{tcb.local[0]}:{tcb.local[1]}"
        peer = f"{tcb.remote[0]}:{tcb.remote[1]}"
        from ..control import relative_cause

        t = self.stack.now()
        seg = ev.cause.seg
        item = {"t": t, "old": ev.old.name, "new": ev.new.name,
                "cause": relative_cause(tcb, ev.cause)}
        if seg is not None:
            item["t"] = t - self.rtt / 2  # the kernel sent it half a round trip ago
            item["seg"] = (flag_string(seg.flags), seg.seq, seg.ack)
        self.ustack_events.setdefault(frozenset((local, peer)), []).append(item)

    def _on_tw_gone(self, key: bytes, cause) -> None:
        assert self.stack is not None
        local = f"{ip_to_str(key[4:8])}:{(key[10] << 8) | key[11]}"
        peer = f"{ip_to_str(key[0:4])}:{(key[8] << 8) | key[9]}"
        self.ustack_events.setdefault(frozenset((local, peer)), []).append(
            {"t": self.stack.now(), "old": "TIME_WAIT", "new": "CLOSED", "cause": str(cause)})

    async def _sample(self) -> None:
        """The kernel's states, from a sock_diag dump every SAMPLE_EVERY seconds; a
        connection that disappears from the dump is CLOSED."""
        assert self._diag is not None and self.stack is not None
        loop = asyncio.get_running_loop()
        last: dict[frozenset, str] = {}
        while True:
            now = loop.time()
            seen: dict[frozenset, str] = {}
            for local, remote, state in self._diag.tcp_sockets():
                if state == "LISTEN" or USTACK not in (local[0], remote[0]):
                    continue
                key = frozenset((f"{local[0]}:{local[1]}", f"{remote[0]}:{remote[1]}"))
                seen[key] = state
            for key, state in seen.items():
                if last.get(key) != state:
                    obs = self.kernel_states.setdefault(key, Observed())
                    obs.states.append((now, state))
            for key in last.keys() - seen.keys():
                self.kernel_states[key].states.append((now, "CLOSED"))
            last = seen
            await asyncio.sleep(SAMPLE_EVERY)

    # ------------------------------------------------------------------ results

    def ustack_states(self, ustack_ep: str, kernel_ep: str) -> list[str]:
        """ustack's states for one four-tuple, from its own events, in order."""
        evs = self.ustack_events.get(frozenset((ustack_ep, kernel_ep)), [])
        out = []
        if evs:
            passive = evs[0]["old"] == "CLOSED" and evs[0]["new"] == "SYN_RECEIVED"
            out.append("LISTEN" if passive else evs[0]["old"])
        out += [e["new"] for e in evs]
        return out

    def kernel_seen(self, ustack_ep: str, kernel_ep: str) -> list[str]:
        obs = self.kernel_states.get(frozenset((ustack_ep, kernel_ep)))
        return obs.names() if obs else []

    def ladder(self, ustack_ep: str, kernel_ep: str, kernel_initial: str) -> lad.Ladder:
        """Both sides' real states on the segments between the two endpoints."""
        key = {ustack_ep, kernel_ep}
        segs = [s for s in self.segs if {s.src, s.dst} == key]
        real = self.ustack_events.get(frozenset(key), [])
        ladder = lad.build(segs, stack=ustack_ep, real=real, source="lab")
        _anchor_to_causes(ladder, ustack_ep, real)
        obs = self.kernel_states.get(frozenset(key), Observed())
        _use_observed(ladder, kernel_ep, kernel_initial, obs)
        return ladder


def _anchor_to_causes(ladder: lad.Ladder, host: str, events: list[dict]) -> None:
    """Put each of ustack's state changes that a segment caused on that segment's
    arrow (several segments can arrive within the same millisecond)."""
    marks = [m for m in ladder.marks if m.host == host]
    for m, ev in zip(marks, events, strict=False):
        if "seg" not in ev:
            # A call (connect, close): on the SYN or FIN it sent, if one left soon.
            flag = {"SYN_SENT": "S", "FIN_WAIT_1": "F", "LAST_ACK": "F"}.get(ev["new"])
            rows = [i for i, r in enumerate(ladder.rows) if flag and r.seg is not None
                    and r.seg.src == host and flag in r.seg.flags
                    and 0 <= r.t - ev["t"] < 0.05]
            if rows:
                m.row, m.at = rows[0], "start"
            continue
        flags, seq, ack = ev["seg"]
        rows = [i for i, r in enumerate(ladder.rows) if r.seg is not None
                and r.seg.dst == host and r.seg.flags == flags and r.seg.seq == seq
                and r.seg.ack == ack and r.t <= ev["t"] + 0.005]
        if rows:
            m.row, m.at = rows[-1], "arrival"


def _use_observed(ladder: lad.Ladder, host: str, initial: str, obs: Observed) -> None:
    """Replace the kernel side's inferred states by what sock_diag saw.

    A state seen is anchored where the segments say it began (the inferred mark of the
    same state, the arrow that caused it) when there is one near the sighting, else it
    gets a row of its own at the time it was first seen. A state the segments imply
    but no dump saw (it lasted less than a sampling interval) is left out: the ladder
    shows only what the kernel reported."""
    inferred = [m for m in ladder.marks if m.host == host]
    ladder.marks = [m for m in ladder.marks if m.host != host]
    ladder.initial[host] = initial
    prev_t = None
    for t, state in obs.states:
        if prev_t is None and state == initial:
            prev_t = t
            continue
        lo = (prev_t if prev_t is not None else t - 1.0) - 0.005
        cand = [m for m in inferred if m.state == state and lo <= m.t <= t + 0.005]
        if cand:
            m = cand[-1]
            ladder.marks.append(lad.Mark(host, state, m.t, m.row, m.at,
                                         m.cause + ", seen by sock_diag"))
        else:
            rows = ladder.rows
            idx = next((i for i, r in enumerate(rows) if r.t > t), len(rows))
            rows.insert(idx, lad.Row(t, None, f"kernel: {state} (sock_diag)"))
            for m in ladder.marks:
                if m.row >= idx:
                    m.row += 1
            for m in inferred:
                if m.row >= idx:
                    m.row += 1
            ladder.marks.append(lad.Mark(host, state, t, idx, "row", "seen by sock_diag"))
        prev_t = t


def fin_of(src: str) -> Callable[[lad.Seg], bool]:
    """Matches a segment from `src` carrying a FIN."""
    return lambda s: s.src == src and "F" in s.flags


def pure_ack_after_fin(src: str, world: World) -> Callable[[lad.Seg], bool]:
    """Matches the first pure ACK `src` sends after it received the peer's FIN."""
    def match(s: lad.Seg) -> bool:
        if s.src != src or s.flags != "." or s.length:
            return False
        return any(o.dst == src and "F" in o.flags for o in world.segs)
    return match


__all__ = ["FIN", "KERNEL", "USTACK", "LabError", "Namespace", "Observed", "World",
           "fin_of", "pure_ack_after_fin"]
