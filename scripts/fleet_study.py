#!/usr/bin/env python3
"""The fleet bill of the 1B fixture over a day: the top-down waterfall and the autoscaling policies side by side.

1. ``compress run recipes/fleet/llama-1b-int4-system-prompt.yaml``: int4 against bf16 (the model layer).
2. ``compress run recipes/fleet/llama-1b-int4-prefix-caching.yaml`` on that run's artifact: prefix caching on
   against off (the runtime layer).
3. ``compress plan RUN1 RUN2 --traffic recipes/fleet/day.csv``: the waterfall (base, int4, int4 with caching,
   then queue-depth autoscaling), each row priced on the same day of traffic and wait bound.
4. ``compress plan RUN2 --traffic recipes/fleet/day.csv``: static, utilization and queue-depth policies for the
   deployed layer, and again with half the fleet on spot capacity.

    python scripts/fleet_study.py            # about 30 minutes on 2 CPU cores; needs `make engine`
    python scripts/fleet_study.py --plot     # only redraw docs/fleet-day.png from the results file

Writes scripts/results/fleet.json (docs/06-serving-and-cost.md's fleet tables) and docs/fleet-day.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"
PLOT = ROOT / "docs" / "fleet-day.png"
MODEL_LAYER = "recipes/fleet/llama-1b-int4-system-prompt.yaml"
RUNTIME_LAYER = "recipes/fleet/llama-1b-int4-prefix-caching.yaml"
DAY = "recipes/fleet/day.csv"
PLAN = ["--traffic", DAY, "--slo-wait-p99", "2", "--attainment", "0.99", "--repeats", "3"]
SPOT = ["--spot", "0.40", "--preemption-rate", "0.05", "--spot-share", "0.5"]


def compress(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "compress", *args, "--json"], stdout=subprocess.PIPE, text=True)
    if proc.returncode not in (0, 1, 3):
        sys.exit(f"compress {' '.join(args)}: exit {proc.returncode}")
    return json.loads(proc.stdout)


def run(recipe: str, *extra: str) -> dict:
    out = compress("run", recipe, "--no-export", *extra)
    gate = json.loads((Path(out["run_dir"]) / "gate.json").read_text())
    return {"recipe": recipe, "run_dir": out["run_dir"], "verdict": gate["verdict"],
            "checks": [{k: c.get(k) for k in ("metric", "verdict", "shown", "threshold")} for c in gate["checks"]]}


def draw(result: dict) -> None:
    from compress.decide.plan import plot

    plot(result["policies"], PLOT)
    print(f"drew {PLOT.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", action="store_true", help="only redraw the plot from the results file")
    if ap.parse_args().plot:
        draw(json.loads(RESULTS.read_text()))
        return
    os.chdir(ROOT)
    began = time.perf_counter()
    model = run(MODEL_LAYER)
    runtime = run(RUNTIME_LAYER, "--set", f"model.id={Path(model['run_dir']) / 'model'}")
    measured_s = time.perf_counter() - began
    waterfall = compress("plan", model["run_dir"], runtime["run_dir"], *PLAN)
    policies = compress("plan", runtime["run_dir"], *PLAN)
    spot = compress("plan", runtime["run_dir"], *PLAN, "--policy", "static,queue-depth", *SPOT)
    for plan in (policies, spot):
        plan.pop("written", None)
    spot.pop("timeline", None)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu_cores": os.cpu_count(),
              "command": "python scripts/fleet_study.py", "traffic": DAY, "plan_flags": PLAN, "spot_flags": SPOT,
              "runs": {"model": model, "runtime": runtime}, "waterfall": waterfall, "policies": policies,
              "spot": spot, "measured_seconds": round(measured_s, 1),
              "seconds": round(time.perf_counter() - began, 1)}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    draw(result)
    print(f"wrote {RESULTS.relative_to(ROOT)} in {result['seconds'] / 60:.0f} min")


if __name__ == "__main__":
    main()
