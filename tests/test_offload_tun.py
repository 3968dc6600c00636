"""Offloads over a real TUN device with the kernel as the peer (issue 11): the same
transfers byte-exact with `--offload on`, `--offload off` and `--mtu 9000`, and the
packet counts of the interface show which mode ran. Counts only, never times."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, STACK_ADDRESS

pytestmark = pytest.mark.tun

SIZE = 8 * 1024 * 1024
CURL = ("curl", "--silent", "--show-error", "--fail", "--max-time", "120")


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    (root / "big.bin").write_bytes(os.urandom(SIZE))
    return root


def link_packets(d) -> tuple[int, int]:
    """(packets the kernel got from ustack, packets it sent to ustack) on ustack0."""
    proc = d.run("ip", "-s", "-j", "link", "show", "ustack0")
    stats = json.loads(proc.stdout)[0]["stats64"]
    return stats["rx"]["packets"], stats["tx"]["packets"]


@pytest.mark.parametrize("args, mss", [
    (("--offload", "on"), 1448),
    (("--offload", "off"), 1448),
    (("--offload", "off", "--mtu", "9000"), 8948),
], ids=["offload-on", "offload-off", "mtu-9000"])
def test_download_and_echo_byte_exact(daemon, www: Path, tmp_path: Path, args, mss):
    d = daemon("--root", www, *args)
    out = tmp_path / "big.bin"
    proc = d.run(*CURL, "--output", out, f"http://{STACK_ADDRESS}/big.bin", timeout=150)
    assert proc.returncode == 0, f"{proc.stderr}\ndaemon:\n{d.stderr()}"
    assert out.read_bytes() == (www / "big.bin").read_bytes()
    proc = d.run(PYTHON, REPO / "tests/helpers/kernel_client.py", "echo", STACK_ADDRESS,
                 "7", str(SIZE), timeout=150)
    assert proc.returncode == 0 and proc.stdout.startswith("ok echo"), \
        f"{proc.stdout}{proc.stderr}\ndaemon:\n{d.stderr()}"
    from_us, to_us = link_packets(d)
    sent = 2 * SIZE  # the download and the echo
    wire = sent // mss  # data segments on a wire of this MTU
    print(f"\n{' '.join(args)}: {from_us} packets from ustack, {to_us} to it "
          f"({wire} data segments on the wire)")
    if "on" in args:
        # Super-segments both ways: far fewer packets than wire segments.
        assert from_us < wire / 4
        assert to_us < SIZE // mss / 2
    else:
        assert from_us >= wire  # one packet per segment, plus ACKs
        assert to_us >= SIZE // mss
    mode = "offloads" if "on" in args else "one packet per frame"
    assert f"MTU {1500 if mss == 1448 else 9000}, {mode}" in d.stderr()
