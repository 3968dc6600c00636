"""A kernel-socket client for the integration tests, run inside the test's namespace.

    python kernel_client.py echo HOST PORT NBYTES     send NBYTES, half-close, expect
                                                      the same bytes back, then EOF
    python kernel_client.py discard HOST PORT NBYTES  send NBYTES, half-close, expect a
                                                      clean EOF (no data, no RST)

Prints one line and exits 0 on success; anything else is a failure with the reason.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading

TIMEOUT = 60.0  # per socket operation; loose, only there so a hang becomes a failure


def send_all_then_half_close(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    mode, host, port, nbytes = argv[0], argv[1], int(argv[2]), int(argv[3])
    data = os.urandom(nbytes)
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    # Send from a thread: with 1 MB in flight an echo peer fills our receive buffer
    # long before we finish sending, so reading and writing must overlap.
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            send_all_then_half_close(sock, data)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    received = read_to_eof(sock)
    thread.join()
    sock.close()
    if errors:
        print(f"send failed: {errors[0]!r}")
        return 1
    if mode == "echo":
        if received != data:
            print(f"echo mismatch: sent {len(data)} bytes sha256 "
                  f"{hashlib.sha256(data).hexdigest()}, got {len(received)} bytes sha256 "
                  f"{hashlib.sha256(received).hexdigest()}")
            return 1
    elif received:
        print(f"discard sent back {len(received)} bytes")
        return 1
    print(f"ok {mode} {nbytes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
