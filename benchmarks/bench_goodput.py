"""Bulk-transfer goodput, with no loss and with random loss.

    python benchmarks/bench_goodput.py                 # two Stacks over a MemoryLink
    python benchmarks/bench_goodput.py --size 50 --loss 0 0.01 0.05
    sudo python benchmarks/bench_goodput.py --tun      # the daemon and the kernel

In-process: client Stack A sends SIZE MB to a discard server on Stack B over a
MemoryLink; A's device is impaired with `loss=P` in both directions (data and ACKs), a
fixed seed per run. Goodput = application bytes / time from the first write until the
server read EOF, checked byte-exact with sha256.

--tun: `ustack serve --impair loss=P` in a fresh network namespace; curl downloads a SIZE
MB file from the stack (stack sends) and a kernel socket uploads SIZE MB to its echo
service and verifies it (kernel sends, stack echoes). Needs root.

Prints one line per run and, with --json, a JSON list at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ustack import Stack  # noqa: E402
from ustack.impair import Impairment  # noqa: E402
from ustack.io.memory import MemoryLink  # noqa: E402

A, B = "10.77.0.1", "10.77.0.2"
CHUNK = 65536


async def memory_run(size: int, loss: float, seed: int) -> dict:
    loop = asyncio.get_running_loop()
    a, b = Stack(A, loop=loop), Stack(B, loop=loop)
    MemoryLink(loop).connect(a, b)
    if loss:
        a.set_impairment(Impairment(f"loss={loss},seed={seed}", a.stats))
    data = random.Random(seed).randbytes(size)
    got = hashlib.sha256()
    received = 0
    done = loop.create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        while chunk := await reader.read(CHUNK):
            got.update(chunk)
            received += len(chunk)
        done.set_result(time.perf_counter())
        writer.close()

    await b.start_server(sink, B, 9)
    reader, writer = await a.open_connection(B, 9)
    t0 = time.perf_counter()
    view = memoryview(data)
    for i in range(0, size, CHUNK):
        writer.write(view[i:i + CHUNK])
        await writer.drain()
    writer.write_eof()
    t1 = await asyncio.wait_for(done, 600)
    writer.close()
    ok = received == size and got.digest() == hashlib.sha256(data).digest()
    st = a.stats
    result = {"path": "memory", "size_mb": size / 1e6, "loss": loss, "seconds": t1 - t0,
              "goodput_MBps": size / (t1 - t0) / 1e6, "byte_exact": ok,
              "retrans": st["TcpRetransSegs"], "timeouts": st["TcpExtTCPTimeouts"],
              "sack_recoveries": st["TcpExtTCPSackRecovery"],
              "loss_probes": st["TcpExtTCPLossProbes"]}
    a.close()
    b.close()
    return result


def tun_run(size: int, loss: float, seed: int) -> list[dict]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("curl") is None:
        raise SystemExit("--tun needs root, ip and curl")
    ns = f"ustk-bench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    exe = ["ip", "netns", "exec", ns]
    results = []
    daemon = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(exe + ["ip", "link", "set", "lo", "up"], check=True)
            www = Path(tmp)
            (www / "big.bin").write_bytes(random.Random(seed).randbytes(size))
            cmd = exe + [sys.executable, "-m", "ustack", "serve", "--root", str(www)]
            if loss:
                cmd += ["--impair", f"loss={loss},seed={seed}"]
            daemon = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 15
            while subprocess.run(exe + ["ping", "-c1", "-W1", B],
                                 capture_output=True).returncode:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("ustack serve did not come up")
                time.sleep(0.1)
            out = www / "out.bin"
            t0 = time.perf_counter()
            subprocess.run(exe + ["curl", "-sS", "--fail", "--max-time", "600", "-o", str(out),
                                  f"http://{B}/big.bin"], check=True)
            dt = time.perf_counter() - t0
            ok = out.read_bytes() == (www / "big.bin").read_bytes()
            results.append({"path": "tun download (stack sends)", "size_mb": size / 1e6,
                            "loss": loss, "seconds": dt, "goodput_MBps": size / dt / 1e6,
                            "byte_exact": ok})
            t0 = time.perf_counter()
            proc = subprocess.run(exe + [sys.executable, str(REPO / "tests/helpers/kernel_client.py"),
                                         "echo", B, "7", str(size)],
                                  capture_output=True, text=True)
            dt = time.perf_counter() - t0
            results.append({"path": "tun echo (kernel sends, stack echoes)",
                            "size_mb": size / 1e6, "loss": loss, "seconds": dt,
                            "goodput_MBps": size / dt / 1e6,
                            "byte_exact": proc.returncode == 0})
        finally:
            if daemon is not None:
                daemon.terminate()
                daemon.wait(timeout=20)
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    return results


_SHORT = {"memory": "memory", "tun download (stack sends)": "tun_download",
          "tun echo (kernel sends, stack echoes)": "tun_echo"}


def runs(size: int, losses: list[float], seed: int = 1, tun: bool = False,
         use_uvloop: bool = True, each=None) -> list[dict]:
    """Every run's result dict (memory first, then TUN); `each(result)` as each ends."""
    run = asyncio.run
    if use_uvloop:
        import uvloop
        run = uvloop.run
    results = []
    for loss in losses:
        results.append(run(memory_run(size, loss, seed)))
        if each:
            each(results[-1])
    if tun:
        for loss in losses:
            for r in tun_run(size, loss, seed):
                results.append(r)
                if each:
                    each(r)
    return results


def figures(size_mb: float = 20, losses: tuple[float, ...] = (0.0, 0.01), seed: int = 1,
            tun: bool = False, use_uvloop: bool = True) -> list[dict]:
    """The figures as rows {"name", "value", "unit"} (tools/bench collects these): goodput
    per path and loss, with the run's other fields alongside."""
    rows = []
    for r in runs(int(size_mb * 1e6), list(losses), seed, tun, use_uvloop):
        rows.append({"name": f"{_SHORT.get(r['path'], r['path'])}_loss{r['loss']:g}",
                     "value": r["goodput_MBps"], "unit": "MB/s",
                     **{k: v for k, v in r.items() if k != "goodput_MBps"}})
    return rows


def show(r: dict) -> None:
    extra = "".join(f" {k}={r[k]}" for k in ("retrans", "timeouts", "sack_recoveries",
                                                "loss_probes") if k in r)
    print(f"{r['path']:<38} {r['size_mb']:6.1f} MB  loss {r['loss']:5.1%}  "
          f"{r['seconds']:7.2f} s  {r['goodput_MBps']:7.2f} MB/s  "
          f"{'ok' if r['byte_exact'] else 'MISMATCH'}{extra}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=float, default=20, help="MB per transfer (default 20)")
    p.add_argument("--loss", type=float, nargs="+", default=[0.0, 0.01],
                   help="loss probabilities to run (default 0 0.01)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tun", action="store_true", help="also run over the daemon (root)")
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    p.add_argument("--json", action="store_true", help="print a JSON list at the end")
    args = p.parse_args(argv)
    results = runs(int(args.size * 1e6), args.loss, args.seed, args.tun,
                   not args.no_uvloop, show)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0 if all(r["byte_exact"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
