"""RFC 863 discard service: read and drop everything until EOF, then close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

READ_SIZE = 65536

StartServer = Callable[..., Awaitable[Any]]


async def _discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.read(READ_SIZE):
            pass
    except (ConnectionError, OSError) as exc:
        log.debug("discard %s: %r", writer.get_extra_info("peername"), exc)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def start_discard(start_server: StartServer, host: str, port: int) -> Any:
    """Start a discard server; returns whatever `start_server` returns."""
    return await start_server(_discard, host, port)
