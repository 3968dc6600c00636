"""An in-memory link between two stacks, for tests and benchmarks (no TUN, no root)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..stack import StackShell


class MemoryLink:
    """Frames written by one stack arrive at the other on the next loop iteration.

    `drop` may be set to a predicate (direction, frame) -> bool to lose frames on purpose.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ends: list[_End] = [_End(self, 0), _End(self, 1)]
        self.drop: Callable[[int, bytes], bool] | None = None

    def connect(self, a: StackShell, b: StackShell) -> None:
        """Attach stacks a and b to the two ends."""
        self.ends[0].stack, self.ends[1].stack = a, b
        a.attach(self.ends[0])
        b.attach(self.ends[1])

    def _carry(self, side: int, frame: bytes) -> None:
        if self.drop is not None and self.drop(side, frame):
            return
        peer = self.ends[1 - side].stack
        self.loop.call_soon(peer.receive, frame)


class _End:
    def __init__(self, link: MemoryLink, side: int) -> None:
        self.link = link
        self.side = side
        self.stack: StackShell | None = None

    def write(self, frame: bytes) -> None:
        self.link._carry(self.side, frame)
