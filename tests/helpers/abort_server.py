"""ustack as a server that aborts: an in-process Stack over a TUN device whose one
service reads a line, then closes with SO_LINGER {1, 0} (RFC 9293 3.10.5 ABORT).

    python abort_server.py --port PORT --control PATH [--pcap FILE] [--tun NAME]
                           [--address 10.77.0.2/24] [--host-address 10.77.0.1/24]

Creates the TUN device (the kernel side gets --host-address), runs a Stack on it with a
control socket at PATH (so `ustack ss/nstat/trace --control PATH` work as against the
daemon) and, with --pcap, a capture of every frame. Prints "ready" on stdout once the
service listens, then serves until its standard input ends. Needs root; belongs inside a
network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

import uvloop  # noqa: E402
from tun_stack import add_tun_args, tun_stack  # noqa: E402

from ustack.control import ControlServer  # noqa: E402
from ustack.pcap import Captures  # noqa: E402


async def abort_after_one_line(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    await reader.readline()  # consumed: no unread data, so only the linger makes it a RST
    writer.transport.set_linger(True, 0)
    writer.close()


async def stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)


async def serve(args: argparse.Namespace) -> int:
    with tun_stack(args) as (stack, device):
        captures = Captures(stack)
        if args.pcap:
            captures.start(args.pcap)
        control = ControlServer(stack, args.control, name=args.tun, captures=captures)
        try:
            await control.start()
            server = await stack.start_server(abort_after_one_line, stack.address, args.port)
            device.start(asyncio.get_running_loop(), stack.receive)
            print("ready", flush=True)
            await stdin_closed()
            server.close()
            return 0
        finally:
            control.close()
            captures.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    add_tun_args(parser)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--pcap", default=None)
    return uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
