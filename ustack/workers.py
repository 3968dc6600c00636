"""`ustack serve --workers N`: N shared-nothing stacks over N queues of one TUN device.

The supervisor (this process) opens the device with IFF_MULTI_QUEUE and N queues,
installs the steering program (ustack.io.steering), makes the secret every worker
shares, and forks. Worker k keeps queue k only and runs what `serve` runs with one
worker (cli._serve): its own Stack, demultiplexer, TIME_WAIT table, timers, services and
control socket (PATH.wK). What the workers must agree on:

- the secret of ISNs (RFC 6528), timestamp offsets, ephemeral port choice and SYN
  cookies: one random secret made before fork, so a connection looks the same
  whichever worker answers it;
- the ephemeral range: worker k connects from slice k only (steering.port_slices),
  which is what lets the steering program send the SYN-ACK of its SYN back to it;
- the per-host budgets Linux has once per host are divided: tcp_max_tw_buckets // N
  TIME_WAIT records per worker (Linux: one table per netns, inet_twsk_alloc()), and
  tcp_challenge_ack_limit // N challenge ACKs per second per worker (at least 1;
  Linux: one per netns, tcp_send_challenge_ack()); INT_MAX stays "no limit".

A segment always reaches the worker that owns its connection (the steering program is
a pure function of the four-tuple), so no worker ever sees another's segments and none
answers a stranger's segment with a RST.

The supervisor listens at the usual control socket and fans requests out to the
workers (ustack.fanout). It restarts nothing: a worker that dies takes its connections
with it, and a restarted one would answer their next segments with RSTs, so the death
is logged, the other workers are stopped and the daemon exits 1 (a service manager
restarts the whole daemon). SIGINT and SIGTERM are forwarded to every worker; once all
have exited the supervisor merges the pcap parts, closes its queue fds, and the
non-persistent device disappears.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from .config import Config

log = logging.getLogger("ustack.workers")

SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
READY_TIMEOUT = 30.0  # loose: a worker's start-up on a loaded machine takes ~1 s
STOP_TIMEOUT = 10.0  # a worker still alive this long after SIGTERM gets SIGKILL


def part_path(path: str, worker: int | None) -> str:
    """Worker k's version of a path the daemon would use (control socket, pcap file)."""
    return path if worker is None else f"{path}.w{worker}"


def worker_config(config: Config, n: int, k: int, port_range: tuple[int, int]) -> Config:
    """Worker k's knobs: its slice of the ephemeral range, its share of the budgets."""
    limit = config.tcp_challenge_ack_limit
    return dataclasses.replace(
        config, ip_local_port_range=port_range,
        tcp_max_tw_buckets=config.tcp_max_tw_buckets // n,
        tcp_challenge_ack_limit=limit if limit >= 2**31 - 1 else max(1, limit // n))


def _say(message: str) -> None:
    print(f"ustack: {message}", file=sys.stderr, flush=True)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"was killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def run_workers(args: argparse.Namespace, config: Config, serve: Callable[..., Awaitable]
                ) -> int:
    """The supervisor: device, fork, supervise; the daemon's exit status. `serve` is
    what one worker runs (cli._serve, passed in: the command line is above us)."""
    from .ctlproto import default_path
    from .io import steering
    from .io.tun import MultiQueueTun, TunError

    n = args.workers
    try:
        slices = steering.port_slices(*config.ip_local_port_range, n)
    except ValueError as exc:
        _say(str(exc))
        return 2
    spec = getattr(args, "impair_spec", None)
    offload = "off" if spec is not None and spec.active else args.offload
    try:
        device = MultiQueueTun(args.tun, str(args.host_address), n,
                               port_range=config.ip_local_port_range, mtu=args.mtu,
                               offload=offload)
    except TunError as exc:
        _say(str(exc))
        return 1
    secret = os.urandom(16)  # RFC 6528's secret, one for all workers
    cpus = sorted(os.sched_getaffinity(0))
    ready_r, ready_w = os.pipe()
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # until each side has handlers
    pids: dict[int, int] = {}
    supervisor = os.getpid()
    for k in range(n):
        pid = os.fork()
        if pid == 0:  # worker k
            # Its own process group: a terminal's Ctrl-C reaches the supervisor only,
            # which forwards it, so a worker's exit is never mistaken for a death.
            os.setpgid(0, 0)
            _die_with(supervisor)
            os.close(ready_r)
            code = 1
            try:
                code = _worker(serve, args, worker_config(config, n, k, slices[k]), device, k,
                               secret, ready_w, cpus[k % len(cpus)] if args.pin else None)
            finally:
                os._exit(code)
        pids[pid] = k
    os.close(ready_w)
    control = None
    if args.control != "none":
        control = args.control or default_path(device.name)
    try:
        # asyncio's own loop: uvloop keeps SIGCHLD for itself.
        return asyncio.run(_supervise(args, device, pids, ready_r, control))
    finally:
        os.close(ready_r)
        _merge_pcap(args.pcap, n)
        device.close()


def _die_with(supervisor: int) -> None:
    """SIGTERM this worker when the supervisor dies (even by SIGKILL), so no worker
    outlives it holding a queue of the device (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(serve: Callable[..., Awaitable], args: argparse.Namespace, config: Config,
            device, k: int, secret: bytes, ready_w: int, cpu: int | None) -> int:
    import uvloop

    from .ctlproto import ControlError
    from .io.tun import TunError

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    queue = device.keep_only(k)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    def ready() -> None:
        try:
            os.write(ready_w, b"%d\n" % k)
            os.close(ready_w)
        except OSError:
            pass  # the supervisor is gone; its SIGTERM follows

    try:
        uvloop.run(serve(args, config, device=queue, worker=k, secret=secret, ready=ready))
    except (TunError, ControlError) as exc:
        _say(f"worker {k}: {exc}")
        return 1
    except OSError as exc:
        _say(f"worker {k}: {exc.filename}: {exc.strerror}" if exc.filename else f"worker {k}: {exc}")
        return 1
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("worker %d failed", k)
        return 1
    return 0


async def _supervise(args: argparse.Namespace, device, pids: dict[int, int], ready_r: int,
                     control: str | None) -> int:
    from .fanout import FanoutServer

    loop = asyncio.get_running_loop()
    n = len(pids)
    live = dict(pids)
    stopping = False
    failed: list[str] = []
    changed = asyncio.Event()

    def reap() -> None:
        while live:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                live.clear()
                break
            if pid == 0:
                break
            k = live.pop(pid, None)
            if k is None:
                continue
            if not stopping or not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                failed.append(f"worker {k} (pid {pid}) {_describe(status)}")
            changed.set()

    def stop(signum: int | None = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in live:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        changed.set()

    # SIGHUP too (the terminal went away): stop like SIGTERM rather than die and
    # leave the workers to their parent-death signal.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGCHLD, reap)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    reap()  # a worker that died before the handler existed

    # Wait for every worker to serve (or for one to die trying).
    ready = set()
    buf = b""
    deadline = loop.time() + READY_TIMEOUT
    os.set_blocking(ready_r, False)
    while len(ready) < n and not failed and not stopping and loop.time() < deadline:
        try:
            chunk = os.read(ready_r, 64)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            break  # every worker closed its end; the missing ones died
        if chunk:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            ready.update(int(x) for x in lines)
            continue
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), 0.05)
        except TimeoutError:
            pass
    server = None
    if len(ready) == n and not failed and not stopping:
        if control is not None:
            server = FanoutServer(control, [part_path(control, k) for k in range(n)],
                                  name=device.name)
            try:
                await server.start()
            except OSError as exc:
                if args.control:
                    failed.append(f"control socket: {exc}")
                else:
                    _say(f"warning: no control socket: {exc}")
                server = None
        services = [f"{name} {port}" for name, port in
                    (("http", args.http), ("echo", args.echo), ("discard", args.discard))
                    if port]
        mode = "offloads" if device.tso else "one packet per frame"
        _say(f"serving on {args.address.ip} via {device.name}, MTU {device.mtu}, {mode} "
             f"({', '.join(services) or 'no services'}), {n} workers")
    elif not failed and not stopping:
        failed.append(f"workers {sorted(set(range(n)) - ready)} did not start "
                      f"within {READY_TIMEOUT:.0f} s")
    told = None
    try:
        while live and not failed and not stopping:
            changed.clear()
            await changed.wait()
        if failed and not stopping:
            told = failed[0]
            _say(f"{told}; stopping the other workers")
        stop()
        deadline = loop.time() + STOP_TIMEOUT
        while live and loop.time() < deadline:
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), 0.1)
            except TimeoutError:
                reap()
        for pid in list(live):
            failed.append(f"worker {live[pid]} (pid {pid}) ignored SIGTERM: killed")
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        live.clear()
    finally:
        if server is not None:
            server.close()
    for line in failed:
        if line is not told:
            _say(line)
    return 1 if failed else 0


def _merge_pcap(path: str | None, n: int) -> None:
    """--pcap FILE: the workers wrote FILE.w0 ... FILE.wN-1; one file, in time order."""
    if not path:
        return
    from .fanout import merge_pcaps

    parts = [part_path(path, k) for k in range(n)]
    try:
        merge_pcaps(path, [p for p in parts if os.path.exists(p)])
    except OSError as exc:
        _say(f"cannot merge the pcap parts into {path}: {exc}")
