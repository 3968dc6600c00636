"""ustack's own HTTP and discard apps on kernel sockets, for benchmarks/bench_e2e.py.

    python benchmarks/kernel_server.py HOST ROOT [--http 80] [--discard 9] [--sendfile 8080]

The apps are ustack.apps.http and ustack.apps.discard, unchanged: they take a
`start_server` and only see asyncio streams, so `asyncio.start_server` (under uvloop)
runs them on the kernel's TCP exactly as `Stack.start_server` runs them on ustack's. A
figure against this server is "kernel TCP + the same Python app".

--sendfile PORT adds the kernel's best case for downloads: a minimal HTTP/1.0 file
server, one thread per connection, the body sent with socket.sendfile() (zero copy, no
Python per byte). It answers GET for files under ROOT and nothing else.

Prints "ready" once every server listens; exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ustack.apps.discard import start_discard  # noqa: E402
from ustack.apps.http import resolve, start_http, url_path  # noqa: E402


def _sendfile_conn(conn: socket.socket, root: Path) -> None:
    with conn:
        conn.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        parts = head.split(b"\r\n", 1)[0].split()
        path = url_path(parts[1]) if len(parts) == 3 and parts[0] == b"GET" else None
        file = resolve(root, path) if path is not None else None
        if file is None:
            conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        with file.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            conn.sendall(b"HTTP/1.0 200 OK\r\nServer: kernel-sendfile\r\n"
                         b"Content-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % size)
            conn.sendfile(f)
        conn.shutdown(socket.SHUT_WR)


def sendfile_server(host: str, port: int, root: Path) -> socket.socket:
    lsock = socket.create_server((host, port), backlog=128, reuse_port=False)

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            threading.Thread(target=_sendfile_conn, args=(conn, root), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return lsock


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    if args.http:
        servers.append(await start_http(asyncio.start_server, args.host, args.http,
                                        root=args.root))
    if args.discard:
        servers.append(await start_discard(asyncio.start_server, args.host, args.discard))
    lsock = sendfile_server(args.host, args.sendfile, args.root) if args.sendfile else None
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    if lsock is not None:
        lsock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("host")
    p.add_argument("root", type=lambda s: Path(s).resolve(strict=True))
    p.add_argument("--http", type=int, default=80)
    p.add_argument("--discard", type=int, default=9)
    p.add_argument("--sendfile", type=int, default=0, metavar="PORT")
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
