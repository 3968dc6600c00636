"""Command-line clients of a running daemon (ss, nstat, capture, trace, connect) and the
ladder renderer. Each command module has `add_parser(subparsers)` and a `run(args) -> int`.

They speak the control socket protocol (ustack/ctlproto.py) and import nothing else from
ustack but ustack.tools itself and ustack.wire (the packet format: flag strings); the
core, the shell and the control server are never loaded. tests/test_tools_layout.py
checks this from every module's source, imports inside functions included."""
