"""The sender's SACK scoreboard (RFC 2018, RFC 6675): which octets above SND.UNA the
receiver reported holding, and what follows from that (holes, IsLost, pipe, NextSeg).

Pure data: the TCB feeds it the blocks of each ACK and asks questions. Blocks are kept
sorted, merged and strictly above SND.UNA; sequence numbers compare modulo 2**32.
"""

from __future__ import annotations

from .. import seq as sq

MASK = 0xFFFFFFFF
DUPTHRESH = 3  # RFC 6675 2: DupThresh


class Scoreboard:
    __slots__ = ("blocks", "sacked")

    def __init__(self) -> None:
        self.blocks: list[list[int]] = []  # [[start, end], ...] ascending, disjoint
        self.sacked = 0  # octets covered

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def clear(self) -> None:
        self.blocks.clear()
        self.sacked = 0

    @property
    def high(self) -> int | None:
        """One past the highest SACKed octet (RFC 6675 "HighSACK" + 1), None if none."""
        return self.blocks[-1][1] if self.blocks else None

    def update(self, sack: tuple[tuple[int, int], ...], una: int, smax: int,
               ack: int | None = None) -> tuple[int, int]:
        """Merge the blocks of one ACK (`ack` its cumulative ACK, una the SND.UNA before
        it). Returns (octets newly SACKed, 1 if the first block is a D-SACK else 0).

        Blocks must lie within [una, smax] (RFC 2018 8: the sender may not trust anything
        else). RFC 2883 4: the first block is a D-SACK if it lies at or below the ACK, or
        inside the second block; it reports a duplicate and is only counted."""
        new = 0
        dsack = 0
        if ack is None:
            ack = una
        for i, (left, right) in enumerate(sack):
            if not sq.lt(left, right):
                continue
            if i == 0 and (sq.le(right, ack) or len(sack) > 1 and sq.le(sack[1][0], left)
                           and sq.le(right, sack[1][1])):
                dsack = 1
                continue
            if sq.le(right, ack):
                continue
            if sq.gt(right, smax) or sq.lt(left, una):
                if sq.lt(left, una) and sq.le(right, smax):
                    left = una  # partly below SND.UNA: keep the part above
                else:
                    continue
            new += self._add(left, right)
        return new, dsack

    def _add(self, left: int, right: int) -> int:
        blocks = self.blocks
        i = 0
        while i < len(blocks) and sq.lt(blocks[i][1], left):
            i += 1
        j = i
        while j < len(blocks) and sq.le(blocks[j][0], right):
            j += 1
        covered = sum(sq.diff(b[1], b[0]) for b in blocks[i:j])
        if i < j:
            if sq.lt(blocks[i][0], left):
                left = blocks[i][0]
            if sq.gt(blocks[j - 1][1], right):
                right = blocks[j - 1][1]
        blocks[i:j] = [[left, right]]
        added = sq.diff(right, left) - covered
        self.sacked += added
        return added

    def advance(self, una: int) -> None:
        """SND.UNA moved: forget what it covers."""
        blocks = self.blocks
        while blocks and sq.le(blocks[0][0], una):
            b = blocks[0]
            if sq.lt(una, b[1]):
                self.sacked -= sq.diff(una, b[0])
                b[0] = una
                break
            self.sacked -= sq.diff(b[1], b[0])
            blocks.pop(0)

    def sacked_below(self, seq: int) -> int:
        """SACKed octets below `seq`."""
        n = 0
        for left, right in self.blocks:
            if sq.ge(left, seq):
                break
            n += sq.diff(right if sq.le(right, seq) else seq, left)
        return n

    def next_sacked(self, seq: int) -> tuple[int, int] | None:
        """The first block ending above `seq` (it may contain `seq`)."""
        for left, right in self.blocks:
            if sq.gt(right, seq):
                return left, right
        return None

    def holes(self, una: int, smax: int, mss: int) -> list[tuple[int, int, bool]]:
        """Un-SACKed ranges in [una, smax) as (start, end, lost), lowest first.

        RFC 6675 IsLost, per range: lost if more than (DupThresh - 1) * SMSS octets above
        it are SACKed (or DupThresh blocks, counting discontiguous ranges). The range
        above the highest SACK is never lost. Lost ranges form a prefix of the list."""
        out: list[tuple[int, int, bool]] = []
        above = self.sacked
        nblocks = len(self.blocks)
        pos = una
        for k, (left, right) in enumerate(self.blocks):
            if sq.lt(pos, left):
                lost = above > (DUPTHRESH - 1) * mss or nblocks - k >= DUPTHRESH
                out.append((pos, left, lost))
            above -= sq.diff(right, left)
            pos = right
        if sq.lt(pos, smax):
            out.append((pos, smax, False))
        return out
