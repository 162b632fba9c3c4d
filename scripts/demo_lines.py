"""How much `make demo` prints when not on a terminal (as in CI): every line of its stdout and
stderr together, counted, with the output kept.

Runs in a fresh clone of this checkout (its own runs/, dist/ and cache, so every stage is
really done), reusing this checkout's environments (.venv, .venv-engine) instead of installing
them again. Writes scripts/results/demo_lines.json.

    .venv/bin/python scripts/demo_lines.py
    .venv/bin/python scripts/demo_lines.py --from-log /tmp/cold-start.X/log --exit 0 --seconds 1500

``--from-log`` reads the log of `../shared/tools/cold-start` (the demo on a machine that never ran the
project) instead, leaving out the set-up lines of `make setup` and `make engine`.
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
    ap.add_argument("--from-log", type=Path, help="a cold-start log of `make demo` to count instead of running it")
    ap.add_argument("--exit", type=int, default=0, help="with --from-log: the exit code cold-start gave")
    ap.add_argument("--seconds", type=float, default=0.0, help="with --from-log: the time cold-start gave")
    args = ap.parse_args()
    if args.from_log:
        lines = [ln for ln in args.from_log.read_text().splitlines() if not ln.startswith(("setup: ", "engine: "))]
        return _write(args.out, lines, args.exit, args.seconds,
                      "make demo on a machine that never ran the project (../shared/tools/cold-start: every compile and "
                      "model cache empty), the set-up lines left out; the time includes building both environments")
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
    print(p.stdout, end="")
    return _write(args.out, p.stdout.splitlines(), p.returncode, seconds,
                  "make demo (environments built; fresh clone: every stage done, nothing cached)")


def _write(out: Path, lines: list[str], code: int, seconds: float, command: str) -> int:
    result = {"command": command, "lines": len(lines), "screen": SCREEN, "fits": len(lines) <= SCREEN,
              "exit_code": code, "seconds": round(seconds, 1), "output": lines}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"--- {len(lines)} lines (one screen: {SCREEN}), exit {code}, {seconds:.0f} s -> {out}")
    return 0 if code == 0 and len(lines) <= SCREEN else 1


if __name__ == "__main__":
    sys.exit(main())
