"""What the TUN helper scripts share: their TUN options, a TUN device with a Stack on it,
and a first connect that waits for the test's server.

The scripts run as `python tests/helpers/NAME.py`, so this directory is on sys.path and
they import this module by its bare name, after putting the checkout on sys.path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterator

from ustack import Stack
from ustack.config import Config
from ustack.io.tun import TunDevice, parse_interface


def add_tun_args(parser: argparse.ArgumentParser) -> None:
    """--tun NAME, --address (the stack's) and --host-address (the kernel side's)."""
    parser.add_argument("--tun", default="ustack0")
    parser.add_argument("--address", default="10.77.0.2/24")
    parser.add_argument("--host-address", default="10.77.0.1/24")


@contextlib.contextmanager
def tun_stack(args: argparse.Namespace, config: Config | None = None
              ) -> Iterator[tuple[Stack, TunDevice]]:
    """Create the TUN device (the kernel side gets --host-address) and a Stack at
    --address attached to it; both are closed on the way out. The caller starts the
    device when it is ready for frames."""
    device = TunDevice(args.tun, args.host_address)
    stack = Stack(str(parse_interface(args.address).ip), config=config)
    stack.attach(device)
    try:
        yield stack, device
    finally:
        stack.close()
        device.close()


async def connect_when_up(stack: Stack, host: str, port: int, *, wait: float,
                          retry_on: type[BaseException] | tuple[type[BaseException], ...]
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`stack.open_connection`, retried every 0.2 s for up to `wait` s while it fails
    with `retry_on`: the test can only start its server once this TUN is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            return await asyncio.wait_for(stack.open_connection(host, port), 5)
        except retry_on:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)
