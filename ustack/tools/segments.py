"""Relative sequence numbers for segment streams, as tcpdump shows them.

Each direction of a connection counts from its own initial sequence number (the SYN's
seq, or the first seq seen if the capture missed the SYN); an ACK counts from the other
direction's. Keys are (src, dst) endpoint strings.
"""

from __future__ import annotations


class SeqTracker:
    def __init__(self) -> None:
        self.base: dict[tuple[str, str], int] = {}

    def relative(self, src: str, dst: str, flags: str, seq: int, ack: int) -> tuple[int, int | None]:
        """(relative seq, relative ack or None if the other side's ISN is unknown)."""
        key = (src, dst)
        if "S" in flags or key not in self.base:
            self.base[key] = seq  # a new SYN starts a new incarnation's numbering
        rseq = (seq - self.base[key]) & 0xFFFFFFFF
        other = self.base.get((dst, src))
        rack = (ack - other) & 0xFFFFFFFF if other is not None and "." in flags else None
        return rseq, rack


def label(flags: str, seq: int, ack: int | None, length: int) -> str:
    s = f"{flags} seq {seq}"
    if ack is not None and "." in flags:
        s += f" ack {ack}"
    if length:
        s += f" len {length}"
    return s
