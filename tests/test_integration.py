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
import re
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import HOST_ADDRESS, PYTHON, REPO, STACK_ADDRESS, Daemon, eventually

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


def test_ping(daemon):
    d = daemon()
    proc = d.run("ping", "-c", "3", "-W", "2", STACK_ADDRESS)
    assert proc.returncode == 0, diagnose(d, proc)


def link_state(run, name: str) -> tuple[str, str]:
    """(`ip -4 -o addr` line, `ip -o link` line) of interface `name`."""
    return (run("ip", "-4", "-o", "addr", "show", "dev", name).stdout,
            run("ip", "-o", "link", "show", name).stdout)


def test_defaults_make_ustack0_up_with_the_host_address(daemon):
    d = daemon()
    addr, link = link_state(d.run, "ustack0")
    assert f"inet {HOST_ADDRESS}/24 " in addr, addr
    assert ",UP," in link and "LOWER_UP" in link, link


def test_tun_name_and_addresses_are_options(make_netns, tmp_path: Path):
    ns = make_netns()
    err_path = tmp_path / "serve.stderr"
    with open(err_path, "wb") as err:
        proc = ns.popen(PYTHON, "-m", "ustack", "serve", "--tun", "ustk-test",
                        "--address", "10.77.5.2/24", "--host-address", "10.77.5.1/24",
                        stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        assert ns.wait_for(["ping", "-c1", "-W1", "10.77.5.2"], alive=proc), \
            err_path.read_text()
        addr, link = link_state(ns.run, "ustk-test")
        assert "inet 10.77.5.1/24 " in addr, addr
        assert ",UP," in link, link
        page = ns.run(*CURL, "http://10.77.5.2/")
        assert page.returncode == 0 and "ustack" in page.stdout, page.stderr
        assert ns.run("ip", "link", "show", "ustack0").returncode != 0  # no default link
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, err_path.read_text()
    assert ns.run("ip", "link", "show", "ustk-test").returncode != 0


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
    proc = d.run(*CURL, f"{BASE}:8080/status.json")
    assert proc.returncode == 0, diagnose(d, proc)
    rows = json.loads(proc.stdout)["connections"]
    assert {r["local"] for r in rows if r["state"] == "LISTEN"} == {f"{STACK_ADDRESS}:8080"}


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


def test_sigint_exits_0_and_removes_the_link(daemon):
    d = daemon()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(timeout=20) == 0, d.stderr()
    assert "Traceback" not in d.stderr()
    assert d.run("ip", "link", "show", "ustack0").returncode != 0


HOLD_ECHO_OPEN = f"""
import socket, sys
c = socket.create_connection(("{STACK_ADDRESS}", 7), timeout=30)
c.sendall(b"x")
assert c.recv(1) == b"x"
print("open", flush=True)
sys.stdin.readline()
"""


def test_sigterm_with_open_connections_exits_cleanly(daemon):
    """Shutting down with a live echo connection and a TIME-WAIT record: status 0,
    nothing on stderr beyond the daemon's own lines, the link removed."""
    d = daemon()
    curl_local_port(d, "--http1.0", f"{BASE}/")  # leaves a TIME-WAIT record in the stack
    holder = d.netns.popen(PYTHON, "-c", HOLD_ECHO_OPEN, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open", holder.stderr.read()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0, d.stderr()
    lines = d.stderr().splitlines()
    assert lines and all(line.startswith("ustack: ") for line in lines), lines
    assert d.run("ip", "link", "show", "ustack0").returncode != 0
    holder.stdin.close()
    holder.wait(timeout=20)


def test_keep_alive_serves_two_requests_on_one_connection(daemon):
    d = daemon()
    proc = d.run(*CURL, "--output", "/dev/null", "--output", "/dev/null",
                 "--write-out", "%{num_connects} %{local_port}\n", f"{BASE}/", f"{BASE}/")
    assert proc.returncode == 0, diagnose(d, proc)
    (first, port1), (second, port2) = (line.split() for line in proc.stdout.splitlines())
    assert (first, second) == ("1", "0")  # the second transfer reused the connection
    assert port1 == port2


def test_set_last_value_wins_and_time_wait_lasts_2_msl(daemon):
    d = daemon("--set", "tcp_msl=30", "--set", "tcp_msl=2")
    port = curl_local_port(d, "--http1.0", f"{BASE}/")
    rows = eventually(lambda: stack_rows_for(stack_rows(d), port),
                      lambda rows: [r["state"] for r in rows] == ["TIME-WAIT"])
    assert [r["state"] for r in rows] == ["TIME-WAIT"], rows
    kind, remaining, _ = rows[0]["timer"].split(",")
    assert kind == "timewait"
    assert 0 < float(remaining.rstrip("s")) <= 4.0  # 2 * the last tcp_msl, not 2 * 30
    rows = eventually(lambda: stack_rows_for(stack_rows(d), port), lambda rows: not rows,
                      timeout=30)
    assert rows == [], rows


# A kernel client of the echo service that writes and never reads, until nothing more
# goes out for STALL seconds; prints what it sent and its port, then on a line from
# stdin reads everything back.
ECHO_WITHOUT_READING = f"""
import select, socket, sys
STALL = 5.0
c = socket.socket()
c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
c.connect(("{STACK_ADDRESS}", 7))
c.setblocking(False)
chunk = bytes(65536)
sent = 0
while sent < (64 << 20) and select.select([], [c], [], STALL)[1]:
    try:
        sent += c.send(chunk)
    except BlockingIOError:
        pass
print(sent, c.getsockname()[1], flush=True)
sys.stdin.readline()
c.setblocking(True)
c.settimeout(60)
got = 0
while got < sent:
    data = c.recv(1 << 20)
    assert data, got
    got += len(data)
c.close()
print(got, flush=True)
"""


def test_echo_closes_its_window_when_the_peer_stops_reading(daemon):
    """The echo service over TUN: a kernel client that never reads is stalled after a
    bounded amount (the stack's window closes, seen by the kernel as snd_wnd 0) and
    gets everything back once it reads."""
    d = daemon()
    client = d.netns.popen(PYTHON, "-c", ECHO_WITHOUT_READING, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = client.stdout.readline()
    assert line, client.stderr.read()
    sent, port = map(int, line.split())
    assert 0 < sent < 8 << 20  # bounded: the stack did not buffer megabytes
    rows = stack_rows_for(stack_rows(d), port)
    assert [r["state"] for r in rows] == ["ESTAB"], rows
    # tcp_rmem's default, plus what the never-shrinking window may round up past it
    # while it closes: less than one scale unit (128 B at wscale 7) per ACK, as
    # Linux's tcp_select_window() ALIGNs (tests/test_foundation.py, the same bound).
    assert rows[0]["recv_q"] <= 262144 + 16 * 128, rows
    # The kernel's view of its socket: data waiting (notsent), nothing unacknowledged,
    # limited by the receiver's window: the stack advertises 0 and the kernel probes.
    info = d.run("ss", "-Htin", "dst", STACK_ADDRESS, "dport", "=", "7").stdout
    fields = {k: int(v) for k, v in re.findall(r"\b(\w+):(\d+)\b", info)}
    assert fields.get("notsent", 0) > 0, info
    assert fields["bytes_acked"] >= fields["bytes_sent"], info
    assert "rwnd_limited:" in info, info
    assert fields.get("snd_wnd", 0) == 0, info  # shown by newer iproute2/kernels only
    client.stdin.write("\n")
    client.stdin.flush()
    assert client.stdout.readline().strip() == str(sent), client.stderr.read()
    assert client.wait(timeout=60) == 0
