"""The `ustack` command line.

`ustack serve` runs the daemon: a TUN interface, one stack on it, and the built-in
services (HTTP, echo, discard). Every subcommand lives in its own `_add_<name>` builder
plus a `cmd_<name>` function, so later subcommands (ss, nstat, capture, trace, ladder,
connect) slot in without touching the others.

Exit statuses: 0 clean exit (including SIGINT/SIGTERM), 1 the environment is wrong
(no root, no /dev/net/tun, name in use), 2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import KNOBS, Config, ConfigError, apply_settings
from .tools.args import int_arg

PROG = "ustack"
log = logging.getLogger("ustack")


def _say(message: str) -> None:
    """One line on stderr, prefixed like every other line the daemon prints."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- argument types
# argparse turns a ValueError/ArgumentTypeError from these into "error: ..." + exit 2.


def _interface(text: str) -> ipaddress.IPv4Interface:
    from .io.tun import parse_interface

    try:
        return parse_interface(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad IPv4 address {text!r}: {exc}") from None


_port = int_arg("port", 0, 65535, " (0 disables)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad number of seconds {text!r}") from None
    if not 0 < value <= 86400 * 365:
        raise argparse.ArgumentTypeError(f"seconds must be > 0 (got {text!r})")
    return value


def _directory(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return path.resolve()


def _seconds(text: str) -> float:
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: not a number") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: must be in (0, 86400] s")
    return value


def _ifname(text: str) -> str:
    # IFNAMSIZ is 16 including the NUL; the kernel would say EINVAL much less clearly.
    if not 0 < len(text) < 16 or "/" in text or text.strip() != text:
        raise argparse.ArgumentTypeError(f"bad interface name {text!r} (1-15 characters)")
    return text


def _workers(text: str) -> int:
    import os

    if text == "auto":
        return len(os.sched_getaffinity(0))
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:  # MAX_TAP_QUEUES
        raise argparse.ArgumentTypeError(f"bad --workers {text!r} (1-256 or auto)")
    return n


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A userspace TCP/IPv4 stack over a Linux TUN device.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    _add_tools(sub)
    from .labs import command as lab_command

    lab_command.add_parser(sub)
    return parser


def _add_tools(sub: argparse._SubParsersAction) -> None:
    """The control-socket clients (ustack/tools/): ss, nstat, capture, trace, ladder,
    connect. Each module registers its own subparser and `func`."""
    from .tools import capture, connect, ladder, nstat, plot, record, ss, trace

    for tool in (ss, nstat, capture, trace, ladder, connect, plot, record):
        tool.add_parser(sub)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .io import MAX_MTU, MIN_MTU, OFFLOAD_CHOICES

    p = sub.add_parser(
        "serve", help="run the daemon: TUN device, stack, HTTP/echo/discard services",
        description="Create a TUN interface, run a stack behind it and serve HTTP, echo "
                    "and discard. Needs root (CAP_NET_ADMIN). Port 0 disables a service.",
        epilog=f"knobs for --set: {', '.join(KNOBS)}")
    p.add_argument("--tun", metavar="NAME", type=_ifname, default="ustack0",
                   help="TUN interface to create (default: %(default)s)")
    p.add_argument("--address", metavar="A/N", type=_interface, default="10.77.0.2/24",
                   help="the stack's own address (default: %(default)s)")
    p.add_argument("--host-address", metavar="A/N", type=_interface, default="10.77.0.1/24",
                   help="the kernel's address on the TUN interface (default: %(default)s)")
    p.add_argument("--http", metavar="PORT", type=_port, default=80,
                   help="HTTP port (default: %(default)s)")
    p.add_argument("--root", metavar="DIR", type=_directory, default=None,
                   help="serve files from DIR over HTTP (default: the dashboard at /; it stays "
                        "at /ustack/ with a root)")
    _add_http_limits(p)
    p.add_argument("--echo", metavar="PORT", type=_port, default=7,
                   help="echo port, RFC 862 (default: %(default)s)")
    p.add_argument("--discard", metavar="PORT", type=_port, default=9,
                   help="discard port, RFC 863 (default: %(default)s)")
    p.add_argument("--hold", metavar="PORT", type=_port, default=0,
                   help="a service that never closes after the peer's FIN, leaving "
                        "CLOSE-WAIT (the leak the dashboard flags; default: off)")
    p.add_argument("--close-wait-warn", metavar="SECONDS", type=_seconds, default=60.0,
                   help="the dashboard flags CLOSE-WAIT connections older than this as "
                        "probable leaks (default: %(default)g)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   dest="settings",
                   help="set a knob (repeatable, the last value for a key wins)")
    p.add_argument("--impair", metavar="SPEC", default=None,
                   help="impair frames at the TUN boundary, e.g. loss=0.05,reorder=0.1,"
                        "dup=0.02,corrupt=0.01,delay=5ms,seed=1; ce=P marks CE on that "
                        "share of the ECT packets (ECN); in.KEY / out.KEY for one "
                        "direction")
    p.add_argument("--mtu", metavar="N", type=int_arg("MTU", MIN_MTU, MAX_MTU), default=1500,
                   help="the TUN interface's MTU; the MSS we advertise is N - 40 "
                        "(default: %(default)s; up to 65535)")
    p.add_argument("--offload", choices=OFFLOAD_CHOICES, default="auto",
                   help="TUN offloads (virtio-net header, checksum and TSO): 'auto' "
                        "uses them when the kernel accepts them and no --impair is "
                        "given, 'on' requires them, 'off' is one packet per frame "
                        "(default: %(default)s)")
    p.add_argument("--control", metavar="PATH", default=None,
                   help="Unix control socket for ss, nstat, capture, trace, ladder and "
                        "connect (default: /run/ustack/NAME.sock; 'none' disables it)")
    p.add_argument("--pcap", metavar="FILE", default=None,
                   help="write every frame in and out of the TUN device to a pcap file")
    p.add_argument("--record", metavar="FILE", default=None,
                   help="record the sender state of every connection (or those matching "
                        "--record-filter) to FILE, JSON lines, for `ustack plot`")
    p.add_argument("--record-filter", metavar="FILTER", default="",
                   help="with --record: only connections matching this ss filter, e.g. "
                        "'port 80' or '10.77.0.1:5000'")
    p.add_argument("--max-connections", metavar="N", type=int_arg("limit", 0), default=65536,
                   help="connections (TCBs in any state but TIME-WAIT) beyond which a "
                        "new SYN is dropped and counted as UstackMaxConnDrops; 0 is no "
                        "limit (default: %(default)s)")
    p.add_argument("--shutdown-grace", metavar="S", type=_seconds, default=2.0,
                   help="on SIGTERM/SIGINT, seconds live connections get to close with "
                        "FIN before the rest are reset (default: %(default)s)")
    p.add_argument("--user", metavar="NAME", default=None,
                   help="drop root for this user once the TUN device and the control "
                        "socket are set up")
    p.add_argument("--group", metavar="NAME", default=None,
                   help="with --user: the group to run as (default: the user's), which "
                        "may also use the control socket (mode 0660)")
    p.add_argument("--workers", metavar="N", type=_workers, default=1,
                   help="worker processes, one stack each, over N queues of the TUN "
                        "device (see README, Workers); 'auto': one per usable core "
                        "(default: %(default)s)")
    p.add_argument("--pin", action="store_true",
                   help="with --workers: pin worker k to the k-th usable core")
    p.add_argument("--log-level", metavar="LEVEL", default="warning", type=str.lower,
                   choices=["debug", "info", "warning", "error", "critical"],
                   help="debug, info, warning (default), error or critical")
    p.set_defaults(func=cmd_serve)


def _add_http_limits(p: argparse.ArgumentParser) -> None:
    """The HTTP server's defences (ustack/apps/http.py HttpLimits), nginx's defaults."""
    from .apps.limits import HttpLimits

    d = HttpLimits()
    g = p.add_argument_group("HTTP limits (nginx's directives and defaults)")
    size = int_arg("size", 64, 1 << 30)
    for flag, dest, kind, default, what in (
        ("--http-header-timeout", "header_timeout", _seconds, d.header_timeout,
         "seconds for the whole request head, else 408 (client_header_timeout)"),
        ("--http-keepalive-timeout", "keepalive_timeout", _seconds, d.keepalive_timeout,
         "seconds an idle keep-alive connection is kept (keepalive_timeout)"),
        ("--http-body-timeout", "body_timeout", _seconds, d.body_timeout,
         "seconds between two reads of a request body, else 408 (client_body_timeout)"),
        ("--http-send-timeout", "send_timeout", _seconds, d.send_timeout,
         "seconds a response may make no progress before the connection is reset "
         "(send_timeout)"),
        ("--http-max-request-line", "max_request_line", size, d.max_request_line,
         "bytes in the request line, else 414 (large_client_header_buffers' size)"),
        ("--http-max-header-line", "max_header_line", size, d.max_header_line,
         "bytes in one header line, else 431"),
        ("--http-max-header-size", "max_head", size, d.max_head,
         "bytes in the whole request head, else 431 (nginx: 4 buffers of 8k; nginx "
         "answers 400, we answer RFC 6585's 431)"),
        ("--http-max-body", "max_body", int_arg("size", 0, 1 << 40), d.max_body,
         "bytes in a request body, else 413 (client_max_body_size)"),
    ):
        g.add_argument(flag, dest=f"http_{dest}", metavar="N", type=kind, default=default,
                       help=f"{what} (default: %(default)s)")


def http_limits(args: argparse.Namespace):
    from .apps.limits import HttpLimits

    names = ("header_timeout", "keepalive_timeout", "body_timeout", "send_timeout",
             "max_request_line", "max_header_line", "max_head", "max_body")
    return HttpLimits(**{n: getattr(args, f"http_{n}") for n in names})


def build_config(settings: Sequence[str]) -> Config:
    """A Config with `--set` items applied in order; raises ConfigError."""
    return apply_settings(Config(), list(settings))


def _check_serve(args: argparse.Namespace) -> str | None:
    """Checks that need more than one argument; returns the error message, if any."""
    if args.impair is not None and args.offload == "on":
        # The impairment layer acts on wire packets; a 64 KB super-segment is dozens.
        return "--impair needs wire-sized packets: use --offload off (or auto)"
    if args.group is not None and args.user is None:
        return "--group needs --user"
    if args.user is not None:
        try:
            args.ids = _ids(args.user, args.group)
        except KeyError as exc:
            return str(exc.args[0])
    addr, host = args.address, args.host_address
    if addr.ip == host.ip:
        return f"--address and --host-address are both {addr.ip}"
    record_filter = getattr(args, "record_filter", "")
    if record_filter and not getattr(args, "record", None):
        return "--record-filter needs --record FILE"
    if record_filter:
        from .ssfilter import parse as parse_filter

        try:
            parse_filter(record_filter)
        except ValueError as exc:
            return f"bad --record-filter: {exc}"
    if addr.ip not in host.network:
        return (f"--address {addr.ip} is outside the host side's network {host.network}; "
                "the kernel would not route to it")
    return None


# ---------------------------------------------------------------------- privileges


def _ids(user: str, group: str | None) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary groups) for --user/--group; KeyError with a message."""
    import grp
    import pwd

    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise KeyError(f"--user {user}: no such user") from None
    if group is None:
        gid = pw.pw_gid
    else:
        try:
            gid = (grp.getgrnam(group) if not group.isdigit() else grp.getgrgid(int(group))
                   ).gr_gid
        except KeyError:
            raise KeyError(f"--group {group}: no such group") from None
    extra = [g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem and g.gr_gid != gid]
    return pw.pw_uid, gid, extra


def drop_privileges(uid: int, gid: int, groups: list[int]) -> None:
    """Become uid:gid for good (real, effective and saved IDs: no way back to root).
    The TUN device's descriptor and the bound control socket stay ours."""
    import os

    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.geteuid() != uid or os.getegid() != gid:  # never carry on as root by mistake
        raise OSError(f"could not drop privileges to uid {uid}, gid {gid}")


# ---------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = build_config(args.settings)
    except ConfigError as exc:
        _say(str(exc))
        return 2
    problem = _check_serve(args)
    if problem:
        _say(problem)
        return 2
    args.impair_spec = None
    if args.impair is not None:
        from .impair import parse_spec

        try:  # before any device exists: a bad spec is a command-line error
            args.impair_spec = parse_spec(args.impair)
        except ValueError as exc:
            _say(f"bad --impair: {exc}")
            return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"{PROG}: %(levelname)s %(name)s: %(message)s")
    import uvloop

    from .ctlproto import ControlError
    from .io.tun import TunError

    if args.workers > 1:
        from .workers import run_workers

        return run_workers(args, config, _serve)
    try:
        uvloop.run(_serve(args, config))
    except (TunError, ControlError) as exc:
        _say(str(exc))
        return 1
    except OSError as exc:  # --pcap FILE cannot be written
        _say(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        pass
    return 0


async def _serve(args: argparse.Namespace, config: Config, *, device=None,
                 worker: int | None = None, secret: bytes | None = None,
                 ready: Callable[[], None] | None = None) -> None:
    """The daemon, or with `worker` one worker of `serve --workers N` (ustack/workers.py):
    then `device` is its queue of the TUN device, `secret` the one all workers share,
    and `ready()` is called once it serves."""
    from .aio import Stack
    from .ctlproto import default_path as default_control
    from .io.tun import TunDevice
    from .workers import part_path

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if worker is not None:  # blocked by the supervisor across fork(); ours from now on
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    spec = getattr(args, "impair_spec", None)
    impaired = spec is not None and spec.active
    offload = "off" if impaired else args.offload
    if device is None:
        device = TunDevice(args.tun, str(args.host_address), mtu=args.mtu, offload=offload)
    stack = None
    servers: list[asyncio.AbstractServer] = []
    closers: list = []  # what the services started besides servers (the dashboard)
    control = captures = recordings = status = trimmer = None
    try:
        stack = Stack(str(args.address.ip), config=config, secret=secret)
        stack.max_connections = args.max_connections
        stack.attach(device)
        captures, control, recordings = await _start_observability(
            stack, args, device.name, worker)
        if impaired:
            from .impair import Impairment

            stack.set_impairment(Impairment(spec, stack.stats))
            if not worker:  # once, not once per worker
                _say(f"impairing {device.name}: {spec}")
        if worker is not None and control is not None:
            # The status page shows the whole host (ustack/fanout.py).
            from .fanout import PeerStatus

            base = args.control or default_control(device.name)
            status = PeerStatus(stack, worker, [part_path(base, k)
                                                for k in range(args.workers)])
            status.start()
        servers, names = await _start_services(stack, args, status, recordings, closers)
        ids = getattr(args, "ids", None)
        if ids is not None:
            if control is not None and args.group is not None:
                control.share_with_group(ids[1])
            drop_privileges(*ids)
            _say(f"running as uid {ids[0]}, gid {ids[1]}")
        # Each connection leaves reference cycles (TCB <-> recovery, transport <->
        # protocol) for the cyclic collector, which at its default threshold (700)
        # ran often enough to take ~10% of short-connection throughput (ab -n 20000
        # -c 32: 3,100 -> 3,400 req/s). What exists at start-up is never garbage.
        gc.freeze()
        gc.set_threshold(20000, 20, 20)
        device.start(loop, stack.receive)
        trimmer = asyncio.ensure_future(_trim_memory(stack))
        services = ", ".join(names) or "no services"
        mode = "offloads" if device.tso else "one packet per frame"
        if worker is None:
            _say(f"serving on {args.address.ip} via {device.name}, MTU {device.mtu}, {mode} "
                 f"({services})")
        else:
            log.info("worker %d serving on queue %d of %s", worker, device.index, device.name)
        if ready is not None:
            ready()
        await stop.wait()
        trimmer.cancel()
        log.info("shutting down")
        for server in servers:
            server.close()
        await _close_connections(stack, args.shutdown_grace)
        await _reset_connections(stack)
    finally:
        if trimmer is not None:
            trimmer.cancel()
        for server in servers:
            server.close()
        for closer in closers:
            closer.close()
        if status is not None:
            status.close()
        if control is not None:
            control.close()
        if captures is not None:
            captures.stop()
        if recordings is not None:
            recordings.close()
        if stack is not None:
            stack.close()
        device.close()


TRIM_EVERY = 5.0  # seconds between two looks at the connection count


async def _trim_memory(stack, every: float = TRIM_EVERY) -> None:
    """Give freed memory back to the system once the connections are mostly gone.

    After a churn (issue 13: 38,000 short connections) the Python heap is back to its
    size before, but glibc keeps the freed blocks on its free lists, so the RSS stays
    up (measured: 47 MB, 39 MB after malloc_trim(0), 33 MB at start; the rest is
    pymalloc arenas pinned by a few live objects each). So when the TCBs and TIME-WAIT
    records have fallen below half their peak since the last trim, malloc_trim(0) (a
    few ms). Without glibc (musl), nothing to do."""
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    peak = 0
    while True:
        await asyncio.sleep(every)
        n = len(stack.table.est) + len(stack.table.tw)
        if n < peak // 2:
            trim(0)
            peak = n
        peak = max(peak, n)


async def _close_connections(stack, grace: float) -> None:
    """On shutdown, first the orderly way: close() every connection (a FIN, or a RST
    where data is unread, as close(2) decides), then wait up to `grace` seconds for
    each to be done with: gone, in TIME-WAIT, or in FIN-WAIT-2 (our FIN is
    acknowledged, the peer knows). _reset_connections() resets what is left."""
    from .tcp.state import State

    done = (State.CLOSED, State.TIME_WAIT, State.FIN_WAIT_2)
    for tcb in stack.table.connections():
        owner = tcb.owner
        if owner is not None:
            owner.close()
        else:  # not accepted yet
            stack.call(tcb, tcb.close, stack.loop.time())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline:
        if all(t.state in done for t in stack.table.connections()):
            break
        await asyncio.sleep(0.02)
    left = sum(1 for t in stack.table.connections() if t.state not in done)
    if left:
        log.info("%d connection(s) not closed within %.1f s: resetting them", left, grace)


async def _reset_connections(stack, grace: float = 1.0) -> None:
    """On shutdown: reset every connection (the stack dies with the process, so it
    cannot finish a close), then give the handlers a moment to see it and return. A
    handler still running when the loop ends would be cancelled, and asyncio 3.11's
    StreamReaderProtocol logs a traceback for a cancelled client_connected_cb."""
    stack.abort_all()
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    if tasks:
        await asyncio.wait(tasks, timeout=grace)
    await asyncio.sleep(0)  # the RSTs go out from the flush scheduled by the aborts


async def _start_observability(stack, args: argparse.Namespace, name: str,
                               worker: int | None = None):
    """Event log lines, --pcap, and the control socket (ustack/control.py).

    An explicit --control PATH that cannot be created is fatal; the default path only
    warns, so a second daemon with the same TUN name elsewhere still serves. Worker k
    of several writes PATH.wK and FILE.wK (ustack.workers.part_path); the supervisor
    listens at PATH and merges the pcap files."""
    from .control import ControlServer
    from .ctlproto import ControlError, default_path
    from .eventlog import state_observer
    from .pcap import Captures
    from .record import Recordings
    from .workers import part_path

    stack.observers.append(state_observer)
    captures = Captures(stack)
    if args.pcap:
        captures.start(part_path(args.pcap, worker))
        if worker is None:
            _say(f"capturing to {args.pcap}")
    recordings = Recordings(stack)
    record = getattr(args, "record", None)
    if record:
        try:
            recordings.start(getattr(args, "record_filter", ""),
                             part_path(record, worker))
        except OSError:
            captures.stop()
            raise
        if worker is None:
            _say(f"recording sender state to {record}")
    control = None
    if args.control != "none":
        path = part_path(args.control or default_path(name), worker)
        control = ControlServer(stack, path, name=name, captures=captures,
                                recordings=recordings)
        try:
            await control.start()
        except (ControlError, OSError) as exc:
            control.close()
            if args.control or worker is not None:
                captures.stop()
                recordings.close()
                raise ControlError(str(exc)) from None
            _say(f"warning: no control socket: {exc}")
            control = None
    return captures, control, recordings


async def _start_services(stack, args: argparse.Namespace, status=None, recordings=None,
                          closers: list | None = None
                          ) -> tuple[list[asyncio.AbstractServer], list[str]]:
    from .apps.dashboard import Dashboard, Web
    from .apps.dashboard.plots import Plots
    from .apps.discard import start_discard
    from .apps.echo import start_echo
    from .apps.hold import start_hold
    from .apps.http import start_http

    host = str(args.address.ip)
    servers: list[asyncio.AbstractServer] = []
    names: list[str] = []
    if args.http:
        dashboard = Dashboard(stack, close_wait_warn=args.close_wait_warn)
        dashboard.start()
        if closers is not None:
            closers.append(dashboard)  # its timer and observers end with the daemon
        servers.append(await start_http(stack.start_server, host, args.http,
                                        root=args.root,
                                        status=status.snapshot if status else stack.status,
                                        dashboard=Web(dashboard, plot=Plots(recordings)
                                                      if recordings else None).respond,
                                        limits=http_limits(args), stats=stack.stats))
        names.append(f"http {args.http}")
    if args.echo:
        servers.append(await start_echo(stack.start_server, host, args.echo))
        names.append(f"echo {args.echo}")
    if args.discard:
        servers.append(await start_discard(stack.start_server, host, args.discard))
        names.append(f"discard {args.discard}")
    if args.hold:
        servers.append(await start_hold(stack.start_server, host, args.hold))
        names.append(f"hold {args.hold}")
    return servers, names


# ---------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)
