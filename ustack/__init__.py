"""ustack: a userspace TCP/IPv4 stack over a TUN device, built to get the close path right.

`ustack.Stack` (the asyncio API, `ustack.aio.Stack`) is imported on first use, so that
`import ustack.wire` or the light CLI tools do not pull in asyncio and the shell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Stack", "__version__"]

if TYPE_CHECKING:
    from .aio import Stack


def __getattr__(name: str) -> Any:
    if name == "Stack":
        from .aio import Stack

        return Stack
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
