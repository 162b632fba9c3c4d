#!/usr/bin/env python3
"""`compress search` on the embedded model, as the search page shows it: the default ladder from fresh runs and
caches until the first PASS, then `--all` (reusing the caches) for the frontier plot; the looks' confidence
levels; and the simulated error rates of early stopping against the fixed-sample gate.

    .venv/bin/python scripts/search_study.py           # about 10 minutes on 2 CPU cores

Writes scripts/results/search.json and docs/search-frontier.png. Nothing else may run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "scripts" / "results" / "search.json"
RECIPE = "recipes/tiny-llama-search.yaml"
PLOT = "docs/search-frontier.png"
KEEP = ("candidate", "method", "predicted_bytes", "weights_bytes", "size_ratio", "quality_metric", "quality_change",
        "quality_interval", "verdict", "documents", "stopped_at_look", "documents_saved", "seconds", "chosen")
# The simulation of tests/test_stats.py: a candidate whose true drop sits exactly on the bound (6 points).
AT_BOUND = {"n": 400, "margin": 0.06, "p_base": 0.8, "p_break": 0.1, "p_fix": 0.1, "trials": 2000, "seed": 2026}


def search(args: list[str], env: dict[str, str], tmp: str) -> dict:
    began = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "compress", "search", RECIPE, "--no-export", "--json",
                        "--chosen", f"{tmp}/chosen.yaml", *args],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode not in (0, 1, 3):
        sys.exit(f"compress search {' '.join(args)} exited {p.returncode}: {p.stderr[-2000:]}")
    out = json.loads(p.stdout)
    rows = [{k: row[k] for k in KEEP} for row in out["candidates"]]
    return {"command": f"compress search {RECIPE} --no-export {' '.join(args)}".strip(), "exit": p.returncode,
            "seconds": round(time.monotonic() - began, 1), "chosen": out["chosen"], "candidates": rows,
            "not_tried": out["not_tried"]}


def main() -> int:
    from compress.decide.sequential import Design, bounds, look_confidence, operating_characteristics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="compress-search-study-") as tmp:
        env = dict(os.environ, COMPRESS_RUNS_DIR=f"{tmp}/runs", COMPRESS_CACHE_DIR=f"{tmp}/cache")
        first = search([], env, tmp)
        every = search(["--all", "--plot", PLOT], env, tmp)
    design = Design()
    fractions = tuple(k / design.looks for k in range(1, design.looks + 1))
    looks = {"looks": design.looks, "spending": design.spending,
             "confidence": [round(look_confidence(c), 6) for c in bounds(fractions, 0.025, design.spending)]}
    simulation = {**AT_BOUND, **operating_characteristics(**AT_BOUND)}
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": f"{os.cpu_count()} CPU cores",
              "recipe": RECIPE, "first": first, "all": every, "looks": looks, "simulation_at_bound": simulation}
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}: chose {first['chosen']} in {first['seconds']:.0f} s; --all "
          f"{every['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
