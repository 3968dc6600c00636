"""The complete close path over a real TUN device, with the kernel's TCP as the peer.

One test per way a connection can end (issue 3): the kernel closes first, ustack closes
first (HTTP/1.0), both close at once, the peer vanishes, and SO_LINGER 0. Each runs in
a namespace of its own (the `daemon` / `netns` fixtures) and looks at both sides: the
kernel through its sockets and `ss`, ustack through its own API (the control socket:
`ustack trace`, `ustack ss --json`, `ustack nstat --json`) and a pcap of the TUN.
The reference is Linux (/work/shared/LINUX-SPEC.md, "LS n" below) and RFC 9293.

test_integration.py checks who holds TIME-WAIT with curl and the status page; these
tests follow the state machine through each ending instead.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import dpkt
import pytest
from conftest import (
    HOST_ADDRESS,
    PYTHON,
    REPO,
    STACK_ADDRESS,
    Daemon,
    Netns,
    eventually,
    kernel_listener,
)

pytestmark = pytest.mark.tun

TUN = "ustack0"  # the daemon's default interface name


# ---------------------------------------------------------------------- helpers


def tool(d: Daemon, ctl: Path, name: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return d.run(PYTHON, "-m", "ustack", name, "--control", str(ctl), *argv, **kw)


def stack_rows(d: Daemon, ctl: Path, peer: str) -> list[dict]:
    """ustack's connections with `peer` (`ustack ss --json -a`), TIME-WAIT included."""
    proc = tool(d, ctl, "ss", "--json", "-a")
    assert proc.returncode == 0, proc.stderr
    return [r for r in json.loads(proc.stdout)["connections"] if r["peer"] == peer]


def counters(d: Daemon, ctl: Path) -> dict[str, int]:
    """ustack's absolute counters (`ustack nstat --json -a -z`)."""
    proc = tool(d, ctl, "nstat", "--json", "-a", "-z")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["kernel"]


def kernel_sockets(ns: Netns, state: str, local: str) -> list[str]:
    """The kernel's sockets in `state` (ss spelling) whose local endpoint is `local`."""
    proc = ns.run("ss", "-Htan", "state", state)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if f" {local} " in f" {line} "]


class Trace:
    """`ustack trace --json FILTER` in the background: ustack's state changes as the
    daemon reports them, collected by a thread."""

    def __init__(self, d: Daemon, ctl: Path, *filter_terms: str) -> None:
        self.proc = d.netns.popen(PYTHON, "-m", "ustack", "trace", "--json", "--control",
                                  str(ctl), *filter_terms, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        # The tool says so on stderr once the daemon has subscribed it.
        line = self.proc.stderr.readline()
        assert line.startswith("ustack trace: tracing"), line + self.proc.stderr.read()
        self.events: list[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def states(self, peer: str) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e["type"] == "state" and e["peer"] == peer]

    def wait_for(self, peer: str, new: str, timeout: float = 15.0) -> list[dict]:
        """The state changes of the connection with `peer`, once one went to `new`."""
        return eventually(lambda: self.states(peer),
                          lambda evs: any(e["new"] == new for e in evs), timeout)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def transitions(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["old"], e["new"]) for e in events]


def read_tcp(pcap: Path, port: int) -> list[tuple[float, dpkt.ip.IP]]:
    """(time, IPv4 packet) for every TCP segment to or from `port` in a pcap."""
    time.sleep(0.5)  # the capture is flushed every 0.2 s
    out = []
    with open(pcap, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            if buf[0] >> 4 != 4:
                continue  # the kernel's IPv6 router solicitations
            ip = dpkt.ip.IP(buf)
            if isinstance(ip.data, dpkt.tcp.TCP) and port in (ip.data.sport, ip.data.dport):
                out.append((ts, ip))
    return out


def sent_by(ip: dpkt.ip.IP, addr: str) -> bool:
    return ip.src == bytes(map(int, addr.split(".")))


def has(tcp: dpkt.tcp.TCP, flag: int) -> bool:
    return bool(tcp.flags & flag)


# A kernel server: accept one connection, say "accepted", then close it when a line
# arrives on stdin and say "closed" (close() has returned: the FIN is on its way).
CLOSE_ON_CUE_SERVER = kernel_listener(1) + """
c, _ = s.accept()
print("accepted", flush=True)
sys.stdin.readline()
c.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def start_server(ns: Netns, script: str, port: int) -> subprocess.Popen:
    proc = ns.popen(PYTHON, "-c", script, str(port), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


# ---------------------------------------------------------------------- the tests


# The kernel connects to the echo service, gets its bytes back and closes first.
KERNEL_CLOSES_FIRST_CLIENT = f"""
import socket
c = socket.create_connection(("{STACK_ADDRESS}", 7), timeout=30)
c.sendall(b"ping")
got = b""
while len(got) < 4:
    got += c.recv(4)
assert got == b"ping", got
print(c.getsockname()[1], flush=True)
c.close()
"""


def test_kernel_closes_first_and_holds_time_wait(daemon, tmp_path: Path):
    """RFC 9293 3.6 case 2 (LS 22, 11): the kernel's close() sends the first FIN; ustack
    ACKs it (CLOSE_WAIT), the echo service closes (LAST_ACK, our FIN), the kernel's ACK
    ends it (CLOSED). Only the active closer, the kernel, holds TIME-WAIT."""
    ctl = tmp_path / "ctl.sock"
    d = daemon("--control", ctl)
    trace = Trace(d, ctl, "port", "7")
    proc = d.run(PYTHON, "-c", KERNEL_CLOSES_FIRST_CLIENT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    local = f"{HOST_ADDRESS}:{int(proc.stdout)}"

    events = trace.wait_for(local, "CLOSED")
    trace.stop()
    changes = transitions(events)
    assert changes[-3:] == [("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"),
                            ("LAST_ACK", "CLOSED")], events
    assert "FIN_WAIT_1" not in {new for _old, new in changes}  # ustack never closed first
    assert events[-3]["cause"].startswith("on F"), events[-3]  # the kernel's FIN
    assert events[-1]["errno"] == 0  # a clean end, not a reset or a timeout
    assert all(e["passive"] for e in events)  # the kernel was the client

    tw = eventually(lambda: kernel_sockets(d.netns, "time-wait", local), bool)
    assert len(tw) == 1, d.run("ss", "-tan").stdout
    assert stack_rows(d, ctl, local) == []  # no TIME-WAIT record on our side
    c = counters(d, ctl)
    assert c["TcpPassiveOpens"] == 1 and c["TcpEstabResets"] == 0 and c["TcpOutRsts"] == 0


def test_http10_stack_closes_first_and_holds_time_wait(daemon, tmp_path: Path):
    """RFC 9293 3.6 case 1 (LS 23, 50): for an HTTP/1.0 request the server closes after
    the response, so ustack is the active closer: FIN_WAIT_1 -> ... -> TIME_WAIT, seen in
    its own table with a timewait timer, gone after 2*MSL; the kernel holds none.

    The FIN leaves with the last data segment or right behind it, without waiting for the
    client's ACK (LS 20: Linux's tcp_send_fin() pushes the queue with Nagle off)."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_bytes(b"x" * 3000)  # a response of several segments
    ctl, pcap = tmp_path / "ctl.sock", tmp_path / "http.pcap"
    d = daemon("--root", www, "--control", ctl, "--pcap", pcap, "--set", "tcp_msl=2")
    trace = Trace(d, ctl, "port", "80")
    proc = d.run("curl", "--silent", "--show-error", "--fail", "--http1.0", "--max-time",
                 "30", "--output", "/dev/null", "--write-out", "%{local_port}",
                 f"http://{STACK_ADDRESS}/")
    assert proc.returncode == 0, proc.stderr
    cport = int(proc.stdout)
    peer = f"{HOST_ADDRESS}:{cport}"

    rows = eventually(lambda: stack_rows(d, ctl, peer),
                      lambda rows: [r["state"] for r in rows] == ["TIME-WAIT"])
    assert [r["state"] for r in rows] == ["TIME-WAIT"], rows
    assert rows[0]["local"] == f"{STACK_ADDRESS}:80"
    assert rows[0]["timer_name"] == "timewait" and 0 < rows[0]["timer_left"] <= 4.0, rows
    assert kernel_sockets(d.netns, "time-wait", peer) == []
    c = counters(d, ctl)  # Linux counts a TIME_WAIT of <= 4 s as killed (LS 50)
    assert (c["TcpExtTW"], c["TcpExtTWKilled"]) == (0, 1)

    events = trace.wait_for(peer, "CLOSED")  # TIME_WAIT ends after 2*MSL = 4 s
    trace.stop()
    changes = transitions(events)
    closing = changes[changes.index(("ESTABLISHED", "FIN_WAIT_1")):]
    assert closing in ([("ESTABLISHED", "FIN_WAIT_1"), ("FIN_WAIT_1", "FIN_WAIT_2"),
                        ("FIN_WAIT_2", "TIME_WAIT"), ("TIME_WAIT", "CLOSED")],
                       [("ESTABLISHED", "FIN_WAIT_1"), ("FIN_WAIT_1", "TIME_WAIT"),
                        ("TIME_WAIT", "CLOSED")]), events
    tw_start = next(e["t"] for e in events if e["new"] == "TIME_WAIT")
    assert 2.0 <= events[-1]["t"] - tw_start <= 15.0, events  # loose: 2*MSL is 4 s
    assert stack_rows(d, ctl, peer) == []

    # On the wire: our FIN goes out before any ACK of the response comes back.
    segs = [ip for _ts, ip in read_tcp(pcap, cport)]
    data_at = next(i for i, ip in enumerate(segs) if sent_by(ip, STACK_ADDRESS) and ip.data.data)
    fin_at = next(i for i, ip in enumerate(segs)
                  if sent_by(ip, STACK_ADDRESS) and has(ip.data, dpkt.tcp.TH_FIN))
    start = segs[data_at].data.seq  # the response's first byte
    acks = [ip.data.ack for ip in segs[data_at:fin_at] if sent_by(ip, HOST_ADDRESS)
            and 0 < (ip.data.ack - start) & 0xFFFFFFFF < 1 << 31]
    assert acks == [], "our FIN waited for the client's ACK of the response"
    ours = [ip for ip in segs if sent_by(ip, STACK_ADDRESS)]
    assert sum(len(ip.data.data) for ip in ours) > 3000


def test_simultaneous_close_both_sides_hold_time_wait(daemon, tmp_path: Path):
    """RFC 9293 3.6 case 3, Figure 13 (LS 24, 7, 10): both ends send FIN before they see
    the other's. ustack goes FIN_WAIT_1 -> CLOSING (the peer's FIN does not ACK ours) ->
    TIME_WAIT (our FIN ACKed), and so does the kernel: both hold TIME-WAIT.

    A 300 ms delay each way at ustack's TUN boundary makes the FINs cross: each is in
    flight for 300 ms, and the two closes are a few ms apart."""
    ctl = tmp_path / "ctl.sock"
    d = daemon("--control", ctl, "--impair", "delay=300ms")
    port = 9100
    server_end = f"{HOST_ADDRESS}:{port}"
    trace = Trace(d, ctl, "port", str(port))
    server = start_server(d.netns, CLOSE_ON_CUE_SERVER, port)
    client = d.netns.popen(PYTHON, "-m", "ustack", "connect", "--control", str(ctl),
                           HOST_ADDRESS, str(port), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert server.stdout.readline().strip() == "accepted", server.stderr.read()
    assert trace.wait_for(server_end, "ESTABLISHED")

    server.stdin.write("close\n")  # the kernel's FIN ...
    server.stdin.flush()
    client.stdin.close()  # ... and ours (end of input: shutdown(SHUT_WR))
    assert server.stdout.readline().strip() == "closed"

    assert client.wait(timeout=30) == 0, client.stderr.read()  # a clean close for ustack
    events = trace.wait_for(server_end, "TIME_WAIT")
    trace.stop()
    changes = transitions(events)
    assert changes[-3:] == [("ESTABLISHED", "FIN_WAIT_1"), ("FIN_WAIT_1", "CLOSING"),
                            ("CLOSING", "TIME_WAIT")], events
    assert events[-2]["cause"].startswith("on F"), events[-2]
    rows = stack_rows(d, ctl, server_end)
    assert [r["state"] for r in rows] == ["TIME-WAIT"], rows
    kernel = eventually(lambda: kernel_sockets(d.netns, "time-wait", server_end), bool)
    assert len(kernel) == 1, d.run("ss", "-tan").stdout
    server.stdin.close()
    server.wait(timeout=10)


@pytest.mark.parametrize("how, limit", [
    ("shutdown", "tcp_retries2"),  # ustack connect: end of input is shutdown(SHUT_WR)
    ("orphan", "tcp_orphan_retries"),  # --linger 30: close(); the application is gone
])
def test_vanished_peer_fin_retransmitted_with_backoff_then_abort(daemon, tmp_path: Path,
                                                                 how: str, limit: str):
    """RFC 9293 3.8.1 / RFC 6298 5.5 (LS 121-125): the kernel's side of the TUN goes down
    after the handshake, so our FIN is never ACKed. ustack retransmits it with the RTO
    doubling each time, and after the retries gives up silently (no RST, LS 124-125):
    the connection leaves the table, TcpExtTCPAbortOnTimeout counts it, and the
    application sees ETIMEDOUT. The limit is tcp_retries2 for a half-closed connection
    and tcp_orphan_retries once the application has closed it (Linux SOCK_DEAD)."""
    ctl, pcap = tmp_path / "ctl.sock", tmp_path / "vanish.pcap"
    retries = {"tcp_retries2": 3, "tcp_orphan_retries": 2}
    d = daemon("--control", ctl, "--pcap", pcap,
               *(f"--set={k}={v}" for k, v in retries.items()))
    port = 9200
    server_end = f"{HOST_ADDRESS}:{port}"
    server = start_server(d.netns, CLOSE_ON_CUE_SERVER, port)
    linger = ["--linger", "30"] if how == "orphan" else []
    client = d.netns.popen(PYTHON, "-m", "ustack", "connect", "--control", str(ctl),
                           *linger, HOST_ADDRESS, str(port), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert server.stdout.readline().strip() == "accepted", server.stderr.read()
    rows = eventually(lambda: stack_rows(d, ctl, server_end),
                      lambda rows: [r["state"] for r in rows] == ["ESTAB"])
    assert [r["state"] for r in rows] == ["ESTAB"], rows
    before = counters(d, ctl)

    assert d.run("ip", "link", "set", TUN, "down").returncode == 0  # the peer vanishes
    client.stdin.close()  # our FIN, into the void
    assert client.wait(timeout=30) == 1
    assert "Connection timed out" in client.stderr.read().decode()

    assert stack_rows(d, ctl, server_end) == []  # gone from the table, no TIME-WAIT
    after = counters(d, ctl)
    assert after["TcpExtTCPAbortOnTimeout"] - before["TcpExtTCPAbortOnTimeout"] == 1
    assert after["TcpOutRsts"] == before["TcpOutRsts"]  # silent death

    out = [(ts, ip.data) for ts, ip in read_tcp(pcap, port) if sent_by(ip, STACK_ADDRESS)]
    assert not any(has(tcp, dpkt.tcp.TH_RST) for _ts, tcp in out)
    fins = [(ts, tcp) for ts, tcp in out if has(tcp, dpkt.tcp.TH_FIN)]
    assert len({tcp.seq for _ts, tcp in fins}) == 1  # the same FIN every time (LS 17)
    # The original, then one transmission per retry (RFC 6298 5.4-5.5)
    assert len(fins) == 1 + retries[limit], [ts for ts, _ in fins]
    gaps = [b - a for (a, _), (b, _) in zip(fins, fins[1:], strict=False)]
    assert 0.1 <= gaps[0] <= 5.0, gaps  # loose: the first RTO is ~0.2 s (tcp_rto_min)
    for prev, cur in zip(gaps, gaps[1:], strict=False):
        assert cur >= 1.3 * prev, gaps  # backoff: each wait twice the one before
    server.stdin.close()


# The kernel client for the linger-0 server: send a line, wait for the answer.
READ_UNTIL_RESET_CLIENT = f"""
import errno, socket, sys
c = socket.create_connection(("{STACK_ADDRESS}", int(sys.argv[1])), timeout=30)
c.sendall(b"bye now\\n")
try:
    data = c.recv(100)
except ConnectionResetError as exc:
    print("reset", errno.errorcode[exc.errno], c.getsockname()[1], flush=True)
else:
    print("no reset:", data, flush=True)
"""


def test_linger_zero_close_is_a_reset_the_kernel_reports_as_econnreset(
        netns: Netns, tmp_path: Path):
    """RFC 9293 3.10.5 ABORT (LS 31, 18): a ustack server closes a connection with
    SO_LINGER {1, 0}. No FIN: one RST (`R.`, seq = SND.NXT, ack = RCV.NXT), the
    connection is gone at once with no TIME-WAIT on either side, and the kernel client
    blocked in recv() gets ECONNRESET."""
    ctl, pcap = tmp_path / "ctl.sock", tmp_path / "abort.pcap"
    port = 9300
    server = netns.popen(PYTHON, REPO / "tests/helpers/abort_server.py", "--port",
                         str(port), "--control", ctl, "--pcap", pcap,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert server.stdout.readline().strip() == b"ready", server.stderr.read()
    proc = netns.run(PYTHON, "-c", READ_UNTIL_RESET_CLIENT, str(port), timeout=60)
    assert proc.returncode == 0, proc.stderr
    word, code, cport = proc.stdout.split()
    assert (word, code) == ("reset", "ECONNRESET"), proc.stdout
    peer = f"{HOST_ADDRESS}:{cport}"

    def run_tool(*argv: str) -> subprocess.CompletedProcess:
        return netns.run(PYTHON, "-m", "ustack", *argv, "--control", str(ctl))

    rows = json.loads(run_tool("ss", "--json", "-a").stdout)["connections"]
    assert [r for r in rows if r["peer"] == peer] == []
    c = json.loads(run_tool("nstat", "--json", "-a", "-z").stdout)["kernel"]
    assert c["TcpExtTCPAbortOnData"] == 1  # where Linux counts a linger-0 abort (LS 31)
    assert c["TcpEstabResets"] == 1 and c["TcpOutRsts"] == 1
    assert kernel_sockets(netns, "time-wait", peer) == []

    segs = [ip.data for _ts, ip in read_tcp(pcap, port)]
    ours = [tcp for tcp in segs if tcp.sport == port]
    theirs = [tcp for tcp in segs if tcp.dport == port]
    assert not any(has(tcp, dpkt.tcp.TH_FIN) for tcp in ours)
    rsts = [tcp for tcp in ours if has(tcp, dpkt.tcp.TH_RST)]
    assert len(rsts) == 1 and has(rsts[0], dpkt.tcp.TH_ACK)
    synack = next(tcp for tcp in ours if has(tcp, dpkt.tcp.TH_SYN))
    syn = next(tcp for tcp in theirs if has(tcp, dpkt.tcp.TH_SYN))
    assert rsts[0].seq == (synack.seq + 1) & 0xFFFFFFFF  # SND.NXT: we sent no data
    assert rsts[0].ack == (syn.seq + 1 + len(b"bye now\n")) & 0xFFFFFFFF  # RCV.NXT
    server.stdin.close()
    assert server.wait(timeout=20) == 0, server.stderr.read()
