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
from collections.abc import Sequence
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


def _ifname(text: str) -> str:
    # IFNAMSIZ is 16 including the NUL; the kernel would say EINVAL much less clearly.
    if not 0 < len(text) < 16 or "/" in text or text.strip() != text:
        raise argparse.ArgumentTypeError(f"bad interface name {text!r} (1-15 characters)")
    return text


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
    p.add_argument("--log-level", metavar="LEVEL", default="warning", type=str.lower,
                   choices=["debug", "info", "warning", "error", "critical"],
                   help="debug, info, warning (default), error or critical")
    p.set_defaults(func=cmd_serve)


def build_config(settings: Sequence[str]) -> Config:
    """A Config with `--set` items applied in order; raises ConfigError."""
    return apply_settings(Config(), list(settings))


def _check_serve(args: argparse.Namespace) -> str | None:
    """Checks that need more than one argument; returns the error message, if any."""
    if args.impair is not None and args.offload == "on":
        # The impairment layer acts on wire packets; a 64 KB super-segment is dozens.
        return "--impair needs wire-sized packets: use --offload off (or auto)"
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


async def _serve(args: argparse.Namespace, config: Config) -> None:
    from .aio import Stack
    from .io.tun import TunDevice

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    spec = getattr(args, "impair_spec", None)
    impaired = spec is not None and spec.active
    offload = "off" if impaired else args.offload
    device = TunDevice(args.tun, str(args.host_address), mtu=args.mtu, offload=offload)
    stack = None
    servers: list[asyncio.AbstractServer] = []
    control = captures = recordings = None
    try:
        stack = Stack(str(args.address.ip), config=config)
        stack.attach(device)
        captures, control, recordings = await _start_observability(stack, args,
                                                                   device.name)
        if impaired:
            from .impair import Impairment

            stack.set_impairment(Impairment(spec, stack.stats))
            _say(f"impairing {device.name}: {spec}")
        servers, names = await _start_services(stack, args)
        # Each connection leaves reference cycles (TCB <-> recovery, transport <->
        # protocol) for the cyclic collector, which at its default threshold (700)
        # ran often enough to take ~10% of short-connection throughput (ab -n 20000
        # -c 32: 3,100 -> 3,400 req/s). What exists at start-up is never garbage.
        gc.freeze()
        gc.set_threshold(20000, 20, 20)
        device.start(loop, stack.receive)
        services = ", ".join(names) or "no services"
        mode = "offloads" if device.tso else "one packet per frame"
        _say(f"serving on {args.address.ip} via {device.name}, MTU {device.mtu}, {mode} "
             f"({services})")
        await stop.wait()
        log.info("shutting down")
        for server in servers:
            server.close()
        await _reset_connections(stack)
    finally:
        for server in servers:
            server.close()
        if control is not None:
            control.close()
        if captures is not None:
            captures.stop()
        if recordings is not None:
            recordings.close()
        if stack is not None:
            stack.close()
        device.close()


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


async def _start_observability(stack, args: argparse.Namespace, name: str):
    """Event log lines, --pcap, and the control socket (ustack/control.py).

    An explicit --control PATH that cannot be created is fatal; the default path only
    warns, so a second daemon with the same TUN name elsewhere still serves."""
    from .control import ControlServer
    from .ctlproto import ControlError, default_path
    from .eventlog import state_observer
    from .pcap import Captures
    from .record import Recordings

    stack.observers.append(state_observer)
    captures = Captures(stack)
    if args.pcap:
        captures.start(args.pcap)
        _say(f"capturing to {args.pcap}")
    recordings = Recordings(stack)
    record = getattr(args, "record", None)
    if record:
        try:
            recordings.start(getattr(args, "record_filter", ""), record)
        except OSError:
            captures.stop()
            raise
        _say(f"recording sender state to {record}")
    control = None
    if args.control != "none":
        path = args.control or default_path(name)
        control = ControlServer(stack, path, name=name, captures=captures,
                                recordings=recordings)
        try:
            await control.start()
        except (ControlError, OSError) as exc:
            control.close()
            if args.control:
                captures.stop()
                recordings.close()
                raise ControlError(str(exc)) from None
            _say(f"warning: no control socket: {exc}")
            control = None
    return captures, control, recordings


async def _start_services(stack, args: argparse.Namespace
                          ) -> tuple[list[asyncio.AbstractServer], list[str]]:
    from .apps.dashboard import Dashboard, Web
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
        servers.append(await start_http(stack.start_server, host, args.http,
                                        root=args.root, status=stack.status,
                                        dashboard=Web(dashboard).respond))
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
