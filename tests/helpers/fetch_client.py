"""ustack as a client: fetch one URL path from a kernel HTTP server over a TUN device.

    python fetch_client.py --port PORT --path /file --out FILE [--tun NAME]
                           [--address 10.77.0.2/24] [--host-address 10.77.0.1/24]

Creates the TUN device (the kernel side gets --host-address), runs a Stack on it, and
sends an HTTP/1.0 GET to the host address with `stack.open_connection`, retrying while
the server is not there yet (the test can only bind its server once this TUN is up).
The body goes to --out; exit 0 only for a 200 read cleanly to EOF. Needs root, and
belongs inside a network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

import uvloop  # noqa: E402
from tun_stack import add_tun_args, connect_when_up, tun_stack  # noqa: E402

from ustack.io.tun import parse_interface  # noqa: E402

CONNECT_TIMEOUT = 20.0  # loose: how long the test may take to start its server
FETCH_TIMEOUT = 120.0


async def fetch(args: argparse.Namespace) -> int:
    host = parse_interface(args.host_address)
    with tun_stack(args) as (stack, device):
        device.start(asyncio.get_running_loop(), stack.receive)
        print(f"tun {device.name} up", file=sys.stderr, flush=True)
        reader, writer = await connect_when_up(stack, str(host.ip), args.port,
                                               wait=CONNECT_TIMEOUT,
                                               retry_on=(TimeoutError, OSError))
        writer.write(f"GET {args.path} HTTP/1.0\r\nHost: {host.ip}\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), FETCH_TIMEOUT)
        writer.close()
        head, sep, body = response.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if not sep or status.split()[1:2] != [b"200"]:
            print(f"bad response: {status!r} ({len(response)} bytes)", file=sys.stderr)
            return 1
        Path(args.out).write_bytes(body)
        print(f"fetched {len(body)} bytes", file=sys.stderr)
        # Let the close handshake run before the device disappears.
        await asyncio.sleep(0.2)
        return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    add_tun_args(parser)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--out", required=True)
    return uvloop.run(fetch(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
