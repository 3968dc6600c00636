"""The out-of-order queue's block limit (Tcb._ofo_room): a peer sending 1-byte segments
with a hole before each would otherwise make one block per 2 bytes of window (128 k
blocks in 256 KB, each add a walk of them all). With the limit, the queue holds one
block per KiB of receive buffer; a segment above them all is dropped (TCPOFODrop), one
below the highest makes room by pruning from the top (OfoPruned), as Linux does."""

from __future__ import annotations

from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)


def test_one_byte_holes_stop_at_the_limit():
    d = Drill("tcp_rmem=262144")
    tcb = d.established_passive()
    limit = 262144 >> 10  # 256 blocks
    for i in range(limit + 100):
        start = 2 + 2 * i  # byte 1 is never sent: every segment is out of order
        d.inject(f"P. {start}:{start + 1}(1) ack 1")
        d.take()  # its duplicate ACK with SACK blocks
    assert len(tcb.ofo) == limit
    assert d.stats["TcpExtTCPOFODrop"] == 100
    assert d.stats["TcpExtOfoPruned"] == 0
    # A segment below the highest block prunes that one and is queued: [5, 6) joins
    # [4, 5) and [6, 7) into one block.
    d.inject("P. 5:6(1) ack 1")
    d.take()
    assert len(tcb.ofo) == limit - 2 and d.stats["TcpExtOfoPruned"] == 1
    assert (tcb.ofo.blocks[-1].start - tcb.irs) & 0xFFFFFFFF == 2 + 2 * (limit - 2)
    # The holes at 1 and 3 filled: what is queued in order drains to the application.
    for hole in (1, 3):
        d.inject(f"P. {hole}:{hole + 1}(1) ack 1")
        d.take()
    assert (tcb.rcv_nxt - tcb.irs) & 0xFFFFFFFF == 7  # bytes 1..6 in order
    assert (tcb.ofo.blocks[0].start - tcb.irs) & 0xFFFFFFFF == 8


def test_mss_segments_with_holes_never_reach_it():
    """A real loss pattern (every other MSS segment of a full window lost) stays far
    below the limit: nothing dropped, nothing pruned."""
    d = Drill("tcp_rmem=262144")
    tcb = d.established_passive()
    for i in range(1, 262144 // 1460 // 2):
        start = 1 + 2 * i * 1460
        d.inject(f"P. {start}:{start + 1460}(1460) ack 1")
        d.take()
    assert d.stats["TcpExtTCPOFODrop"] == 0 and d.stats["TcpExtPruneCalled"] == 0
    assert len(tcb.ofo) == 262144 // 1460 // 2 - 1
