"""RFC 862 echo service with bounded buffering.

Each read is written back and drained before the next read, so a peer that stops reading
stalls us, we stop reading, and the stack's receive window closes: memory stays bounded
by one read plus the transport's high-water mark, whatever the peer sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

READ_SIZE = 65536

StartServer = Callable[..., Awaitable[Any]]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
        # Peer half-closed: everything it sent has been written back; pass the EOF on.
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError) as exc:
        log.debug("echo %s: %r", writer.get_extra_info("peername"), exc)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def start_echo(start_server: StartServer, host: str, port: int) -> Any:
    """Start an echo server; returns whatever `start_server` returns."""
    return await start_server(_echo, host, port)
