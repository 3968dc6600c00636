"""Kernel-socket clients for benchmarks/bench_e2e.py, run inside the client namespace.

    python benchmarks/e2e_client.py upload HOST PORT NBYTES [TIMEOUT]
    python benchmarks/e2e_client.py conns HOST PORT PATH BODY_LEN N SECONDS CONCURRENCY

upload: connect, send NBYTES (sendall from one buffer), shut down the write side, then
wait for the server's EOF. The discard service closes only after it read our EOF, so a
clean EOF (no RST, no data) means the server application took every byte; the figure is
NBYTES over the time from connect to that EOF.

conns: short HTTP/1.0 connections, CONCURRENCY in flight under uvloop: each one a new
connection, `GET PATH HTTP/1.0`, read to EOF, the status must be 200 and the body
BODY_LEN bytes long. Stops after N requests or SECONDS, whichever comes first; every
request has a 10 s timeout and counts as an error if it takes longer.

Each prints one JSON line on stdout.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

REQUEST_TIMEOUT = 10.0


def upload(host: str, port: int, nbytes: int, timeout: float) -> dict:
    data = memoryview(bytes(range(256)) * (1 << 16))  # 16 MB, sent again and again
    t0 = time.perf_counter()
    sock = socket.create_connection((host, port), timeout=timeout)
    clean = False
    sent = 0
    error = None
    try:
        while sent < nbytes:
            n = min(len(data), nbytes - sent)
            sock.sendall(data[:n])
            sent += n
        sock.shutdown(socket.SHUT_WR)
        extra = sock.recv(1)
        clean = extra == b""
        if not clean:
            error = "the discard service sent data"
    except OSError as exc:
        error = repr(exc)
    finally:
        sock.close()
    dt = time.perf_counter() - t0
    return {"bytes": sent, "seconds": dt, "clean": clean, "error": error,
            "MBps": sent / dt / 1e6}


async def _one(host: str, port: int, request: bytes, body_len: int) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        data = await reader.read(-1)
    finally:
        writer.close()
    head, sep, body = data.partition(b"\r\n\r\n")
    return bool(sep) and head.split(b" ", 2)[1:2] == [b"200"] and len(body) == body_len


async def conns(host: str, port: int, path: str, body_len: int, n: int, seconds: float,
                concurrency: int) -> dict:
    request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    ok = errors = started = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def worker() -> None:
        nonlocal ok, errors, started
        while started < n and time.perf_counter() < deadline:
            started += 1
            try:
                good = await asyncio.wait_for(_one(host, port, request, body_len),
                                              REQUEST_TIMEOUT)
            except (TimeoutError, OSError, EOFError):
                good = False
            if good:
                ok += 1
            else:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    dt = time.perf_counter() - t0
    return {"requests": ok, "errors": errors, "seconds": dt, "rps": ok / dt}


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else ""
    if mode == "upload" and len(argv) in (4, 5):
        result = upload(argv[1], int(argv[2]), int(argv[3]),
                        float(argv[4]) if len(argv) == 5 else 60.0)
    elif mode == "conns" and len(argv) == 8:
        import uvloop

        result = uvloop.run(conns(argv[1], int(argv[2]), argv[3], int(argv[4]),
                                  int(argv[5]), float(argv[6]), int(argv[7])))
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
