"""The real daemon over a real TUN device, talking to the kernel's TCP inside a namespace.

Each test gets `ustack serve` in a fresh namespace (see the `daemon` fixture), drives
it with ordinary tools (curl, ping, ss, kernel sockets) and checks what both sides
did. The interesting ones are about who ends up in TIME-WAIT: the side that closes
first, and only that side.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HOST_ADDRESS, PYTHON, REPO, STACK_ADDRESS, Daemon

pytestmark = pytest.mark.tun

BASE = f"http://{STACK_ADDRESS}"
CURL = ("curl", "--silent", "--show-error", "--fail", "--max-time", "120")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def diagnose(d: Daemon, proc) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n" \
           f"daemon stderr:\n{d.stderr()}"


def curl_local_port(d: Daemon, *args: str) -> int:
    """Run curl, discard the body, return the client's (kernel's) local port."""
    proc = d.run(*CURL, "--output", "/dev/null", "--write-out", "%{local_port}", *args)
    assert proc.returncode == 0, diagnose(d, proc)
    return int(proc.stdout.strip())


def stack_rows(d: Daemon) -> list[dict]:
    proc = d.run(*CURL, f"{BASE}/status.json")
    assert proc.returncode == 0, diagnose(d, proc)
    return json.loads(proc.stdout)["connections"]


def kernel_time_wait(d: Daemon, port: int) -> list[str]:
    """Kernel sockets in TIME-WAIT whose local port is `port` (ss, in the namespace)."""
    proc = d.run("ss", "-Htan", "state", "time-wait")
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if f"{HOST_ADDRESS}:{port} " in line]


def stack_rows_for(rows: list[dict], port: int) -> list[dict]:
    return [r for r in rows if r["peer"] == f"{HOST_ADDRESS}:{port}"]


def eventually(probe: Callable[[], object], ok: Callable[[object], bool],
               timeout: float = 10.0) -> object:
    """Poll `probe` until `ok(result)`; return the last result either way. The close
    handshake finishes a moment after curl exits, so the first look may be too early."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if ok(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_ping(daemon):
    d = daemon()
    proc = d.run("ping", "-c", "3", "-W", "2", STACK_ADDRESS)
    assert proc.returncode == 0, diagnose(d, proc)


def test_status_page(daemon):
    d = daemon()
    proc = d.run(*CURL, f"{BASE}/")
    assert proc.returncode == 0, diagnose(d, proc)
    assert "ustack" in proc.stdout
    listening = {r["local"] for r in stack_rows(d) if r["state"] == "LISTEN"}
    assert {f"{STACK_ADDRESS}:{p}" for p in (80, 7, 9)} <= listening


def test_get_10mb_file_from_root(daemon, tmp_path: Path):
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(10 * 1024 * 1024)
    (www / "big.bin").write_bytes(data)
    out = tmp_path / "big.out"
    d = daemon("--root", www)
    proc = d.run(*CURL, "--output", out, f"{BASE}/big.bin")
    assert proc.returncode == 0, diagnose(d, proc)
    assert out.stat().st_size == len(data)
    assert sha256(out.read_bytes()) == sha256(data)


def test_http10_server_closes_first_so_stack_holds_time_wait(daemon):
    d = daemon()
    port = curl_local_port(d, "--http1.0", f"{BASE}/")
    # The status request is a connection of its own, on another client port.
    rows = eventually(lambda: stack_rows_for(stack_rows(d), port),
                      lambda rows: [r["state"] for r in rows] == ["TIME-WAIT"])
    assert [r["state"] for r in rows] == ["TIME-WAIT"], rows
    assert kernel_time_wait(d, port) == [], d.run("ss", "-tan").stdout


def test_keepalive_client_closes_first_so_kernel_holds_time_wait(daemon):
    d = daemon()
    port = curl_local_port(d, "--http1.1", f"{BASE}/")  # keep-alive; curl closes on exit
    kernel = eventually(lambda: kernel_time_wait(d, port), lambda lines: len(lines) == 1)
    assert len(kernel) == 1, d.run("ss", "-tan").stdout
    # The stack closed second (LAST-ACK -> CLOSED): no TIME-WAIT entry, soon no row at all.
    rows = eventually(lambda: stack_rows_for(stack_rows(d), port), lambda rows: not rows)
    assert rows == [], rows


def kernel_client(d: Daemon, mode: str, port: int, nbytes: int):
    return d.run(PYTHON, REPO / "tests/helpers/kernel_client.py", mode, STACK_ADDRESS,
                 str(port), str(nbytes))


def test_echo_1mb_through_a_kernel_socket(daemon):
    d = daemon()
    proc = kernel_client(d, "echo", 7, 1024 * 1024)
    assert proc.returncode == 0, diagnose(d, proc)


def test_discard_1mb_and_close_cleanly(daemon):
    d = daemon()
    proc = kernel_client(d, "discard", 9, 1024 * 1024)
    assert proc.returncode == 0, diagnose(d, proc)


def test_services_on_other_ports_and_disabled(daemon):
    d = daemon("--http", "8080", "--echo", "0", "--discard", "0")
    assert "(http 8080)" in d.stderr()
    proc = d.run(*CURL, f"{BASE}:8080/")
    assert proc.returncode == 0, diagnose(d, proc)
    proc = kernel_client(d, "echo", 7, 10)
    assert proc.returncode != 0  # nothing listens: the stack refuses the connection


def test_control_and_pcap_options_do_not_break_serving(daemon, tmp_path: Path):
    # Whatever --control and --pcap do (they started as accepted-but-ignored), they
    # must not stop the daemon from serving or exiting cleanly.
    d = daemon("--control", tmp_path / "ctl.sock", "--pcap", tmp_path / "x.pcap",
               "--set", "tcp_msl=5")
    assert "Traceback" not in d.stderr()
    assert d.run("ping", "-c", "1", "-W", "2", STACK_ADDRESS).returncode == 0
    proc = d.run(*CURL, f"{BASE}/")
    assert proc.returncode == 0, diagnose(d, proc)


def test_second_daemon_with_the_same_tun_name_exits_1(daemon):
    d = daemon()
    proc = d.run(PYTHON, "-m", "ustack", "serve", timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == ["ustack: TUN device name ustack0 is already in use"]
    assert d.run("ping", "-c", "1", "-W", "2", STACK_ADDRESS).returncode == 0  # unharmed


def test_sigterm_exits_0_and_removes_the_link(daemon):
    d = daemon()
    assert "ustack0" in d.run("ip", "link", "show").stdout
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0, d.stderr()
    assert "Traceback" not in d.stderr()
    assert d.run("ip", "link", "show", "ustack0").returncode != 0


def test_sigint_exits_0(daemon):
    d = daemon()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(timeout=20) == 0, d.stderr()
    assert "Traceback" not in d.stderr()
