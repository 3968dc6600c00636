"""The send side of one connection: the bytes not yet acknowledged, and a record of
what was transmitted when (Linux's write queue of skbs with their `tcp_skb_cb`;
aioquic's `QuicSentPacket`).

`SendQueue` holds the application's bytes from SND.UNA on. Every transmission of a
range is recorded in `sent`: its sequence range, the time of its latest transmission,
how often it went out, and whether the peer SACKed it or it was deemed lost. RACK
(RFC 8985) keys its loss detection on those times and PRR (RFC 6937) counts delivered
bytes from them. Records are ordered by sequence number and cover [SND.UNA, SND.MAX)
without gaps once sent; a retransmission that covers part of a record splits it, and
new data sent at one instant extends the last record instead of adding one.

Pure data: no clock (times are passed in), no I/O.
"""

from __future__ import annotations

from bisect import bisect_right

from .. import seq as sq

MASK = 0xFFFFFFFF
SACKED = 1  # the peer reported holding it (RFC 2018)
LOST = 2  # deemed lost, not yet retransmitted (RFC 6675 IsLost(), RFC 8985)
RETRANSMITTED = 4  # sent more than once


class Sent:
    """One transmitted range [start, end) of sequence space (FIN included)."""

    __slots__ = ("start", "end", "time", "xmits", "flags")

    def __init__(self, start: int, end: int, time: float, xmits: int = 1,
                 flags: int = 0) -> None:
        self.start = start
        self.end = end
        self.time = time
        self.xmits = xmits
        self.flags = flags

    def __repr__(self) -> str:
        return f"<Sent {self.start}:{self.end} t={self.time:.6f} x{self.xmits} f{self.flags}>"


# Writes up to this size are gathered into one growing chunk; bigger ones are kept as
# the caller's own bytes object, never copied on the way in.
SMALL = 4096
GATHER = 65536


class SendQueue:
    """Unacknowledged bytes from `seq` on, plus the transmission record.

    The bytes are a list of chunks as the application wrote them (small writes gathered
    into a bytearray), not one buffer: appending to and trimming the front of one big
    bytearray moved the whole queue about (20% of the daemon's time in a 200 MB
    download, py-spy; benchmarks/README.md), while a 64 KB segment cut from one chunk
    is one copy, or none when it is the whole chunk."""

    __slots__ = ("_chunks", "_starts", "_base", "_total", "seq", "sent")

    def __init__(self) -> None:
        # Byte positions count from the first byte ever queued: _starts[i] is where
        # _chunks[i] begins, _base is SND.UNA's position, _total the end's.
        self._chunks: list[bytes | bytearray] = []
        self._starts: list[int] = []
        self._base = 0
        self._total = 0
        self.seq = 0  # the sequence number of the first unacknowledged byte
        self.sent: list[Sent] = []  # ordered by start, contiguous: bisectable

    def __len__(self) -> int:
        return self._total - self._base

    @property
    def end(self) -> int:
        """One past the last queued byte."""
        return (self.seq + self._total - self._base) & MASK

    def start_at(self, seq: int) -> None:
        """Where the first byte will go (the ISN + 1)."""
        self.seq = seq

    def append(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not n:
            return
        chunks = self._chunks
        if n <= SMALL:
            last = chunks[-1] if chunks else None
            if type(last) is bytearray and len(last) < GATHER:
                last += data
            else:
                chunks.append(bytearray(data))
                self._starts.append(self._total)
        else:
            chunks.append(data if type(data) is bytes else bytes(data))
            self._starts.append(self._total)
        self._total += n

    def data(self, seq: int, n: int) -> bytes | memoryview:
        """Up to `n` queued bytes from `seq`: a view into the application's bytes when
        they lie in one chunk of its (immutable, so the view stays true), else a copy.
        Either way a bytes-like object the wire builders and writev() take."""
        off = sq.diff(seq, self.seq)
        if off < 0:
            return b""
        pos = self._base + off
        if n > self._total - pos:
            n = self._total - pos
        if n <= 0:
            return b""
        starts, chunks = self._starts, self._chunks
        i = bisect_right(starts, pos) - 1
        chunk = chunks[i]
        a = pos - starts[i]
        if a + n <= len(chunk):
            if type(chunk) is bytes:
                return chunk if a == 0 and n == len(chunk) else memoryview(chunk)[a:a + n]
            # A gathering bytearray grows in place, which a live view would forbid.
            return bytes(memoryview(chunk)[a:a + n])
        parts = [memoryview(chunk)[a:]]
        left = n - len(parts[0])
        while left > 0:
            i += 1
            piece = chunks[i]
            parts.append(memoryview(piece)[:left] if len(piece) > left else piece)
            left -= len(parts[-1])
        return b"".join(parts)

    def clear(self) -> None:
        self._chunks.clear()
        self._starts.clear()
        self._base = self._total = 0
        self.sent.clear()

    # --- the transmission record

    def on_transmit(self, start: int, end: int, now: float) -> None:
        """[start, end) left now. New sequence space appends a record; space sent
        before updates (splitting where needed) the records it covers."""
        if start == end:
            return
        sent = self.sent
        # Sequence comparisons inlined (seq.py's, modulo 2**32): once per segment.
        if not sent or (start - sent[-1].end) & MASK < 0x80000000:
            last = sent[-1] if sent else None
            if (last is not None and last.end == start and last.time == now
                    and last.xmits == 1 and not last.flags):
                # A burst sent at one instant is one record: nothing (RACK's ordering by
                # time included) tells its segments apart, and mark() splits on demand.
                last.end = end
            else:
                sent.append(Sent(start, end, now))
            return
        last = sent[-1].end
        if (last - end) & MASK >= 0x80000000:
            # Partly beyond: the new part gets its own record.
            sent.append(Sent(last, end, now))
            end = last
        for rec in self._covering(start, end):
            rec.time = now
            rec.xmits += 1
            rec.flags = (rec.flags & ~LOST) | RETRANSMITTED

    def on_ack(self, una: int) -> list[Sent]:
        """Everything below `una` was acknowledged: drop its bytes and records, and
        return the records dropped (RACK and PRR learn what was delivered from them)."""
        acked = (una - self.seq) & MASK
        if acked and acked < 0x80000000:
            queued = self._total - self._base
            n = acked if acked < queued else queued
            self._base += n
            self.seq = (self.seq + n) & MASK  # a FIN's sequence number is not a byte
            # Drop the chunks wholly acknowledged: all, or those before the one that
            # holds the new SND.UNA.
            starts = self._starts
            base = self._base
            k = len(starts) if base == self._total else bisect_right(starts, base) - 1
            if k > 0:
                del starts[:k]
                del self._chunks[:k]
        sent = self.sent
        k = 0
        for first in sent:
            if (una - first.end) & MASK >= 0x80000000:  # first.end > una: stays
                if (first.start - una) & MASK >= 0x80000000:  # first.start < una
                    first.start = una
                break
            k += 1
        if k:
            gone = sent[:k]
            del sent[:k]
            return gone
        return []

    def mark_records(self, start: int, end: int, flag: int) -> list[Sent]:
        """Set `flag` on the records inside [start, end); the records newly marked."""
        out = []
        for rec in self._covering(start, end):
            if not rec.flags & flag:
                rec.flags |= flag
                out.append(rec)
        return out

    def next_flagged(self, seq: int, flag: int, without: int = 0) -> Sent | None:
        """The first record at or after `seq` with `flag` set and none of `without`."""
        sent = self.sent
        i = max(self._index(seq), 0)
        for k in range(i, len(sent)):
            rec = sent[k]
            if rec.flags & flag and not rec.flags & without and sq.gt(rec.end, seq):
                return rec
        return None

    def mark(self, start: int, end: int, flag: int) -> int:
        """Set `flag` (SACKED or LOST) on every record wholly inside [start, end),
        splitting the edge records. Returns the bytes newly marked."""
        new = 0
        for rec in self._covering(start, end):
            if not rec.flags & flag:
                rec.flags |= flag
                new += sq.diff(rec.end, rec.start)
        return new

    def clear_flag(self, flag: int) -> None:
        """E.g. SACKED after an RTO: RFC 2018 8, the receiver may have reneged."""
        for rec in self.sent:
            rec.flags &= ~flag

    def _index(self, seq: int) -> int:
        """The index of the record holding `seq` (or of the last one starting before
        it), -1 if it lies before them all: a bisection, the records being ordered."""
        sent = self.sent
        if not sent:
            return -1
        base = sent[0].start
        return bisect_right(sent, (seq - base) & MASK,
                            key=lambda r: (r.start - base) & MASK) - 1

    def _split(self, at: int) -> int:
        """Make `at` a record boundary if a record spans it; the index of the first
        record starting at or after `at`."""
        sent = self.sent
        i = self._index(at)
        if i >= 0:
            rec = sent[i]
            if rec.start == at:
                return i
            if sq.gt(rec.end, at) and sq.lt(rec.start, at):
                sent.insert(i + 1, Sent(at, rec.end, rec.time, rec.xmits, rec.flags))
                rec.end = at
        return i + 1

    def _covering(self, start: int, end: int) -> list[Sent]:
        """The records inside [start, end) after splitting at both edges."""
        if not self.sent or sq.le(end, self.sent[0].start) or sq.ge(start, self.sent[-1].end):
            return []
        if sq.lt(start, self.sent[0].start):
            start = self.sent[0].start
        if sq.gt(end, self.sent[-1].end):
            end = self.sent[-1].end
        i = self._split(start)
        j = self._split(end)
        return self.sent[i:j]
