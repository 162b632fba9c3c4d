"""How much `make demo` prints when not on a terminal (as in CI): every line of its stdout and
stderr together, counted, with the output kept.

Runs in a fresh clone of this checkout (its own runs/, dist/ and cache, so every stage is
really done), reusing this checkout's environments (.venv, .venv-engine) instead of installing
them again. Writes scripts/results/demo_lines.json.

    .venv/bin/python scripts/demo_lines.py
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results" / "demo_lines.json"
SCREEN = 40  # lines: one screen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    stamps = [str(p.relative_to(ROOT)) for p in [*ROOT.glob(".venv/.installed"), *ROOT.glob(".venv-engine/.installed-*")]]
    if len(stamps) < 2:
        sys.exit("build the environments first: make setup engine")
    with tempfile.TemporaryDirectory(prefix="compress-demo-") as tmp:
        clone = Path(tmp) / "compress"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        for env in (".venv", ".venv-engine"):
            (clone / env).symlink_to(ROOT / env)
        # The environments are built: make must not rebuild them because the clone's files are newer.
        old = [arg for stamp in stamps for arg in ("-o", stamp)]
        start = time.time()
        p = subprocess.run(["make", "--no-print-directory", *old, "demo"], cwd=clone, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        seconds = time.time() - start
    lines = p.stdout.splitlines()
    result = {"command": "make demo (environments built; fresh clone: every stage done, nothing cached)",
              "lines": len(lines), "screen": SCREEN, "fits": len(lines) <= SCREEN, "exit_code": p.returncode,
              "seconds": round(seconds, 1), "output": lines}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(p.stdout, end="")
    print(f"--- {len(lines)} lines (one screen: {SCREEN}), exit {p.returncode}, {seconds:.0f} s -> {args.out}")
    return 0 if p.returncode == 0 and len(lines) <= SCREEN else 1


if __name__ == "__main__":
    sys.exit(main())
