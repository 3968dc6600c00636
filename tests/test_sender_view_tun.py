"""`ustack ss -i` and `ustack plot` against a live daemon over a real TUN device, with
the kernel's TCP as the peer, inside a network namespace (the `daemon` fixture).

`ss -i` is held against the real `ss -ti` of the kernel's end of the same connection,
in the same namespace: the fields both print come in the same order, spelled alike.
The plot is drawn from `serve --record FILE` after a download through `--impair
loss=0.02`: the recording and the SVG show the retransmissions and the cwnd reduction.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import PYTHON, STACK_ADDRESS, Daemon, eventually
from test_sender_view import check_plot_svg, cwnd_reduced

from ustack.tools.plot import read_records

pytestmark = pytest.mark.tun

SVG = "{http://www.w3.org/2000/svg}"
CONGESTION = {"reno", "cubic", "bbr", "dctcp", "htcp", "vegas", "westwood"}

# A kernel client: 300 kB through ustack's echo service and back, then it holds the
# connection open (ESTABLISHED both ways) until its stdin closes.
ECHO_CLIENT = f"""
import socket, sys
s = socket.create_connection(("{STACK_ADDRESS}", 7))
data = bytes(range(256)) * 1200
s.sendall(data)
got = b""
while len(got) < len(data):
    got += s.recv(65536)
assert got == data
print("ready", s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def tool(d: Daemon, ctl: Path, name: str, *argv: str) -> subprocess.CompletedProcess:
    return d.run(PYTHON, "-m", "ustack", name, "--control", str(ctl), *argv)


def field_names(line: str) -> list[str]:
    """The field names of an `ss -ti` info line, in order: "rtt:0.3/0.1" -> rtt,
    "send 77Mbps" -> send, the congestion control's name -> "<cc>"; ss's nested
    "bbr:(...)" is skipped."""
    names: list[str] = []
    for tok in line.split():
        if tok.startswith("bbr:(") or tok.startswith("dctcp:("):
            continue
        if tok.endswith("bps") and ":" not in tok and names and names[-1] in (
                "send", "pacing_rate", "delivery_rate"):
            continue  # the value of the field before
        name = tok.split(":")[0]
        names.append("<cc>" if name in CONGESTION else name)
    return names


def info_after(out: str, needle: str) -> str:
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if needle in line and i + 1 < len(lines) and lines[i + 1].startswith("\t"):
            return lines[i + 1]
    raise AssertionError(f"no info line after {needle!r} in:\n{out}")


def test_ss_i_fields_match_the_kernels_ss_ti(daemon, tmp_path: Path):
    ctl = tmp_path / "ctl.sock"
    d = daemon("--control", ctl)
    client = d.netns.popen(PYTHON, "-c", ECHO_CLIENT, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = client.stdout.readline().split()
        assert ready and ready[0] == "ready", client.stderr.read()
        port = ready[1]
        kernel = d.run("ss", "-tio", "state", "established", "dport", "=", ":7")
        assert kernel.returncode == 0, kernel.stderr
        ours = tool(d, ctl, "ss", "-i", "-o")
        assert ours.returncode == 0, ours.stderr
        k_line = info_after(kernel.stdout, f":{port}")
        u_line = info_after(ours.stdout, f":{port}")
        k_names, u_names = field_names(k_line), field_names(u_line)
        # Both sent and received 300 kB: the fields of a busy two-way connection.
        core = ["ts", "sack", "<cc>", "wscale", "rto", "rtt", "mss", "pmtu", "rcvmss",
                "advmss", "cwnd", "bytes_sent", "bytes_acked", "bytes_received",
                "segs_out", "segs_in", "data_segs_out", "data_segs_in", "send",
                "pacing_rate", "delivered", "rcv_space", "rcv_ssthresh", "snd_wnd"]
        for name in core:
            assert name in k_names, (name, k_line)
            assert name in u_names, (name, u_line)
        common = [n for n in u_names if n in k_names]
        assert common == [n for n in k_names if n in u_names], (k_line, u_line)
        assert u_names[:3] == ["ts", "sack", "<cc>"] and "cubic" in u_line
        for busy in (t for t in u_line.split() if t.startswith("busy:")):
            assert int(busy[5:-2]) < 60_000, busy  # while data was out, not since boot
        # The JSON names the same fields.
        js = tool(d, ctl, "ss", "-i", "--json")
        row = next(c for c in json.loads(js.stdout)["connections"]
                   if c["peer"].endswith(f":{port}"))
        assert row["info"]["bytes_received"] == row["tcp_info"]["bytes_received"] == 307200
        assert row["info"]["bytes_acked"] == 307201  # the echo back, and our SYN
        assert row["tcp_info"]["state"] == 1 and row["info"]["cong"] == "cubic"
    finally:
        client.stdin.close()
        client.wait(timeout=20)


def test_plot_of_a_lossy_download_over_tun(daemon, tmp_path: Path):
    ctl, rec = tmp_path / "ctl.sock", tmp_path / "rec.jsonl"
    www = tmp_path / "www"
    www.mkdir()
    size = 3_000_000
    (www / "big.bin").write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
    d = daemon("--control", ctl, "--root", www, "--record", rec,
               "--impair", "loss=0.02,seed=7")
    got = d.run("curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", "--max-time",
                "120", f"http://{STACK_ADDRESS}/big.bin")
    assert got.returncode == 0 and got.stdout == str(size), got.stderr

    def ended():
        try:
            return read_records(rec.read_text().splitlines())
        except (OSError, ValueError):
            return []

    records = eventually(ended, lambda rs: any(r["ev"] == "end" for r in rs))
    heads = [r for r in records if r["ev"] == "conn" and r["local"].endswith(":80")]
    assert heads, records[:3]
    cid = heads[0]["c"]
    mine = [r for r in records if r.get("c") == cid]
    rtx = [r for r in mine if r["ev"] == "tx" and r["rtx"]]
    assert rtx, "2% loss and no retransmission recorded"
    assert cwnd_reduced(mine)
    assert sum(r["len"] for r in mine if r["ev"] == "tx" and not r["rtx"]) > size
    out = tmp_path / "plot.svg"
    p = tool(d, ctl, "plot", str(rec), "--conn", "port 80", "-o", str(out))
    assert p.returncode == 0, p.stderr
    root = check_plot_svg(out.read_text())
    marks = [e for e in root.iter(f"{SVG}circle") if e.get("class") == "rtx"]
    assert len(marks) == len(rtx)
    # The shaded episodes reach into the cwnd panel (drawn through all three).
    episodes = [e for e in root.iter(f"{SVG}rect")
                if (e.get("class") or "").startswith("episode")]
    assert len(episodes) >= 3 and len(episodes) % 3 == 0
    assert ET.tostring(root)  # well-formed all the way down
