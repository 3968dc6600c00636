"""Command-line clients of a running daemon (ss, nstat, capture, trace, connect) and the
ladder renderer. Each module has `add_parser(subparsers)` and a `run(args) -> int`; none
imports the core: they speak the control socket protocol (ustack/control.py)."""
