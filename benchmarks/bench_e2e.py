"""End to end over TUN: the same clients against ustack, the kernel, and a bare relay.

    sudo python benchmarks/bench_e2e.py              # full sizes, ~2-3 minutes
    sudo python benchmarks/bench_e2e.py --quick      # small sizes, < 60 s
    sudo python benchmarks/bench_e2e.py --download 50 --upload 20 --json

One run, these servers, one after the other (each torn down before the next starts, so
they do not compete for the two cores), each in network namespaces of its own:

- `ustack`: `ustack serve --root DIR` on its defaults in namespace A; the daemon's TUN
  device lives in A and the clients run in A too (10.77.0.1 -> 10.77.0.2).
- `ustack-perpacket`: the same with `--offload off --mtu 1500`, one frame per 1500-byte
  packet. Only when `ustack serve --help` offers --offload; otherwise a note says so.
- `kernel`: namespaces K1 (clients, 10.77.1.1) and K2 (10.77.1.2) joined by a veth pair;
  in K2 ustack's own HTTP and discard apps run unchanged on kernel sockets
  (benchmarks/kernel_server.py: `asyncio.start_server` under uvloop). This is "kernel TCP
  + the same Python app", and it is the row the ratios use.
- `kernel-sendfile`: downloads only, from a thread-per-connection server in K2 that sends
  the body with socket.sendfile(): the kernel's best, no Python per byte.
- `relay`: namespaces R1 (clients, 10.77.2.1) and R2 (the same kernel server, 10.77.2.2)
  joined by two TUN devices and benchmarks/tun_relay.py, a Python loop copying each frame
  from one TUN fd to the other: one os.read + one os.write per 1500-byte frame, no
  offloads. The ceiling of "one Python syscall per frame".

The clients, the same for every server, all with a timeout:

- `download`: curl of a SIZE MB file to /dev/null (`%{speed_download}`), MB/s; the size
  must match, and a 2 MB file is fetched again into a file and compared byte for byte.
- `upload`: benchmarks/e2e_client.py sends SIZE MB to the discard port (9), half-closes
  and waits for the server's EOF: the discard app closes only after it read every byte,
  so the figure counts bytes the server application took. MB/s.
- `conns`: short HTTP/1.0 connections, 32 in flight (e2e_client.py conns, uvloop,
  kernel sockets): a new connection per `GET /small.txt` (6 bytes), requests/s.
- `wrk`: `wrk -t1 -c32 -d5s` (HTTP/1.1 keep-alive), requests/s.
- `ab_keepalive`: `ab -k -n 2000 -c 32` (HTTP/1.0 keep-alive, as far as the server
  keeps it), requests/s. `ab`: `ab -n 2000 -c 32`, a connection per request.
- `ping`: `ping -q -c 50 -i 0.01`, average RTT in ms (lower is better).
- `ping_flood`: `ping -q -f -c 1000` (20x the ping count), average RTT: the server is
  never idle between requests, so this is the processing without the wake-up.

Then, for every figure, ustack / kernel and ustack / relay (both ustack configurations),
from this one run. For ping the ratio is of RTTs, so above 1 means slower.

Every packet stays inside namespaces this module creates (10.77.0.0/16 only); every
process it starts is ended by its PID, and every namespace is deleted afterwards, also on
failure, Ctrl-C or SIGTERM. A figure is informative, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
NS_PREFIX = "ustk-e2e-"

USTACK_NET = ("10.77.0.1", "10.77.0.2")
VETH_NET = ("10.77.1.1", "10.77.1.2")
RELAY_NET = ("10.77.2.1", "10.77.2.2")
HTTP, DISCARD, SENDFILE = 80, 9, 8080
SMALL = b"hello\n"  # /small.txt, 6 bytes
CHECK_SIZE = 2_000_000  # /check.bin, fetched into a file and compared

# (figure, unit, lower is better)
FIGURES = [("download", "MB/s", False), ("upload", "MB/s", False),
           ("conns", "req/s", False), ("wrk", "req/s", False),
           ("ab_keepalive", "req/s", False), ("ab", "req/s", False),
           ("ping", "ms", True), ("ping_flood", "ms", True)]
FULL = {"download_mb": 200, "upload_mb": 100, "conns_n": 20_000, "conns_seconds": 5.0,
        "wrk_seconds": 5, "ab_n": 2000, "ping_count": 50}
QUICK = {"download_mb": 20, "upload_mb": 20, "conns_n": 1000, "conns_seconds": 2.0,
         "wrk_seconds": 2, "ab_n": 1000, "ping_count": 20}
PER_PACKET = ["--offload", "off", "--mtu", "1500"]


class Setup(Exception):
    """A server could not be brought up; its rows carry the message."""


# ---------------------------------------------------------------------- the lab


class Lab:
    """The namespaces and processes of one run; cleanup() ends and deletes them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # USTACK_BENCH_TAG names this run's namespaces (a test checks that exactly
        # its own are gone, while other runs may come and go); else a random tag.
        self.tag = os.environ.get("USTACK_BENCH_TAG") or secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.relay: subprocess.Popen | None = None

    def netns(self, suffix: str) -> str:
        name = f"{NS_PREFIX}{self.tag}-{suffix}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True,
                       timeout=20)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        # No IPv6 chatter (router solicitations) on the links under test.
        self.run(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", check=False)
        self.run(name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", check=False)
        return name

    @staticmethod
    def cmd(ns: str, *argv: str | os.PathLike) -> list[str]:
        return ["ip", "netns", "exec", ns, *map(str, argv)]

    def run(self, ns: str, *argv: str | os.PathLike, timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(self.cmd(ns, *argv), capture_output=True, text=True,
                           timeout=timeout, cwd=REPO)
        if check and p.returncode:
            raise Setup(f"{' '.join(map(str, argv))} in {ns}: exit {p.returncode}: "
                        f"{p.stderr.strip()[-300:]}")
        return p

    def popen(self, ns: str, name: str, *argv: str | os.PathLike,
              stdout: int | None = subprocess.PIPE) -> subprocess.Popen:
        """Start a process in `ns` (`ip netns exec` execs in place: the PID is its own),
        stderr to a file in the run's directory."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                           else [])))
        with open(self.tmp / f"{name}.stderr", "wb") as err:
            proc = subprocess.Popen(self.cmd(ns, *argv), cwd=REPO, env=env,
                                    stdin=subprocess.DEVNULL, stdout=stdout, stderr=err)
        proc.label = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stderr(self, proc: subprocess.Popen) -> str:
        path = self.tmp / f"{proc.label}.stderr"  # type: ignore[attr-defined]
        try:
            return path.read_text(errors="replace").strip()[-500:]
        except OSError:
            return ""

    def stop(self, proc: subprocess.Popen, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL, by PID; the exit status."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    return None
        return proc.returncode

    def teardown(self) -> None:
        """End every process, then delete every namespace (a namespace with a live
        process in it would outlive its name)."""
        for proc in reversed(self.procs):
            self.stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        self.namespaces.clear()


def wait_ready(proc: subprocess.Popen, timeout: float = 15) -> bool:
    """True once `proc` printed its "ready" line on stdout."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                return False
            buf += chunk
            if b"ready" in buf:
                return True
        elif proc.poll() is not None:
            return False
    return False


def wait_ping(lab: Lab, ns: str, ip: str, proc: subprocess.Popen,
              timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while lab.run(ns, "ping", "-c1", "-W1", ip, check=False).returncode:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise Setup(f"{ip} does not answer ping (exit status {proc.poll()}): "
                        f"{lab.stderr(proc)}")
        time.sleep(0.1)


def offload_flags() -> bool:
    """Does this ustack's `serve` have --offload and --mtu (the per-packet mode)?"""
    p = subprocess.run([PYTHON, "-m", "ustack", "serve", "--help"], capture_output=True,
                       text=True, cwd=REPO, timeout=30,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    return "--offload" in p.stdout and "--mtu" in p.stdout


# ---------------------------------------------------------------------- the servers
# Each brings its server up in the lab and returns (client namespace, server address).


def up_ustack(lab: Lab, www: Path, extra: list[str]) -> tuple[str, str]:
    ns = lab.netns("A")
    proc = lab.popen(ns, "ustack" + ("-pp" if extra else ""), PYTHON, "-m", "ustack",
                     "serve", "--root", www, "--control", "none", *extra, stdout=None)
    wait_ping(lab, ns, USTACK_NET[1], proc)
    return ns, USTACK_NET[1]


def _kernel_server(lab: Lab, ns: str, host: str, www: Path, sendfile: bool) -> None:
    argv = [PYTHON, BENCH / "kernel_server.py", host, www]
    if sendfile:
        argv += ["--sendfile", str(SENDFILE)]
    proc = lab.popen(ns, f"kernel-server-{ns[-2:]}", *argv)
    if not wait_ready(proc):
        raise Setup(f"kernel_server.py did not start: {lab.stderr(proc)}")


def up_veth(lab: Lab, www: Path) -> tuple[str, str]:
    k1, k2 = lab.netns("K1"), lab.netns("K2")
    subprocess.run(["ip", "-n", k1, "link", "add", "ve1", "type", "veth", "peer", "name",
                    "ve2", "netns", k2], check=True, capture_output=True, timeout=20)
    for ns, dev, me in ((k1, "ve1", VETH_NET[0]), (k2, "ve2", VETH_NET[1])):
        lab.run(ns, "ip", "addr", "add", f"{me}/24", "dev", dev)
        lab.run(ns, "ip", "link", "set", dev, "up")
    _kernel_server(lab, k2, VETH_NET[1], www, sendfile=True)
    lab.run(k1, "ping", "-c1", "-W2", VETH_NET[1])
    return k1, VETH_NET[1]


def up_relay(lab: Lab, www: Path) -> tuple[str, str]:
    r1, r2 = lab.netns("R1"), lab.netns("R2")
    relay = lab.popen(r1, "relay", PYTHON, BENCH / "tun_relay.py", r1, "rtun1", r2, "rtun2")
    if not wait_ready(relay):
        raise Setup(f"tun_relay.py did not start: {lab.stderr(relay)}")
    # rtun1 in R1: 10.77.2.1, peer 10.77.2.2 -> R1 routes the server into the relay.
    # rtun2 in R2: the mirror image, so replies to 10.77.2.1 go back into rtun2.
    for ns, dev, (me, peer) in ((r1, "rtun1", RELAY_NET), (r2, "rtun2", RELAY_NET[::-1])):
        lab.run(ns, "ip", "addr", "add", me, "peer", peer, "dev", dev)
        lab.run(ns, "ip", "link", "set", dev, "mtu", "1500", "up")
        lab.run(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", check=False)
        lab.run(ns, "sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0", check=False)
    _kernel_server(lab, r2, RELAY_NET[1], www, sendfile=False)
    wait_ping(lab, r1, RELAY_NET[1], relay)
    lab.relay = relay
    return r1, RELAY_NET[1]


def relay_counters(lab: Lab) -> dict | None:
    """Stop the relay and read the counters it prints: frames and bytes each way, drops
    (the largest frame it saw shows there were no offloads: never above the MTU)."""
    relay = lab.relay
    if relay is None:
        return None
    lab.stop(relay)
    try:
        counters = json.loads(relay.stdout.read().decode().strip().splitlines()[-1])
    except (ValueError, IndexError, OSError):
        return None
    frames = counters["frames_1to2"] + counters["frames_2to1"]
    counters["mean_frame_bytes"] = round(
        (counters["bytes_1to2"] + counters["bytes_2to1"]) / frames, 1) if frames else 0
    return counters


# ---------------------------------------------------------------------- the clients


def _tool(name: str) -> str | None:
    return shutil.which(name)


def c_download(lab: Lab, ns: str, ip: str, port: int, size: int, www: Path) -> dict:
    limit = 60 + size / 1e6  # at least 1 MB/s
    p = lab.run(ns, "curl", "-sS", "--fail", "--max-time", f"{limit:.0f}", "-o", "/dev/null",
                "-w", "%{speed_download} %{size_download} %{http_code}",
                f"http://{ip}:{port}/big.bin", timeout=limit + 10, check=False)
    fields = p.stdout.split()
    if p.returncode or len(fields) != 3:
        return {"value": 0.0, "error": f"curl exit {p.returncode}: {p.stderr.strip()}",
                "byte_exact": False}
    speed, got = float(fields[0]), int(fields[1])
    out = lab.tmp / "check.out"
    q = lab.run(ns, "curl", "-sS", "--fail", "--max-time", "60", "-o", out,
                f"http://{ip}:{port}/check.bin", timeout=70, check=False)
    check_ok = q.returncode == 0 and out.read_bytes() == (www / "check.bin").read_bytes()
    out.unlink(missing_ok=True)
    return {"value": speed / 1e6, "size_mb": size / 1e6, "bytes": got,
            "byte_exact": got == size and check_ok}


def c_upload(lab: Lab, ns: str, ip: str, size: int) -> dict:
    limit = 60 + size / 1e6
    p = lab.run(ns, PYTHON, BENCH / "e2e_client.py", "upload", ip, str(DISCARD), str(size),
                "30", timeout=limit, check=False)
    try:
        r = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"value": 0.0, "error": f"exit {p.returncode}: {p.stderr.strip()[-300:]}",
                "byte_exact": False}
    ok = r["clean"] and r["bytes"] == size
    return {"value": r["MBps"] if ok else 0.0, "size_mb": size / 1e6, "bytes": r["bytes"],
            "byte_exact": ok, **({"error": r["error"]} if r["error"] else {})}


def c_conns(lab: Lab, ns: str, ip: str, n: int, seconds: float) -> dict:
    p = lab.run(ns, PYTHON, BENCH / "e2e_client.py", "conns", ip, str(HTTP), "/small.txt",
                str(len(SMALL)), str(n), str(seconds), "32", timeout=seconds + 40,
                check=False)
    try:
        r = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"value": 0.0, "error": f"exit {p.returncode}: {p.stderr.strip()[-300:]}"}
    return {"value": r["rps"], "requests": r["requests"], "errors": r["errors"]}


def c_wrk(lab: Lab, ns: str, ip: str, seconds: int) -> dict:
    if not _tool("wrk"):
        return {"value": 0.0, "error": "wrk not installed (apt-get install wrk)"}
    p = lab.run(ns, "wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s",
                f"http://{ip}:{HTTP}/small.txt", timeout=seconds + 30, check=False)
    m = re.search(r"Requests/sec:\s+([\d.]+)", p.stdout)
    if p.returncode or not m:
        return {"value": 0.0, "error": f"wrk exit {p.returncode}: {p.stderr.strip()[-300:]}"}
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)",
                                            p.stdout))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", p.stdout)
    total = re.search(r"(\d+) requests in", p.stdout)
    return {"value": float(m.group(1)), "requests": int(total.group(1)) if total else None,
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


def c_ab(lab: Lab, ns: str, ip: str, n: int, keepalive: bool) -> dict:
    if not _tool("ab"):
        return {"value": 0.0, "error": "ab not installed (apt-get install apache2-utils)"}
    argv = ["ab", "-q", "-s", "10", "-n", str(n), "-c", "32"] + (["-k"] if keepalive else [])
    p = lab.run(ns, *argv, f"http://{ip}:{HTTP}/small.txt", timeout=120, check=False)
    m = re.search(r"Requests per second:\s+([\d.]+)", p.stdout)
    if p.returncode or not m:
        return {"value": 0.0, "error": f"ab exit {p.returncode}: "
                                       f"{(p.stderr or p.stdout).strip()[-300:]}"}

    def num(label: str) -> int:
        x = re.search(label + r":\s+(\d+)", p.stdout)
        return int(x.group(1)) if x else 0

    out = {"value": float(m.group(1)), "requests": num("Complete requests"),
           "errors": num("Failed requests") + num("Non-2xx responses")}
    if keepalive:
        out["keepalive_requests"] = num("Keep-Alive requests")
    return out


def c_ping(lab: Lab, ns: str, ip: str, count: int, flood: bool = False) -> dict:
    # Flood (-f): the next request leaves as the reply arrives, so the server never
    # sleeps: its processing without the cost of waking a sleeping process.
    gap = ["-f"] if flood else ["-i", "0.01"]
    p = lab.run(ns, "ping", "-q", "-c", str(count), *gap, "-W", "1",
                "-w", str(count // 10 + 10), ip, timeout=count // 10 + 20, check=False)
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", p.stdout)
    loss = re.search(r"([\d.]+)% packet loss", p.stdout)
    if not m:
        return {"value": 0.0, "error": f"ping exit {p.returncode}: {p.stdout.strip()[-200:]}"}
    return {"value": float(m.group(2)), "min_ms": float(m.group(1)),
            "max_ms": float(m.group(3)), "loss_pct": float(loss.group(1)) if loss else None}


def clients(lab: Lab, ns: str, ip: str, www: Path, sizes: dict,
            only: tuple[str, ...] | None = None, port: int = HTTP) -> dict[str, dict]:
    """Every figure of one server: {figure: {"value", ...}}."""
    todo: dict[str, Callable[[], dict]] = {
        "ping": lambda: c_ping(lab, ns, ip, sizes["ping_count"]),
        "ping_flood": lambda: c_ping(lab, ns, ip, 20 * sizes["ping_count"], flood=True),
        "download": lambda: c_download(lab, ns, ip, port, int(sizes["download_mb"] * 1e6),
                                       www),
        "upload": lambda: c_upload(lab, ns, ip, int(sizes["upload_mb"] * 1e6)),
        "conns": lambda: c_conns(lab, ns, ip, sizes["conns_n"], sizes["conns_seconds"]),
        "wrk": lambda: c_wrk(lab, ns, ip, sizes["wrk_seconds"]),
        "ab_keepalive": lambda: c_ab(lab, ns, ip, sizes["ab_n"], True),
        "ab": lambda: c_ab(lab, ns, ip, sizes["ab_n"], False),
    }
    out = {}
    for fig, fn in todo.items():
        if only is not None and fig not in only:
            continue
        try:
            out[fig] = fn()
        except subprocess.TimeoutExpired as exc:
            out[fig] = {"value": 0.0, "error": f"timed out after {exc.timeout:.0f} s"}
        print(f"bench_e2e:   {fig}: {_brief(out[fig])}", file=sys.stderr, flush=True)
    return out


def _brief(r: dict) -> str:
    return f"{r['value']:.3g}" + (f" ({r['error']})" if r.get("error") else "")


# ---------------------------------------------------------------------- one run


def _files(www: Path, download: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    with open(www / "big.bin", "wb") as f:
        left = download
        while left > 0:
            n = min(left, 1 << 24)
            f.write(rnd.randbytes(n))
            left -= n
    (www / "check.bin").write_bytes(rnd.randbytes(CHECK_SIZE))
    (www / "small.txt").write_bytes(SMALL)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


def measure(sizes: dict, per_packet: bool | None = None, each=None) -> tuple[dict, list]:
    """{server: {figure: result}} and the notes, for every server in turn."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("curl"):
        raise SystemExit("bench_e2e needs root, ip and curl")
    if per_packet is None:
        per_packet = offload_flags()
    notes = []
    plan: list[tuple[str, Callable[[Lab, Path], tuple[str, str]], tuple | None, int]] = [
        ("ustack", lambda lab, www: up_ustack(lab, www, []), None, HTTP)]
    if per_packet:
        plan.append(("ustack-perpacket", lambda lab, www: up_ustack(lab, www, PER_PACKET),
                     None, HTTP))
    else:
        notes.append("per-packet mode needs --offload: ustack serve has no --offload "
                     "and --mtu yet, so only the default configuration ran")
    plan += [("kernel", up_veth, None, HTTP),
             ("kernel-sendfile", up_veth, ("download",), SENDFILE),
             ("relay", up_relay, None, HTTP)]
    results: dict[str, dict] = {}
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="ustack-e2e-") as tmp:
            www = Path(tmp) / "www"
            www.mkdir()
            _files(www, int(sizes["download_mb"] * 1e6))
            for server, up, only, port in plan:
                print(f"bench_e2e: {server}", file=sys.stderr, flush=True)
                lab = Lab(Path(tmp))
                try:
                    ns, ip = up(lab, www)
                    results[server] = clients(lab, ns, ip, www, sizes, only, port)
                    counters = relay_counters(lab)
                    if counters is not None:
                        print(f"bench_e2e:   relay counters: {counters}", file=sys.stderr)
                        results[server]["download"]["relay_counters"] = counters
                except (Setup, subprocess.SubprocessError, OSError) as exc:
                    print(f"bench_e2e: {server}: {exc}", file=sys.stderr, flush=True)
                    results[server] = {fig: {"value": 0.0, "error": str(exc)[-400:],
                                             **({"byte_exact": False}
                                                if fig in ("download", "upload") else {})}
                                       for fig, _, _ in FIGURES
                                       if only is None or fig in only}
                finally:
                    lab.teardown()
                if each:
                    each(server, results[server])
    finally:
        signal.signal(signal.SIGTERM, old)
    return results, notes


def rows_of(results: dict, notes: list, sizes: dict) -> list[dict]:
    rows = []
    for fig, unit, _lower in FIGURES:
        for server, figs in results.items():
            if fig in figs:
                rows.append({"name": f"{fig} {server}", "value": figs[fig]["value"],
                             "unit": unit, "figure": fig, "server": server,
                             **{k: v for k, v in figs[fig].items() if k != "value"}})
        for mine in ("ustack", "ustack-perpacket"):
            for theirs in ("kernel", "relay"):
                a = results.get(mine, {}).get(fig, {}).get("value")
                b = results.get(theirs, {}).get(fig, {}).get("value")
                if a is None or b is None:
                    continue
                rows.append({"name": f"{fig} {mine}/{theirs}",
                             "value": a / b if a and b else 0.0, "unit": "x",
                             "figure": fig, "ratio": [mine, theirs]})
    for note in notes:
        rows.append({"name": f"note: {note.split(':')[0]}", "value": 0.0, "unit": "",
                     "note": note})
    return rows


def figures(quick: bool = False, per_packet: bool | None = None, **sizes) -> list[dict]:
    """The figures as rows {"name", "value", "unit", ...} (tools/bench collects these):
    one per figure and server, then the ratios; `quick` picks the small sizes, keyword
    arguments (download_mb, upload_mb, conns_n, conns_seconds, wrk_seconds, ab_n,
    ping_count) override them."""
    chosen = dict(QUICK if quick else FULL)
    chosen.update({k: v for k, v in sizes.items() if v is not None})
    results, notes = measure(chosen, per_packet)
    return rows_of(results, notes, chosen)


def table(rows: list[dict]) -> str:
    """Figures down, servers across, then the ratios."""
    servers = list(dict.fromkeys(r["server"] for r in rows if "server" in r))
    ratios = list(dict.fromkeys("/".join(r["ratio"]) for r in rows if "ratio" in r))
    head = ["figure", *servers, *ratios]
    lines = [head]
    for fig, unit, lower in FIGURES:
        cells = {r.get("server") or "/".join(r["ratio"]): r for r in rows
                 if r.get("figure") == fig}
        line = [f"{fig} ({unit}{', lower is better' if lower else ''})"]
        for col in head[1:]:
            r = cells.get(col)
            if r is None:
                line.append("")
            elif r.get("error"):
                line.append("ERR")
            else:
                v = r["value"]
                line.append(f"{v:.2f}" if r["unit"] == "x" or v < 100 else f"{v:,.0f}")
        lines.append(line)
    w = [max(len(x[i]) for x in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(x))
           for x in lines]
    out.insert(1, "-" * len(out[0]))
    errors = [f"{r['name']}: {r['error']}" for r in rows if r.get("error")]
    notes = [r["note"] for r in rows if r.get("note")]
    return "\n".join(out + [""] + errors + notes).rstrip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 60 s in all)")
    p.add_argument("--download", type=float, dest="download_mb", help="MB (default 200)")
    p.add_argument("--upload", type=float, dest="upload_mb", help="MB (default 100)")
    p.add_argument("--conns", type=int, dest="conns_n",
                   help="short connections at most (default 20000)")
    p.add_argument("--conns-seconds", type=float, help="... or this long (default 5)")
    p.add_argument("--wrk-seconds", type=int, help="wrk -d (default 5)")
    p.add_argument("--ab-n", type=int, help="ab -n (default 2000)")
    p.add_argument("--ping-count", type=int, help="ping -c (default 50)")
    p.add_argument("--no-per-packet", action="store_true",
                   help="only ustack's default configuration")
    p.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    args = p.parse_args(argv)
    sizes = {k: v for k, v in vars(args).items()
             if k not in ("quick", "json", "no_per_packet")}
    rows = figures(quick=args.quick, per_packet=False if args.no_per_packet else None,
                   **sizes)
    print(table(rows))
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0 if all(r.get("byte_exact") is not False for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench_e2e: interrupted (namespaces deleted)", file=sys.stderr)
        sys.exit(130)
