"""The daemon's life: SIGTERM with live connections (FIN within the grace period, then
RST, TUN removed, exit 0), --user/--group (privileges dropped after set-up, the control
socket still usable), and a SIGKILLed daemon's stale control socket (replaced by the
next start; a live one refused in words). Each in the test's own namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, STACK_ADDRESS, Netns

pytestmark = pytest.mark.tun

# A kernel client inside the namespace: one idle keep-alive HTTP connection (after one
# request), and one download it never reads; then it reports how each ended.
CLIENT = r"""
import json, socket, sys, time
idle = socket.create_connection((sys.argv[1], 80), timeout=10)
idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += idle.recv(65536)
stuck = socket.socket()
stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
stuck.connect((sys.argv[1], 80))
stuck.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
print("ready", flush=True)
def end(s):
    s.settimeout(30)
    try:
        while True:
            data = s.recv(1 << 20)
            if not data:
                return "fin"
    except ConnectionResetError:
        return "rst"
    except socket.timeout:
        return "timeout"
sys.stdin.readline()   # the test has sent SIGTERM
r = {"idle": end(idle)}
time.sleep(float(sys.argv[2]))   # past the grace period: it cannot have finished
r["stuck"] = end(stuck)
print(json.dumps(r), flush=True)
"""


def start(ns: Netns, tmp: Path, *extra: str | os.PathLike) -> subprocess.Popen:
    err = open(tmp / f"daemon-{time.monotonic_ns()}.stderr", "w+b")  # noqa: SIM115
    proc = ns.popen(PYTHON, "-m", "ustack", "serve", *map(str, extra),
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    proc.err = err  # type: ignore[attr-defined]
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    proc.err.seek(0)  # type: ignore[attr-defined]
    return proc.err.read().decode(errors="replace")  # type: ignore[attr-defined]


def wait_up(ns: Netns, proc: subprocess.Popen) -> None:
    if not ns.wait_for(["ping", "-c1", "-W1", STACK_ADDRESS], alive=proc):
        pytest.fail(f"daemon not up ({proc.poll()}): {stderr_of(proc)}", pytrace=False)


def test_sigterm_fins_then_resets_removes_tun_exits_0(make_netns, tmp_path: Path):
    ns = make_netns()
    root = tmp_path / "root"
    root.mkdir()
    (root / "index.html").write_bytes(b"hi\n")
    (root / "big.bin").write_bytes(os.urandom(4 << 20))
    proc = start(ns, tmp_path, "--root", root, "--control", "none",
                 "--shutdown-grace", "1", "--tun", "ustk-life0")
    wait_up(ns, proc)
    client = ns.popen(PYTHON, "-c", CLIENT, STACK_ADDRESS, "2", stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # the download fills the windows and stalls
    proc.send_signal(signal.SIGTERM)
    client.stdin.write("go\n")
    client.stdin.flush()
    assert proc.wait(timeout=20) == 0, stderr_of(proc)
    out = json.loads(client.stdout.readline())
    client.wait(timeout=30)
    # The idle connection got our FIN; the stalled download could not finish within
    # the grace period (its data unsent) and was reset.
    assert out == {"idle": "fin", "stuck": "rst"}, (out, stderr_of(proc))
    link = ns.run("ip", "link", "show", "ustk-life0")
    assert link.returncode != 0  # the TUN device is gone


def test_user_drops_privileges_and_control_stays_usable(make_netns, tmp_path: Path):
    ns = make_netns()
    ctl = tmp_path / "ctl" / "u.sock"
    ctl.parent.mkdir()
    proc = start(ns, tmp_path, "--control", ctl, "--user", "nobody", "--group", "nogroup")
    wait_up(ns, proc)
    with open(f"/proc/{proc.pid}/status") as f:
        ids = {ln.split(":")[0]: ln.split()[1:] for ln in f if ln.startswith(("Uid", "Gid"))}
    assert set(ids["Uid"]) == {"65534"} and set(ids["Gid"]) == {"65534"}, ids
    st = os.stat(ctl)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 65534, 0o660)
    # Root (the test) can still use it, and the services still serve.
    ss = ns.run(PYTHON, "-m", "ustack", "ss", "-l", "--control", ctl)
    assert ss.returncode == 0 and "LISTEN" in ss.stdout, ss.stderr
    curl = ns.run("curl", "-s", "--max-time", "10", f"http://{STACK_ADDRESS}/status.json")
    assert curl.returncode == 0 and json.loads(curl.stdout)["stats"], curl.stderr
    assert "running as uid 65534, gid 65534" in stderr_of(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, stderr_of(proc)


def test_unknown_user_is_a_command_line_error(make_netns, tmp_path: Path):
    ns = make_netns()
    proc = start(ns, tmp_path, "--control", "none", "--user", "no-such-user-ustack")
    assert proc.wait(timeout=30) == 2
    assert "--user no-such-user-ustack: no such user" in stderr_of(proc)


def test_sigkill_leaves_a_stale_socket_the_next_start_replaces(make_netns, tmp_path: Path):
    ns = make_netns()
    ctl = tmp_path / "k.sock"
    first = start(ns, tmp_path, "--control", ctl)
    wait_up(ns, first)
    # A second daemon on the same socket while the first lives: refused, in words.
    ns2 = make_netns()
    second = start(ns2, tmp_path, "--control", ctl)
    assert second.wait(timeout=30) == 1
    assert f"control socket {ctl} is in use by another daemon" in stderr_of(second)
    first.kill()  # SIGKILL: no clean-up, the socket file stays
    first.wait(timeout=10)
    assert ctl.is_socket()
    third = start(ns, tmp_path, "--control", ctl)
    wait_up(ns, third)
    ping = ns.run(PYTHON, "-m", "ustack", "nstat", "--control", ctl, "-a", "--json")
    assert ping.returncode == 0, ping.stderr + stderr_of(third)
    third.send_signal(signal.SIGTERM)
    assert third.wait(timeout=20) == 0, stderr_of(third)
    assert not ctl.exists()  # a clean exit removes it
