"""Shared fixtures: network namespaces and the `ustack serve` daemon inside one.

Tests marked `@pytest.mark.tun` need root and /dev/net/tun. Without them they skip, with
the reason, so `pytest` works on a laptop; with CI=true they fail, so a CI machine that
lost its privileges cannot pass by skipping everything that matters. Tests marked
`@pytest.mark.netns` need root only: they put their own kernel sockets in a namespace
(`inside_netns`), e.g. to compare ustack with the kernel's TCP on a private loopback.

Every packet these fixtures cause stays inside a namespace the fixture created (only
10.77.0.0/16 addresses, a TUN device that lives and dies in that namespace), and every
namespace is deleted on teardown, after the processes started in it are killed by PID.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the venv's interpreter, so subprocesses see the same packages
STACK_ADDRESS = "10.77.0.2"
HOST_ADDRESS = "10.77.0.1"
READY_TIMEOUT = 15.0  # loose: a cold start on a loaded 2-core VM takes ~1 s


def eventually(probe: Callable[[], object], ok: Callable[[object], bool],
               timeout: float = 15.0) -> object:
    """Poll `probe` until `ok(result)`; the last result either way. A close handshake
    finishes a moment after the command that caused it exits, so the first look may be
    too early; the timeout is loose, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if ok(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def kernel_listener(backlog: int = 8) -> str:
    """The start of a kernel-side server script (run with `python -c SCRIPT PORT` in the
    namespace): bound to the host address, listening, "ready" printed. The caller appends
    what the server does with `s`."""
    return f"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{HOST_ADDRESS}", int(sys.argv[1])))
s.listen({backlog})
print("ready", flush=True)
"""


def tun_missing_reason() -> str | None:
    """Why `tun` tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and a TUN device)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return None


def netns_missing_reason() -> str | None:
    """Why `netns` tests (a namespace, no TUN device) cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, not in pyproject.toml, so adding it did not change the file whose
    # hash decides whether scripts/setup reinstalls the venv.
    config.addinivalue_line(
        "markers", "netns: needs root (runs its own sockets in a network namespace); "
                   "fails instead of skipping when CI=true")
    config.addinivalue_line(
        "markers", "browser: needs headless Chromium (Debian's chromium package); "
                   "fails instead of skipping when CI=true")


def browser_missing_reason() -> str | None:
    """Why `browser` tests (headless Chromium, Debian's chromium package) cannot run."""
    if shutil.which("chromium") is None:
        return "needs headless Chromium (the chromium package; scripts/setup installs it)"
    return None


def _require_browser(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") is None:
        return
    reason = browser_missing_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but this browser test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    _require_browser(item)
    if item.get_closest_marker("tun") is not None:
        reason = tun_missing_reason()
    elif item.get_closest_marker("netns") is not None:
        reason = netns_missing_reason()
    else:
        return
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but this tun test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


class Netns:
    """A network namespace this test owns, with helpers to run things inside it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen] = []

    def cmd(self, *argv: str | os.PathLike) -> list[str]:
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def run(self, *argv: str | os.PathLike, timeout: float = 120,
            **kwargs) -> subprocess.CompletedProcess:
        """Run a command in the namespace to completion; output captured as text."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("cwd", REPO)
        return subprocess.run(self.cmd(*argv), timeout=timeout, **kwargs)

    def popen(self, *argv: str | os.PathLike, **kwargs) -> subprocess.Popen:
        """Start a command in the namespace; it is killed by PID on teardown if still alive.

        `ip netns exec` execs the command in place, so the PID is the command's own."""
        kwargs.setdefault("cwd", REPO)
        proc = subprocess.Popen(self.cmd(*argv), **kwargs)
        self.procs.append(proc)
        return proc

    def wait_for(self, argv: list[str], timeout: float = READY_TIMEOUT,
                 alive: subprocess.Popen | None = None) -> bool:
        """Poll `argv` in the namespace until it succeeds; False if it never does or if
        `alive` exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if alive is not None and alive.poll() is not None:
                return False
            if self.run(*argv, timeout=timeout).returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], Netns]]:
    """Factory: each call creates a fresh namespace (loopback up); all are deleted after."""
    created: list[Netns] = []

    def make() -> Netns:
        name = f"ustk-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns = Netns(name)
        created.append(ns)
        subprocess.run(ns.cmd("ip", "link", "set", "lo", "up"), check=True,
                       capture_output=True)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(created):
            ns.cleanup()


@pytest.fixture
def netns(make_netns: Callable[[], Netns]) -> Netns:
    """A fresh namespace for this test; `.name` is what `ip netns list` shows."""
    return make_netns()


CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@pytest.fixture
def inside_netns(netns: Netns) -> Iterator[Netns]:
    """Move the test's own thread into a fresh namespace for the duration of the test.

    Kernel sockets the test opens in-process (even on 127.0.0.1) then live in that
    namespace and its private loopback, so their packets never touch the host's stack.
    setns(2) moves only the calling thread; pytest and the asyncio loop run on it. The
    thread goes back home before the namespace is deleted, also on failure."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns.name}") as ns:
        _setns(ns.fileno())
        try:
            yield netns
        finally:
            _setns(home.fileno())


class Daemon:
    """`ustack serve` running in its own namespace."""

    def __init__(self, netns: Netns, proc: subprocess.Popen, stderr_path: Path) -> None:
        self.netns = netns
        self.ns = netns.name
        self.proc = proc
        self.stderr_path = stderr_path

    def run(self, *argv: str | os.PathLike, **kwargs) -> subprocess.CompletedProcess:
        return self.netns.run(*argv, **kwargs)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; the exit status (raises if the daemon does not exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def daemon(make_netns: Callable[[], Netns], tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: `daemon("--root", dir, ...)` starts `python -m ustack serve ...` in a new
    namespace and returns once the stack answers ping. On teardown the daemon gets
    SIGTERM and must exit with status 0."""
    started: list[Daemon] = []

    def start(*extra: str | os.PathLike) -> Daemon:
        ns = make_netns()
        stderr_path = tmp_path / f"daemon-{len(started)}.stderr"
        with open(stderr_path, "wb") as err:
            proc = ns.popen(PYTHON, "-m", "ustack", "serve", *map(str, extra),
                            stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        d = Daemon(ns, proc, stderr_path)
        started.append(d)
        if not ns.wait_for(["ping", "-c1", "-W1", STACK_ADDRESS], alive=proc):
            pytest.fail(f"ustack serve not answering ping (exit status {proc.poll()}); "
                        f"stderr:\n{d.stderr()}", pytrace=False)
        return d

    yield start
    problems = []
    for d in started:
        try:
            status = d.stop()
        except subprocess.TimeoutExpired:
            problems.append(f"{d.ns}: daemon ignored SIGTERM; stderr:\n{d.stderr()}")
            continue
        if status != 0:
            problems.append(f"{d.ns}: daemon exited {status}; stderr:\n{d.stderr()}")
    assert not problems, "\n".join(problems)
