"""The receiver's out-of-order queue: data above RCV.NXT, as disjoint merged blocks.

Blocks are kept sorted and coalesced, so the queue never holds a byte twice (duplicates
and overlapping retransmissions cost nothing), its size is bounded by the window the
receiver offered, and its blocks are exactly the SACK blocks to report (RFC 2018 4).
Sequence numbers are compared modulo 2**32 (ustack.seq); all blocks lie within one
window above RCV.NXT, far less than 2**31 apart.
"""

from __future__ import annotations

from .. import seq as sq

MASK = 0xFFFFFFFF


class _Block:
    __slots__ = ("start", "data")

    def __init__(self, start: int, data: bytearray) -> None:
        self.start = start
        self.data = data

    @property
    def end(self) -> int:
        return (self.start + len(self.data)) & MASK


class OfoQueue:
    __slots__ = ("blocks", "recent", "size")

    def __init__(self) -> None:
        self.blocks: list[_Block] = []  # ascending sequence order
        self.recent: list[_Block] = []  # most recently changed first, for SACK order
        self.size = 0  # bytes held

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def clear(self) -> None:
        self.blocks.clear()
        self.recent.clear()
        self.size = 0

    def add(self, start: int, data: bytes) -> int:
        """Queue `data` at `start`; returns how many of its bytes were new."""
        n = len(data)
        if not n:
            return 0
        end = (start + n) & MASK
        blocks = self.blocks
        # Blocks that overlap or touch [start, end): indexes i..j-1.
        i = 0
        while i < len(blocks) and sq.lt(blocks[i].end, start):
            i += 1
        j = i
        while j < len(blocks) and sq.le(blocks[j].start, end):
            j += 1
        if i == j:
            block = _Block(start, bytearray(data))
            blocks.insert(i, block)
            self._touch(block, ())
            self.size += n
            return n
        touching = blocks[i:j]
        first = touching[0]
        before = sum(len(b.data) for b in touching)
        if sq.le(first.start, start):
            block = first  # grow the first block in place: the common append case is O(new)
            buf = first.data
            pos = first.end
        else:
            block = _Block(start, bytearray())
            buf = block.data
            pos = start
        for b in touching:
            if sq.lt(pos, b.start):  # a gap the new data fills
                buf += data[sq.diff(pos, start):sq.diff(b.start, start)]
                pos = b.start
            if b is not block and sq.lt(pos, b.end):
                buf += b.data[sq.diff(pos, b.start):]
                pos = b.end
        if sq.lt(pos, end):
            buf += data[sq.diff(pos, start):]
        blocks[i:j] = [block]
        self._touch(block, touching)
        added = len(block.data) - before
        self.size += added
        return added

    def overlap(self, start: int, end: int) -> tuple[int, int] | None:
        """The first part of [start, end) already held, if any (what a D-SACK reports,
        RFC 2883 4.1.2)."""
        for b in self.blocks:
            if sq.le(end, b.start):
                break
            lo = start if sq.gt(start, b.start) else b.start
            hi = end if sq.lt(end, b.end) else b.end
            if sq.lt(lo, hi):
                return lo, hi
        return None

    def _touch(self, block: _Block, merged) -> None:
        recent = [b for b in self.recent if b is not block and all(b is not m for m in merged)]
        recent.insert(0, block)
        self.recent = recent

    def pop(self, rcv_nxt: int) -> bytes:
        """Remove and return the data that continues at `rcv_nxt` (empty if a hole remains)."""
        out = b""
        blocks = self.blocks
        while blocks and sq.le(blocks[0].start, rcv_nxt):
            b = blocks.pop(0)
            self.recent = [r for r in self.recent if r is not b]
            self.size -= len(b.data)
            if sq.gt(b.end, rcv_nxt):
                chunk = bytes(b.data[sq.diff(rcv_nxt, b.start):])
                out += chunk
                rcv_nxt = (rcv_nxt + len(chunk)) & MASK
        return out

    def sack_blocks(self, limit: int) -> tuple[tuple[int, int], ...]:
        """Up to `limit` (left, right) edges, the most recently changed block first
        (RFC 2018 4: the first block reports the segment that triggered the ACK)."""
        return tuple((b.start, b.end) for b in self.recent[:limit])

    def drop_highest(self) -> int:
        """Drop the block highest in sequence space, as Linux tcp_prune_ofo_queue()
        does (reneging on what it SACKed); returns its bytes."""
        b = self.blocks.pop()
        self.recent = [r for r in self.recent if r is not b]
        self.size -= len(b.data)
        return len(b.data)
