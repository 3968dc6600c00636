"""The HTTP server under real load generators (ApacheBench, wrk) over a real TUN device,
the kernel's TCP as the client, inside a namespace the `daemon` fixture creates."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import STACK_ADDRESS, Daemon

pytestmark = pytest.mark.tun

URL = f"http://{STACK_ADDRESS}/small.txt"


def need(tool: str) -> None:
    # scripts/setup installs both (apache2-utils, wrk); a CI machine without them fails.
    if shutil.which(tool) is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {tool} is missing (run scripts/setup)", pytrace=False)
        pytest.skip(f"needs {tool} (scripts/setup installs it)")


@pytest.fixture
def served(daemon, tmp_path: Path) -> Daemon:
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.txt").write_bytes(b"hello\n")
    return daemon("--root", root, "--control", "none")


def ab_field(output: str, name: str) -> int:
    match = re.search(rf"^{name}:\s+(\d+)", output, re.M)
    assert match, f"no {name!r} in ab's output:\n{output}"
    return int(match.group(1))


@pytest.mark.parametrize("keep_alive", [True, False], ids=["ab-k", "ab"])
def test_ab(served: Daemon, keep_alive: bool):
    """ab speaks HTTP/1.0: with -k it asks for keep-alive and must get it on every
    request; without, the server closes after each response."""
    need("ab")
    argv = ["ab", *(["-k"] if keep_alive else []), "-n", "200", "-c", "4", URL]
    proc = served.run(*argv, timeout=60)
    out = proc.stdout
    assert proc.returncode == 0, f"{proc.stderr}\n{out}\ndaemon:\n{served.stderr()}"
    assert ab_field(out, "Complete requests") == 200
    assert ab_field(out, "Failed requests") == 0
    if keep_alive:
        assert ab_field(out, "Keep-Alive requests") == 200
    else:
        assert "Keep-Alive requests" not in out  # ab prints the line only with -k
    assert ab_field(out, "Document Length") == 6


def test_wrk(served: Daemon):
    need("wrk")
    proc = served.run("wrk", "-t1", "-c4", "-d1s", URL, timeout=60)
    assert proc.returncode == 0, f"{proc.stderr}\n{proc.stdout}"
    assert "Socket errors" not in proc.stdout and "Non-2xx" not in proc.stdout, proc.stdout
    # Over a second, at least hundreds of keep-alive requests: before issue 11's fix,
    # every response waited 40 ms for a delayed ACK (about 100 per connection a second).
    requests = int(re.search(r"(\d+) requests in", proc.stdout).group(1))
    assert requests > 4 * 100, proc.stdout
