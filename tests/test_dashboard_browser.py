"""The dashboard in a real browser: `ustack serve` in its own namespace, connections made
by kernel clients there, and headless Chromium (Debian's chromium package) run inside
the same namespace with `ip netns exec`, so its requests stay in it too.

`chromium --headless --dump-dom` loads the page, runs its script (the polling) for
--virtual-time-budget milliseconds and prints the DOM as rendered; the page writes what
it drew into data-* attributes, which are what the assertions read. A screenshot of
the page is saved to tests/artifacts/dashboard.png (git-ignored) for a human to look at.
The click test drives Chromium through the DevTools protocol over a pipe instead
(tests/helpers/cdp.py) and saves tests/artifacts/dashboard-ladder.png.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import HOST_ADDRESS, PYTHON, REPO, STACK_ADDRESS, Daemon, eventually, kernel_listener

pytestmark = [pytest.mark.tun, pytest.mark.browser]

BASE = f"http://{STACK_ADDRESS}"
CURL = ("curl", "--silent", "--show-error", "--fail", "--max-time", "30")
ARTIFACTS = REPO / "tests" / "artifacts"
HOLD_PORT = 5001
BUDGET_MS = "6000"  # virtual time: about six polls of the page

# Connects to the hold service, prints its local port, waits for a line on stdin, then
# sends a line and half-closes (FIN). The hold service never closes: CLOSE-WAIT on the
# stack, FIN-WAIT-2 here, until this process is killed.
HOLD_CLIENT = f"""
import socket, sys, time
s = socket.create_connection(("{STACK_ADDRESS}", {HOLD_PORT}), timeout=30)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
s.sendall(b"hello, never closed\\n")
s.shutdown(socket.SHUT_WR)
print("half-closed", flush=True)
time.sleep(300)
"""


# A kernel server that reads each connection to its end and then closes: the stack,
# connecting with `ustack connect` and closing first, holds TIME-WAIT on an ephemeral port.
SINK_PORT = 8000
SINK_SERVER = kernel_listener() + """
while True:
    c, _ = s.accept()
    while c.recv(65536):
        pass
    c.close()
"""


class Dom(HTMLParser):
    """Elements of the dumped DOM as (tag, attributes) pairs, and its text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str | None = None, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if (tag is None or t == tag)
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def by_id(self, ident: str) -> dict[str, str]:
        found = self.find(id=ident)
        assert found, f"no element #{ident}"
        return found[0]


def chromium(d: Daemon, tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return d.run("chromium", "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path / 'chromium'}",
                 f"--virtual-time-budget={BUDGET_MS}", *extra, url, timeout=120)


def dump_dom(d: Daemon, tmp_path: Path, url: str) -> Dom:
    proc = chromium(d, tmp_path, url, "--dump-dom")
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-3000:]
    return Dom(proc.stdout)


def status(d: Daemon, query: str = "") -> dict:
    proc = d.run(*CURL, f"{BASE}/ustack/status.json?{query}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_dashboard_shows_time_wait_rising_and_flags_the_close_wait_leak(daemon, tmp_path):
    ctl = tmp_path / "ctl.sock"
    d = daemon("--hold", str(HOLD_PORT), "--close-wait-warn", "1", "--control", ctl)
    sink = d.netns.popen(PYTHON, "-c", SINK_SERVER, str(SINK_PORT), stdout=subprocess.PIPE,
                         text=True)
    assert sink.stdout.readline().strip() == "ready"
    for _ in range(3):  # active opens: end of input is our FIN, so we close first
        proc = d.run(PYTHON, "-m", "ustack", "connect", "--control", ctl, HOST_ADDRESS,
                     str(SINK_PORT), stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
    # HTTP/1.0: the stack closes first after each response, so it holds TIME-WAIT.
    for _ in range(5):
        proc = d.run(*CURL, "--http1.0", "--output", "/dev/null", f"{BASE}/")
        assert proc.returncode == 0, proc.stderr
    client = d.netns.popen(PYTHON, "-c", HOLD_CLIENT, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    port = int(client.stdout.readline())
    ident = f"{STACK_ADDRESS}:{HOLD_PORT}-{HOST_ADDRESS}:{port}"
    # Watch it before it half-closes, as a click would, so the ladder has the FIN.
    assert d.run(*CURL, f"{BASE}/ustack/ladder/{ident}.svg").returncode == 0
    client.stdin.write("go\n")
    client.stdin.flush()
    assert client.stdout.readline().strip() == "half-closed"
    leaks = eventually(lambda: status(d)["leaks"], lambda lk: lk["count"] == 1)
    assert leaks["flagged"][0]["peer"] == f"{HOST_ADDRESS}:{port}", leaks

    dom = dump_dom(d, tmp_path, f"{BASE}/?conn={ident}")
    body = dom.find("body")[0]
    assert int(body.get("data-polls", "0")) >= 2, "the page did not poll (no live update)"
    chart = dom.by_id("chart")
    assert int(chart["data-points"]) >= 2  # the ring: history from before the page opened
    assert int(chart["data-last-time-wait"]) >= 8, chart
    assert int(chart["data-max-time-wait"]) >= 8, chart
    assert int(chart["data-last-close-wait"]) == 1, chart
    assert dom.find("canvas"), "uPlot drew no canvas"
    # The state counts under the chart, as text.
    cells = {a["data-state"]: int(a["data-count"]) for a in dom.find("td")
             if "data-state" in a and "data-count" in a}
    assert cells["TIME-WAIT"] >= 8 and cells["CLOSE-WAIT"] == 1, cells
    # TIME-WAIT costs: records and the bytes they hold.
    records = int(dom.by_id("tw-records")["data-value"])
    assert records >= 8
    # Ephemeral ports held toward the kernel server, out of ip_local_port_range.
    dest = dom.find("tr", data_dest=f"{HOST_ADDRESS}:{SINK_PORT}")
    assert [r["data-time-wait"] for r in dest] == ["3"], dest
    assert int(dest[0]["data-free"]) == 60999 - 32768 + 1 - 3
    assert int(dom.by_id("tw-bytes")["data-value"]) > records * 100
    # The leak, with the peer's address and port, and an age past the threshold.
    leak_rows = dom.find("tr", **{"class": "leak"})
    assert [r["data-peer"] for r in leak_rows] == [f"{HOST_ADDRESS}:{port}"], leak_rows
    assert float(leak_rows[0]["data-age"]) >= 1.0
    # The connection table lists it; the counters panel shows TcpExt's and Tcp's.
    assert any(a.get("data-id") == ident and a.get("data-state") == "CLOSE-WAIT"
               for a in dom.find("tr")), "the leaked connection is not in the table"
    groups = {a["data-group"] for a in dom.find("div") if "data-group" in a}
    assert {"Tcp", "TcpExt", "Ip"} <= groups, groups
    # The ladder opened from the URL: the data segment and the FIN from the peer, and
    # the stack's own CLOSE_WAIT.
    segs = [a for a in dom.find("g") if a.get("class") == "segment"]
    assert any("F" in s["data-flags"] and s["data-src"] == f"{HOST_ADDRESS}:{port}"
               for s in segs), segs
    states = [a.get("data-state") for a in dom.find("text") if a.get("class") == "state"
              and a.get("data-host") == f"{STACK_ADDRESS}:{HOLD_PORT}"]
    assert "CLOSE_WAIT" in states, states

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    proc = chromium(d, tmp_path, f"{BASE}/?conn={ident}", f"--screenshot={shot}",
                    "--window-size=1280,2000")
    assert proc.returncode == 0 and shot.stat().st_size > 10000, proc.stderr[-3000:]


def test_dashboard_table_filter_in_the_browser(daemon, tmp_path):
    d = daemon("--root", REPO / "docs")
    for _ in range(3):
        assert d.run(*CURL, "--http1.0", "--output", "/dev/null",
                     f"{BASE}/ustack/").returncode == 0
    # With --root, / is the files'; the dashboard lives at /ustack/. The filter and the
    # state come from the URL as a bookmark would give them.
    dom = dump_dom(d, tmp_path, f"{BASE}/ustack/?state=LISTEN&filter=port+80")
    rows = [a for a in dom.find("tr") if "data-state" in a and "data-local" in a]
    assert [(r["data-state"], r["data-local"]) for r in rows] == \
        [("LISTEN", f"{STACK_ADDRESS}:80")], rows
    assert dom.by_id("page-info")["data-total"] == "1"
    dom = dump_dom(d, tmp_path, f"{BASE}/ustack/?filter=host+nonsense")
    assert re.search(r"bad IPv4 address 'nonsense'", "".join(dom.text))


def test_click_a_connection_and_its_ladder_grows_live(daemon, tmp_path):
    """Driven through the DevTools protocol (tests/helpers/cdp.py): a real mouse click
    on the table row, then the ladder redraws as the peer half-closes, and the leak
    flag appears, all without a reload."""
    sys.path.insert(0, str(REPO / "tests" / "helpers"))
    from cdp import Browser

    d = daemon("--hold", str(HOLD_PORT), "--close-wait-warn", "1")
    client = d.netns.popen(PYTHON, "-c", HOLD_CLIENT, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    port = int(client.stdout.readline())
    ident = f"{STACK_ADDRESS}:{HOLD_PORT}-{HOST_ADDRESS}:{port}"
    row = f'#connections tr[data-id="{ident}"]'
    browser = Browser(d.netns.cmd(), tmp_path / "chromium")
    try:
        browser.navigate(f"{BASE}/?filter=port+{HOLD_PORT}")
        assert browser.wait_for(f"document.querySelector('{row}')?.dataset.state") == "ESTAB"
        assert browser.evaluate("document.getElementById('ladder-panel').hidden") is True
        browser.click(row)
        assert browser.wait_for(
            "!document.getElementById('ladder-panel').hidden && "
            "document.getElementById('ladder-panel').dataset.id") == ident
        assert browser.evaluate("new URLSearchParams(location.search).get('conn')") == ident
        browser.wait_for("document.querySelector('#ladder svg') !== null")
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "half-closed"
        # The same panel, redrawn: the peer's data and FIN, and our CLOSE_WAIT.
        fin = (f"#ladder g.segment[data-src='{HOST_ADDRESS}:{port}']"
               "[data-flags*='F']")
        browser.wait_for(f"document.querySelector(\"{fin}\") !== null")
        states = browser.wait_for(
            "(() => { const s = [...document.querySelectorAll('#ladder text.state')]"
            f".filter(t => t.dataset.host === '{STACK_ADDRESS}:{HOLD_PORT}')"
            ".map(t => t.dataset.state); return s.includes('CLOSE_WAIT') && s; })()")
        assert "CLOSE_WAIT" in states
        assert browser.wait_for(f"document.querySelector('{row}')?.dataset.state") == \
            "CLOSE-WAIT"
        peer = browser.wait_for("document.querySelector('#leaks tr.leak')?.dataset.peer")
        assert peer == f"{HOST_ADDRESS}:{port}"
        polls = int(browser.evaluate("document.body.dataset.polls"))
        assert polls >= 2  # all of this came through polling, never a reload
        assert browser.evaluate("performance.getEntriesByType('navigation').length") == 1
        ARTIFACTS.mkdir(exist_ok=True)
        browser.evaluate("document.getElementById('ladder-panel').scrollIntoView()")
        shot = browser.send("Page.captureScreenshot", format="png")["data"]
        (ARTIFACTS / "dashboard-ladder.png").write_bytes(base64.b64decode(shot))
    finally:
        browser.close()
