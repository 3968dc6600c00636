"""The supervisor's control socket with `--workers N`: one host made of N workers.

It listens where a single daemon would (same protocol, ustack/ctlproto.py) and answers
each request from the workers' own control sockets (PATH.w0 ... PATH.wN-1), so the
tools need no change. Generic, so that ops added to the workers work through it:

- any request/reply op is sent to every worker (or to worker K only if the request
  has "worker": K), and the replies are merged: numbers are summed (counters, gauges,
  the TIME_WAIT count), except the identity fields in KEEP, which come from worker 0;
  lists are concatenated, each object in them tagged with "worker": K (ss rows,
  captures ...); objects are merged key by key; anything else comes from worker 0.
  One worker's error is the reply. "per_worker": true adds the workers' own replies.
- the stream ops: "connect" goes to one worker ("worker": K, or each in turn) and is
  relayed byte for byte (its first reply line tagged with "worker"); "trace" goes to
  every worker and their event lines are interleaved as they come, each tagged. A new
  stream op must be named in ONE_WORKER_STREAMS or ALL_WORKER_STREAMS.
- "capture" is the one op with its own code: worker K writes FILE.wK, and on "stop"
  the parts are merged into FILE in time order.
- "ping" answers with the supervisor's pid and the number of workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import os
import re

from .control import ControlServer
from .ctlproto import MAX_LINE

log = logging.getLogger("ustack.fanout")

KEEP = frozenset({"now", "version", "pid", "uptime", "interval", "first", "t", "started",
                  "mtu", "mss", "address", "name", "filter"})
ONE_WORKER_STREAMS = frozenset({"connect"})
ALL_WORKER_STREAMS = frozenset({"trace"})
WORKER_TIMEOUT = 10.0  # a worker that does not answer a request within this is an error


def merge(replies: list[dict]) -> dict:
    """The workers' replies to one request (index = worker) as one host's reply."""
    return _merge([(k, r) for k, r in enumerate(replies)], None)


def _merge(values: list[tuple[int, object]], key: str | None):
    first = values[0][1]
    if all(isinstance(v, dict) for _, v in values):
        out: dict = {}
        for _, v in values:
            for name in v:
                if name not in out:
                    out[name] = _merge([(k, w[name]) for k, w in values if name in w], name)
        return out
    if all(isinstance(v, list) for _, v in values):
        merged = []
        for k, v in values:
            merged.extend({**item, "worker": k} if isinstance(item, dict) else item
                          for item in v)
        return merged
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for _, v in values)
    if numbers and key not in KEEP:
        total = sum(v for _, v in values)
        return round(total, 6) if isinstance(total, float) else total
    return first


class FanoutServer:
    """`await start()`, later `close()`; the workers' sockets must exist meanwhile."""

    def __init__(self, path: str, workers: list[str], *, name: str = "ustack") -> None:
        self.path = path
        self.workers = workers
        self.name = name
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._tasks: set[asyncio.Task] = set()
        self._turn = itertools.cycle(range(len(workers)))
        self.group: int | None = None  # as ControlServer.share_with_group()

    # The same socket rules as a single daemon's (mode 0600, peer uid checked, the
    # group's members too after share_with_group()).
    _bind = ControlServer._bind
    _peer_allowed = ControlServer._peer_allowed
    share_with_group = ControlServer.share_with_group
    _send = staticmethod(ControlServer._send)

    async def start(self) -> None:
        from .ctlproto import ControlError

        try:
            sock = self._bind()
        except ControlError as exc:
            raise OSError(str(exc)) from None
        self._server = await asyncio.start_unix_server(self._handle, sock=sock,
                                                       limit=MAX_LINE)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._inode = None

    # ------------------------------------------------------------------ requests

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if not self._peer_allowed(writer):
                await self._send(writer, {"ok": False, "error": "permission denied"})
                return
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._send(writer, {"ok": False,
                                              "error": f"request longer than {MAX_LINE} bytes"})
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    req = json.loads(line)
                except (ValueError, UnicodeDecodeError) as exc:
                    await self._send(writer, {"ok": False, "error": f"bad JSON: {exc}"})
                    continue
                if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                    await self._send(writer, {"ok": False,
                                              "error": 'a request is a JSON object with an "op"'})
                    continue
                targets = self._targets(req)
                if targets is None:
                    await self._send(writer, {"ok": False, "error": "bad worker (0 to "
                                              f"{len(self.workers) - 1})"})
                    continue
                op = req["op"]
                if op in ONE_WORKER_STREAMS:
                    k = targets[0] if "worker" in req else next(self._turn)
                    await self._relay(k, line, reader, writer)
                    return
                if op in ALL_WORKER_STREAMS:
                    if await self._interleave(targets, line, reader, writer):
                        return
                    continue
                try:
                    reply = await self._request(op, req, targets)
                except Exception as exc:  # a bug must cost one request, not the daemon
                    log.exception("control request %r failed", op)
                    reply = {"ok": False, "error": f"internal error: {exc!r}"}
                await self._send(writer, reply)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    def _targets(self, req: dict) -> list[int] | None:
        k = req.get("worker")
        if k is None:
            return list(range(len(self.workers)))
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self.workers):
            return None
        return [k]

    async def _ask(self, k: int, req: dict) -> dict:
        """One request to worker k, its reply (an error reply if it cannot be had)."""
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_unix_connection(self.workers[k], limit=1 << 26), WORKER_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            return {"ok": False, "error": f"worker {k} unreachable: {exc}"}
        try:
            w.write(json.dumps(req).encode() + b"\n")
            line = await asyncio.wait_for(r.readline(), WORKER_TIMEOUT)
            return json.loads(line) if line else {"ok": False,
                                                  "error": f"worker {k} closed the socket"}
        except (TimeoutError, OSError, ValueError) as exc:
            return {"ok": False, "error": f"worker {k}: {exc!r}"}
        finally:
            w.close()

    async def _request(self, op: str, req: dict, targets: list[int]) -> dict:
        sub = {key: v for key, v in req.items() if key not in ("worker", "per_worker")}
        parts: dict[int, str] = {}
        if op == "capture" and isinstance(req.get("file"), str):
            parts = {k: f"{req['file']}.w{k}" for k in targets}
        replies = await asyncio.gather(*(self._ask(k, {**sub, "file": parts[k]} if parts
                                                   else sub) for k in targets))
        for reply in replies:
            if not reply.get("ok"):
                return reply
        out = merge(replies) if len(replies) > 1 else {**replies[0]}
        if op == "ping":
            out.update(pid=os.getpid(), workers=len(self.workers),
                       worker_pids=[r.get("pid") for r in replies])
        elif op == "capture":
            out = self._captures(req, out)
        if len(targets) == 1:
            out["worker"] = targets[0]
        if req.get("per_worker") is True:
            out["per_worker"] = [{**r, "worker": k} for k, r in zip(targets, replies, strict=True)]
        return out

    @staticmethod
    def _captures(req: dict, out: dict) -> dict:
        """Capture parts FILE.wK shown as FILE; on stop, merged into FILE."""
        def whole(items: list[dict]) -> list[dict]:
            files: dict[str, int] = {}
            for item in items:
                base = re.sub(r"\.w\d+$", "", str(item.get("file", "")))
                files[base] = files.get(base, 0) + int(item.get("frames", 0))
            return [{"file": f, "frames": n} for f, n in files.items()]

        if "stopped" in out:
            stopped = whole(out["stopped"])
            for entry in stopped:
                parts = sorted({str(i["file"]) for i in out["stopped"]
                                if re.sub(r"\.w\d+$", "", str(i["file"])) == entry["file"]})
                try:
                    merge_pcaps(entry["file"], parts)
                except OSError as exc:
                    return {"ok": False, "error": f"cannot merge {entry['file']}: {exc}"}
            out["stopped"] = stopped
        out["captures"] = whole(out.get("captures", []))
        return out

    # ------------------------------------------------------------------ streams

    async def _relay(self, k: int, line: bytes, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        """A one-worker stream: the request to worker k, then bytes both ways."""
        try:
            wr, ww = await asyncio.open_unix_connection(self.workers[k], limit=MAX_LINE)
        except OSError as exc:
            await self._send(writer, {"ok": False, "error": f"worker {k} unreachable: {exc}"})
            return
        try:
            ww.write(line)
            first = await wr.readline()
            try:
                reply = json.loads(first)
                writer.write(json.dumps({**reply, "worker": k}).encode() + b"\n")
            except ValueError:
                writer.write(first)
            await writer.drain()

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                           half_close: bool) -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    while True:
                        data = await src.read(65536)
                        if not data:
                            break
                        dst.write(data)
                        await dst.drain()
                    if half_close and dst.can_write_eof():
                        dst.write_eof()

            up = asyncio.ensure_future(pump(reader, ww, True))
            try:
                await pump(wr, writer, False)  # the worker closes when the stream ends
            finally:
                up.cancel()
        finally:
            ww.close()

    async def _interleave(self, targets: list[int], line: bytes,
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """An every-worker stream; False if a worker refused it (the client may go on)."""
        conns = []
        try:
            for k in targets:
                conns.append(await asyncio.open_unix_connection(self.workers[k],
                                                                limit=1 << 24))
            for _, w in conns:
                w.write(line)
            firsts = [json.loads(await r.readline() or b"{}") for r, _ in conns]
            bad = [f for f in firsts if not f.get("ok")]
            if bad:
                await self._send(writer, bad[0] if bad[0] else
                                 {"ok": False, "error": "a worker closed the socket"})
                return False
            await self._send(writer, firsts[0])

            async def copy(k: int, r: asyncio.StreamReader) -> None:
                while True:
                    ev = await r.readline()
                    if not ev:
                        return
                    try:
                        obj = json.loads(ev)
                        ev = json.dumps({**obj, "worker": k}, separators=(",", ":")
                                        ).encode() + b"\n"
                    except ValueError:
                        pass
                    writer.write(ev)
                    await writer.drain()

            async def until_eof() -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    while await reader.read(65536):
                        pass

            tasks = [asyncio.ensure_future(copy(k, r)) for k, (r, _) in zip(targets, conns, strict=True)]
            eof = asyncio.ensure_future(until_eof())
            try:
                await asyncio.wait([eof, *tasks], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (eof, *tasks):
                    t.cancel()
            return True
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                await self._send(writer, {"ok": False, "error": f"a worker failed: {exc}"})
            return False
        finally:
            for _, w in conns:
                w.close()


def merge_pcaps(out: str, parts: list[str]) -> None:
    """The pcap files `parts` (same link type) merged into `out` in time order; the parts
    are removed. No parts: nothing happens."""
    import dpkt

    from .pcap import LINKTYPE_RAW, SNAPLEN

    if not parts:
        return
    files = [open(p, "rb") for p in parts]
    try:
        readers = []
        for f in files:
            try:
                readers.append(dpkt.pcap.Reader(f))
            except (ValueError, dpkt.dpkt.NeedData):
                pass  # an empty part: the worker saw no frame before it stopped
        tmp = f"{out}.merging"
        with open(tmp, "wb") as fo:
            writer = dpkt.pcap.Writer(fo, snaplen=SNAPLEN, linktype=LINKTYPE_RAW)
            for ts, buf in heapq.merge(*readers, key=lambda rec: rec[0]):
                writer.writepkt(buf, ts=ts)
        os.replace(tmp, out)
    finally:
        for f in files:
            f.close()
    for p in parts:
        with contextlib.suppress(OSError):
            os.unlink(p)


class PeerStatus:
    """The HTTP status page of one worker, showing the whole host: the worker's own
    live `stack.status()` merged with the other workers' last "status" replies, which
    it asks for every INTERVAL seconds (a page is never more than that behind)."""

    INTERVAL = 1.0

    def __init__(self, stack, me: int, paths: list[str]) -> None:
        self.stack = stack
        self.me = me
        self.paths = paths
        self._peers: dict[int, dict] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._poll())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _poll(self) -> None:
        asker = FanoutServer("", self.paths)
        while True:
            for k in range(len(self.paths)):
                if k != self.me:
                    rep = await asker._ask(k, {"op": "status"})
                    if rep.get("ok"):
                        rep.pop("ok")
                        rep.pop("captures", None)
                        rep.pop("name", None)
                        self._peers[k] = rep
                    else:
                        self._peers.pop(k, None)  # gone: show what is known
            await asyncio.sleep(self.INTERVAL)

    def snapshot(self) -> dict:
        own = self.stack.status()
        if not self._peers:
            return {**own, "connections": [{**r, "worker": self.me}
                                           for r in own["connections"]]}
        parts = [(self.me, own), *sorted(self._peers.items())]
        merged = _merge(parts, None)
        merged["workers"] = len(self.paths)
        return merged
