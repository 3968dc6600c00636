"""tools/soak in CI: 30 s of churn and bulk transfers through an impaired daemon (its
own namespace), every byte verified, the daemon clean; the report as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tun

REPO = Path(__file__).resolve().parent.parent


def test_soak_30s(tmp_path: Path):
    out = tmp_path / "soak.json"
    p = subprocess.run([sys.executable, REPO / "tools" / "soak", "--seconds", "30",
                        "--json", out], capture_output=True, text=True, timeout=400, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(out.read_text())
    c = report["client"]
    assert report["ok"] and not report["problems"]
    assert c["mismatch"] == 0 and c["conns"] > 100 and c["bytes"] > 10 << 20
    counters = report["counters"]
    assert counters["UstackImpairDropped"] > 0 and counters["TcpRetransSegs"] > 0
    assert "soak: ok" in p.stdout
    # Back near the start after TIME-WAIT expired: no per-connection leftovers.
    assert report["end"]["fds"] == report["start"]["fds"]


def test_soak_refuses_a_bad_duration():
    p = subprocess.run([sys.executable, REPO / "tools" / "soak", "--seconds", "0"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2 and "positive" in p.stderr
