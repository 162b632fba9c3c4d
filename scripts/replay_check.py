#!/usr/bin/env python3
"""Does `compress plan`'s fleet simulation describe a real server? One vLLM replica of the embedded model under
Poisson arrivals at a few rates, against the simulation of one replica fed that server's own measured service
times.

1. ``compress bench builtin:tiny-llama --engine vllm`` with closed-loop levels 1-16 and open-loop Poisson levels
   at RATES (each request's arrival, wait and end-to-end time measured by the client), once per server in
   SERVERS: the engine on a core of its own (the verdict), and the engine sharing both cores with the client.
2. Per rate, the service model as ``compress plan`` reads it (the closed-loop levels and the open-loop requests
   by the occupancy they were admitted at), with that rate's own requests left out: the simulation predicts a
   load it was not fed. ``compress.decide.fleet.simulate`` of one static replica at that rate, SEEDS seeded runs
   of SIM_REQUESTS requests each; and, beside it, the simulation fed the closed-loop levels alone.
3. Per rate: achieved throughput (requests/s inside the measured window) and p50 end-to-end latency, measured
   and simulated, with the relative gap; ``agrees`` when both gaps are within TOLERANCE.

    python scripts/replay_check.py      # about 10 minutes on 2 CPU cores; needs `make engine`
    python scripts/replay_check.py --keep benches/    # also keep each benchmark (every request)
    python scripts/replay_check.py --report bench.json -o x.json   # replay an earlier benchmark again

Writes scripts/results/replay.json (docs/06-serving-and-cost.md's replay table).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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
# The server, measured twice. The first is the verdict: vLLM's OpenMP threads on one core, its API server and
# the load generator on the other (VLLM_CPU_NUM_OF_RESERVED_CPU, vLLM's own setting for a CPU server). The
# second, for comparison: the OpenMP threads on both cores, sharing them with the client that measures them.
SERVERS = {
    "engine-own-core": ({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"},
                        "vLLM's OpenMP threads on one core; its API server and the load generator on the other"),
    "engine-shares-cores": ({}, "vLLM's OpenMP threads on both cores, shared with its API server and the load "
                                "generator"),
}


def simulated(service, rate: float) -> dict:
    """SEEDS seeded runs of one static replica at ``rate``: throughput, p50 and p99 latency, chance of a wait."""
    import statistics

    from compress.decide.fleet import simulate
    from compress.decide.fleet_spec import Policy, Scaling, Slo
    from compress.decide.plan import steady_traffic

    span = SIM_REQUESTS / rate
    runs = [simulate(service, steady_traffic(rate, span), Policy("static", replicas=1),
                     scaling=Scaling(cold_start_s=0.0, initial_replicas=1), slo=Slo(wait_s=1e9), seed=seed)
            for seed in range(SEEDS)]
    return {"requests_per_s": statistics.fmean(s.served / span for s in runs),
            "e2e_p50_s": statistics.fmean(s.latency_p50_s for s in runs),
            "e2e_p99_s": statistics.fmean(s.latency_p99_s for s in runs),
            "wait_probability": statistics.fmean(s.wait_probability for s in runs),
            "seeds": SEEDS, "requests_per_seed": SIM_REQUESTS}


def replay_row(out: Path, level, closed_only) -> dict:
    """One rate: measured against the simulation fed everything but this rate's requests, and against the
    simulation fed the closed-loop levels alone."""
    from compress.decide.service import service_from_evidence

    service = service_from_evidence(out, leave_out_rates=[level.rate])
    sim, closed = simulated(service, level.rate), simulated(closed_only, level.rate)
    got = {"throughput": level.achieved_requests_per_s, "latency_p50": level.e2e.p50}
    gaps = {"throughput": sim["requests_per_s"] / got["throughput"] - 1,
            "latency_p50": sim["e2e_p50_s"] / got["latency_p50"] - 1}
    return {"rate": level.rate, "requests_measured": level.requests, "client_bound": level.client_bound,
            "measured": {"requests_per_s": got["throughput"], "e2e_p50_s": got["latency_p50"],
                         "e2e_p90_s": level.e2e.p90, "ttft_p50_s": level.ttft.p50},
            "simulated": sim, "gap": gaps,
            "open_loop_requests_drawn": {str(k): n for k, n in sorted(service.open_loop.items())},
            "closed_loop_only": {**closed, "gap_latency_p50": closed["e2e_p50_s"] / got["latency_p50"] - 1},
            "agrees": (not level.client_bound) and all(abs(gaps[k]) <= TOLERANCE[k] for k in gaps)}


def measure(env_extra: dict[str, str], out: Path, tmp: Path) -> None:
    """One ``compress bench`` of the embedded model on vLLM with BENCH's levels and rates, written to ``out``."""
    import yaml

    recipe = tmp / "replay.yaml"
    recipe.write_text(yaml.safe_dump({"name": "replay", "model": {"id": "builtin:tiny-llama"},
                                      "method": {"kind": "int4", "algorithm": "rtn"}, "bench": BENCH}))
    env = {**os.environ, "COMPRESS_CACHE_DIR": str(tmp / "cache"), **env_extra}
    proc = subprocess.run([sys.executable, "-m", "compress", "bench", "builtin:tiny-llama", "--recipe", str(recipe),
                           "-o", str(out), "--rerun"], env=env)
    if proc.returncode != 0:
        sys.exit(f"compress bench: exit {proc.returncode}")


def replay(out: Path) -> dict:
    """Every rate of a benchmark report against the simulation, and the service model it was fed."""
    from compress.core.reports import BenchReport
    from compress.decide.service import service_from_evidence

    report = BenchReport.load(out)
    m = report.measured
    closed_only = service_from_evidence(out, leave_out_rates=[r.rate for r in m.rates])
    rows = [replay_row(out, level, closed_only) for level in m.rates]
    described = service_from_evidence(out).describe()
    return {"vllm": m.runtime.version, "bench": report.settings,
            "service": {"concurrency": described["concurrency"], "levels": described["levels"],
                        "notes": described["notes"]},
            "rates": rows, "agrees": all(r["agrees"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="also keep each benchmark's report (every request) in this folder")
    parser.add_argument("--report", type=Path, help="replay this earlier report instead of measuring again")
    parser.add_argument("-o", "--out", type=Path, default=RESULTS, help="the results file (default: %(default)s)")
    args = parser.parse_args()
    os.chdir(ROOT)
    began = time.perf_counter()
    servers = {}
    if args.report:
        servers["report"] = {"env": None, **replay(args.report)}
    for name, (env_extra, why) in SERVERS.items():
        if args.report:
            break
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            t0 = time.perf_counter()
            measure(env_extra, out, Path(tmp))
            servers[name] = {"env": env_extra, "why": why, "bench_seconds": round(time.perf_counter() - t0, 1),
                             **replay(out)}
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out, args.keep / f"{name}.json")
    first = next(iter(servers.values()))
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu_cores": os.cpu_count(),
              "command": "python scripts/replay_check.py", "model": "builtin:tiny-llama (bf16, vLLM)",
              "vllm": first["vllm"], "bench": BENCH, "tolerance": TOLERANCE, "seeds": SEEDS,
              "requests_per_seed": SIM_REQUESTS, "servers": servers,
              "agrees": first["agrees"], "seconds": round(time.perf_counter() - began, 1)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, server in servers.items():
        print(name)
        for r in server["rates"]:
            print(f"  {r['rate']:g}/s: throughput {r['measured']['requests_per_s']:.3g} measured, "
                  f"{r['simulated']['requests_per_s']:.3g} simulated ({r['gap']['throughput']:+.1%}); p50 e2e "
                  f"{r['measured']['e2e_p50_s']:.3g} s measured, {r['simulated']['e2e_p50_s']:.3g} s simulated "
                  f"({r['gap']['latency_p50']:+.1%}; closed-loop levels alone "
                  f"{r['closed_loop_only']['gap_latency_p50']:+.1%}){'' if r['agrees'] else '  OUTSIDE TOLERANCE'}")
    print(f"wrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
