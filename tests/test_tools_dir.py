"""The programs in the top-level tools/ directory: tools/bench and tools/pcap2ladder.

They run as subprocesses, as an operator runs them: `python tools/NAME ...` with the
project's interpreter, and `tools/NAME ...` through the shebang."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import dpkt
import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
SCRIPTS = sorted(p for p in TOOLS.iterdir() if p.is_file() and not p.suffix)
C, S = "10.77.0.1", "10.77.0.2"


def run(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / name), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_the_scripts_are_there():
    assert {"bench", "pcap2ladder"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_is_an_executable_python3_program_that_ruff_lints(path: Path):
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/usr/bin/env python3\n")
    ruff = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]
    assert f"tools/{path.name}" in ruff.get("extend-include", []) + ruff.get("include", [])


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_help(path: Path):
    p = run(path.name, "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: ") and "--help" in p.stdout


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_runs_through_its_shebang_with_the_venv_on_path(path: Path):
    bindir = Path(sys.executable).parent
    if not (bindir / "python3").exists():
        pytest.skip("no python3 next to sys.executable")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    p = subprocess.run([str(path), "--help"], capture_output=True, text=True, env=env,
                       timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    assert "usage: " in p.stdout


# ---------------------------------------------------------------------- tools/bench


def test_bench_quick_json(tmp_path):
    out = tmp_path / "bench.json"
    p = run("bench", "--quick", "--json", str(out), timeout=240)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["tun"] is False
    assert doc["machine"]["cpu"] and doc["machine"]["cores"] >= 1
    assert doc["kernel"]["system"] == "Linux" and doc["kernel"]["release"]
    assert doc["python"]["version"].count(".") == 2
    assert doc["uvloop"] and doc["dpkt"]
    assert len(doc["git"]["commit"]) == 40
    assert set(doc["benchmarks"]) == {"demux", "wire", "timewait", "goodput", "segments",
                                      "dashboard", "syn", "fuzz"}
    expect = {"demux": {"random_1k", "random_big", "in_order_big", "ratio_random"},
              "wire": {"slice", "parse", "dpkt", "cksum", "build", "dpkt/parse"},
              "timewait": {"bytes_per_record", "random_1k", "random_big", "est_big",
                           "insert_big", "expire_big", "ratio_random"},
              "goodput": {"memory_loss0", "memory_loss0.01"},
              "segments": {"data_1448 segments/s", "pure_ack segments/s",
                           "data_1448 per segment, receive() only"},
              "dashboard": {"poll_big", "poll_filter_big", "sample", "tw_record_bytes"},
              "syn": {"bytes_per_request_record", "cookie_syns_table", "cookie_syns_wire",
                      "record_syns_table", "cookie_peak_bytes"},
              "fuzz": {"fuzz atheris", "fuzz hypothesis"}}
    for name, res in doc["benchmarks"].items():
        assert res["ok"], res
        figs = {r["name"]: r for r in res["figures"]}
        assert expect[name] <= set(figs), name
        for r in res["figures"]:
            assert isinstance(r["value"], float) and r["value"] > 0, (name, r)
            assert r["unit"]
    assert not any(r["name"].startswith("tun") for r in doc["benchmarks"]["goodput"]["figures"])
    # the table: one line per figure, under one header
    assert p.stdout.splitlines()[0].split() == ["benchmark", "figure", "value", "unit"]
    assert sum(len(r["figures"]) for r in doc["benchmarks"].values()) + 2 == len(
        p.stdout.splitlines())


def test_bench_named_and_json_to_stdout():
    p = run("bench", "--quick", "demux", "--json", "-")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout[p.stdout.index("\n{") + 1:])
    assert list(doc["benchmarks"]) == ["demux"]


@pytest.mark.parametrize("args", [["nosuch"], ["--quick", "wire", "--tun"], ["--frobnicate"],
                                  ["--quick", "--json", "/nonexistent-dir/x.json"]])
def test_bench_bad_arguments_exit_2(args):
    p = run("bench", *args)
    assert p.returncode == 2, p
    assert "Traceback" not in p.stderr and "error:" in p.stderr


# ---------------------------------------------------------------------- tools/pcap2ladder


def _frame(src: str, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int,
           data: bytes = b"") -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=502,
                       data=data)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=tcp)
    ip.len = 20 + len(bytes(tcp))
    return bytes(ip)


def _connection(cport: int, t0: float, ci: int = 1000, si: int = 5000) -> list[tuple]:
    """Handshake, 5 bytes and their ACK, the client's close: (t, frame)."""
    T = dpkt.tcp
    a, b = (C, S, cport, 80), (S, C, 80, cport)
    segs = [(a, T.TH_SYN, ci, 0, b""), (b, T.TH_SYN | T.TH_ACK, si, ci + 1, b""),
            (a, T.TH_ACK, ci + 1, si + 1, b""),
            (a, T.TH_PUSH | T.TH_ACK, ci + 1, si + 1, b"hello"),
            (b, T.TH_ACK, si + 1, ci + 6, b""), (a, T.TH_FIN | T.TH_ACK, ci + 6, si + 1, b""),
            (b, T.TH_FIN | T.TH_ACK, si + 1, ci + 7, b""), (a, T.TH_ACK, ci + 7, si + 2, b"")]
    return [(t0 + i * 0.001, _frame(*ends, fl, seq, ack, data))
            for i, (ends, fl, seq, ack, data) in enumerate(segs)]


def _pcap(path: Path, *conns: list[tuple]) -> Path:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=101)  # LINKTYPE_RAW, as ustack capture writes
        for t, frame in sorted(x for c in conns for x in c):
            w.writepkt(frame, ts=t)
    return path


EXPECTED = [(">", "S seq 0"), ("<", "S. seq 0 ack 1"), (">", ". seq 1 ack 1"),
            (">", "P. seq 1 ack 1 len 5"), ("<", ". seq 1 ack 6"), (">", "F. seq 6 ack 1"),
            ("<", "F. seq 1 ack 7"), (">", ". seq 7 ack 2")]


_ARROW = re.compile(r"[|:](<[-~]+ .*? [-~]{2}|[-~]{2} .*? [-~]+>)[|:]")


def _rows(text: str) -> list[tuple[str, str, str, str]]:
    """(client's new state, ">" or "<", label, server's new state) for each arrow of the
    text ladder, top to bottom (a column in TIME_WAIT is drawn with ':', not '|')."""
    out = []
    for line in text.splitlines():
        if m := _ARROW.search(line):
            body = m.group(1)
            left = line[:m.start()].split("s ", 1)[1].strip()  # after "+0.001s"
            out.append((left, ">" if body.endswith(">") else "<", body.strip("-~<> "),
                        line[m.end():].strip()))
    return out


def _arrows(text: str) -> list[tuple[str, str]]:
    return [(d, label) for _, d, label, _ in _rows(text)]


def test_pcap2ladder_text_handshake_and_close(tmp_path):
    pcap = _pcap(tmp_path / "c.pcap", _connection(40000, 1000.0))
    p = run("pcap2ladder", str(pcap), "--stack", S)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == [f"{C}:40000", f"{S}:80"]
    assert "(server, ustack)" in lines[1]
    assert _arrows(p.stdout) == EXPECTED
    assert lines[2].split() == ["CLOSED", "|", "|", "LISTEN"]  # the initial states
    rows = _rows(p.stdout)
    assert [r[0] for r in rows] == ["SYN_SENT", "ESTABLISHED", "", "", "", "FIN_WAIT_1",
                                    "FIN_WAIT_2 -> TIME_WAIT", ""]
    assert [r[3] for r in rows] == ["", "SYN_RECEIVED", "ESTABLISHED", "", "", "CLOSE_WAIT",
                                    "LAST_ACK", "CLOSED"]
    assert "still in TIME_WAIT at the end" in p.stdout


def test_pcap2ladder_svg(tmp_path):
    pcap = _pcap(tmp_path / "c.pcap", _connection(40000, 1000.0))
    svg = tmp_path / "l.svg"
    p = run("pcap2ladder", str(pcap), "--svg", str(svg))
    assert p.returncode == 0, p.stderr
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    segs = [g for g in root.iter(f"{ns}g") if g.get("class") == "segment"]
    assert [g.get("data-flags") for g in segs] == ["S", "S.", ".", "P.", ".", "F.", "F.", "."]
    assert [g.get("data-len") for g in segs] == ["0", "0", "0", "5", "0", "0", "0", "0"]


def test_pcap2ladder_several_connections(tmp_path):
    pcap = _pcap(tmp_path / "two.pcap", _connection(40000, 1000.0),
                 _connection(40001, 1000.0005, ci=77, si=99))
    p = run("pcap2ladder", str(pcap), "--all")
    assert p.returncode == 0, p.stderr
    assert [ln for ln in p.stdout.splitlines() if ln.startswith("connection ")] == [
        f"connection 0: {C}:40000 -> {S}:80", f"connection 1: {C}:40001 -> {S}:80"]
    assert _arrows(p.stdout) == EXPECTED * 2
    p = run("pcap2ladder", str(pcap), "port", "40001")
    assert p.returncode == 0, p.stderr
    assert f"{C}:40001" in p.stdout.splitlines()[0] and _arrows(p.stdout) == EXPECTED
    p = run("pcap2ladder", str(pcap), "--index", "1")
    assert p.returncode == 0 and "2 connections match" in p.stderr
    assert f"{C}:40001" in p.stdout.splitlines()[0]


def test_pcap2ladder_errors(tmp_path):
    missing = run("pcap2ladder", str(tmp_path / "nope.pcap"))
    assert missing.returncode == 1
    assert "nope.pcap" in missing.stderr and "Traceback" not in missing.stderr
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all")
    p = run("pcap2ladder", str(junk))
    assert p.returncode == 1 and "not a pcap file" in p.stderr and "Traceback" not in p.stderr
    pcap = _pcap(tmp_path / "c.pcap", _connection(40000, 1000.0))
    p = run("pcap2ladder", str(pcap), "port", "81")
    assert p.returncode == 1 and "no TCP connection matches" in p.stderr
    for bad in (["--index", "-1", str(pcap)], [str(pcap), "port", "x"], [],
                [str(pcap), "--all", "--svg", "x.svg"], ["--nope", str(pcap)]):
        p = run("pcap2ladder", *bad)
        assert p.returncode == 2, (bad, p)
        assert "Traceback" not in p.stderr and "error:" in p.stderr
