"""Two sans-IO cores joined by a lossy link on a fake clock: reliable delivery under loss,
reordering and duplication, both directions at once, for any seed (hypothesis).

Host A (10.77.0.1) connects to B (10.77.0.2) port 80; each sends the other its data and
shuts down its side. Every segment crosses the wire as bytes (build, then parse), so
the sizes and options are the real ones, and the link decides its fate from a seeded
RNG: lost, duplicated, or delayed past the next ones. The stacks never see time other
than the link's clock. Corruption is left to test_impair.py: it needs the checksums of
the shell (Stack), which this test bypasses.

Checked at every step: SND.UNA <= SND.NXT <= SND.MAX, and what each application has read
is a prefix of what the other sent. At the end: everything arrived byte-exact, both
connections closed, and the fake time stayed bounded (no livelock, no lost wakeup).
"""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack import seq as sq
from ustack.config import Config, apply_settings
from ustack.table import TcpTable
from ustack.tcp.context import Context
from ustack.tcp.state import State
from ustack.wire.ip import PROTO_TCP, build_ipv4
from ustack.wire.tcp import build_tcp, parse_tcp

A, B = "10.77.0.1", "10.77.0.2"
ONE_WAY = 0.005  # link delay; a reordered frame waits up to 3 more
HORIZON = 3600.0  # fake seconds: far beyond any sane recovery, short of a hang
DONE = (State.CLOSED, State.TIME_WAIT)


def transfer(seed: int, loss: float, reorder: float, dup: float, *knobs: str,
             up: int = 120_000, down: int = 80_000,
             fin_when_acked: bool = False) -> tuple[TcpTable, TcpTable, float]:
    """Both ends send their data and shut down; with `fin_when_acked` only once all
    their data is acknowledged and all the peer's received, so the transfer runs in
    ESTABLISHED."""
    rng = random.Random(seed)
    # TIME_WAIT outlasts any backed-off RTO here: with 10% loss and no timestamps, Karn
    # can leave the RTO above a minute, and a final ACK lost after the peer's 2 MSL
    # would end in a (correct) RST instead of the clean close this test asserts.
    knobs = ("tcp_msl=1800", *knobs)
    a = TcpTable(Context(apply_settings(Config(), list(knobs)), secret=b"A" * 16, seed=seed))
    b = TcpTable(Context(apply_settings(Config(), list(knobs)), secret=b"B" * 16,
                         seed=seed + 1))
    peer = {id(a): b, id(b): a}
    data_up, data_down = rng.randbytes(up), rng.randbytes(down)
    got_up, got_down = bytearray(), bytearray()
    heap: list[tuple[float, int, TcpTable, bytes]] = []
    n = 0
    now = 0.0

    def ship(src: TcpTable) -> None:
        nonlocal n
        for lip, rip, seg in src.transmit(now):
            frame = build_ipv4(lip, rip, PROTO_TCP, build_tcp(seg, lip, rip))
            assert len(frame) <= 1500, f"{len(frame)}-byte frame: {seg}"
            if rng.random() < loss:
                continue
            for _ in range(2 if rng.random() < dup else 1):
                late = rng.uniform(0, 3 * ONE_WAY) if rng.random() < reorder else 0.0
                heapq.heappush(heap, (now + ONE_WAY + late, n, peer[id(src)], frame))
                n += 1

    b.listen(B, 80)
    ta = a.connect(A, B, 80, now)
    tb = None
    sent_a = sent_b = False
    for _step in range(500_000):
        # The applications: send everything once established, then read what arrived.
        if not sent_a and ta.state == State.ESTABLISHED:
            a.call(ta, now, ta.send, data_up, now)
            sent_a = True
        if sent_a and not ta.fin_queued and (not fin_when_acked or (
                not ta.send_queue and len(got_down) == down)):
            a.call(ta, now, ta.shutdown, now)
        if tb is None and b.listeners[80].accept_queue:
            tb = b.listeners[80].accept_queue.pop(0)
            tb.owner = "app"
        if tb is not None and not sent_b and tb.state.synchronized:
            b.call(tb, now, tb.send, data_down, now)
            sent_b = True
        if sent_b and not tb.fin_queued and (not fin_when_acked or (
                not tb.send_queue and len(got_up) == up)):
            b.call(tb, now, tb.shutdown, now)
        got_down += a.call(ta, now, ta.recv, -1, now)
        if tb is not None:
            got_up += b.call(tb, now, tb.recv, -1, now)
        assert data_up.startswith(got_up) and data_down.startswith(got_down)
        for tcb in (ta, tb):
            if tcb is not None and tcb.state not in DONE:
                assert sq.le(tcb.snd_una, tcb.snd_nxt) and sq.le(tcb.snd_nxt, tcb.snd_max)
        ship(a)
        ship(b)
        if tb is not None and ta.state in DONE and tb.state in DONE:
            break
        # Advance the fake clock to the next frame or timer.
        times = [t for t in (heap[0][0] if heap else None, a.next_deadline(),
                             b.next_deadline()) if t is not None]
        assert times, f"nothing pending at {now:.3f} s: {ta} {tb}"
        now = max(now, min(times))
        assert now < HORIZON, f"still running at {now:.0f} s: {ta} {tb}"
        while heap and heap[0][0] <= now:
            _, _, dst, frame = heapq.heappop(heap)
            dst.input(frame[12:24], parse_tcp(frame, 20, len(frame)), now)
        a.handle_timers(now)
        b.handle_timers(now)
    else:
        pytest.fail(f"no end after 500000 steps at {now:.3f} s: {ta} {tb}")
    assert ta.error == 0 and tb.error == 0, (ta.error, tb.error)
    assert bytes(got_up) == data_up and bytes(got_down) == data_down
    return a, b, now


KNOBS = {
    "sack+ts": (),
    "sack": ("tcp_timestamps=0",),  # Karn's RTT samples
    "newreno+ts": ("tcp_sack=0",),
    "newreno": ("tcp_sack=0", "tcp_timestamps=0"),
}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.01, 0.05, 0.1]),
       st.sampled_from([0.0, 0.1, 0.3]), st.sampled_from([0.0, 0.05, 0.2]),
       st.sampled_from(sorted(KNOBS)))
def test_byte_exact_both_ways_whatever_the_link_does(seed, loss, reorder, dup, knobs):
    transfer(seed, loss, reorder, dup, *KNOBS[knobs])


def total(a: TcpTable, b: TcpTable, name: str) -> int:
    return a.ctx.stats[name] + b.ctx.stats[name]


@pytest.mark.parametrize("knobs, counters", [
    ("sack+ts", ("TcpExtTCPSackRecovery", "TcpExtTCPFastRetrans", "TcpExtTCPOFOQueue")),
    ("sack", ("TcpExtTCPSackRecovery", "TcpExtTCPFastRetrans")),
    ("newreno+ts", ("TcpExtTCPRenoRecovery", "TcpExtTCPFastRetrans")),
    ("newreno", ("TcpExtTCPRenoRecovery", "TcpExtTCPFastRetrans")),
])
def test_loss_is_repaired_by_fast_retransmit_in_each_mode(knobs, counters):
    """A fixed seed at 3% loss: the repair shows in the counters (recovery, not only
    timeouts), with SACK and with NewReno."""
    a, b, _ = transfer(11, 0.03, 0.0, 0.0, *KNOBS[knobs], up=300_000, down=300_000)
    for name in ("TcpRetransSegs", *counters):
        assert total(a, b, name) > 0, name


def test_reordering_and_duplicates_are_absorbed_without_loss():
    """No loss: reordered segments go through the out-of-order queue, duplicates are
    dropped by sequence number and reported as duplicate ACKs; nothing times out."""
    a, b, _ = transfer(5, 0.0, 0.2, 0.1, up=300_000, down=300_000)
    assert total(a, b, "TcpExtTCPOFOQueue") > 0
    assert total(a, b, "TcpExtTCPTimeouts") == 0


def test_both_ends_in_go_back_n_still_hear_each_others_acks():
    """Regression: an RTO rewinds SND.NXT for go-back-N. Pure ACKs sent with that seq
    fall left of the peer's RCV.NXT when it already holds our later data, and the peer
    drops them unread (RFC 9293 3.10.7.4). With both ends in go-back-N neither learned
    of the other's progress and both timed out (ETIMEDOUT) under 10% loss, this seed.
    Pure ACKs now carry SND.MAX, as Linux's do."""
    a, b, _ = transfer(2, 0.1, 0.0, 0.0, *KNOBS["newreno+ts"])
    assert total(a, b, "TcpExtTCPTimeouts") > 0
