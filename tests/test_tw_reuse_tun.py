"""tcp_tw_reuse over a real TUN device (LS 70-72, 83).

ustack is the client of the kernel's HTTP/1.1 server in a private namespace, with the
ephemeral range narrowed to 10 ports. Each connection makes one request and is closed
by ustack first, so ustack holds the TIME_WAIT. More connections than ports:

- tcp_tw_reuse=1 (tcp_tw_reuse_delay=1 ms): every connection succeeds; ports are reused
  from TIME_WAIT, counted in TcpExtTWRecycled, and the kernel accepts the new
  incarnations (ISN above the old one's, timestamps continuing the old clock).
- tcp_tw_reuse=0: the 11th connect() fails with EADDRNOTAVAIL.
"""

from __future__ import annotations

import errno as E
import json
import subprocess
from pathlib import Path

import pytest
from conftest import HOST_ADDRESS, PYTHON, REPO, Netns

pytestmark = pytest.mark.tun

HTTP_PORT = 8080
PORTS = 10
RANGE = "ip_local_port_range=40000 40009"


def run_client(netns: Netns, tmp_path: Path, count: int, *knobs: str) -> dict:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the kernel's side\n")
    client_err = tmp_path / "client.stderr"
    server_err = tmp_path / "server.stderr"
    args = [PYTHON, REPO / "tests/helpers/tw_reuse_client.py", "--port", str(HTTP_PORT),
            "--count", str(count)]
    for knob in (RANGE, *knobs):
        args += ["--set", knob]
    with open(client_err, "wb") as err:
        client = netns.popen(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=err)
    assert netns.wait_for(["sh", "-c", f"ip -4 addr show | grep -q 'inet {HOST_ADDRESS}/'"],
                          alive=client), client_err.read_text()
    with open(server_err, "wb") as err:
        netns.popen(PYTHON, "-m", "http.server", "--bind", HOST_ADDRESS, "--protocol",
                    "HTTP/1.1", "--directory", www, str(HTTP_PORT),
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        out, _ = client.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"client hung; stderr:\n{client_err.read_text()}")
    diagnostics = f"client:\n{client_err.read_text()}\nserver:\n{server_err.read_text()}"
    assert client.returncode == 0, diagnostics
    return json.loads(out.decode().strip().splitlines()[-1])


def test_tw_reuse_1_lets_more_connections_than_ports_succeed(netns: Netns, tmp_path: Path):
    count = 2 * PORTS + 5
    r = run_client(netns, tmp_path, count, "tcp_tw_reuse=1", "tcp_tw_reuse_delay=1")
    assert r["ok"] == count and r["errno"] is None, r
    assert set(r["ports"]) <= set(range(40000, 40000 + PORTS))
    assert r["recycled"] >= count - PORTS, r
    assert r["tw"] <= PORTS


def test_tw_reuse_0_fails_past_the_range_with_eaddrnotavail(netns: Netns, tmp_path: Path):
    r = run_client(netns, tmp_path, PORTS + 3, "tcp_tw_reuse=0")
    assert r["ok"] == PORTS, r
    assert r["errno"] == E.EADDRNOTAVAIL and "Cannot assign requested address" in r["error"]
    assert r["tw"] == PORTS and r["recycled"] == 0
    assert sorted(r["ports"]) == list(range(40000, 40000 + PORTS))
