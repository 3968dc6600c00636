"""A minimal Chrome DevTools protocol client over `--remote-debugging-pipe`, for the
browser tests that need to click: no websocket library, no port to open.

Chromium reads commands from its fd 3 and writes replies and events to its fd 4, each
message one JSON object ended by a NUL byte. `Browser` starts headless Chromium with
those two pipes (optionally through `ip netns exec NS`, which execs it in place so the
pipes are inherited), attaches to its page, and offers navigate / evaluate / click.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path

TIMEOUT = 30.0  # per command; loose, only there so a hang becomes a failure


class CdpError(RuntimeError):
    pass


def _high(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Browser:
    def __init__(self, prefix: list[str], profile: Path, size: tuple[int, int] = (1280, 1000)
                 ) -> None:
        # Our ends: we write commands to `to_chrome`, read replies from `from_chrome`.
        cmd_r, self._to_chrome = os.pipe()
        self._from_chrome, out_w = os.pipe()
        # Chromium's ends must be its fds 3 and 4. Moved above 10 first, so the dup2s
        # in the child cannot overwrite one with the other; dup2 leaves the copies
        # inheritable, the originals stay close-on-exec.
        cmd_r, out_w = (_high(fd) for fd in (cmd_r, out_w))

        def child_fds() -> None:
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [*prefix, "chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=child_fds, close_fds=False)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.session: str | None = None
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"],
                                 flatten=True)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")

    # ------------------------------------------------------------------ protocol

    def send(self, method: str, **params) -> dict:
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise CdpError("no reply from chromium in time")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise CdpError("chromium closed the pipe: "
                               + self.proc.stderr.read().decode(errors="replace")[-2000:])
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    # ------------------------------------------------------------------ page

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str):
        """The value of a JS expression (awaited if it is a promise)."""
        r = self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                      returnByValue=True)
        if "exceptionDetails" in r:
            raise CdpError(f"JS: {r['exceptionDetails'].get('exception', r['exceptionDetails'])}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0):
        """Poll a JS expression until it is truthy; its value, or CdpError."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except CdpError:
                value = None  # e.g. the page is still loading
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(f"never true: {expression}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the element."""
        rect = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        x, y = rect
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (CdpError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
