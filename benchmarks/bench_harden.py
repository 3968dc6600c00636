"""What hostile or merely numerous clients cost the daemon (TUN only: root, namespaces).

Run: sudo python benchmarks/bench_harden.py [--idle 5000] [--churn 50000]  (or
`sudo tools/bench --tun harden`)

One `ustack serve` in its own namespace (10.77.0.0/16), the kernel as the client:

2. Memory per idle connection: the daemon's RSS (VmRSS) before and after --idle kernel
   connections have each sent a partial request head and then nothing (what a
   slowloris costs until `--http-header-timeout`), divided by their number.
1. Connection churn: --churn short HTTP/1.0 connections (ab, 16 at a time; the server
   closes first, so each leaves a TIME-WAIT record), with RSS and open descriptors at
   the start, halfway, at the end, and once TIME-WAIT has expired (tcp_msl=2: 4 s).
   The "after" figure against "start" is the point of issue 13: it must come back.

Figures are RSS as the kernel counts it, so they include the interpreter's arenas and
the allocator's free lists; on a loaded machine they do not move (they are not timings).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_e2e import PYTHON, USTACK_NET, Lab, Setup, _tool, wait_ping  # noqa: E402

REPO = BENCH.parent
SLOWLORIS = REPO / "tests" / "helpers" / "slowloris.py"
FULL = {"idle": 5000, "churn": 50_000}
QUICK = {"idle": 500, "churn": 2000}
MSL = 2


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Setup(f"no VmRSS for {pid}")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle(pid: int, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return rss_kb(pid)


def idle_rows(lab: Lab, ns: str, ip: str, pid: int, n: int) -> list[dict]:
    before = settle(pid)
    proc = lab.popen(ns, "slowloris", PYTHON, SLOWLORIS, "--host", ip, "--count", str(n),
                     "--hold")
    proc.stdin = None
    deadline = time.monotonic() + 60 + n / 100
    # The helper prints "ready" once every connection is open and holding.
    line = b""
    while b"ready" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise Setup(f"slowloris exited {proc.returncode}: {lab.stderr(proc)}")
    after = settle(pid, 2.0)
    lab.stop(proc)
    per = (after - before) * 1024 / n
    return [{"name": "idle connection: RSS per connection", "value": round(per),
             "unit": "B", "connections": n, "rss_before_kb": before,
             "rss_after_kb": after}]


def churn_rows(lab: Lab, ns: str, ip: str, pid: int, n: int) -> list[dict]:
    if not _tool("ab"):
        return [{"name": "churn", "value": 0.0, "unit": "", "error": "ab not installed"}]
    points = {"start": (settle(pid), fds(pid))}
    errors = 0
    for half in ("middle", "end"):
        p = lab.run(ns, "ab", "-q", "-s", "10", "-n", str(n // 2), "-c", "16",
                    f"http://{ip}/small.txt", timeout=600, check=False)
        if p.returncode:
            errors += 1
        points[half] = (rss_kb(pid), fds(pid))
    time.sleep(2 * MSL + 7)  # TIME-WAIT expires, and the daemon's trim (5 s) runs
    points["after TIME-WAIT"] = (settle(pid), fds(pid))
    rows = []
    for where, (rss, fd) in points.items():
        rows.append({"name": f"churn {n}: RSS at {where}", "value": rss / 1024,
                     "unit": "MB", "fds": fd, "ab_failures": errors})
    rows.append({"name": f"churn {n}: RSS after TIME-WAIT / start",
                 "value": points["after TIME-WAIT"][0] / points["start"][0], "unit": "x"})
    rows.append({"name": f"churn {n}: open fds after / start",
                 "value": points["after TIME-WAIT"][1] / points["start"][1], "unit": "x"})
    return rows


def figures(idle: int | None = None, churn: int | None = None, quick: bool = False
            ) -> list[dict]:
    sizes = dict(QUICK if quick else FULL)
    sizes.update({k: v for k, v in {"idle": idle, "churn": churn}.items() if v})
    with tempfile.TemporaryDirectory(prefix="ustack-harden-") as tmp:
        lab = Lab(Path(tmp))
        www = Path(tmp) / "www"
        www.mkdir()
        (www / "small.txt").write_bytes(b"hello\n")
        try:
            # A fresh daemon for each: its "start" is a new daemon's RSS, and the idle
            # connections do not reuse memory the churn freed.
            rows = []
            for what, suffix in (("churn", "C"), ("idle", "I")):
                ns = lab.netns(suffix)
                proc = lab.popen(ns, f"ustack-{what}", PYTHON, "-m", "ustack", "serve",
                                 "--root", www, "--control", "none", "--set",
                                 f"tcp_msl={MSL}", "--http-header-timeout", "600",
                                 stdout=None)
                ip = USTACK_NET[1]
                wait_ping(lab, ns, ip, proc)
                if what == "churn":
                    rows += churn_rows(lab, ns, ip, proc.pid, sizes["churn"])
                else:
                    rows += idle_rows(lab, ns, ip, proc.pid, sizes["idle"])
                lab.stop(proc)
        except (Setup, subprocess.SubprocessError, OSError) as exc:
            rows = [{"name": "harden", "value": 0.0, "unit": "", "error": str(exc)}]
        finally:
            lab.teardown()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle", type=int, help=f"idle connections (default {FULL['idle']})")
    p.add_argument("--churn", type=int, help=f"short connections (default {FULL['churn']})")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    rows = figures(args.idle, args.churn, args.quick)
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in ("name", "value", "unit")}
        print(f"{r['name']:45} {r['value']:>12,.2f} {r['unit']:3} {extra or ''}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
