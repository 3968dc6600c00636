"""The send-side record (sendq.py): bytes from SND.UNA and what was sent when."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp.sendq import LOST, RETRANSMITTED, SACKED, SendQueue

MASK = 0xFFFFFFFF


def ranges(q: SendQueue) -> list[tuple[int, int, float, int, int]]:
    return [(r.start, r.end, r.time, r.xmits, r.flags) for r in q.sent]


def test_bytes_and_acks():
    q = SendQueue()
    q.start_at(1000)
    q.append(b"abcdef")
    assert (len(q), q.end) == (6, 1006)
    assert q.data(1002, 3) == b"cde"
    assert q.data(999, 3) == b""
    q.on_ack(1004)
    assert (len(q), q.seq, q.data(1004, 10)) == (2, 1004, b"ef")
    q.on_ack(1007)  # the FIN's sequence number: no byte to drop beyond the buffer
    assert (len(q), q.seq) == (0, 1006)


def test_records_per_transmission_and_split_on_retransmit():
    q = SendQueue()
    q.start_at(0)
    q.append(bytes(3000))
    q.on_transmit(0, 1000, 1.0)
    q.on_transmit(1000, 2000, 1.1)
    q.on_transmit(2000, 3000, 1.2)
    assert [r[:2] for r in ranges(q)] == [(0, 1000), (1000, 2000), (2000, 3000)]
    q.on_transmit(1500, 2500, 2.0)  # a retransmission across a boundary splits both
    assert ranges(q) == [(0, 1000, 1.0, 1, 0), (1000, 1500, 1.1, 1, 0),
                         (1500, 2000, 2.0, 2, RETRANSMITTED), (2000, 2500, 2.0, 2, RETRANSMITTED),
                         (2500, 3000, 1.2, 1, 0)]
    q.on_ack(1200)
    assert ranges(q)[0] == (1200, 1500, 1.1, 1, 0)
    q.on_ack(2500)
    assert ranges(q) == [(2500, 3000, 1.2, 1, 0)]


def test_transmission_partly_beyond_the_record():
    q = SendQueue()
    q.append(bytes(3000))
    q.on_transmit(0, 1000, 1.0)
    q.on_transmit(500, 1500, 2.0)
    assert ranges(q) == [(0, 500, 1.0, 1, 0), (500, 1000, 2.0, 2, RETRANSMITTED),
                         (1000, 1500, 2.0, 1, 0)]


def test_sacked_and_lost_marks():
    q = SendQueue()
    q.append(bytes(4000))
    for i in range(4):
        q.on_transmit(i * 1000, (i + 1) * 1000, float(i))
    assert q.mark(1000, 2500, SACKED) == 1500
    assert q.mark(1000, 2500, SACKED) == 0  # already marked
    assert q.mark(0, 1000, LOST) == 1000
    q.on_transmit(0, 1000, 5.0)  # the retransmission clears LOST
    flags = {(r.start, r.end): r.flags for r in q.sent}
    assert flags[(0, 1000)] == RETRANSMITTED
    assert flags[(1000, 2000)] == flags[(2000, 2500)] == SACKED
    assert flags[(2500, 3000)] == 0
    q.clear_flag(SACKED)
    assert all(not r.flags & SACKED for r in q.sent)


def test_wraparound():
    q = SendQueue()
    q.start_at(MASK - 499)
    q.append(bytes(1000))
    q.on_transmit(MASK - 499, 500, 1.0)
    assert q.end == 500
    q.on_transmit(MASK - 99, 100, 2.0)
    assert [r[:2] for r in ranges(q)] == [(MASK - 499, MASK - 99), (MASK - 99, 100), (100, 500)]
    q.on_ack(0)
    assert q.seq == 0 and len(q) == 500
    assert [r[:2] for r in ranges(q)] == [(0, 100), (100, 500)]


def test_a_burst_at_one_instant_is_one_record_until_marked():
    q = SendQueue()
    q.append(bytes(4000))
    for i in range(4):
        q.on_transmit(i * 1000, (i + 1) * 1000, 1.0)
    assert ranges(q) == [(0, 4000, 1.0, 1, 0)]
    q.on_transmit(4000, 4000, 1.0)  # nothing sent: no record
    assert q.mark(1000, 2000, SACKED) == 1000  # split on demand
    assert ranges(q) == [(0, 1000, 1.0, 1, 0), (1000, 2000, 1.0, 1, SACKED),
                         (2000, 4000, 1.0, 1, 0)]
    q.on_transmit(0, 1000, 2.0)
    assert ranges(q)[0] == (0, 1000, 2.0, 2, RETRANSMITTED)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([0, MASK - 3000]), st.lists(st.tuples(
    st.sampled_from(["new", "resend", "sack", "ack"]), st.integers(0, 4000), st.integers(1, 1500)),
    max_size=30))
def test_the_record_matches_a_byte_by_byte_model(base, ops):
    """Against a model that keeps (time, transmissions, SACKED) per byte: new data,
    retransmissions of any sent range, SACK marks and ACKs in any order, also across
    the 2**32 wrap; the records stay ordered and contiguous from SND.UNA to SND.MAX."""
    q = SendQueue()
    q.start_at(base)
    q.append(bytes(20000))
    model: dict[int, list] = {}  # offset from base -> [time, xmits, sacked]
    una = nxt = 0  # offsets
    for t, (op, a, n) in enumerate(ops):
        now = float(t // 2)  # pairs of operations share an instant (bursts)
        if op == "new" and nxt + n <= 20000:
            q.on_transmit((base + nxt) & MASK, (base + nxt + n) & MASK, now)
            for o in range(nxt, nxt + n):
                model[o] = [now, 1, False]
            nxt += n
        elif op == "resend" and nxt > una:
            s = una + a % (nxt - una)
            e = min(s + n, nxt)
            q.on_transmit((base + s) & MASK, (base + e) & MASK, now)
            for o in range(s, e):
                model[o][0] = now
                model[o][1] += 1
        elif op == "sack" and nxt > una:
            s = una + a % (nxt - una)
            e = min(s + n, nxt)
            q.mark((base + s) & MASK, (base + e) & MASK, SACKED)
            for o in range(s, e):
                model[o][2] = True
        elif op == "ack":
            una = min(una + a % 2000, nxt)
            q.on_ack((base + una) & MASK)
            for o in [o for o in model if o < una]:
                del model[o]
        got = {}
        pos = una
        for r in q.sent:
            assert r.start == (base + pos) & MASK, "records not contiguous"
            length = (r.end - r.start) & MASK
            assert 0 < length <= 20000
            for o in range(pos, pos + length):
                got[o] = [r.time, r.xmits, bool(r.flags & SACKED)]
            pos += length
        assert pos == nxt or (not q.sent and una == nxt)
        assert got == model


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([1, MASK - 70_000]), st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(1, 9000), st.sampled_from([bytes, bytearray,
                                                                          memoryview])),
    st.tuples(st.just("ack"), st.integers(0, 20_000), st.none()),
    st.tuples(st.just("read"), st.integers(0, 70_000), st.integers(1, 70_000)),
), max_size=60))
def test_the_chunks_match_one_flat_buffer(base, ops):
    """Writes kept as chunks (small ones gathered, big ones not copied), trimmed by
    ACKs: every read of any range gives what one flat buffer would."""
    q = SendQueue()
    q.start_at(base)
    model = bytearray()
    una = base
    counter = 0
    for op, a, b in ops:
        if op == "write":
            data = bytes((counter + i) & 0xFF for i in range(a))
            counter += a
            q.append(b(data) if b is not memoryview else memoryview(bytearray(data)))
            model += data
        elif op == "ack":
            n = min(a, len(model))
            una = (una + n) & MASK
            q.on_ack(una)
            del model[:n]
        else:
            off = min(a, len(model))
            assert q.data((una + off) & MASK, b) == bytes(model[off:off + b])
        assert len(q) == len(model) and q.end == (una + len(model)) & MASK
    assert q.data((una - 1) & MASK, 10) == b""  # before SND.UNA: nothing


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 3000), st.sampled_from([bytes, bytearray,
                                                                           memoryview])),
    st.tuples(st.just("take"), st.integers(-1, 5000), st.none())), max_size=50))
def test_the_receive_queue_matches_one_flat_buffer(ops):
    from ustack.tcp.rcvq import RecvQueue

    q, model, counter = RecvQueue(), bytearray(), 0
    for op, n, kind in ops:
        if op == "append":
            data = bytes((counter + i) & 0xFF for i in range(n))
            counter += n
            q.append(kind(data))
            model += data
        else:
            want = bytes(model) if n < 0 else bytes(model[:n])
            got = q.take(n)
            assert type(got) is bytes and got == want
            del model[:len(want)]
        assert len(q) == len(model) and bool(q) == bool(model)
