"""`ustack connect HOST PORT`: netcat over the daemon's stack.

The connection is opened by the running daemon (through its control socket), so it
leaves from the stack's address and shows up in `ustack ss` and `ustack trace`. Standard
input goes to the connection; whatever the connection delivers goes to standard output,
unbuffered. End of input half-closes (shutdown(SHUT_WR): a FIN) and the client keeps
reading until the peer closes too.

    --linger 0   end of input aborts instead: RST, no FIN, no TIME_WAIT
    --linger N   end of input closes with SO_LINGER N: RST if the FIN is not
                 acknowledged within N seconds
    --nodelay    TCP_NODELAY (no Nagle)

Exit status 0 on a clean close (both FINs, or the abort asked for with --linger 0);
1 if the connection was refused, reset or timed out, or could not be opened (e.g.
EADDRNOTAVAIL when no ephemeral port is free); the error is named on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading

from ..ctlproto import F_DATA, F_EOF, F_EXIT, FRAME
from .args import int_arg
from .client import Control, ToolError, add_control_args, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("connect", help="netcat over the daemon's stack",
                       description="Open a connection from the running daemon's stack: "
                                   "stdin to the connection, the connection to stdout.")
    add_control_args(p)
    p.add_argument("host", metavar="HOST")
    p.add_argument("port", metavar="PORT", type=int_arg("port", 1, 65535))
    p.add_argument("--linger", metavar="SECONDS", type=int_arg("linger", 0), default=None,
                   help="SO_LINGER: 0 = end of input aborts with RST")
    p.add_argument("--nodelay", action="store_true", help="TCP_NODELAY")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr when the connection opens and how it ended")
    p.add_argument("--worker", metavar="K", type=int_arg("worker", 0), default=None,
                   help="serve --workers N: open it from worker K (default: each in turn)")
    p.set_defaults(func=run)


def _stdin_pump(sock: socket.socket) -> None:
    """stdin -> control socket; EOF becomes shutdown(SHUT_WR), i.e. our FIN."""
    fd = sys.stdin.fileno()
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the daemon closed: the main thread reports how it ended


def _read_exact(f, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise ToolError("the daemon closed the connection unexpectedly")
        buf += chunk
    return buf


def run(args: argparse.Namespace) -> int:
    if args.linger is not None and args.linger < 0:
        return fail("connect", "--linger must be >= 0")
    try:
        ctl = Control.from_args(args, timeout=None)
    except ToolError as exc:
        return fail("connect", str(exc))
    out = sys.stdout.buffer
    try:
        req = {"op": "connect", "host": args.host, "port": args.port,
               "linger": args.linger, "nodelay": args.nodelay}
        if args.worker is not None:
            req["worker"] = args.worker
        ctl.send(req)
        rep = ctl.reply()
        if not rep.get("ok"):
            return fail("connect", f"{args.host}:{args.port}: {rep.get('error')}")
        if args.verbose:
            via = f" (worker {rep['worker']})" if "worker" in rep else ""
            print(f"ustack connect: {rep['local']} -> {rep['peer']} open{via}",
                  file=sys.stderr, flush=True)
        threading.Thread(target=_stdin_pump, args=(ctl.sock,), daemon=True).start()
        f = ctl.file
        while True:
            kind, n = FRAME.unpack(_read_exact(f, FRAME.size))
            payload = _read_exact(f, n) if n else b""
            if kind == F_DATA:
                out.write(payload)
                out.flush()
            elif kind == F_EOF:
                if args.verbose:
                    print("ustack connect: peer closed its side (FIN)", file=sys.stderr,
                          flush=True)
            elif kind == F_EXIT:
                result = json.loads(payload)
                break
    except ToolError as exc:
        return fail("connect", str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1  # our stdout went away
    finally:
        ctl.close()
    if result.get("clean"):
        if args.verbose:
            print(f"ustack connect: closed cleanly ({result.get('state')})", file=sys.stderr,
                  flush=True)
        return 0
    return fail("connect", f"{args.host}:{args.port}: {result.get('error') or 'failed'}")
