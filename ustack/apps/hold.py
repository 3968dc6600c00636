"""The hold service: an application that forgets to close, on purpose.

It reads and drops what the peer sends, like discard, but when the peer's FIN arrives
it does *not* close: the connection stays in CLOSE-WAIT (RFC 9293 3.6: the local side
has received FIN and waits for its user's CLOSE) until the peer resets it or the daemon
exits. That is the classic CLOSE_WAIT leak (a server missing a close() on EOF), which
the dashboard flags once it is older than `serve --close-wait-warn`. Off by default;
`serve --hold PORT` starts it.
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


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.read(READ_SIZE):
            pass
        # EOF: the peer closed its half. A correct server would close() here; this one
        # waits for the connection to be torn down from elsewhere (RST, daemon exit).
        await writer.wait_closed()
    except (ConnectionError, OSError) as exc:
        log.debug("hold %s: %r", writer.get_extra_info("peername"), exc)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def start_hold(start_server: StartServer, host: str, port: int) -> Any:
    """Start the hold server; returns whatever `start_server` returns."""
    return await start_server(_hold, host, port)
