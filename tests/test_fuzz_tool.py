"""tools/fuzz in CI: a few seconds of each engine, no failures, a cases/s figure; and a
planted bug must be caught (so a run that finds nothing means something)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FUZZ = REPO / "tools" / "fuzz"


def fuzz(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, FUZZ, *argv], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


def engines() -> list[str]:
    try:
        import atheris  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but atheris is missing (pip install -e '.[test]')")
        return ["hypothesis"]
    return ["atheris", "hypothesis"]


@pytest.mark.parametrize("engine", engines())
def test_short_run_is_clean(engine):
    p = fuzz("--seconds", "3", "--engine", engine)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = re.search(r"fuzz: (\d+) cases in [\d.]+ s \(([\d,]+) cases/s\), 0 failures", p.stdout)
    assert m and int(m.group(1)) > 100, p.stdout[-2000:]


def test_a_planted_bug_is_found(tmp_path):
    """A sitecustomize that makes Stack.receive raise on frames with TTL 0: the fuzzer
    (which overwrites header bytes) must report it and exit 1."""
    (tmp_path / "sitecustomize.py").write_text(
        "import ustack.stack as s\n"
        "orig = s.StackShell.receive\n"
        "def receive(self, frame, *a, **k):\n"
        "    if len(frame) > 8 and frame[8] == 0:\n"
        "        raise ValueError('planted')\n"
        "    return orig(self, frame, *a, **k)\n"
        "s.StackShell.receive = receive\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    p = fuzz("--seconds", "20", "--engine", "hypothesis", env=env)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "FAIL ValueError: planted" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
