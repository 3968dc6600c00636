"""The tools keep their promise: ustack/tools/ imports no core, only ustack.tools,
ustack.ctlproto, ustack.ssfilter and ustack.wire (the import rule itself, from the AST,
is test_layers.py's; here: ctlproto's own stricter rule, the tables the tools rely on,
and the same promise at run time); and the protocol's state spellings agree with the
core's."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_layers import TOOLS_MAY_IMPORT, imports_of, violations

from ustack import ctlproto
from ustack.tcp.state import State

PKG = Path(__file__).resolve().parent.parent / "ustack"


def _allowed(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


TOOL_FILES = sorted((PKG / "tools").rglob("*.py"))


def test_there_are_tools_to_check():
    assert {"ss.py", "client.py", "connect.py", "ladder.py", "args.py"} <= {
        p.name for p in TOOL_FILES}


@pytest.mark.parametrize("path", TOOL_FILES, ids=lambda p: p.name)
def test_tools_import_only_tools_ctlproto_and_wire(path: Path):
    module = "ustack.tools" + ("" if path.stem == "__init__" else f".{path.stem}")
    bad = violations({module: imports_of(path)})
    assert not bad, f"tools import the core: {sorted(bad)}"


def test_ctlproto_imports_nothing_from_ustack_but_wire():
    assert not [m for m in imports_of(PKG / "ctlproto.py") if not _allowed(m, ("ustack.wire",))]


def test_ctlproto_state_names_agree_with_the_core():
    assert ctlproto.STATES == tuple(s.name for s in State)
    assert ctlproto.SS_NAMES == {s.name: s.ss_name for s in State}
    assert ctlproto.SS_STATES == tuple(s.ss_name for s in State)
    for name, states in ctlproto.SS_FILTERS.items():
        assert states <= set(ctlproto.SS_STATES), name


def test_control_server_reexports_what_its_callers_use():
    from ustack import control

    assert control.FRAME is ctlproto.FRAME
    assert control.ControlError is ctlproto.ControlError


def test_loading_every_tool_loads_no_core():
    """The same at run time, in a fresh interpreter."""
    import subprocess
    import sys

    names = ", ".join(p.stem for p in TOOL_FILES if p.stem != "__init__")
    code = (f"import sys\nfrom ustack.tools import {names}\n"
            "print(' '.join(m for m in sys.modules if m.startswith('ustack')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PKG.parent).stdout.split()
    assert "ustack.tools.ss" in out
    assert not [m for m in out if m != "ustack" and not _allowed(m, TOOLS_MAY_IMPORT)]
