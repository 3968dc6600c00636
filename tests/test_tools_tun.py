"""The observability tools against a live daemon over a real TUN device, with the
kernel's TCP as the peer, inside a network namespace (see the `daemon` fixture).

The tools run as `python -m ustack TOOL --control PATH`; the control socket lives in the
test's temporary directory, so daemons of parallel or earlier tests never collide.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import dpkt
import pytest
from conftest import HOST_ADDRESS, PYTHON, STACK_ADDRESS, Daemon, eventually, kernel_listener

pytestmark = pytest.mark.tun

SVG = "{http://www.w3.org/2000/svg}"

# A kernel server in the namespace: accept one connection, send "bye", close at once
# (ustack's side is then in CLOSE_WAIT until its application closes).
BYE_SERVER = kernel_listener() + """
c, _ = s.accept()
c.sendall(b"bye")
c.close()
"""

# A kernel sink: accept one connection, read until EOF or reset, say which.
SINK_SERVER = kernel_listener() + """
c, _ = s.accept()
got = b""
try:
    while True:
        data = c.recv(65536)
        if not data:
            print("eof", got.decode(), flush=True)
            break
        got += data
except ConnectionResetError:
    print("reset", got.decode(), flush=True)
"""


def tool(d: Daemon, ctl: Path, name: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return d.run(PYTHON, "-m", "ustack", name, "--control", str(ctl), *argv, **kw)


def start_server(d: Daemon, script: str, port: int) -> subprocess.Popen:
    proc = d.netns.popen(PYTHON, "-c", script, str(port), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def test_ss_nstat_capture_and_ladder_on_a_live_daemon(daemon, tmp_path: Path):
    ctl, pcap = tmp_path / "ctl.sock", tmp_path / "serve.pcap"
    # A 60 s TIME_WAIT (tcp_msl=30): long enough that a slow `ustack ss` cannot miss it.
    d = daemon("--control", ctl, "--pcap", pcap, "--set", "tcp_msl=30")
    assert stat.S_IMODE(os.stat(ctl).st_mode) == 0o600
    assert tool(d, ctl, "nstat", "-n").returncode == 0  # start nstat's history here
    assert d.run("ping", "-c", "2", "-W", "2", STACK_ADDRESS).returncode == 0
    # HTTP/1.0: the stack closes first and holds TIME_WAIT.
    proc = d.run("curl", "-s", "-0", "-o", "/dev/null", "--max-time", "30",
                 f"http://{STACK_ADDRESS}/")
    assert proc.returncode == 0, proc.stderr
    out = eventually(lambda: tool(d, ctl, "ss", "-a", "-o").stdout,
                     lambda o: "TIME-WAIT" in o)
    lines = out.splitlines()
    assert lines[0].startswith("State") and "Peer Address:Port" in lines[0]
    listen = [line for line in lines if line.startswith("LISTEN")]
    assert {line.split()[3] for line in listen} >= {f"{STACK_ADDRESS}:80", f"{STACK_ADDRESS}:7"}
    tw = next(line for line in lines if line.startswith("TIME-WAIT"))
    assert f"{STACK_ADDRESS}:80" in tw and f"{HOST_ADDRESS}:" in tw and "timer:(timewait," in tw
    # The default view hides LISTEN and TIME-WAIT, as ss does.
    assert "LISTEN" not in tool(d, ctl, "ss").stdout
    proc = tool(d, ctl, "nstat", "--json")
    assert proc.returncode == 0, proc.stderr
    delta = json.loads(proc.stdout)["kernel"]
    assert delta["IcmpInEchos"] == 2 and delta["IcmpOutEchoReps"] == 2
    assert delta["TcpPassiveOpens"] == 1 and delta["TcpInSegs"] >= 4
    # A TIME_WAIT longer than 4 s counts as TW, as in Linux (shorter: TWKilled).
    assert delta["TcpExtTW"] == 1 and "TcpExtTWKilled" not in delta
    # The pcap of the whole run, read back by tcpdump and by dpkt. `capture stop` works
    # on the --pcap capture too; it flushes and closes the file.
    proc = tool(d, ctl, "capture", "stop", str(pcap))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"stopped {pcap} (") and proc.stdout.endswith(" frames)\n")
    assert tool(d, ctl, "capture", "list").stdout == ""
    if shutil.which("tcpdump"):
        proc = subprocess.run(["tcpdump", "-nr", str(pcap)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert f"{HOST_ADDRESS} > {STACK_ADDRESS}: ICMP echo request" in proc.stdout
        assert f"{STACK_ADDRESS}.80 > {HOST_ADDRESS}." in proc.stdout
        assert "Flags [S.]" in proc.stdout and "HTTP" in proc.stdout
    with open(pcap, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == 101
        # Every frame, including the kernel's IPv6 router solicitations: keep IPv4.
        packets = [dpkt.ip.IP(buf) for _ts, buf in reader if buf[0] >> 4 == 4]
    icmp = [p.data.type for p in packets if isinstance(p.data, dpkt.icmp.ICMP)]
    # The fixture's readiness ping, then our two: each request answered.
    assert icmp.count(8) >= 3 and icmp.count(0) == icmp.count(8)
    tcp_flags = [p.data.flags for p in packets if isinstance(p.data, dpkt.tcp.TCP)]
    assert tcp_flags[0] == dpkt.tcp.TH_SYN
    # The ladder of that HTTP connection: ustack (the server) closes first.
    svg = tmp_path / "http.svg"
    proc = d.run(PYTHON, "-m", "ustack", "ladder", "--pcap", str(pcap), "--svg", str(svg),
                 "--stack", STACK_ADDRESS, "port", "80")
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(svg).getroot()
    # Originals only: a retransmission (the daemon or the kernel stalled for an RTO)
    # is drawn too, marked data-retrans="1".
    segs = [g for g in root.findall(f".//{SVG}g[@class='segment']")
            if g.get("data-retrans") == "0"]
    assert [g.get("data-flags") for g in segs][:3] == ["S", "S.", "."]
    assert sum("F" in g.get("data-flags") for g in segs) == 2
    states = {(t.get("data-host"), s) for t in root.findall(f".//{SVG}text[@class='state']")
              for s in t.get("data-states").split()}
    me = f"{STACK_ADDRESS}:80"
    assert {(me, "FIN_WAIT_1"), (me, "FIN_WAIT_2"), (me, "TIME_WAIT")} <= states or \
        {(me, "FIN_WAIT_1"), (me, "TIME_WAIT")} <= states
    assert [g.get("data-host") for g in root.findall(f".//{SVG}g[@class='time-wait']")] == [me]


def test_connect_trace_and_stale_close_wait(daemon, tmp_path: Path):
    ctl = tmp_path / "ctl.sock"
    d = daemon("--control", ctl, "--set", "tcp_msl=1")
    trace = d.netns.popen(PYTHON, "-m", "ustack", "trace", "--control", str(ctl),
                          "--count", "4", "port", "9000", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    assert trace.stderr.readline().startswith("ustack trace: tracing port 9000")
    server = start_server(d, BYE_SERVER, 9000)
    # `ustack connect` with stdin held open: the kernel's FIN leaves ustack in CLOSE_WAIT.
    client = d.netns.popen(PYTHON, "-m", "ustack", "connect", "--control", str(ctl),
                           HOST_ADDRESS, "9000", stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = eventually(lambda: tool(d, ctl, "ss", "--close-wait-threshold", "1").stdout,
                     lambda o: "<- CLOSE-WAIT for" in o)
    row = next(line for line in out.splitlines() if line.startswith("CLOSE-WAIT"))
    assert f"{HOST_ADDRESS}:9000" in row and "<- CLOSE-WAIT for" in row
    assert "never called close()" in out
    client.stdin.close()  # end of input: our FIN, LAST_ACK -> CLOSED
    assert client.wait(timeout=30) == 0, client.stderr.read()
    assert client.stdout.read() == b"bye"
    server.wait(timeout=10)
    out, err = trace.communicate(timeout=30)
    assert trace.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 4
    assert all(f" -> {HOST_ADDRESS}:9000  " in line for line in lines)  # client -> server
    assert "  CLOSED -> SYN_SENT  connect()" in lines[0]
    assert "  SYN_SENT -> ESTABLISHED  on S. seq 0 ack 1" in lines[1]
    # The kernel sends "bye" and its FIN together or apart; either way the FIN is at 4.
    assert "  ESTABLISHED -> CLOSE_WAIT  on F" in lines[2] and "ack 1" in lines[2]
    assert "seq 4 ack 1" in lines[2] or "seq 1 ack 1 len 3" in lines[2]
    assert "  CLOSE_WAIT -> LAST_ACK  shutdown()" in lines[3]


def test_connect_refused_and_linger_zero(daemon, tmp_path: Path):
    ctl = tmp_path / "ctl.sock"
    d = daemon("--control", ctl)
    proc = tool(d, ctl, "connect", HOST_ADDRESS, "9999", input="")
    assert proc.returncode == 1 and "Connection refused" in proc.stderr
    assert tool(d, ctl, "nstat", "-n").returncode == 0
    sink = start_server(d, SINK_SERVER, 9001)
    proc = tool(d, ctl, "connect", "--linger", "0", HOST_ADDRESS, "9001", input="abc")
    assert proc.returncode == 0, proc.stderr
    assert sink.stdout.readline().split() == ["reset", "abc"]  # RST, no FIN
    delta = json.loads(tool(d, ctl, "nstat", "--json").stdout)["kernel"]
    assert delta["TcpExtTCPAbortOnData"] == 1 and delta["TcpOutRsts"] >= 1
    assert "TcpExtTW" not in delta and "TcpExtTWKilled" not in delta  # no TIME_WAIT
    assert "TIME-WAIT" not in tool(d, ctl, "ss", "-a").stdout
    # One log line for the abort, at the default level (warning).
    aborts = [line for line in d.stderr().splitlines() if "aborted" in line]
    assert len(aborts) == 1 and f"<-> {HOST_ADDRESS}:9001 aborted in ESTABLISHED: " \
        "close() with SO_LINGER 0, RST sent" in aborts[0]
    # A refused connection is logged at INFO: below the default level, so not here.
    assert "refused" not in d.stderr()


def test_log_level_info_shows_refused_connections(daemon, tmp_path: Path):
    ctl = tmp_path / "ctl.sock"
    d = daemon("--control", ctl, "--log-level", "info")
    proc = tool(d, ctl, "connect", HOST_ADDRESS, "9999", input="")
    assert proc.returncode == 1 and "Connection refused" in proc.stderr
    lines = d.stderr().splitlines()
    assert f"ustack: INFO ustack.control: control socket {ctl}" in lines
    refused = [line for line in lines if "refused" in line]
    assert len(refused) == 1, lines
    assert refused[0].startswith(f"ustack: INFO ustack.events: connection {STACK_ADDRESS}:")
    assert f"<-> {HOST_ADDRESS}:9999 refused: " in refused[0]
    assert refused[0].endswith("(Connection refused)")


def test_default_control_socket_path(daemon):
    name = "ustk-tools"
    path = Path(f"/run/ustack/{name}.sock")
    d = daemon("--tun", name)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    proc = d.run(PYTHON, "-m", "ustack", "ss", "-l", "--tun", name)
    assert proc.returncode == 0, proc.stderr
    assert f"{STACK_ADDRESS}:80" in proc.stdout
    assert d.stop() == 0
    assert not path.exists()  # removed on exit
