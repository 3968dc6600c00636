"""A SYN flood over TUN: curl's latency during it beside the idle latency, SYNs answered
per second, the daemon's RSS. Root only (a namespace of its own).

    sudo python benchmarks/bench_synflood.py [--count 100000]      (~30-60 s; or tools/bench --tun)

`ustack serve --root DIR` runs in a namespace of its own (its TUN device there,
10.77.0.1 -> 10.77.0.2); in the same namespace benchmarks/syn_flood.py sends COUNT
spoofed SYNs from a raw socket at full speed, from addresses all over 10.77.1.0 -
10.77.255.255, while curl fetches a 2 MB file from the daemon and compares it byte for
byte. A legitimate SYN may be dropped at the TUN queue while the flood lasts; curl's
retransmission (1 s later) then gets through. Rows:

- `idle_ms`: the 2 MB fetch on an idle daemon (median of 3), `flood_ms`: the same fetch
  started with the flood; `flood/idle`.
- `flood_sent_per_s`: what the raw socket put out (the kernel's side); most of it is
  dropped at the TUN queue, which the daemon empties as fast as it can.
- `synacks_per_s`: SYN-ACKs (cookies) the daemon sent per second while a longer flood
  (the COUNT frames sent SUSTAIN times, a few seconds) kept its TUN queue full: what one
  daemon answers when the CPU is the limit.
- `rss_*_mb`: the daemon's VmRSS before, at its peak during the flood (sampled every
  50 ms, over both floods) and 2 s after the first; counters of the first flood
  (SyncookiesSent, TCPReqQFullDoCookies, ...).

Every packet stays in the namespace (10.77.0.0/16 only); the daemon and the flooder are
ended by PID and the namespace deleted afterwards, also on failure. The figures are
informative; tests/test_synflood_tun.py asserts what must hold (byte-exact, RSS bounded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from bench_e2e import PYTHON, Lab, Setup, wait_ping  # noqa: E402

from ustack.tools.client import Control  # noqa: E402

STACK = "10.77.0.2"
SIZE = 2_000_000
COUNTERS = ("TcpExtSyncookiesSent", "TcpExtSyncookiesRecv", "TcpExtSyncookiesFailed",
            "TcpExtTCPReqQFullDoCookies", "TcpExtTCPReqQFullDrop", "TcpExtListenOverflows",
            "TcpExtListenDrops", "TcpPassiveOpens", "TcpInSegs", "TcpOutSegs")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def counters(path: str) -> dict[str, int]:
    with Control(path, timeout=10) as c:
        c.send({"op": "nstat", "client": "synflood", "update": False})
        return c.reply()["counters"]


def fetch(lab: Lab, ns: str, out: Path, timeout: float = 60) -> tuple[float, bool, str]:
    """curl of /file.bin into `out`: (seconds, byte-exact, curl's stderr)."""
    p = lab.run(ns, "curl", "-sS", "--fail", "--max-time", f"{timeout:.0f}", "-o", out,
                "-w", "%{time_total}", f"http://{STACK}/file.bin", timeout=timeout + 10,
                check=False)
    ok = p.returncode == 0 and out.exists() and out.stat().st_size == SIZE
    if ok:
        ok = hashlib.sha256(out.read_bytes()).hexdigest() == lab.want  # type: ignore[attr-defined]
    out.unlink(missing_ok=True)
    try:
        t = float(p.stdout.strip() or 0)
    except ValueError:
        t = 0.0
    return t, ok, p.stderr.strip()


def run(count: int = 100_000, idle_runs: int = 3, sustain: int = 40) -> dict:
    """One flood; the figures and what the test checks, as a dict."""
    tmp = Path(tempfile.mkdtemp(prefix="ustack-synflood-"))
    www = tmp / "www"
    www.mkdir()
    data = os.urandom(SIZE)
    (www / "file.bin").write_bytes(data)
    lab = Lab(tmp)
    lab.want = hashlib.sha256(data).hexdigest()  # type: ignore[attr-defined]
    ctl = str(tmp / "ctl.sock")
    res: dict = {"count": count}
    try:
        ns = lab.netns("F")
        daemon = lab.popen(ns, "ustack", PYTHON, "-m", "ustack", "serve", "--root", www,
                           "--control", ctl, stdout=None)
        wait_ping(lab, ns, STACK, daemon)
        idle = []
        for _ in range(idle_runs):
            t, ok, err = fetch(lab, ns, tmp / "idle.out")
            if not ok:
                raise Setup(f"idle fetch failed: {err}")
            idle.append(t)
        res["idle_ms"] = statistics.median(idle) * 1000
        time.sleep(0.5)
        rss0 = rss_kb(daemon.pid)
        c0 = counters(ctl)
        flooder = lab.popen(ns, "flooder", PYTHON, BENCH / "syn_flood.py", "--dst", STACK,
                            "--port", "80", "--count", str(count), "--now")
        line = flooder.stdout.readline()
        if b"ready" not in line:
            raise Setup(f"syn_flood.py did not start: {lab.stderr(flooder)}")
        peak = [rss0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], rss_kb(daemon.pid))
                except OSError:
                    return
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t, ok, err = fetch(lab, ns, tmp / "flood.out", timeout=90)
        res.update(flood_ms=t * 1000, byte_exact=ok, curl_error=err)
        out, _ = flooder.communicate(timeout=120)
        flood = json.loads(out.decode().strip().splitlines()[-1])
        res["flood_sent"] = flood["sent"]
        res["flood_errors"] = flood["errors"]
        res["flood_sent_per_s"] = flood["sent"] / max(flood["seconds"], 1e-9)
        time.sleep(0.5)  # what the TUN queue still held
        c = counters(ctl)
        res["counters"] = {k: c[k] - c0[k] for k in COUNTERS}
        time.sleep(2.0)
        res["rss_after_mb"] = rss_kb(daemon.pid) / 1024
        # The sustained flood, for the daemon's rate: counters just before and after.
        flooder = lab.popen(ns, "flooder2", PYTHON, BENCH / "syn_flood.py", "--dst", STACK,
                            "--port", "80", "--count", str(min(count, 50_000)), "--repeat",
                            str(sustain), "--now")
        if b"ready" not in flooder.stdout.readline():
            raise Setup(f"syn_flood.py did not start: {lab.stderr(flooder)}")
        c1 = counters(ctl)
        t1 = time.monotonic()
        out, _ = flooder.communicate(timeout=120)
        c2 = counters(ctl)
        dt = time.monotonic() - t1
        res["synacks_per_s"] = (c2["TcpExtSyncookiesSent"] - c1["TcpExtSyncookiesSent"]) / dt
        res["sustained_seconds"] = dt
        stop.set()
        sampler.join(timeout=5)
        res["rss_before_mb"] = rss0 / 1024
        res["rss_peak_mb"] = peak[0] / 1024
        res["daemon_alive"] = daemon.poll() is None
        lab.stop(daemon)
        res["daemon_stderr"] = (tmp / "ustack.stderr").read_text(errors="replace")
        res["daemon_exit"] = daemon.returncode
    finally:
        res["namespaces"] = list(lab.namespaces)
        lab.teardown()
    return res


def figures(count: int = 100_000, quick: bool = False) -> list[dict]:
    r = run(20_000 if quick else count, sustain=10 if quick else 40)
    ok = bool(r.get("byte_exact"))
    rows = [{"name": "idle_ms", "value": r["idle_ms"], "unit": "ms"},
            {"name": "flood_ms", "value": r["flood_ms"] or 0.0, "unit": "ms"},
            {"name": "flood/idle", "value": (r["flood_ms"] or 0.0) / r["idle_ms"], "unit": "x"},
            {"name": "synacks_per_s", "value": r["synacks_per_s"] / 1e3, "unit": "k/s"},
            {"name": "flood_sent_per_s", "value": r["flood_sent_per_s"] / 1e3, "unit": "k/s"},
            {"name": "rss_before_mb", "value": r["rss_before_mb"], "unit": "MB"},
            {"name": "rss_peak_mb", "value": r["rss_peak_mb"], "unit": "MB"},
            {"name": "rss_after_mb", "value": r["rss_after_mb"], "unit": "MB"}]
    for row in rows:
        row["byte_exact"] = ok
        row["syns"] = r["count"]
    rows[3]["counters"] = r["counters"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100_000)
    a = ap.parse_args()
    r = run(a.count)
    r.pop("daemon_stderr", None)
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
