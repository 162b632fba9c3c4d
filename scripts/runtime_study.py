#!/usr/bin/env python3
"""What prefix caching saves on a shared system prompt: recipes/runtime/llama-1b-prefix-caching.yaml end to end.

Runs ``compress run`` on the recipe (the 1B fixture served by vLLM with prefix caching on against off, in one
interleaved run; every request begins with the same 1024-token system prompt) and records, per concurrency:
time to first token and cost per 1M output tokens of both sides with the ratios' intervals, the candidate's
prefix-cache hit rate as vLLM counted it, and the share of the cached tokens' prefill time that caching saved:
``(TTFT off - TTFT on) / (TTFT off x cached tokens / prompt tokens)`` (prefill taken as linear in tokens).

    python scripts/runtime_study.py      # about 10 minutes on 2 CPU cores; needs `make engine`

Writes scripts/results/runtime.json (docs/06-serving-and-cost.md's prefix-caching table).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "runtime.json"
RECIPE = "recipes/runtime/llama-1b-prefix-caching.yaml"


def main() -> None:
    os.chdir(ROOT)
    from compress.core.reports import SpeedReport
    from compress.measure.compare import efficiency_metrics

    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "compress", "run", RECIPE, "--no-export", "--json", *sys.argv[1:]],
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode not in (0, 1, 3):
        sys.exit(f"{RECIPE}: exit {proc.returncode}")
    out = json.loads(proc.stdout)
    report = SpeedReport.load(Path(out["run_dir"]) / "reports" / "speed.json")
    prefix = report.workload["shared_prefix_tokens"]
    levels = []
    for b, c in zip(report.baseline.batches, report.candidate.batches):
        iv = efficiency_metrics(report, level=b.batch_size)
        hits = [r.metrics.prefix_cache_hit_rate for r in report.candidate.runs
                if r.level == b.batch_size and r.metrics and r.metrics.prefix_cache_hit_rate is not None]
        cached_share = prefix / b.prompt_tokens
        saved = (b.ttft.mean - c.ttft.mean) / (b.ttft.mean * cached_share)
        levels.append({"concurrency": b.batch_size, "prompt_tokens_mean": b.prompt_tokens,
                       "ttft_mean_s": {"off": b.ttft.mean, "on": c.ttft.mean},
                       "ttft_p50_s": {"off": b.ttft.p50, "on": c.ttft.p50},
                       "prefill_speedup": iv["prefill_speedup"].as_dict(),
                       "cost_per_mtok": {"off": b.cost_per_mtok_usd, "on": c.cost_per_mtok_usd},
                       "cost_ratio": iv["cost_ratio"].as_dict(),
                       "output_tokens_per_s": {"off": b.output_tokens_per_s, "on": c.output_tokens_per_s},
                       "prefix_cache_hit_rate": sum(hits) / len(hits) if hits else None,
                       "cached_share_of_prompt": cached_share, "saved_on_cached_portion": saved})
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu_cores": os.cpu_count(),
              "recipe": RECIPE, "command": f"compress run {RECIPE}", "verdict": out["verdict"],
              "checks": [{k: c.get(k) for k in ("metric", "verdict", "shown", "threshold")}
                         for c in out["gate"]["checks"]],
              "seconds": round(time.perf_counter() - began, 1), "workload": report.workload,
              "vllm": report.candidate.runtime.version, "rounds": report.settings["rounds"], "levels": levels}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for lv in levels:
        print(f"c={lv['concurrency']}: TTFT {lv['ttft_mean_s']['off']:.2f} s -> {lv['ttft_mean_s']['on']:.2f} s, "
              f"saved {lv['saved_on_cached_portion']:.0%} of the cached tokens' prefill, hit rate "
              f"{lv['prefix_cache_hit_rate']}, cost ratio {lv['cost_ratio']['estimate']:.3f}")


if __name__ == "__main__":
    main()
