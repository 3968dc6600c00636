"""The tools keep their promise: ustack/tools/ imports no core, only ustack.tools,
ustack.ctlproto, ustack.ssfilter and ustack.wire; ctlproto imports nothing from ustack but ustack.wire;
and the protocol's state spellings agree with the core's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ustack import ctlproto
from ustack.tcp.state import State

PKG = Path(__file__).resolve().parent.parent / "ustack"
TOOLS_ALLOWED = ("ustack.tools", "ustack.ctlproto", "ustack.ssfilter", "ustack.wire")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def ustack_imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """Every ustack module `path` imports, at any level (also inside functions and
    `if TYPE_CHECKING:`), relative imports resolved: [(line, "ustack.x.y"), ...]."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = (module or _module_name(path)).split(".")
    if path.name != "__init__.py":
        pkg.pop()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x: x is a module of the package
                    out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
                    continue
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
    return [(line, m) for line, m in out if m == "ustack" or m.startswith("ustack.")]


def _allowed(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


TOOL_FILES = sorted((PKG / "tools").rglob("*.py"))


def test_there_are_tools_to_check():
    assert {"ss.py", "client.py", "connect.py", "ladder.py", "args.py"} <= {
        p.name for p in TOOL_FILES}


@pytest.mark.parametrize("path", TOOL_FILES, ids=lambda p: p.name)
def test_tools_import_only_tools_ctlproto_and_wire(path: Path):
    bad = [f"{path.name}:{line}: {mod}" for line, mod in ustack_imports(path)
           if not _allowed(mod, TOOLS_ALLOWED)]
    assert not bad, "tools import the core: " + ", ".join(bad)


def test_ctlproto_imports_nothing_from_ustack_but_wire():
    bad = [m for _, m in ustack_imports(PKG / "ctlproto.py")
           if not _allowed(m, ("ustack.wire",))]
    assert not bad


def test_the_checker_sees_relative_and_nested_imports(tmp_path):
    fake = tmp_path / "probe.py"
    fake.write_text("from ..tcp.state import State\nfrom . import filter\n"
                    "def f():\n    import ustack.stack\n    from ..control import X\n")
    got = {m for _, m in ustack_imports(fake, "ustack.tools.probe")}
    assert got == {"ustack.tcp.state", "ustack.tools.filter", "ustack.stack", "ustack.control"}


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
    assert not [m for m in out if m != "ustack" and not _allowed(m, TOOLS_ALLOWED)]
