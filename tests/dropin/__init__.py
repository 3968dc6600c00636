"""The differential suite's framework: one asyncio program, run on kernel sockets and on
ustack, what it observes recorded and compared.

A case is `async def case(net, rec)`: a small asyncio program that reaches the network
only through `net` (`KernelNet`: asyncio's own loop calls on 127.0.0.1 inside the test's
namespace; `UstackNet`: two ustack Stacks over the memory link, the client's and the
server's) and writes what it sees into `rec` (`rec["key"] = value`: callbacks in order
with their arguments, return values, exception types, bytes). `run()` adds what asyncio
logged (its logger and the loop's exception handler) while the case ran. The two records
must be equal, except for the keys a case lists in its `deviations` with both values and
the reason (the README's table of deviations is these).

`run_on_uvloop()` runs a case on ustack in a fresh uvloop loop (in a thread: the
test's loop is asyncio's), so the suite states what ustack does on uvloop too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ustack import Stack
from ustack.config import Config, apply_settings
from ustack.io.memory import MemoryLink

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
TIMEOUT = 20.0  # a bound on each case, only to turn a hang into a failure


class Rec(dict):
    """What a case observed: a dict of observations plus each endpoint's callbacks in
    order. Per endpoint: how the two ends' callbacks interleave is the scheduler's
    business on either stack (the kernel finishes a loopback handshake before either
    side hears of it; two stacks exchange frames one loop iteration apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: dict[str, list[tuple]] = {}

    def ev(self, name: str, *item: Any) -> None:
        self.log.setdefault(name, []).append(item)

    def seen(self, name: str, *item: Any) -> bool:
        return item in self.log.get(name, [])

    def count(self, name: str, *item: Any) -> int:
        return self.log.get(name, []).count(item)


class KernelNet:
    """asyncio on kernel sockets (127.0.0.1 in the test's own namespace)."""

    name = "kernel"
    host = "127.0.0.1"
    client_host = "127.0.0.1"

    def __init__(self, knobs: tuple[str, ...] = ()) -> None:
        self.loop = asyncio.get_running_loop()

    async def start_server(self, cb, port: int = 0, **kw):
        return await asyncio.start_server(cb, self.host, port, **kw)

    async def open_connection(self, port: int, **kw):
        return await asyncio.open_connection(self.host, port, **kw)

    async def create_server(self, factory, port: int = 0, **kw):
        return await self.loop.create_server(factory, self.host, port, **kw)

    async def create_connection(self, factory, port: int, **kw):
        return await self.loop.create_connection(factory, self.host, port, **kw)

    def client_api(self):
        """The object whose open_connection/create_connection a case calls with
        asyncio's full signature (kwargs cases)."""
        return _KernelApi(self.loop)

    def server_api(self):
        return _KernelApi(self.loop)

    def close(self) -> None:
        pass


class _KernelApi:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    async def open_connection(self, *a, **kw):
        return await asyncio.open_connection(*a, **kw)

    async def start_server(self, *a, **kw):
        return await asyncio.start_server(*a, **kw)

    async def create_connection(self, *a, **kw):
        return await self.loop.create_connection(*a, **kw)

    async def create_server(self, *a, **kw):
        return await self.loop.create_server(*a, **kw)


class UstackNet:
    """Two ustack Stacks over a MemoryLink on the running loop."""

    name = "ustack"
    host = SERVER
    client_host = CLIENT

    def __init__(self, knobs: tuple[str, ...] = ()) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = Stack(CLIENT, config=apply_settings(Config(), list(knobs)), loop=self.loop)
        self.server = Stack(SERVER, config=apply_settings(Config(), list(knobs)), loop=self.loop)
        self.link = MemoryLink(self.loop)
        self.link.connect(self.client, self.server)

    async def start_server(self, cb, port: int = 0, **kw):
        return await self.server.start_server(cb, SERVER, port, **kw)

    async def open_connection(self, port: int, **kw):
        return await self.client.open_connection(SERVER, port, **kw)

    async def create_server(self, factory, port: int = 0, **kw):
        return await self.server.create_server(factory, SERVER, port, **kw)

    async def create_connection(self, factory, port: int, **kw):
        return await self.client.create_connection(factory, SERVER, port, **kw)

    def client_api(self):
        return self.client

    def server_api(self):
        return self.server

    def close(self) -> None:
        self.client.close()
        self.server.close()


class _TunNet:
    """ustack on a TUN device in the test's namespace, the kernel as the peer on the
    other side of it (10.77.0.1): where the wire matters, the kernel's TCP sees what
    ustack sent. The test's thread must be inside the namespace (`inside_netns`)."""

    kernel_addr, stack_addr = "10.77.0.1", "10.77.0.2"

    def __init__(self, knobs: tuple[str, ...] = ()) -> None:
        from ustack.io.tun import TunDevice
        self.loop = asyncio.get_running_loop()
        self.device = TunDevice("udrop0", f"{self.kernel_addr}/24")
        self.stack = Stack(self.stack_addr, config=apply_settings(Config(), list(knobs)),
                           loop=self.loop)
        self.stack.attach(self.device)
        self.device.start(self.loop, self.stack.receive)

    def close(self) -> None:
        self.stack.close()
        self.device.close()


class TunClientNet(_TunNet):
    """ustack connects, the kernel listens."""

    name = "tun-client"
    host = _TunNet.kernel_addr
    client_host = _TunNet.stack_addr

    async def start_server(self, cb, port: int = 0, **kw):
        return await asyncio.start_server(cb, self.host, port, **kw)

    async def open_connection(self, port: int, **kw):
        return await self.stack.open_connection(self.host, port, **kw)

    async def create_server(self, factory, port: int = 0, **kw):
        return await self.loop.create_server(factory, self.host, port, **kw)

    async def create_connection(self, factory, port: int, **kw):
        return await self.stack.create_connection(factory, self.host, port, **kw)


class TunServerNet(_TunNet):
    """ustack listens, the kernel connects."""

    name = "tun-server"
    host = _TunNet.stack_addr
    client_host = _TunNet.kernel_addr

    async def start_server(self, cb, port: int = 0, **kw):
        return await self.stack.start_server(cb, self.host, port, **kw)

    async def open_connection(self, port: int, **kw):
        return await asyncio.open_connection(self.host, port, **kw)

    async def create_server(self, factory, port: int = 0, **kw):
        return await self.stack.create_server(factory, self.host, port, **kw)

    async def create_connection(self, factory, port: int, **kw):
        return await self.loop.create_connection(factory, self.host, port, **kw)


Case = Callable[[Any, Rec], Awaitable[None]]


@dataclass
class Deviation:
    """A documented difference: the key, what the kernel's run shows, what ustack's
    shows, and why (the README's table)."""

    key: str
    kernel: Any
    ustack: Any
    reason: str


@dataclass
class Spec:
    fn: Case
    deviations: list[Deviation] = field(default_factory=list)
    knobs: tuple[str, ...] = ()
    uvloop: bool = True  # run on uvloop too


def case(*deviations: Deviation, knobs: tuple[str, ...] = (), uvloop: bool = True):
    def wrap(fn: Case) -> Spec:
        return Spec(fn, list(deviations), knobs, uvloop)
    return wrap


class _Capture(logging.Handler):
    def __init__(self, thread: int) -> None:
        super().__init__(logging.DEBUG)
        self.thread = thread
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.levelno >= logging.WARNING:
            self.records.append((record.levelname, record.getMessage()))


async def run(spec: Spec, net_cls: type) -> dict:
    """Run one case on one net; the record as a plain dict, logs included."""
    loop = asyncio.get_running_loop()
    handler = _Capture(threading.get_ident())
    alog = logging.getLogger("asyncio")
    alog.addHandler(handler)
    old_level = alog.level
    alog.setLevel(logging.WARNING)
    handled: list[str] = []
    old_handler = loop.get_exception_handler()

    def on_exception(loop, context) -> None:
        exc = context.get("exception")
        handled.append(f"{context.get('message')}: {type(exc).__name__ if exc else None}")

    loop.set_exception_handler(on_exception)
    net = net_cls(spec.knobs)
    rec = Rec()
    try:
        await asyncio.wait_for(spec.fn(net, rec), TIMEOUT)
        await asyncio.sleep(0.05)  # late callbacks and log lines land in the record
    finally:
        loop.set_exception_handler(old_handler)
        alog.removeHandler(handler)
        alog.setLevel(old_level)
        net.close()
        gc.collect()
    out = dict(rec)
    out["events"] = rec.log
    out["asyncio_log"] = handler.records
    out["exception_handler"] = handled
    return out


def run_on_uvloop(spec: Spec) -> dict:
    """The case on ustack in a fresh uvloop loop (call from a worker thread)."""
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(run(spec, UstackNet))
    finally:
        loop.close()


def compare(spec: Spec, kernel: dict, ours: dict) -> None:
    """Equal but for the case's documented deviations, which must show as documented
    (so a deviation that went away, or changed, fails too)."""
    kernel, ours = dict(kernel), dict(ours)
    for d in spec.deviations:
        seen = (kernel.pop(d.key, None), ours.pop(d.key, None))
        assert seen == (d.kernel, d.ustack), \
            f"deviation {d.key!r} ({d.reason}) is not as documented: kernel, ustack = {seen}"
    diff = {k: (kernel.get(k, "<missing>"), ours.get(k, "<missing>"))
            for k in sorted(set(kernel) | set(ours)) if kernel.get(k) != ours.get(k)}
    assert not diff, "kernel vs ustack differ (key: (kernel, ustack)):\n" + "\n".join(
        f"  {k}: {v[0]!r}\n  {' ' * len(k)}  {v[1]!r}" for k, v in diff.items())


async def check(spec: Spec) -> dict:
    """The whole comparison for one case: kernel vs ustack on asyncio's loop, and
    ustack on uvloop's loop equal to ustack on asyncio's."""
    kernel = await run(spec, KernelNet)
    ours = await run(spec, UstackNet)
    compare(spec, kernel, ours)
    if spec.uvloop:
        on_uv = await asyncio.get_running_loop().run_in_executor(None, run_on_uvloop, spec)
        diff = {k: (ours.get(k), on_uv.get(k)) for k in set(ours) | set(on_uv)
                if ours.get(k) != on_uv.get(k)}
        assert not diff, f"ustack on uvloop differs from ustack on asyncio's loop: {diff}"
    return kernel


async def check_tun(spec: Spec) -> None:
    """The case with ustack on one end of a TUN device and the kernel on the other,
    both ways round, against the kernel on both ends."""
    kernel = await run(spec, KernelNet)
    for net_cls in (TunClientNet, TunServerNet):
        compare(spec, kernel, await run(spec, net_cls))


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll `predicate` on the loop; the timeout only turns a hang into a failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.005)


class Recorder(asyncio.Protocol):
    """A protocol that logs its callbacks into `rec` under a name."""

    def __init__(self, rec: Rec, name: str, keep_open: object = None) -> None:
        self.rec, self.name, self.keep_open = rec, name, keep_open
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()
        self.eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.rec.ev(self.name, "made")

    def data_received(self, data: bytes) -> None:
        ev = self.rec.log.get(self.name)
        if not (ev and ev[-1] == ("data",)):
            self.rec.ev(self.name, "data")
        self.data += data

    def eof_received(self):
        self.rec.ev(self.name, "eof")
        if not self.eof.done():
            self.eof.set_result(None)
        return self.keep_open

    def pause_writing(self) -> None:
        self.rec.ev(self.name, "pause_writing")

    def resume_writing(self) -> None:
        self.rec.ev(self.name, "resume_writing")

    def connection_lost(self, exc) -> None:
        self.rec.ev(self.name, "lost", type(exc).__name__ if exc else None)
        if not self.lost.done():
            self.lost.set_result(exc)


async def protocol_pair(net, rec: Rec, server_keep_open: object = None,
                        client_keep_open: object = None):
    """A server and one connection with Recorder protocols on both ends."""
    accepted: asyncio.Queue = asyncio.Queue()

    def factory() -> Recorder:
        p = Recorder(rec, "server", server_keep_open)
        accepted.put_nowait(p)
        return p

    server = await net.create_server(factory)
    port = server.sockets[0].getsockname()[1]
    client = Recorder(rec, "client", client_keep_open)
    await net.create_connection(lambda: client, port)
    peer = await asyncio.wait_for(accepted.get(), 10)
    await until(lambda: peer.transport is not None)
    return server, client, peer


async def stream_pair(net, **server_kw):
    """A stream server and one connection: (server, (cr, cw), (sr, sw))."""
    accepted: asyncio.Queue = asyncio.Queue()

    async def cb(reader, writer):
        await accepted.put((reader, writer))

    server = await net.start_server(cb, **server_kw)
    port = server.sockets[0].getsockname()[1]
    cr, cw = await net.open_connection(port)
    sr, sw = await asyncio.wait_for(accepted.get(), 10)
    return server, (cr, cw), (sr, sw)


async def outcome(aw, timeout: float = 10.0) -> str | None:
    """None if `aw` completes, else the name of what it raised ("hang" if it did not end
    within `timeout`: a TimeoutError is an answer here, ETIMEDOUT)."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        return "hang"
    if task.cancelled():
        return "CancelledError"
    exc = task.exception()
    return type(exc).__name__ if exc else None


def raises(fn: Callable[[], object]) -> str | None:
    """None, or the type and message of what `fn()` raised."""
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
