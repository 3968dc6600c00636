"""ustack as the client: an in-process Stack fetches a file from the kernel's HTTP server.

The roles are the reverse of test_integration.py: the kernel listens (python's
http.server on the host side of the TUN) and ustack does the active open, sends the
request and reads to EOF.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest import HOST_ADDRESS, PYTHON, REPO, Netns

pytestmark = pytest.mark.tun

HTTP_PORT = 8080


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_2mb_from_kernel_http_server(netns: Netns, tmp_path: Path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "two.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    out = tmp_path / "fetched.bin"
    client_err = tmp_path / "client.stderr"
    server_err = tmp_path / "server.stderr"

    with open(client_err, "wb") as err:
        client = netns.popen(PYTHON, REPO / "tests/helpers/fetch_client.py",
                             "--port", str(HTTP_PORT), "--path", "/two.bin", "--out", out,
                             stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    # The server can bind 10.77.0.1 only once the client's TUN carries that address.
    assert netns.wait_for(["sh", "-c", f"ip -4 addr show | grep -q 'inet {HOST_ADDRESS}/'"],
                          alive=client), client_err.read_text()
    with open(server_err, "wb") as err:
        netns.popen(PYTHON, "-m", "http.server", "--bind", HOST_ADDRESS, "--directory", www,
                    str(HTTP_PORT), stdin=subprocess.DEVNULL, stdout=err, stderr=err)

    try:
        status = client.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"client hung; stderr:\n{client_err.read_text()}")
    diagnostics = f"client:\n{client_err.read_text()}\nserver:\n{server_err.read_text()}"
    assert status == 0, diagnostics
    assert out.stat().st_size == 2 * 1024 * 1024, diagnostics
    assert sha256(out) == sha256(www / "two.bin")
