"""20 MB each way between the kernel and ustack through an impaired TUN device.

`ustack serve --impair SPEC` impairs both directions at the TUN boundary. Download: curl
fetches a 20 MB file from the stack's HTTP server. Upload: a kernel socket sends 20 MB
to the stack's echo service and checks every byte that comes back (so the bytes the
stack received are checked too, sha256 on mismatch). Then the counters of both sides
must show the impairment and the repair: retransmissions for loss, checksum errors for
corruption, out-of-order queueing for reordering, D-SACKs for duplicates.

Each transfer is bounded (curl --max-time, socket timeouts, subprocess timeouts): a hang
is a failure. Times are printed (pytest -s), never asserted.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, STACK_ADDRESS, Daemon

pytestmark = pytest.mark.tun

SIZE = 20 * 1024 * 1024
BASE = f"http://{STACK_ADDRESS}"
CURL = ("curl", "--silent", "--show-error", "--fail", "--max-time", "300")


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    # Deterministic content (not urandom) so a failure can be reproduced byte for byte.
    block = hashlib.sha256(b"ustack").digest() * 2048  # 64 KiB
    with open(root / "big.bin", "wb") as f:
        for i in range(SIZE // len(block)):
            f.write(hashlib.sha256(i.to_bytes(4, "big")).digest() + block[32:])
    return root


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def kernel_counters(d: Daemon) -> dict[str, int]:
    """The namespace's own MIB counters (it is fresh, so they are this test's)."""
    out: dict[str, int] = {}
    for table in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = d.run("cat", table).stdout.splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            prefix, names = head.split(":", 1)
            for name, value in zip(names.split(), values.split(":", 1)[1].split(),
                                   strict=False):
                out[prefix + name] = int(value)
    return out


def stack_counters(d: Daemon) -> dict[str, int]:
    proc = d.run(*CURL, "--retry", "3", f"{BASE}/status.json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["stats"]


CASES = {
    "loss1": "loss=0.01,seed=1",
    "loss5": "loss=0.05,seed=2",
    "reorder10": "reorder=0.1,seed=3",
    "dup5": "dup=0.05,seed=4",
    "corrupt1": "corrupt=0.01,seed=5",
}


@pytest.mark.parametrize("spec", CASES.values(), ids=CASES.keys())
def test_20mb_each_way_byte_exact_through_impaired_tun(daemon, www: Path, tmp_path: Path,
                                                        spec: str):
    d = daemon("--root", www, "--impair", spec)

    t0 = time.monotonic()
    out = tmp_path / "big.bin"
    proc = d.run(*CURL, "--output", out, f"{BASE}/big.bin", timeout=330)
    down = time.monotonic() - t0
    assert proc.returncode == 0, f"{proc.stderr}\ndaemon:\n{d.stderr()}"
    assert out.stat().st_size == SIZE
    assert sha256_file(out) == sha256_file(www / "big.bin")

    t0 = time.monotonic()
    proc = d.run(PYTHON, REPO / "tests/helpers/kernel_client.py", "echo", STACK_ADDRESS,
                 "7", str(SIZE), timeout=330)
    up = time.monotonic() - t0
    assert proc.returncode == 0 and proc.stdout.startswith("ok echo"), \
        f"{proc.stdout}{proc.stderr}\ndaemon:\n{d.stderr()}"

    s = stack_counters(d)
    k = kernel_counters(d)
    print(f"\n{spec}: download {SIZE / down / 1e6:.1f} MB/s ({down:.1f} s), "
          f"echo {SIZE / up / 1e6:.1f} MB/s ({up:.1f} s)\n"
          f"  stack: { {n: v for n, v in s.items() if v and not n.startswith('Ip')} }\n"
          f"  kernel: TcpRetransSegs={k['TcpRetransSegs']} TcpInCsumErrors="
          f"{k['TcpInCsumErrors']} IpInHdrErrors={k['IpInHdrErrors']}")

    if "loss" in spec:
        assert s["UstackImpairDropped"] > 0
        assert s["TcpRetransSegs"] > 0  # the stack repaired the download (and echo)
        assert k["TcpRetransSegs"] > 0  # the kernel repaired the upload
        assert s["TcpExtTCPSackRecovery"] > 0  # SACK on both sides
    elif "reorder" in spec:
        assert s["UstackImpairReordered"] > 0
        assert s["TcpExtTCPOFOQueue"] > 0  # the stack queued out-of-order data
        assert k["TcpExtTCPOFOQueue"] > 0  # so did the kernel
    elif "dup" in spec:
        assert s["UstackImpairDuplicated"] > 0
        # Duplicates were dropped by both receivers and reported as D-SACKs (RFC 2883).
        assert k["TcpExtTCPDSACKOldSent"] > 0
        assert s["TcpExtTCPDSACKRecv"] > 0
    elif "corrupt" in spec:
        assert s["UstackImpairCorrupted"] > 0
        # Caught by a checksum on each side, never delivered (the sha256 above), and
        # repaired by retransmission.
        assert s["TcpInCsumErrors"] + s["IpInHdrErrors"] > 0
        assert k["TcpInCsumErrors"] + k["IpInHdrErrors"] > 0
        assert s["TcpRetransSegs"] > 0 and k["TcpRetransSegs"] > 0
