"""Downloads under random loss: ustack against the kernel, each losing the same fraction.

    sudo python benchmarks/bench_loss.py                   # 20 MB at 1%, 5%, 10%
    sudo python benchmarks/bench_loss.py --size 5 --loss 0.05 --json

One run, per loss rate P, one after the other (each torn down before the next):

- `ustack`: `ustack serve --root DIR --impair loss=P,seed=1 --offload off --mtu 1500`
  (the per-packet mode) in namespace A; curl in A fetches SIZE MB. The impairment drops
  each frame either way with probability P. After the download, the daemon's counters
  (`/status.json`): TcpExtTCPTimeouts (RTOs) and the recovery counters.
- `kernel`: the same kernel server as bench_e2e's relay row (benchmarks/kernel_server.py
  in R2) behind benchmarks/tun_relay.py `--drop P --seed 1`, curl in R1: the kernel's TCP
  on both ends, the same per-frame Python hop, the same random loss both ways.

Printed per P: MB/s of each, ustack / kernel, byte-exactness (the size, and a 2 MB file
fetched into a file and compared), the RTO count (TcpExtTCPTimeouts) of each sender,
with the other recovery counters in the JSON rows. Informative, never pass/fail;
the machine's load shows in the figures (say so next to them).

Every packet stays in namespaces this module creates (10.77.0.0/16), every process is
ended by its PID and every namespace deleted afterwards (bench_e2e's Lab).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

from bench_e2e import (
    BENCH,
    HTTP,
    PER_PACKET,
    PYTHON,
    RELAY_NET,
    USTACK_NET,
    Lab,
    Setup,
    _files,
    _kernel_server,
    _on_sigterm,
    c_download,
    wait_ping,
    wait_ready,
)

LOSSES = (0.01, 0.05, 0.10)
COUNTERS = ("TcpExtTCPTimeouts", "TcpRetransSegs", "TcpExtTCPSackRecovery",
            "TcpExtTCPLossProbes", "TcpExtTCPLostRetransmit", "TcpExtTCPDSACKUndo",
            "TcpExtTCPFullUndo", "TcpExtTCPLossUndo", "TcpExtTCPSpuriousRTOs",
            "UstackImpairDropped")


def up_ustack_lossy(lab: Lab, www: Path, loss: float) -> tuple[str, str]:
    ns = lab.netns("A")
    proc = lab.popen(ns, "ustack", PYTHON, "-m", "ustack", "serve", "--root", www,
                     "--control", "none", "--impair", f"loss={loss:g},seed=1", *PER_PACKET,
                     stdout=None)
    wait_ping(lab, ns, USTACK_NET[1], proc)
    return ns, USTACK_NET[1]


def up_dropping_relay(lab: Lab, www: Path, loss: float) -> tuple[str, str]:
    r1, r2 = lab.netns("R1"), lab.netns("R2")
    relay = lab.popen(r1, "relay", PYTHON, BENCH / "tun_relay.py", r1, "rtun1", r2, "rtun2",
                      "--drop", f"{loss:g}", "--seed", "1")
    if not wait_ready(relay):
        raise Setup(f"tun_relay.py did not start: {lab.stderr(relay)}")
    for ns, dev, (me, peer) in ((r1, "rtun1", RELAY_NET), (r2, "rtun2", RELAY_NET[::-1])):
        lab.run(ns, "ip", "addr", "add", me, "peer", peer, "dev", dev)
        lab.run(ns, "ip", "link", "set", dev, "mtu", "1500", "up")
        lab.run(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", check=False)
        lab.run(ns, "sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0", check=False)
    _kernel_server(lab, r2, RELAY_NET[1], www, sendfile=False)
    # ping through a lossy relay: a few tries (wait_ping retries for 15 s).
    wait_ping(lab, r1, RELAY_NET[1], relay)
    lab.relay = relay
    return r1, RELAY_NET[1]


def stack_counters(lab: Lab, ns: str, ip: str) -> dict:
    p = lab.run(ns, "curl", "-sS", "--fail", "--retry", "3", "--max-time", "20",
                f"http://{ip}/status.json", timeout=90, check=False)
    try:
        stats = json.loads(p.stdout)["stats"]
    except (ValueError, KeyError):
        return {}
    return {k: stats.get(k, 0) for k in COUNTERS}


def kernel_counters(lab: Lab, ns: str) -> dict:
    """The server namespace's TCP MIBs (fresh per run, so this download's)."""
    out: dict[str, int] = {}
    for table in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = lab.run(ns, "cat", table).stdout.splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            prefix, names = head.split(":", 1)
            for name, value in zip(names.split(), values.split(":", 1)[1].split(),
                                   strict=False):
                out[prefix + name] = int(value)
    return {k: out.get(k, 0) for k in COUNTERS if not k.startswith("Ustack")}


def measure(size_mb: float, losses: tuple[float, ...]) -> list[dict]:
    rows: list[dict] = []
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="ustack-loss-") as tmp:
            www = Path(tmp) / "www"
            www.mkdir()
            size = int(size_mb * 1e6)
            _files(www, size)
            for loss in losses:
                got = {}
                for server, up in (("ustack", up_ustack_lossy), ("kernel", up_dropping_relay)):
                    print(f"bench_loss: {server} at {loss:.0%}", file=sys.stderr, flush=True)
                    lab = Lab(Path(tmp))
                    try:
                        ns, ip = up(lab, www, loss)
                        r = c_download(lab, ns, ip, HTTP, size, www)
                        if server == "ustack":
                            r["counters"] = stack_counters(lab, ns, ip)
                        else:
                            r["counters"] = kernel_counters(lab, lab.namespaces[-1])
                        r["rtos"] = r["counters"].get("TcpExtTCPTimeouts")
                    except (Setup, OSError) as exc:
                        r = {"value": 0.0, "error": str(exc)[-400:], "byte_exact": False}
                    finally:
                        lab.teardown()
                    got[server] = r
                    rows.append({"name": f"download {server} loss {loss:.0%}",
                                 "value": r["value"], "unit": "MB/s", "server": server,
                                 "loss": loss, **{k: v for k, v in r.items() if k != "value"}})
                a, b = got["ustack"]["value"], got["kernel"]["value"]
                rows.append({"name": f"download ustack/kernel loss {loss:.0%}",
                             "value": a / b if a and b else 0.0, "unit": "x", "loss": loss,
                             "ratio": ["ustack", "kernel"], "rtos": got["ustack"].get("rtos"),
                             "kernel_rtos": got["kernel"].get("rtos")})
    finally:
        signal.signal(signal.SIGTERM, old)
    return rows


def figures(size_mb: float = 20, losses: list[float] | tuple[float, ...] = LOSSES) -> list[dict]:
    """Rows {"name", "value", "unit", ...} for tools/bench."""
    return measure(size_mb, tuple(losses))


def table(rows: list[dict]) -> str:
    lines = ["loss  ustack MB/s  kernel MB/s  ratio  ustack RTOs  kernel RTOs  byte-exact"]
    for r in rows:
        if "ratio" not in r:
            continue
        loss = r["loss"]
        mine = next(x for x in rows if x.get("server") == "ustack" and x["loss"] == loss)
        theirs = next(x for x in rows if x.get("server") == "kernel" and x["loss"] == loss)
        exact = "yes" if mine.get("byte_exact") and theirs.get("byte_exact") else "NO"
        lines.append(f"{loss:>4.0%}  {mine['value']:>11.2f}  {theirs['value']:>11.2f}  "
                     f"{r['value']:>5.2f}  {str(r.get('rtos')):>11}  "
                     f"{str(r.get('kernel_rtos')):>11}  {exact:>10}")
    errors = [f"{r['name']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(lines + errors)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=float, default=20, help="MB (default 20)")
    p.add_argument("--loss", type=float, action="append",
                   help="loss rate, repeatable (default 0.01 0.05 0.10)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = figures(args.size, args.loss or LOSSES)
    print(table(rows))
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0 if all(r.get("byte_exact") is not False for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench_loss: interrupted (namespaces deleted)", file=sys.stderr)
        sys.exit(130)
