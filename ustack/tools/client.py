"""The client side of the control socket (see ustack/ctlproto.py for the protocol).

Blocking and small: the tools are short-lived command-line programs. Errors become
`ToolError` with a message fit for stderr; the tools turn it into exit status 1.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import BinaryIO

from ..ctlproto import ControlError, resolve_path


class ToolError(Exception):
    """Something the user should read: printed as `ustack TOOL: message`, exit 1."""


def add_control_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", metavar="PATH", default=None,
                   help="the daemon's control socket (default: $USTACK_CONTROL, else "
                        "/run/ustack/NAME.sock for --tun NAME, else the only one there)")
    p.add_argument("--tun", metavar="NAME", default=None,
                   help="the daemon's TUN name, to find /run/ustack/NAME.sock")


class Control:
    """One connection to a daemon's control socket."""

    def __init__(self, path: str, timeout: float | None = 10.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except PermissionError:
            self.sock.close()
            raise ToolError(f"permission denied: {path} (the control socket is mode 0600: "
                            "run as the daemon's user or root)") from None
        except FileNotFoundError:
            self.sock.close()
            raise ToolError(f"no control socket at {path}: is `ustack serve` running?") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise ToolError(f"{path}: connection refused (the daemon is gone)") from None
        except OSError as exc:
            self.sock.close()
            raise ToolError(f"{path}: {exc.strerror or exc}") from None
        self.file: BinaryIO = self.sock.makefile("rb")

    @classmethod
    def from_args(cls, args: argparse.Namespace, timeout: float | None = 10.0) -> Control:
        try:
            path = resolve_path(getattr(args, "control", None), getattr(args, "tun", None))
        except ControlError as exc:
            raise ToolError(str(exc)) from None
        return cls(path, timeout)

    def send(self, obj: dict) -> None:
        try:
            self.sock.sendall(json.dumps(obj).encode() + b"\n")
        except OSError as exc:
            raise ToolError(f"{self.path}: {exc.strerror or exc}") from None

    def reply(self) -> dict:
        try:
            line = self.file.readline()
        except TimeoutError:
            raise ToolError(f"{self.path}: the daemon did not answer") from None
        except OSError as exc:
            raise ToolError(f"{self.path}: {exc.strerror or exc}") from None
        if not line:
            raise ToolError(f"{self.path}: the daemon closed the connection")
        try:
            obj = json.loads(line)
        except ValueError:
            raise ToolError(f"{self.path}: unreadable reply {line[:80]!r}") from None
        return obj

    def request(self, obj: dict) -> dict:
        """Send one request; the reply, or ToolError with the daemon's error message."""
        self.send(obj)
        rep = self.reply()
        if not rep.get("ok"):
            raise ToolError(rep.get("error", "request failed"))
        return rep

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fail(tool: str, message: str) -> int:
    print(f"ustack {tool}: {message}", file=sys.stderr, flush=True)
    return 1
