#!/usr/bin/env python3
"""What each scheme buys where it is served: the speed recipes in vLLM on this machine.

Runs ``compress run recipes/speed/<scheme>.yaml`` for each scheme given (quantize
``builtin:llama-1b-random``, serve base and candidate in vLLM, measure them in alternating
rounds, gate), then reads each run's ``reports/speed.json`` and tabulates, per scheme and
concurrency level: output tokens/s of base and candidate with their 95% intervals over rounds,
the speedup with its interval, the highest throughput within the recipe's SLO, and the cost
per million output tokens with its ratio to bf16.

``--aa`` adds the A/A check: bf16 against itself (two servers of the same model), measured
while a neighbour process keeps one core busy; the gate's checks (speedup >= 0.9, p99 latency
and cost ratios <= 1.1) must never FAIL.

    python scripts/speed_study.py int4-rtn int8-w8a8 --aa     # about 25 minutes on 2 CPU cores

Needs `make engine`. Writes scripts/results/speed.json (the schemes run replace their rows) and prints Markdown
for docs/results.md.
Accuracy on the random-weight fixture means nothing; only speed, cost and size are read.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "speed.json"


def run_recipe(scheme: str, extra: list[str]) -> dict:
    recipe = ROOT / "recipes" / "speed" / f"llama-1b-{scheme}.yaml"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "compress", "run", str(recipe), "--no-export", "--json", *extra],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1, 3):
        sys.exit(f"{recipe.name}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}")
    out = json.loads(proc.stdout)
    stages = {s["stage"]: s["seconds"] for s in out["stages"]}
    return {"scheme": scheme, "verdict": out["verdict"], "seconds": round(seconds, 1), "stages": stages,
            "run_dir": out["run_dir"], "checks": out["gate"]["checks"]}


def levels(report) -> list[dict]:
    from compress.measure.compare import efficiency_metrics

    rows = []
    shared = sorted({b.batch_size for b in report.baseline.batches} & {b.batch_size for b in report.candidate.batches})
    for level in shared:
        b = next(x for x in report.baseline.batches if x.batch_size == level)
        c = next(x for x in report.candidate.batches if x.batch_size == level)
        # The ratio's interval at this level: the same paired bootstrap over rounds as the gate's.
        only = report.model_copy(deep=True)
        for side in (only.baseline, only.candidate):
            side.runs = [r for r in side.runs if r.level == level]
            side.batches = [x for x in side.batches if x.batch_size == level]
        iv = efficiency_metrics(only)["throughput_speedup"]
        rows.append({"concurrency": level,
                     "base_tok_s": b.output_tokens_per_s_spread.model_dump(),
                     "cand_tok_s": c.output_tokens_per_s_spread.model_dump(),
                     "speedup": iv.as_dict(),
                     "base_cost_per_mtok": b.cost_per_mtok_usd, "cand_cost_per_mtok": c.cost_per_mtok_usd,
                     "base_ttft_p99_s": b.ttft.p99, "cand_ttft_p99_s": c.ttft.p99,
                     "base_itl_p99_s": b.itl.p99, "cand_itl_p99_s": c.itl.p99})
    return rows


def _burn(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1_000_003


def aa(settings_from: str) -> dict:
    """bf16 against itself under a neighbour's load, gated like a speed recipe."""
    from compress.measure.bench import run_speed
    from compress.decide.gate import evaluate
    from compress.core.recipe import GateSpec, load_recipe

    recipe = load_recipe(ROOT / "recipes" / "speed" / f"llama-1b-{settings_from}.yaml")
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    neighbour = ctx.Process(target=_burn, args=(stop,), daemon=True)
    neighbour.start()
    start = time.perf_counter()
    try:
        report, _ = run_speed(recipe.model.id, recipe.model.id, recipe.bench, dtype=recipe.model.dtype, rerun=True,
                              log=lambda m: print(m, file=sys.stderr))
    finally:
        stop.set()
        neighbour.join(10)
    policy = GateSpec(checks=[{"metric": "throughput_speedup", "min": 0.9}, {"metric": "latency_p99_ratio", "max": 1.1},
                              {"metric": "cost_ratio", "max": 1.1}])
    gate = evaluate(policy, None, None, report)
    return {"verdict": gate.verdict, "seconds": round(time.perf_counter() - start, 1),
            "checks": [c.model_dump(mode="json") for c in gate.checks], "levels": levels(report)}


def markdown(results: dict) -> str:
    lines = ["| scheme | concurrency | bf16 tok/s | scheme tok/s | speedup [95%] | $/1M out: bf16 -> scheme (ratio) "
             "| SLO tok/s: bf16 -> scheme | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in results["schemes"]:
        for lv in r["levels"]:
            b, c, s = lv["base_tok_s"], lv["cand_tok_s"], lv["speedup"]
            lines.append(f"| {r['scheme']} | {lv['concurrency']} | {b['value']:.1f} [{b['lower']:.1f}, {b['upper']:.1f}] "
                         f"| {c['value']:.1f} [{c['lower']:.1f}, {c['upper']:.1f}] | {s['estimate']:.2f}x "
                         f"[{s['lower']:.2f}, {s['upper']:.2f}] | ${lv['base_cost_per_mtok']:.2f} -> "
                         f"${lv['cand_cost_per_mtok']:.2f} ({lv['cand_cost_per_mtok'] / lv['base_cost_per_mtok']:.2f}x) "
                         f"| {r['slo'][0]:.1f} -> {r['slo'][1]:.1f} | {r['verdict']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("schemes", nargs="*", default=["int4-rtn", "int8-w8a8"])
    ap.add_argument("--aa", action="store_true", help="also run the A/A check under a neighbour's load")
    ap.add_argument("--set", action="append", default=[], help="recipe overrides for every run (KEY=VALUE)")
    args = ap.parse_args()
    from compress.core.reports import SpeedReport

    extra = [x for kv in args.set for x in ("--set", kv)]
    # The schemes measured now replace their rows; the others' rows (and the A/A check, unless run again) stay.
    results: dict = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({"machine": f"{os.cpu_count()} CPU cores",
                    "schemes": [r for r in results.get("schemes", []) if r["scheme"] not in args.schemes]})
    for scheme in args.schemes:
        print(f"running recipes/speed/llama-1b-{scheme}.yaml ...", file=sys.stderr)
        r = run_recipe(scheme, extra)
        report = SpeedReport.load(Path(r["run_dir"]) / "reports" / "speed.json")
        r["levels"] = levels(report)
        r["slo"] = (report.baseline.slo_output_tokens_per_s, report.candidate.slo_output_tokens_per_s)
        r["runtime"] = report.candidate.runtime.model_dump()
        r["kernels"] = {"baseline": report.baseline.runtime.kernels, "candidate": report.candidate.runtime.kernels}
        r["memory"] = {"baseline_peak_rss": report.baseline.peak_memory_bytes,
                       "candidate_peak_rss": report.candidate.peak_memory_bytes,
                       "baseline_weights": report.baseline.model_memory_bytes,
                       "candidate_weights": report.candidate.model_memory_bytes}
        r["settings"] = report.settings
        results["schemes"].append(r)
        print(markdown({"schemes": [r]}), file=sys.stderr)
    if args.aa:
        print("A/A: bf16 against itself with a neighbour process busy ...", file=sys.stderr)
        results["aa"] = aa(args.schemes[0] if args.schemes else "int4-rtn")
        print(f"A/A verdict: {results['aa']['verdict']}", file=sys.stderr)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    if "aa" in results:
        print("\nA/A (bf16 against itself, a neighbour process busy): " + results["aa"]["verdict"] + "; " + ", ".join(
            f"{c['metric']} {c['shown']}" for c in results["aa"]["checks"]))


if __name__ == "__main__":
    main()
