"""How fast tools/fuzz runs: cases per second of each engine over the whole input path.

Run: python benchmarks/bench_fuzz.py [--seconds 20]   (or `tools/bench fuzz`)

A case is one mutated frame into a stack holding connections in many states, plus one
round of the event loop (tools/fuzz's docstring). atheris's figure includes libFuzzer's
coverage bookkeeping over instrumented bytecode; hypothesis's its generation. A busy
machine lowers both alike: compare them within one run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(engine: str, seconds: float) -> dict:
    p = subprocess.run([sys.executable, REPO / "tools" / "fuzz", "--seconds", str(seconds),
                        "--engine", engine], capture_output=True, text=True,
                       timeout=seconds + 120, cwd=REPO)
    m = re.search(r"fuzz: (\d+) cases in ([\d.]+) s \(([\d,]+) cases/s\), (\d+) failures",
                  p.stdout)
    if not m:
        return {"name": f"fuzz {engine}", "value": 0.0, "unit": "cases/s",
                "error": (p.stdout + p.stderr).strip()[-300:]}
    row = {"name": f"fuzz {engine}", "value": float(m.group(3).replace(",", "")),
           "unit": "cases/s", "cases": int(m.group(1)), "failures": int(m.group(4))}
    if p.returncode or row["failures"]:
        row["error"] = "the fuzzer found a failure: run tools/fuzz to see it"
    return row


def figures(seconds: float = 20.0) -> list[dict]:
    rows = []
    try:
        import atheris  # noqa: F401
        rows.append(run("atheris", seconds))
    except ImportError:
        rows.append({"name": "fuzz atheris", "value": 0.0, "unit": "cases/s",
                     "error": "atheris not installed"})
    rows.append(run("hypothesis", seconds))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    rows = figures(p.parse_args(argv).seconds)
    for r in rows:
        print(f"{r['name']:20} {r['value']:>10,.0f} {r['unit']}  {r.get('error', '')}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
