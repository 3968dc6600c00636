"""Smoke runs of the benchmark suite: it runs, every row is there, transfers are exact.

No figure is asserted against a speed: a benchmark never fails for being slow. The
in-memory suite as a whole (`tools/bench --quick`) is run by tests/test_tools_dir.py; here
the segment benchmark on its own and, marked `tun`, the end-to-end rows over TUN
(`tools/bench --quick --tun e2e`: ustack, the kernel over veth and the Python relay, each
in namespaces of its own), which must also leave no namespace behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "tools" / "bench"
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_e2e  # noqa: E402


def bench(*args: str, timeout: float = 120, env: dict | None = None
          ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env=None if env is None else {**os.environ, **env})


def test_segments_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = bench("--quick", "segments", "--json", str(out))
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())["benchmarks"]["segments"]
    assert res["ok"], res
    names = {r["name"] for r in res["figures"]}
    for kind in ("data_1448", "pure_ack"):
        assert {f"{kind} segments/s", f"{kind} per segment",
                f"{kind} per segment, receive() only"} <= names
    for r in res["figures"]:
        assert r["value"] > 0 and r["byte_exact"] is True, r


TAG = f"t{os.getpid():x}"  # this test run's namespaces only (USTACK_BENCH_TAG)


def _our_namespaces() -> set[str]:
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return {line.split()[0] for line in p.stdout.splitlines()
            if line.startswith(f"{bench_e2e.NS_PREFIX}{TAG}-")}


@pytest.mark.tun
def test_e2e_quick_over_tun(tmp_path: Path) -> None:
    before = _our_namespaces()
    out = tmp_path / "bench.json"
    p = bench("--quick", "--tun", "e2e", "--json", str(out), timeout=180,
              env={"USTACK_BENCH_TAG": TAG})
    assert p.returncode == 0, p.stderr
    assert _our_namespaces() <= before, "bench_e2e left a namespace behind"
    res = json.loads(out.read_text())["benchmarks"]["e2e"]
    assert res["ok"], res
    rows = {r["name"]: r for r in res["figures"]}
    servers = ["ustack", "kernel", "relay"]
    if bench_e2e.offload_flags():
        servers.insert(1, "ustack-perpacket")
    else:
        assert any(r.get("note", "").startswith("per-packet mode needs --offload")
                   for r in rows.values())
    want = [f"{fig} {server}" for fig, _, _ in bench_e2e.FIGURES for server in servers]
    want.append("download kernel-sendfile")
    want += [f"{fig} {mine}/{theirs}" for fig, _, _ in bench_e2e.FIGURES
             for mine in servers if mine.startswith("ustack") for theirs in ("kernel", "relay")]
    missing = [n for n in want if n not in rows]
    assert not missing, missing
    for name in want:
        r = rows[name]
        assert not r.get("error") and r["value"] > 0, r
        if r.get("figure") in ("download", "upload") and "server" in r:
            assert r["byte_exact"] is True, r
        if "errors" in r:
            assert r["errors"] == 0, r  # every request answered 200 with the right body


@pytest.mark.tun
def test_loss_quick_over_tun(tmp_path: Path) -> None:
    """The loss rows (benchmarks/bench_loss.py): ustack under --impair and the kernel
    behind the dropping relay, byte-exact, the RTO count reported, nothing left over."""
    before = _our_namespaces()
    out = tmp_path / "bench.json"
    p = bench("--quick", "--tun", "loss", "--json", str(out), timeout=240,
              env={"USTACK_BENCH_TAG": TAG})
    assert p.returncode == 0, p.stderr
    assert _our_namespaces() <= before, "bench_loss left a namespace behind"
    res = json.loads(out.read_text())["benchmarks"]["loss"]
    assert res["ok"], res
    rows = {r["name"]: r for r in res["figures"]}
    for name in ("download ustack loss 5%", "download kernel loss 5%"):
        assert not rows[name].get("error") and rows[name]["value"] > 0, rows[name]
        assert rows[name]["byte_exact"] is True, rows[name]
    assert rows["download ustack loss 5%"]["counters"]["UstackImpairDropped"] > 0
    assert isinstance(rows["download ustack/kernel loss 5%"]["rtos"], int)
