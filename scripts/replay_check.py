#!/usr/bin/env python3
"""Does `compress plan`'s fleet simulation describe a real server? One vLLM replica of the embedded model under
Poisson arrivals at a few rates, against the simulation of one replica fed that server's own measured service
times.

1. ``compress bench builtin:tiny-llama --engine vllm`` with closed-loop levels 1-16 (the per-request end-to-end
   times at each occupancy are the simulation's service model, as ``compress plan`` reads them) and open-loop
   Poisson levels at RATES (each request's arrival, wait and end-to-end time measured by the client).
2. ``compress.decide.fleet.simulate`` of one static replica with that service model at each measured rate,
   SEEDS seeded runs of SIM_REQUESTS requests each.
3. Per rate: achieved throughput (requests/s inside the measured window) and p50 end-to-end latency, measured
   and simulated, with the relative gap; ``agrees`` when both gaps are within TOLERANCE.

    python scripts/replay_check.py      # about 4 minutes on 2 CPU cores; needs `make engine`

Writes scripts/results/replay.json (docs/06-serving-and-cost.md's replay table).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "replay.json"
RATES = [2.0, 5.0, 8.0]
LEVELS = [1, 2, 4, 8, 16]
TOLERANCE = {"throughput": 0.10, "latency_p50": 0.25}
SEEDS = 5
SIM_REQUESTS = 4000
BENCH = {"engine": "vllm", "engine_dtype": "bfloat16", "batch_sizes": LEVELS, "repeats": 64, "rounds": 2,
         "warmup": 1, "price_per_hour": 1.2,
         "workload": {"prompt_tokens": {"lognormal": {"mean": 64, "sigma": 0.5}},
                      "output_tokens": {"uniform": [16, 64]}},
         "arrival": "poisson", "rates": RATES, "requests_per_rate": 100}


def main() -> None:
    os.chdir(ROOT)
    import statistics

    import yaml

    from compress.core.reports import BenchReport
    from compress.decide.fleet import simulate
    from compress.decide.fleet_spec import Policy, Scaling, Slo
    from compress.decide.plan import steady_traffic
    from compress.decide.service import service_from_evidence

    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        recipe, out = Path(tmp) / "replay.yaml", Path(tmp) / "bench.json"
        recipe.write_text(yaml.safe_dump({"name": "replay", "model": {"id": "builtin:tiny-llama"},
                                          "method": {"kind": "int4", "algorithm": "rtn"}, "bench": BENCH}))
        env = dict(os.environ, COMPRESS_CACHE_DIR=str(Path(tmp) / "cache"))
        proc = subprocess.run([sys.executable, "-m", "compress", "bench", "builtin:tiny-llama", "--recipe",
                               str(recipe), "-o", str(out), "--rerun"], env=env)
        if proc.returncode != 0:
            sys.exit(f"compress bench: exit {proc.returncode}")
        report = BenchReport.load(out)
        service = service_from_evidence(out)
        bench_s = time.perf_counter() - began
    m = report.measured
    rows = []
    for level in m.rates:
        runs = [r for r in m.rate_runs if r.rate == level.rate]
        measured = [r.requests[i] for r in runs for i in r.measured]
        e2e = sorted(q.e2e_s for q in measured)
        sims = [simulate(service, steady_traffic(level.rate, SIM_REQUESTS / level.rate), Policy("static", replicas=1),
                         scaling=Scaling(cold_start_s=0.0, initial_replicas=1), slo=Slo(wait_s=1e9), seed=seed)
                for seed in range(SEEDS)]
        sim_rps = statistics.fmean(s.served / (SIM_REQUESTS / level.rate) for s in sims)
        sim_p50 = statistics.fmean(s.latency_p50_s for s in sims)
        got = {"throughput": level.achieved_requests_per_s, "latency_p50": level.e2e.p50}
        sim = {"throughput": sim_rps, "latency_p50": sim_p50}
        gaps = {k: sim[k] / got[k] - 1 for k in got}
        rows.append({"rate": level.rate, "requests_measured": len(measured), "client_bound": level.client_bound,
                     "measured": {"requests_per_s": got["throughput"], "e2e_p50_s": got["latency_p50"],
                                  "e2e_p90_s": level.e2e.p90, "ttft_p50_s": level.ttft.p50,
                                  "running_mean": level.running_mean, "waiting_max": level.waiting_max},
                     "simulated": {"requests_per_s": sim_rps, "e2e_p50_s": sim_p50,
                                   "e2e_p99_s": statistics.fmean(s.latency_p99_s for s in sims),
                                   "wait_probability": statistics.fmean(s.wait_probability for s in sims),
                                   "seeds": SEEDS, "requests_per_seed": SIM_REQUESTS},
                     "gap": gaps, "median_e2e_of_measured_s": e2e[len(e2e) // 2],
                     "agrees": (not level.client_bound) and all(abs(gaps[k]) <= TOLERANCE[k] for k in gaps)})
    described = service.describe()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu_cores": os.cpu_count(),
              "command": "python scripts/replay_check.py", "model": "builtin:tiny-llama (bf16, vLLM)",
              "vllm": m.runtime.version, "bench": BENCH, "tolerance": TOLERANCE,
              "service": {"concurrency": described["concurrency"], "levels": described["levels"]},
              "rates": rows, "agrees": all(r["agrees"] for r in rows),
              "seconds": round(time.perf_counter() - began, 1), "bench_seconds": round(bench_s, 1)}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['rate']:g}/s: throughput {r['measured']['requests_per_s']:.3g} measured, "
              f"{r['simulated']['requests_per_s']:.3g} simulated ({r['gap']['throughput']:+.1%}); p50 e2e "
              f"{r['measured']['e2e_p50_s']:.3g} s measured, {r['simulated']['e2e_p50_s']:.3g} s simulated "
              f"({r['gap']['latency_p50']:+.1%}){'' if r['agrees'] else '  OUTSIDE TOLERANCE'}")
    print(f"wrote {RESULTS.relative_to(ROOT)} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
