#!/usr/bin/env python3
"""Goodput of the 1B fixture in bf16, int8-w8a8 and int4 under one production-shaped workload, served by vLLM.

Builds the speed recipes' artifacts (``recipes/speed/llama-1b-{int8-w8a8,int4-rtn}.yaml``, reused when built),
starts the three servers, and measures them together, the order of the models rotating every round and probe:
closed-loop concurrency 1, then each model's goodput search with Poisson arrivals (double, then bisect) on a
synthetic workload (log-normal prompts, uniform output lengths), against one SLO. Every level also scrapes vLLM's
/metrics (queue, running requests, KV-cache use).

    python scripts/goodput_study.py          # about 30 minutes on 2 CPU cores; needs `make engine`

Writes scripts/results/goodput.json (docs/06-serving-and-cost.md's goodput table is generated from it by
scripts/figures.py). The fixture has random weights: only speed and cost are read.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "goodput.json"
SCHEMES = ("int8-w8a8", "int4-rtn")

SETTINGS = {
    "engine": "vllm", "batch_sizes": [1], "repeats": 2, "rounds": 2, "warmup": 1, "price_per_hour": 1.20,
    "output_tokens": 32,
    "workload": {"prompt_tokens": {"lognormal": {"mean": 128, "sigma": 0.6}}, "output_tokens": {"uniform": [16, 48]}},
    "arrival": "poisson", "requests_per_rate": 12, "warmup_fraction": 0.1, "cooldown_fraction": 0.1,
    "slo": {"ttft_ms": 3000, "tpot_ms": 400},
    "goodput": {"attainment": 0.9, "max_probes": 5, "precision": 0.3, "rounds": 1},
}


def artifact(scheme: str) -> Path:
    from compress import runs
    from compress.core.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "speed" / f"llama-1b-{scheme}.yaml")
    _, _, model_dir = runs.build(recipe, log=lambda m: print(m, file=sys.stderr), warn=lambda m: print(m, file=sys.stderr))
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=SETTINGS["goodput"]["max_probes"])
    args = parser.parse_args()
    os.chdir(ROOT)
    from compress.core.models import resolve_model
    from compress.core.recipe import BenchSpec
    from compress.measure.accuracy import model_info
    from compress.measure.bench import describe_workload, measure_together

    settings = BenchSpec.model_validate({**SETTINGS, "goodput": {**SETTINGS["goodput"], "max_probes": args.probes}})
    base = resolve_model("builtin:llama-1b-random").path
    named = {"bf16": (base, model_info(base, "builtin:llama-1b-random"))}
    for scheme in SCHEMES:
        path = artifact(scheme)
        named[scheme] = (path, model_info(path, f"llama-1b-{scheme}"))
    started = time.perf_counter()
    config: dict = {}
    workload = describe_workload(settings, base, config)
    measured, env = measure_together(named, settings, dtype="bfloat16",
                                     log=lambda m: print(m, file=sys.stderr, flush=True))
    models = {}
    for name, m in measured.items():
        closed = m.batches[0]
        models[name] = {
            "size_bytes": m.size_bytes, "kernels": m.runtime.kernels, "start_s": m.runtime.start_s,
            "concurrency_1": {"output_tokens_per_s": closed.output_tokens_per_s, "e2e_p50_s": closed.e2e.p50,
                              "ttft_p50_s": closed.ttft.p50},
            "goodput": m.goodput.model_dump(mode="json") if m.goodput else None,
            "rates": [r.model_dump(mode="json") for r in m.rates]}
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu_cores": os.cpu_count(),
           "seconds": round(time.perf_counter() - started, 1), "settings": settings.model_dump(mode="json"),
           "workload": workload, "vllm": env.get("vllm") or next(iter(measured.values())).runtime.version,
           "models": models}
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    for name, m in models.items():
        g = m["goodput"]
        print(f"{name}: goodput {g['rps']} req/s (below {g['upper_rps']}), ${g['cost_per_mtok_usd']} per 1M out, "
              f"probes {g['probes']}")


if __name__ == "__main__":
    main()
