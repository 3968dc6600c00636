"""`serve --workers N`: what a second worker buys on this machine (issue 15's goals).

Over a real TUN device in namespaces of its own (bench_e2e's lab, the kernel as the
client), one daemon per configuration, the same clients for each:

- `wrk_close`: short HTTP/1.0-style connections, `wrk -t1 -c32 -d5s -H "Connection:
  close"` (wrk reconnects after every response; a C client, so it does not eat the
  cores), requests/s = connections/s, with 1 worker, 2 workers, and 2 workers pinned
  (`--pin`: worker k on core k). Goal: 2 workers >= 1.5x one.
- `bulk`: in the per-packet mode (`--offload off --mtu 1500`), one curl download of
  /big.bin from 1 worker, then two at once from 2 workers (their source ports chosen
  with ustack.io.steering.steer_tcp so that one lands on each worker; the aggregate
  MB/s = bytes of both / the time until both finished), each checked byte-exact on a
  second file. Goal: two downloads with 2 workers >= 1.5x one with one. The row "1
  worker, 2 downloads" separates what the second flow brings from what the second
  core brings.

The configurations run in turn, `rounds` times (2; 1 with --quick), and each row is the
best of its rounds, so a burst of load from elsewhere costs one round, not the row. Each
row also has `daemon_cpu_s`, the CPU time the daemon's processes (supervisor and
workers, /proc/PID/stat) got during the measurement: on a shared machine, a second
worker only helps if the scheduler gives the daemon more CPU. Then the ratios. Figures
are informative, never pass/fail; compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_e2e as e2e  # noqa: E402

from ustack.io.steering import steer_tcp  # noqa: E402

HOST, USTACK = e2e.USTACK_NET
PER_PACKET = ["--offload", "off", "--mtu", "1500"]
FULL = {"wrk_seconds": 5, "download_mb": 100, "rounds": 2}
QUICK = {"wrk_seconds": 2, "download_mb": 20, "rounds": 1}
RANGE = (32768, 60999)


def _sport(worker: int, start: int) -> int:
    port = start
    while steer_tcp(2, *RANGE, socket.inet_aton(HOST), port, e2e.HTTP) != worker:
        port += 1
    return port


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (/proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


def daemon_pids(ctl: Path, supervisor: int) -> list[int]:
    """The supervisor and its workers (from its ping), or the single daemon."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(ctl))
    s.sendall(b'{"op": "ping"}\n')
    rep = json.loads(s.makefile().readline())
    s.close()
    return [supervisor, *rep.get("worker_pids", [])]


def up(lab: e2e.Lab, www: Path, extra: list[str], label: str) -> str:
    ns = lab.netns("W")
    proc = lab.popen(ns, label, e2e.PYTHON, "-m", "ustack", "serve", "--root", www,
                     "--control", str(lab.tmp / f"{label}.sock"), *extra, stdout=None)
    e2e.wait_ping(lab, ns, USTACK, proc)
    # Every worker serves once the supervisor's socket exists.
    deadline = time.monotonic() + 30
    while not (lab.tmp / f"{label}.sock").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise e2e.Setup(f"{label}: no control socket: {lab.stderr(proc)}")
        time.sleep(0.1)
    return ns


def wrk_close(lab: e2e.Lab, ns: str, seconds: int) -> dict:
    p = lab.run(ns, "wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s",
                "-H", "Connection: close", f"http://{USTACK}:{e2e.HTTP}/small.txt",
                timeout=seconds + 30, check=False)
    m = re.search(r"Requests/sec:\s+([\d.]+)", p.stdout)
    if p.returncode or not m:
        return {"value": 0.0, "error": f"wrk exit {p.returncode}: {p.stderr.strip()[-300:]}"}
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)",
                                            p.stdout))
    return {"value": float(m.group(1)), "socket_errors": errors}


def downloads(lab: e2e.Lab, ns: str, www: Path, workers: list[int]) -> dict:
    """One curl per entry of `workers` at once, each from a port that worker owns."""
    size = (www / "big.bin").stat().st_size
    limit = 60 + size / 1e6
    procs = []
    start = time.monotonic()
    for i, k in enumerate(workers):
        port = _sport(k, 20000 + 1000 * i)
        procs.append(subprocess.Popen(lab.cmd(
            ns, "curl", "-sS", "--fail", "--local-port", str(port), "--max-time",
            f"{limit:.0f}", "-o", "/dev/null", "-w", "%{size_download}",
            f"http://{USTACK}:{e2e.HTTP}/big.bin"), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    got = 0
    errors = []
    for p in procs:
        out, err = p.communicate(timeout=limit + 10)
        if p.returncode:
            errors.append(f"curl exit {p.returncode}: {err.strip()}")
        else:
            got += int(out.strip() or 0)
    elapsed = time.monotonic() - start
    exact = not errors and got == size * len(workers)
    out_file = lab.tmp / "check.out"
    q = lab.run(ns, "curl", "-sS", "--fail", "-o", out_file,
                f"http://{USTACK}:{e2e.HTTP}/check.bin", timeout=70, check=False)
    exact = exact and q.returncode == 0 and out_file.read_bytes() == (
        www / "check.bin").read_bytes()
    out_file.unlink(missing_ok=True)
    r = {"value": got / elapsed / 1e6 if not errors else 0.0, "bytes": got,
         "downloads": len(workers), "byte_exact": exact}
    if errors:
        r["error"] = errors[0]
    return r


PLAN = [  # (row, serve arguments, what to measure)
    ("wrk_close 1 worker", [], "wrk"),
    ("wrk_close 2 workers", ["--workers", "2"], "wrk"),
    ("wrk_close 2 workers pinned", ["--workers", "2", "--pin"], "wrk"),
    ("bulk 1 worker, 1 download", PER_PACKET, [0]),
    ("bulk 1 worker, 2 downloads", PER_PACKET, [0, 1]),
    ("bulk 2 workers, 2 downloads", ["--workers", "2", *PER_PACKET], [0, 1]),
    ("bulk 2 workers pinned, 2 downloads", ["--workers", "2", "--pin", *PER_PACKET], [0, 1]),
]
RATIOS = [("wrk_close 2 workers", "wrk_close 1 worker", 1.5),
          ("wrk_close 2 workers pinned", "wrk_close 1 worker", 1.5),
          ("bulk 2 workers, 2 downloads", "bulk 1 worker, 1 download", 1.5),
          ("bulk 2 workers pinned, 2 downloads", "bulk 1 worker, 1 download", 1.5),
          ("bulk 2 workers, 2 downloads", "bulk 1 worker, 2 downloads", None)]


def figures(quick: bool = False, **sizes) -> list[dict]:
    chosen = dict(QUICK if quick else FULL)
    chosen.update({k: v for k, v in sizes.items() if v is not None})
    rows: dict[str, dict] = {}
    old = signal.signal(signal.SIGTERM, e2e._on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="ustack-workers-") as tmp:
            www = Path(tmp) / "www"
            www.mkdir()
            e2e._files(www, int(chosen["download_mb"] * 1e6))
            runs = [(rnd, i, *plan) for rnd in range(chosen["rounds"])
                    for i, plan in enumerate(PLAN)]
            for rnd, i, name, extra, what in runs:
                print(f"bench_workers: {name} (round {rnd + 1})", file=sys.stderr, flush=True)
                lab = e2e.Lab(Path(tmp))
                try:
                    ns = up(lab, www, extra, f"ustack-{i}")
                    pids = daemon_pids(lab.tmp / f"ustack-{i}.sock", lab.procs[-1].pid)
                    cpu0 = cpu_seconds(pids)
                    r = (wrk_close(lab, ns, chosen["wrk_seconds"]) if what == "wrk"
                         else downloads(lab, ns, www, what))
                    # What the daemon got of the machine meanwhile: on a loaded machine
                    # the work per CPU-second is the steadier figure.
                    r["daemon_cpu_s"] = cpu = round(cpu_seconds(pids) - cpu0, 2)
                    work = (r["value"] * chosen["wrk_seconds"] if what == "wrk"
                            else r.get("bytes", 0) / 1e6)
                    r["per_daemon_cpu_s"] = round(work / cpu, 1) if cpu else 0.0
                except (e2e.Setup, subprocess.SubprocessError, OSError) as exc:
                    r = {"value": 0.0, "error": str(exc)[-400:]}
                finally:
                    lab.teardown()
                unit = "req/s" if what == "wrk" else "MB/s"
                if name not in rows or r["value"] > rows[name]["value"]:  # best of rounds
                    rows[name] = {"name": name, "unit": unit, **r}
                print(f"bench_workers:   {e2e._brief(r)} {unit}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, old)
    out = list(rows.values())
    for a, b, goal in RATIOS:
        va, vb = rows[a]["value"], rows[b]["value"]
        ratio = va / vb if va and vb else 0.0
        row = {"name": f"{a} / {b}", "value": ratio, "unit": "x"}
        if goal is not None:
            row.update(goal=goal, verdict="ok" if ratio >= goal else "MISSED")
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--wrk-seconds", type=int)
    p.add_argument("--download-mb", type=float)
    p.add_argument("--rounds", type=int, help="each row is the best of this many (2)")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    rows = figures(a.quick, wrk_seconds=a.wrk_seconds, download_mb=a.download_mb,
                   rounds=a.rounds)
    for r in rows:
        extra = f" {r['verdict']} (goal {r['goal']}x)" if "verdict" in r else ""
        if r.get("daemon_cpu_s"):
            per = "requests" if r["unit"] == "req/s" else "MB"
            extra += (f"  [daemon CPU {r['daemon_cpu_s']} s, {r['per_daemon_cpu_s']} {per}"
                      " per CPU-second]")
        err = f" ({r['error']})" if r.get("error") else ""
        print(f"{r['name']:<60} {r['value']:>10.2f} {r['unit']}{extra}{err}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
