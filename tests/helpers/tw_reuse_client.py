"""ustack as a client making many short connections, each closed by us first, so the
stack holds a TIME_WAIT for each (the port-exhaustion / tcp_tw_reuse scenario).

    python tw_reuse_client.py --port PORT --count N [--set KNOB=VALUE ...] [--tun NAME]
                              [--address 10.77.0.2/24] [--host-address 10.77.0.1/24]

Creates the TUN device (the kernel side gets --host-address), runs a Stack with the
given knobs on it, and N times: connects to the host's HTTP/1.1 server, sends a GET,
reads the response (Content-Length), closes, and waits until the connection is in
TIME_WAIT (or gone). Stops at the first connect() that fails. Prints one JSON line:
{"ok": successes, "errno": the failing errno or null, "tw": TIME_WAIT records held,
 "recycled": TcpExtTWRecycled, "ports": local ports used}. Needs root; belongs inside
a network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

import uvloop  # noqa: E402
from tun_stack import add_tun_args, connect_when_up, tun_stack  # noqa: E402

from ustack import Stack  # noqa: E402
from ustack.config import Config, apply_settings  # noqa: E402
from ustack.io.tun import parse_interface  # noqa: E402

SERVER_WAIT = 20.0  # loose: how long the test may take to start its server
STEP_TIMEOUT = 15.0


async def one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      host: str) -> None:
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"bad response {head[:40]!r}")


async def until_closed_by_us(stack: Stack, timeout: float) -> None:
    """Until no connection is open: ours went to TIME_WAIT (or was closed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while stack.table.est:
        if loop.time() > deadline:
            raise TimeoutError("close handshake did not finish")
        await asyncio.sleep(0.01)


async def run(args: argparse.Namespace) -> dict:
    host = parse_interface(args.host_address)
    config = apply_settings(Config(), args.set)
    with tun_stack(args, config) as (stack, device):
        device.start(asyncio.get_running_loop(), stack.receive)
        print(f"tun {device.name} up", file=sys.stderr, flush=True)
        result: dict = {"ok": 0, "errno": None, "ports": []}
        for i in range(args.count):
            try:
                if i == 0:
                    # Only a missing server is waited for: any other failure (no
                    # free port) is the result.
                    reader, writer = await connect_when_up(
                        stack, str(host.ip), args.port, wait=SERVER_WAIT,
                        retry_on=(TimeoutError, ConnectionRefusedError))
                else:
                    reader, writer = await asyncio.wait_for(
                        stack.open_connection(str(host.ip), args.port), STEP_TIMEOUT)
            except OSError as exc:
                result["errno"] = exc.errno
                result["error"] = str(exc)
                break
            result["ports"].append(writer.get_extra_info("sockname")[1])
            await asyncio.wait_for(one_request(reader, writer, str(host.ip)), STEP_TIMEOUT)
            writer.close()  # we close first: the TIME_WAIT is ours
            await until_closed_by_us(stack, STEP_TIMEOUT)
            result["ok"] += 1
        result["tw"] = len(stack.table.tw)
        result["recycled"] = stack.stats["TcpExtTWRecycled"]
        return result


def main() -> int:
    parser = argparse.ArgumentParser()
    add_tun_args(parser)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE")
    result = uvloop.run(run(parser.parse_args()))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
