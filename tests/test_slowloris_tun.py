"""Slowloris over TUN: thousands of kernel connections trickle request heads byte by
byte at the daemon (all inside the test's namespace) while curl fetches a file.

With the header timeout at its default (60 s) the trickling connections would still be
open when the helper gives up, and the counter would read 0: both assertions fail
without the defence."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, STACK_ADDRESS

pytestmark = pytest.mark.tun

HELPER = REPO / "tests" / "helpers" / "slowloris.py"
COUNT = 2000
HEADER_TIMEOUT = 4


def test_slowloris_is_timed_out_and_curl_is_served(daemon, tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    body = bytes(range(256)) * 4096  # 1 MiB
    (root / "file.bin").write_bytes(body)
    ctl = tmp_path / "ctl.sock"
    d = daemon("--root", root, "--control", ctl,
               "--http-header-timeout", str(HEADER_TIMEOUT))
    loris = d.netns.popen(PYTHON, HELPER, "--host", STACK_ADDRESS, "--count", str(COUNT),
                          "--interval", "0.5", "--duration", str(HEADER_TIMEOUT * 6),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # While the connections trickle, a normal client is served, byte-exact.
        out = tmp_path / "got.bin"
        curl = d.run("curl", "-s", "-o", out, "--max-time", "30", "--retry", "2",
                     f"http://{STACK_ADDRESS}/file.bin", timeout=90)
        assert curl.returncode == 0, f"curl: {curl.returncode} {curl.stderr}\n{d.stderr()}"
        assert out.read_bytes() == body
        stdout, stderr = loris.communicate(timeout=HEADER_TIMEOUT * 6 + 120)
    finally:
        if loris.poll() is None:
            loris.kill()
    assert loris.returncode == 0, stderr
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["opened"] >= COUNT * 0.95, res  # a few SYNs may time out on a busy machine
    assert res["still_open"] == 0, res  # every trickler was timed out
    assert res["status_408"] >= res["opened"] * 0.9, res  # with a 408 (rest: reset)
    nstat = d.run(PYTHON, "-m", "ustack", "nstat", "--control", ctl, "--json", "-a",
                  "UstackHttp*")
    assert nstat.returncode == 0, nstat.stderr
    counters = json.loads(nstat.stdout)["kernel"]
    assert counters["UstackHttpHeaderTimeouts"] >= res["opened"], counters
