"""The receive side's in-order bytes that the application has not read yet.

Kept as the segments' payloads, not one buffer: appending to and trimming the front of
one bytearray moved the buffered bytes about (15% of the daemon's time receiving 64 KB
super-segments, py-spy; benchmarks/README.md). A read of everything that is one
payload is no copy at all; otherwise the pieces are joined once.
"""

from __future__ import annotations

from collections import deque


class RecvQueue:
    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            # Our own bytes: a view would pin its read buffer, a bytearray could change.
            self._chunks.append(data if type(data) is bytes else bytes(data))
            self._size += len(data)

    def take(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all with n < 0), oldest first."""
        chunks = self._chunks
        if not chunks:
            return b""
        if n < 0 or n >= self._size:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._size = 0
            return data
        parts = []
        left = n
        while left:
            c = chunks[0]
            if len(c) <= left:
                parts.append(chunks.popleft())
                left -= len(c)
            else:
                parts.append(c[:left])
                chunks[0] = c[left:]
                left = 0
        self._size -= n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def clear(self) -> None:
        self._chunks.clear()
        self._size = 0
