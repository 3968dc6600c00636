"""Dependencies run one way (the house issue, section 3): every import in every module
under ustack/, at any level (module top, inside functions, under TYPE_CHECKING), goes to
the same layer or a lower one, and the import graph has no cycles.

    wire (with the leaves config, stats, ctlproto, ssfilter) < seq < tcp < table/timerq/eventlog
    < stack/io/impair/pcap < aio (and the package facade `ustack`) < apps/control
    < tools (and apps.dashboard, which draws with tools.ladder) < cli

The tools are clients of the control socket: they may import only ustack.tools,
ustack.wire, the control protocol (ustack.ctlproto) and its filter language
(ustack.ssfilter), nothing of the stack.
Computed from the AST of each file, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import ustack

ROOT = pathlib.Path(ustack.__file__).parent

# Longest prefix wins. A module that fits no prefix fails test_every_module_has_a_layer.
LAYERS: dict[str, int] = {
    "ustack.wire": 0, "ustack.config": 0, "ustack.stats": 0, "ustack.ctlproto": 0,
    "ustack.ssfilter": 0,
    "ustack.seq": 1,
    "ustack.tcp": 2,
    "ustack.table": 3, "ustack.timerq": 3, "ustack.eventlog": 3,
    "ustack.stack": 4, "ustack.io": 4, "ustack.impair": 4, "ustack.pcap": 4,
    "ustack.aio": 5, "ustack": 5,  # the package itself exports aio.Stack (lazily)
    "ustack.apps": 6, "ustack.control": 6, "ustack.fanout": 6,
    "ustack.workers": 7,  # serve --workers: the supervisor, below the command line
    "ustack.tools": 7,
    # The dashboard draws its ladders with the ladder tool's code (build, render_svg):
    # a view above the tools, started by the cli; http.py gets it as a callable.
    "ustack.apps.dashboard": 7,
    # A lab runs a whole stack, the kernel and the ladder renderer: the tools' layer.
    "ustack.labs": 7,
    "ustack.cli": 8, "ustack.__main__": 8,
}
TOOLS_MAY_IMPORT = ("ustack.tools", "ustack.wire", "ustack.ctlproto", "ustack.ssfilter")

# Edges allowed to break the rules (none today; a pair here needs a reason).
KNOWN: set[tuple[str, str]] = set()


def module_name(path: pathlib.Path) -> str:
    parts = ("ustack", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = pathlib.Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def imports_of(path: pathlib.Path) -> set[str]:
    """The ustack modules a file imports, anywhere in it. `from X import y` counts as
    importing X.y when that is a module, else X."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if is_module(sub) else target)
    return {m for m in found if m == "ustack" or m.startswith("ustack.")}


def layer_of(module: str) -> int | None:
    best = None
    for prefix, level in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, level)
    return None if best is None else best[1]


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py"))}


def is_tool(module: str) -> bool:
    return module == "ustack.tools" or module.startswith("ustack.tools.")


def violations(g: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for src, targets in g.items():
        for dst in targets:
            if dst == src:
                continue
            if is_tool(src):
                ok = any(dst == p or dst.startswith(p + ".") for p in TOOLS_MAY_IMPORT)
            else:
                ok = layer_of(dst) <= layer_of(src)
            if not ok:
                bad.add((src, dst))
    return bad


def cycles(g: dict[str, set[str]], skip: set[tuple[str, str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w == v or (v, w) in skip or w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [m for m in graph() if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
    bad = violations(graph())
    assert sorted(bad - KNOWN) == [], "imports against the layering"


def test_known_violations_are_still_real():
    """A known pair that was fixed must leave KNOWN, so the list cannot go stale."""
    assert sorted(KNOWN - violations(graph())) == []


def test_no_import_cycles():
    assert cycles(graph(), KNOWN) == []


def test_the_shell_does_not_know_the_asyncio_api():
    """stack.py defines the interfaces it calls (ConnectionOwner, ListenerOwner); it
    imports ustack.aio nowhere, not under TYPE_CHECKING and not inside a function."""
    assert "ustack.aio" not in imports_of(ROOT / "stack.py")
    assert "ustack.aio" not in imports_of(ROOT / "io" / "memory.py")


@pytest.mark.parametrize("src, dst, ok", [
    ("ustack.tcp.tcb", "ustack.seq", True),
    ("ustack.seq", "ustack.tcp.tcb", False),
    ("ustack.stack", "ustack.aio", False),
    ("ustack.aio", "ustack.stack", True),
    ("ustack.apps.echo", "ustack.aio", True),
    ("ustack.tools.ss", "ustack.wire.tcp", True),
    ("ustack.tools.ss", "ustack.ctlproto", True),
    ("ustack.tools.ss", "ustack.stack", False),
    ("ustack.cli", "ustack.tools.ss", True),
])
def test_the_rule_itself(src, dst, ok):
    assert (violations({src: {dst}}) == set()) == ok


def test_the_parser_sees_function_level_and_relative_imports():
    """The checker would pass vacuously if it missed imports inside functions."""
    g = graph()
    assert "ustack.aio" in g["ustack.cli"]  # imported inside _serve()
    assert "ustack.seq" in g["ustack.tcp.ofo"]  # `from .. import seq`
    assert "ustack.aio" in g["ustack"]  # the lazy Stack export
    assert cycles({"a": {"b"}, "b": {"a"}}, set()) == [["a", "b"]]
