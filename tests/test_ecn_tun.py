"""ECN with the kernel as the peer, through a TUN device in the test's own namespace.

The kernel asks for ECN in its SYNs once the namespace's `net.ipv4.tcp_ecn` is 1 (set
with `ip netns exec NS sysctl`, in this test's namespace only); ustack accepts it with
its default `tcp_ecn=2`. `--impair ce=0.05` then marks CE on 5 % of the ECT packets in
both directions: the receiver of the marks echoes ECE, the sender reduces its window,
and the bytes still arrive exact. The counters of both sides show each step.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from conftest import HOST_ADDRESS, PYTHON, REPO, STACK_ADDRESS, Daemon, kernel_listener
from test_transfer_tun import kernel_counters, sha256_file, stack_counters

pytestmark = pytest.mark.tun

SIZE = 4 * 1024 * 1024
CURL = ("curl", "--silent", "--show-error", "--fail", "--max-time", "120")


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    with open(root / "big.bin", "wb") as f:
        for i in range(SIZE // 32):
            f.write(hashlib.sha256(i.to_bytes(4, "big")).digest())
    return root


def kernel_asks_for_ecn(d: Daemon) -> None:
    proc = d.run("sysctl", "-w", "net.ipv4.tcp_ecn=1")
    assert proc.returncode == 0, proc.stderr


def download(d: Daemon, www: Path, tmp_path: Path) -> None:
    out = tmp_path / "big.bin"
    proc = d.run(*CURL, "--output", out, f"http://{STACK_ADDRESS}/big.bin", timeout=150)
    assert proc.returncode == 0, f"{proc.stderr}\ndaemon:\n{d.stderr()}"
    assert sha256_file(out) == sha256_file(www / "big.bin")


def test_ce_marks_each_way_are_echoed_and_answered(daemon, www: Path, tmp_path: Path):
    d = daemon("--root", www, "--impair", "ce=0.05,seed=7")
    kernel_asks_for_ecn(d)
    download(d, www, tmp_path)
    s = stack_counters(d)
    k = kernel_counters(d)
    print(f"\ndownload: stack { {n: v for n, v in s.items() if 'Ecn' in n or 'CE' in n} }"
          f" kernel IpExtInCEPkts={k['IpExtInCEPkts']} IpExtInECT0Pkts="
          f"{k['IpExtInECT0Pkts']}")
    assert s["UstackTcpEcnOk"] >= 1  # the kernel's SYN asked, ustack accepted
    assert k["IpExtInECT0Pkts"] > 0  # our data went out ECT(0)
    assert s["UstackImpairCeMarked"] > 0
    assert k["IpExtInCEPkts"] > 0  # the kernel received the marks...
    assert s["TcpExtTCPDeliveredCE"] > 0  # ...and echoed them with ECE
    assert s["UstackTcpEcnCwr"] > 0  # ustack reduced its window for them

    # Upload: the kernel's data is ECT(0), the marks reach ustack, ustack echoes.
    proc = d.run(PYTHON, REPO / "tests/helpers/kernel_client.py", "discard", STACK_ADDRESS,
                 "9", str(SIZE), timeout=150)
    assert proc.returncode == 0 and proc.stdout.startswith("ok discard"), \
        f"{proc.stdout}{proc.stderr}\ndaemon:\n{d.stderr()}"
    s2 = stack_counters(d)
    k2 = kernel_counters(d)
    print(f"upload: stack IpExtInECT0Pkts={s2['IpExtInECT0Pkts']} IpExtInCEPkts="
          f"{s2['IpExtInCEPkts']}; kernel TcpExtTCPDeliveredCE={k2['TcpExtTCPDeliveredCE']}")
    assert s2["IpExtInECT0Pkts"] > 0 and s2["IpExtInCEPkts"] > 0
    assert k2["TcpExtTCPDeliveredCE"] > 0  # the kernel saw our ECE


def test_no_ecn_when_the_kernel_does_not_ask(daemon, www: Path, tmp_path: Path):
    """The kernel's default tcp_ecn=2 never asks; ustack's default never asks either."""
    d = daemon("--root", www, "--impair", "ce=0.05,seed=7")
    download(d, www, tmp_path)
    s = stack_counters(d)
    k = kernel_counters(d)
    assert s["UstackTcpEcnOk"] == 0 and k["IpExtInECT0Pkts"] == 0
    assert s["UstackImpairCeMarked"] == 0 and s["UstackTcpEcnCwr"] == 0


def test_ect_on_super_segments_with_offloads(daemon, www: Path, tmp_path: Path):
    """With TSO (--offload on) a 64 KB super-segment carries ECT(0) in its IP header
    (the kernel copies the TOS byte into every segment it would cut from it)."""
    d = daemon("--root", www, "--offload", "on")
    kernel_asks_for_ecn(d)
    download(d, www, tmp_path)
    s = stack_counters(d)
    k = kernel_counters(d)
    assert s["UstackTcpEcnOk"] >= 1
    assert k["IpExtInECT0Pkts"] > 0


# The kernel as the server: send 2 MB of a known pattern, then read to EOF (the
# client's data, checked by size) and close.
PATTERN_SERVER = kernel_listener() + """
import hashlib
c, _ = s.accept()
data = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(65536))
c.sendall(data)
c.shutdown(socket.SHUT_WR)
n = 0
while chunk := c.recv(65536):
    n += len(chunk)
print("got", n, flush=True)
c.close()
"""


def test_active_open_with_tcp_ecn_1(daemon, tmp_path: Path):
    """ustack asks (`--set tcp_ecn=1`), the kernel's default tcp_ecn=2 accepts. With
    CE marks in both directions: the kernel's data reaches ustack marked, ustack echoes
    ECE, the kernel counts the CE-acknowledged deliveries; and the reverse for ours."""
    ctl = tmp_path / "ctl.sock"
    d = daemon("--control", ctl, "--set", "tcp_ecn=1", "--impair", "ce=0.05,seed=9")
    server = d.netns.popen(PYTHON, "-c", PATTERN_SERVER, "9100", stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready", server.stderr.read()
    upload = b"u" * (1 << 20)
    proc = d.run(PYTHON, "-m", "ustack", "connect", "--control", str(ctl), HOST_ADDRESS,
                 "9100", input=upload, text=False, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    want = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(65536))
    assert proc.stdout == want  # byte-exact
    assert server.communicate(timeout=30)[0].strip() == f"got {len(upload)}"
    s = stack_counters(d)
    k = kernel_counters(d)
    assert s["UstackTcpEcnOk"] >= 1
    assert s["IpExtInECT0Pkts"] > 0 and s["IpExtInCEPkts"] > 0  # the kernel's data
    assert k["TcpExtTCPDeliveredCE"] > 0  # ...and our ECE
    assert k["IpExtInECT0Pkts"] > 0 and k["IpExtInCEPkts"] > 0  # ours
    assert s["UstackTcpEcnCwr"] > 0  # answered
