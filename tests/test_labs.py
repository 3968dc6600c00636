"""`ustack lab`: every lab runs for real (a namespace, a TUN device, the kernel as the
peer) and must show its lesson: the state sequence on each side, ustack's from its own
events and the kernel's from sock_diag, plus what the lab says it demonstrates."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from ustack.labs.scenarios import LABS, Lab
from ustack.tools import ladder as lad

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent

# What each lab's notes must say, beyond the states (the lesson in numbers).
NOTES = {
    "lost-last-ack": [r"sent its FIN 2 times; ustack's last ACK lost 1",
                      r"TIME_WAIT ended 2\.\d\d s after the retransmitted FIN"],
    "fin-ack": [r"one segment \(the kernel's FIN\+ACK\) took ustack from FIN_WAIT_1"],
    "half-close": [r"still received 4 parts"],
    "close-wait-leak": [r"still in CLOSE_WAIT", r"answered its FIN with a RST"],
    "linger0": [r"read\(\) got ECONNRESET"],
    "unread-close": [r"read\(\) got ECONNRESET"],
    "ports": [r"5th connect\(\) with tcp_tw_reuse=0: EADDRNOTAVAIL",
              r"with tcp_tw_reuse=1 the next connect\(\) took port 4000\d over"],
    "rfc6191": [r"connected 2 times from port 45000"],
}


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("ustk-lab-")}


def _states(text: str, side: str) -> list[str]:
    m = re.search(rf"^{side} \([^)]*\)(?:, from sock_diag\))?: (.*)$", text, re.M)
    assert m, f"no {side} line in:\n{text}"
    return m.group(1).split(" -> ")


@pytest.mark.tun
@pytest.mark.parametrize("name", list(LABS))
def test_lab_shows_its_lesson(name: str, tmp_path) -> None:
    lab: Lab = LABS[name]
    before = _namespaces()
    svg = tmp_path / f"{name}.svg"
    proc = subprocess.run([sys.executable, "-m", "ustack", "lab", name, "--svg", str(svg)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # The first state is where each side started: LISTEN or CLOSED.
    assert _states(out, "ustack")[1:] == list(lab.ustack)
    assert _states(out, "kernel")[1:] == list(lab.kernel)
    for pattern in NOTES.get(name, []):
        assert re.search(pattern, out), f"{pattern!r} not in:\n{out}"
    assert lab.rule.split(":")[0] in out  # the explanation is printed
    assert "|" in out and "-->" in out or "<--" in out  # and the ladder
    body = svg.read_text()
    assert body.startswith("<svg") or body.startswith("<?xml")
    assert body.count('class="segment"') >= 5
    assert _namespaces() <= before  # its namespace is gone


def test_lab_list_and_bad_names() -> None:
    proc = subprocess.run([sys.executable, "-m", "ustack", "lab", "--list"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    assert [line.split()[0] for line in proc.stdout.splitlines()] == list(LABS)
    proc = subprocess.run([sys.executable, "-m", "ustack", "lab", "no-such-lab"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "no lab 'no-such-lab'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ustack", "lab"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "--list" in proc.stderr


def test_labs_cover_the_close_path_story() -> None:
    assert {"client-close", "server-close", "simultaneous", "fin-ack", "lost-last-ack",
            "half-close", "close-wait-leak", "linger0", "unread-close", "ports",
            "rfc6191"} <= set(LABS)


def _seg(t, src, dst, flags, seq, ack, n=0):
    return lad.Seg(t, src, dst, flags, seq, ack, n, 100)


def test_ladder_starts_over_for_a_new_incarnation() -> None:
    """A SYN with a new ISN on the same four-tuple (RFC 6191) restarts the numbering
    and the close: its segments are no retransmissions and its states are inferred."""
    c, s = "10.77.0.1:45000", "10.77.0.2:7000"
    segs = []
    for base, t in ((1000, 0.0), (9000, 1.0)):
        segs += [_seg(t, c, s, "S", base, 0), _seg(t + .01, s, c, "S.", 5000 + base, base + 1),
                 _seg(t + .02, c, s, ".", base + 1, 5001 + base),
                 _seg(t + .03, s, c, "F.", 5001 + base, base + 1),
                 _seg(t + .04, c, s, "F.", base + 1, 5002 + base),
                 _seg(t + .05, s, c, ".", 5002 + base, base + 2)]
    ladder = lad.build(segs)
    assert not any(r.seg.retrans for r in ladder.rows if r.seg)
    client = [m.state for m in ladder.marks if m.host == c]
    assert client == ["SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"] * 2
    server = [m.state for m in ladder.marks if m.host == s]
    assert server == ["SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2",
                      "TIME_WAIT", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1",
                      "FIN_WAIT_2", "TIME_WAIT"]


@pytest.mark.netns
def test_sock_diag_reports_the_kernels_states(inside_netns) -> None:
    import socket

    from ustack.labs.sockdiag import SockDiag

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    acc, _ = srv.accept()
    cli.shutdown(socket.SHUT_WR)
    acc.recv(1)  # the FIN arrived: the accepted side is in CLOSE_WAIT
    mine = cli.getsockname()[1]
    with SockDiag() as diag:
        for _ in range(200):  # the FIN's ACK may be delayed (Linux tcp_fin(): pingpong)
            socks = {(lo[1], re[1]): st for lo, re, st in diag.tcp_sockets()}
            if socks[(mine, port)] == "FIN_WAIT_2":
                break
            time.sleep(0.005)
    assert socks[(port, 0)] == "LISTEN"
    assert socks[(port, mine)] == "CLOSE_WAIT"
    assert socks[(mine, port)] == "FIN_WAIT_2"
    for s in (cli, acc, srv):
        s.close()
