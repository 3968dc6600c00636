"""The packetdrill runner (ustack/packetdrill) on ustack's core: the project's own
close-path drills, written in packetdrill's language (tests/pkt/*.pkt), must pass; a
script that is wrong must fail with the line and the reason; what the runner does not
have must be "unsupported", never a pass or a fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from ustack.packetdrill.run import Runner, run_file
from ustack.packetdrill.script import Packet, Syscall, parse

PKT = Path(__file__).parent / "pkt"
HANDSHAKE = """
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
   +0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0
   +0 bind(3, ..., ...) = 0
   +0 listen(3, 1) = 0
   +0 < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
   +0 > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 7>
 +.01 < . 1:1(0) ack 1 win 257
   +0 accept(3, ..., ...) = 4
"""


@pytest.mark.parametrize("script", sorted(PKT.glob("*.pkt")), ids=lambda p: p.stem)
def test_project_drills_pass(script: Path) -> None:
    v = run_file(str(script))
    assert v.status == "pass", str(v)


def run(text: str) -> str:
    return str(Runner().run(text))


def test_a_wrong_flag_fails_with_the_line_and_the_reason() -> None:
    v = Runner().run(HANDSHAKE + "+0 close(4) = 0\n+0 > R. 1:1(0) ack 1\n")
    assert v.status == "fail" and v.line == 11 and "(flags)" in v.detail, v


def test_a_late_segment_fails_on_time() -> None:
    # The FIN leaves at once; the script says 100 ms later.
    v = Runner().run(HANDSHAKE + "+0 close(4) = 0\n+.1 > F. 1:1(0) ack 1\n")
    assert v.status == "fail" and "expected F. 1:1(0) ack 1 at 0.110000" in v.detail, v


def test_an_unexpected_segment_fails() -> None:
    v = Runner().run(HANDSHAKE + "+0 close(4) = 0\n+.1 < . 1:1(0) ack 2 win 257\n")
    assert v.status == "fail" and "unexpected packet" in v.detail and "F." in v.detail, v


def test_a_wrong_return_value_fails() -> None:
    v = Runner().run(HANDSHAKE + "+0 read(4, ..., 100) = 5\n")
    assert v.status == "fail" and "read() returned -1 EAGAIN" not in v.detail
    v = Runner().run(HANDSHAKE + "+0 fcntl(4, F_SETFL, O_RDWR|O_NONBLOCK) = 0\n"
                     "+0 read(4, ..., 100) = -1 EAGAIN (Resource temporarily unavailable)\n")
    assert v.status == "pass", v


def test_blocking_read_returns_when_the_data_arrives() -> None:
    ok = HANDSHAKE + ("+0...0.100 read(4, ..., 10) = 10\n"
                      "+.1 < P. 1:11(10) ack 1 win 257\n+0 > . 1:1(0) ack 11\n")
    assert Runner().run(ok).status == "pass"
    late = ok.replace("0...0.100", "0...0.050")
    v = Runner().run(late)
    assert v.status == "fail" and "read() returned 10 at" in v.detail, v


def test_timestamps_are_mapped() -> None:
    """A script's TSecr that echoes the stack's TSval (named by the script) is
    translated to the stack's own clock (packetdrill's run_packet.c)."""
    text = """
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
   +0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0
   +0 bind(3, ..., ...) = 0
   +0 listen(3, 1) = 0
   +0 < S 0:0(0) win 32792 <mss 1000,sackOK,TS val 100 ecr 0,nop,wscale 7>
   +0 > S. 0:0(0) ack 1 <mss 1460,sackOK,TS val 700 ecr 100,nop,wscale 7>
 +.01 < . 1:1(0) ack 1 win 257 <nop,nop,TS val 110 ecr 700>
   +0 accept(3, ..., ...) = 4
   +0 close(4) = 0
   +0 > F. 1:1(0) ack 1 <nop,nop,TS val 710 ecr 110>
"""
    assert run(text) == "pass"
    assert "ecr 110" in run(text.replace("ecr 110>", "ecr 111>"))  # ecr is checked


def test_unsupported_constructs_are_named_not_judged() -> None:
    for line, what in (("+0 ioctl(4, FIONBIO, [1]) = 0", "ioctl"),
                       ("`ip link set tun0 mtu 1400`", "ip link"),
                       ("+0 poll([{fd=4, events=POLLIN, revents=0}], 1, 0) = 0", "poll")):
        v = Runner().run(HANDSHAKE + line + "\n")
        assert v.status == "unsupported" and what in v.detail, v


def test_a_script_that_does_not_parse_is_an_error() -> None:
    v = Runner().run("0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n+0 < Q 0:0(0)\n")
    assert v.status == "error" and v.line == 2, v


def test_the_parser_reads_packetdrills_grammar() -> None:
    ev = parse("""
--tolerance_usecs=10000
`../common/defaults.sh
sysctl -q net.ipv4.tcp_ecn=1`
+.002 ... 0.004 connect(4, ..., ...) = 0
 +.3~+.4 > [ect0] P. 1:1001(1000) ack 1 <nop,nop,TS val 1 ecr 2>
 +0 %{ assert tcpi_snd_cwnd == 10, tcpi_snd_cwnd }%
 +0 write(4, ..., 24) = -1 ETIMEDOUT (Connection timed out)
""")
    kinds = [type(e.what).__name__ for e in ev]
    assert kinds == ["Flag", "Shell", "Syscall", "Packet", "Code", "Syscall"]
    call = ev[2].what
    assert isinstance(call, Syscall) and call.blocking_end and ev[2].time.end == 0.004
    pkt = ev[3].what
    assert isinstance(pkt, Packet) and pkt.ecn == "ect0" and pkt.start == 1 and pkt.end == 1001
    assert ev[3].time.start == 0.3 and ev[3].time.end == 0.4
    assert ev[5].what.errno == "ETIMEDOUT" and ev[5].what.result == "-1"


def test_python_blocks_read_tcp_info() -> None:
    ok = HANDSHAKE + "+0 %{ assert tcpi_snd_cwnd == 10, tcpi_snd_cwnd }%\n"
    assert run(ok) == "pass"
    v = Runner().run(ok.replace("== 10", "== 11"))
    assert v.status == "fail" and "assertion failed: 10" in v.detail, v


def test_tools_packetdrill_runs_the_drills() -> None:
    """The command line: one verdict a script, exit 0 when none failed; 1 when one
    did, with its line."""
    import subprocess
    import sys

    tool = Path(__file__).resolve().parent.parent / "tools" / "packetdrill"
    scripts = sorted(str(p) for p in PKT.glob("*.pkt"))
    p = subprocess.run([sys.executable, str(tool), *scripts], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(": pass") == len(scripts), p.stdout
    bad = PKT.parent / "pkt-bad.tmp"
    bad.write_text(HANDSHAKE + "+0 close(4) = 0\n+0 > R. 1:1(0) ack 1\n")
    try:
        p = subprocess.run([sys.executable, str(tool), str(bad)], capture_output=True,
                           text=True, timeout=60)
    finally:
        bad.unlink()
    assert p.returncode == 1 and "fail (line 11)" in p.stdout, p.stdout + p.stderr
